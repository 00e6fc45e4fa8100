"""Units of an audit (Retrain by default, or `--method`), one by one vs stacked (audit/units.py `run_units`), or
with `--attack-models N` an attack's N unlearned models per set (audit/attack_eval.py), as a ratio in one run.

    python benchmarks/bench_stacked_retrain.py                                  # digits: 9 sets × 2 seeds
    python benchmarks/bench_stacked_retrain.py --dataset fashion_mnist --sets 3 # 10,000-sample subset, 3 × 2 units
    python benchmarks/bench_stacked_retrain.py --method finetune                # finetune's units
    python benchmarks/bench_stacked_retrain.py --method finetune --attack-models 16 --sets 2  # 2 sets × 16 models
    python benchmarks/bench_stacked_retrain.py --tiny                           # synthetic, 2 epochs: a smoke test

The original is trained (and cached) first, outside the timings. Then each mode runs in a fresh process on a
copy of that cache, so every unit — training, evaluation, record — or attack model — training, per-model
statistics — is computed: `sequential` runs them one at a time through the method's `apply` (as before
stacking), `stacked` is the library's default (stacks of at most `stack_capacity` models, plus, for a method
other than Retrain, the one run alone that times its RTE). The sets are random sets of the default forget ratio,
as many as the default audit's 9 set kinds × 2 seeds unless `--sets` says fewer. Appends a Markdown table to
--out (default results/audit_cost.md is left alone: a temporary file, printed). Wall-clock: run it on a quiet
machine (the table records the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

SUBSETS = {"fashion_mnist": 10_000}


def setting_for(args: argparse.Namespace, cache: str):
    from worstforget.setting import prepare_setting

    overrides = {"epochs": 2} if args.tiny else None
    return prepare_setting(dataset=args.dataset, cache_dir=cache, train_overrides=overrides,
                           train_subset=SUBSETS.get(args.dataset), mia_resamples=args.mia_resamples,
                           **({"model": args.model} if args.model else {}))


def run_mode(args: argparse.Namespace, mode: str, cache: str) -> dict:
    """The units (or attack models) in this process: their wall time, and how many trained."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from worstforget.audit import attack_eval, units
    from worstforget.core.executor import serial

    if mode == "sequential":
        units.stackable_method = lambda *a, **k: None
        attack_eval.stackable_method = lambda *a, **k: None
    setting = setting_for(args, cache)
    sets = units.random_sets(setting, args.forget_ratio, args.sets, set_seed=123)
    start = time.perf_counter()
    if args.attack_models:
        per_model = [p for f in sets for p in attack_eval.model_statistics(setting, args.method, {}, f,
                                                                           list(range(args.attack_models)))]
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "units": len(per_model), "train_seconds": setting.train_seconds,
                "threads": torch.get_num_threads()}
    plan = [units.Unit(args.method, {}, f, seed=s, where=f"random set {i + 1}") for i, f in enumerate(sets)
            for s in range(args.seeds)]
    records = units.run_units(setting, plan, executor=serial())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "units": len(records), "train_seconds": setting.train_seconds,
            "threads": torch.get_num_threads(), "UA": [round(float(r["UA"]), 4) for r in records]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits", help="fashion_mnist runs on a 10,000-sample subset")
    parser.add_argument("--model", default=None, help="model (default: the dataset's, e.g. the CNN on fashion_mnist)")
    parser.add_argument("--mia-resamples", type=int, default=3,
                        help="draws of MIA-Efficacy's SVC attacker per evaluation (the audit's default: 3)")
    parser.add_argument("--sets", type=int, default=9, help="random forget sets (default: the audit's 9 kinds)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per set (units)")
    parser.add_argument("--method", default="retrain", help="the units' method (default: Retrain)")
    parser.add_argument("--attack-models", type=int, default=0,
                        help="time an attack's N unlearned models per set instead of the units")
    parser.add_argument("--forget-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="append the table to this Markdown file")
    parser.add_argument("--tiny", action="store_true", help="synthetic data, 2 epochs: a smoke test")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.dataset = "synthetic"
    if args.one:
        print(json.dumps(run_mode(args, *args.one)))
        return 0
    forward = list(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="wf-bench-stack-") as root:
        template = os.path.join(root, "template")
        setting_for(args, template)  # the original, trained and cached once, outside the timings
        for mode in ("sequential", "stacked"):
            cache = os.path.join(root, mode)
            shutil.copytree(template, cache)
            done = subprocess.run([sys.executable, __file__, *forward, "--one", mode, cache],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-4000:], file=sys.stderr)
                return done.returncode
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode}: {runs[mode]['seconds']:.2f} s for {runs[mode]['units']} units", file=sys.stderr)
    seq, stk = runs["sequential"], runs["stacked"]
    train = stk["train_seconds"] or float("nan")
    command = "python benchmarks/bench_stacked_retrain.py " + " ".join(forward)
    what = (f"{args.method} attack models ({args.sets} random sets × {args.attack_models} models)"
            if args.attack_models else f"{args.method} units ({args.sets} random sets × {args.seeds} seeds)")
    evaluation = ("per-model statistics" if args.attack_models
                  else f"{args.mia_resamples} MIA-Efficacy draw(s) per evaluation")
    text = (f"### {what}, one by one vs stacked: {args.dataset}\n\n`{command}`\n\n"
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {stk['threads']}; "
            f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after. {seq['units']} runs of the "
            f"{args.model or 'default'} model, {evaluation}; "
            f"one training of the original {train:.2f} s.\n\n"
            "| mode | s | s per run | × training | one by one / stacked |\n| --- | ---: | ---: | ---: | ---: |\n"
            f"| one by one | {seq['seconds']:.2f} | {seq['seconds'] / seq['units']:.2f} | "
            f"{seq['seconds'] / train:.2f} | |\n"
            f"| stacked | {stk['seconds']:.2f} | {stk['seconds'] / stk['units']:.2f} | {stk['seconds'] / train:.2f} | "
            f"{seq['seconds'] / stk['seconds']:.2f}× |\n")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
