"""From how many runs a method's stack pays: M runs of a method one by one against the same M runs as one stack
plus the one run alone that times a stacked run's RTE (audit/units.py, `MIN_STACKED_RUNS`), in one warm process.

    python benchmarks/bench_stack_size.py                                   # digits, finetune, M = 2 4 6 8 12 16
    python benchmarks/bench_stack_size.py --method neggrad_plus --sizes 2,4,8,16
    python benchmarks/bench_stack_size.py --dataset fashion_mnist --model mlp --train-subset 10000 --sizes 4,8,16

Training only (no evaluation, which stacking does not change). Each size runs `--repeats` times, the two modes
interleaved; the table gives medians and their ratio. Wall-clock: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--model", default=None, help="model (default: the dataset's)")
    parser.add_argument("--train-subset", type=int, default=None, help="a seeded subset of the training split")
    parser.add_argument("--sizes", default="2,4,6,8,12,16", help="stack sizes M, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="append the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes takes whole numbers separated by commas, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.repeats < 1:
        parser.error("--sizes needs stack sizes of at least 1 and --repeats at least 1")
    import torch

    from worstforget.forget_sets import forget_size, forget_weights, random_forget_set
    from worstforget.methods import make_method
    from worstforget.methods.stacked import run_stacked
    from worstforget.setting import prepare_setting

    with tempfile.TemporaryDirectory(prefix="wf-bench-stack-size-") as cache:
        setting = prepare_setting(dataset=args.dataset, cache_dir=cache, train_subset=args.train_subset,
                                  **({"model": args.model} if args.model else {}))
        data, original = setting.data, setting.original
        method = make_method(args.method, {}).resolved(setting.spec.train.batch_size)
        m = forget_size(data.num_train, 0.1)
        weights = torch.stack([forget_weights(data, random_forget_set(data.num_train, m, r))
                               for r in range(max(sizes))])
        method.apply(original, data, weights[0], seed=0, spec=setting.spec)  # warm-up: first optimiser, kernels
        run_stacked(method, original, data, weights[:2], [0, 1], spec=setting.spec)

        def alone(k: int) -> float:
            start = time.perf_counter()
            for i in range(k):
                method.apply(original, data, weights[i], seed=i, spec=setting.spec)
            return time.perf_counter() - start

        def stacked(k: int) -> float:
            start = time.perf_counter()
            method.apply(original, data, weights[0], seed=0, spec=setting.spec)  # the run that times RTE
            run_stacked(method, original, data, weights[:k], list(range(k)), spec=setting.spec)
            return time.perf_counter() - start

        rows = []
        for k in sizes:
            one, many = [], []
            for _ in range(args.repeats):
                one.append(alone(k))
                many.append(stacked(k))
            rows.append((k, statistics.median(one), statistics.median(many)))
            print(f"M={k}: one by one {rows[-1][1]:.2f} s, stacked + one alone {rows[-1][2]:.2f} s", file=sys.stderr)
    command = "python benchmarks/bench_stack_size.py " + " ".join(argv if argv is not None else sys.argv[1:])
    where = args.dataset + (f" ({args.model or 'default model'}, {args.train_subset:,} samples)" if args.train_subset
                            else f" ({args.model})" if args.model else "")
    lines = [f"### From how many runs a stack pays: {args.method} on {where}", "", f"`{command}`", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
             f"{torch.get_num_threads()}; forget sets of {m} samples; medians of {args.repeats}, modes interleaved; "
             "training only.", "",
             "| M runs | one by one (s) | stack + one run alone (s) | one by one / stacked |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {k} | {a:.2f} | {b:.2f} | {a / b:.2f}× |" for k, a, b in rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
