"""Benchmark: M models trained at once with `worstforget.ensemble` versus M sequential `train.fit` calls.

    /work/venv/bin/python benchmarks/bench_ensemble.py [--models 16] [--dataset digits] [--epochs 5]

Each model trains on its own random inclusion mask (every sample kept with probability
--keep, as for LiRA-style shadow models, so active-set sizes differ and the padding/masking path is
exercised). Both ways run in the same process, interleaved repeat by repeat so that background load
hits both alike; the table reports the best and median wall seconds of each way and the ratios
sequential / vmapped of the best and of the median times (on a shared virtual machine single runs of
the same code vary by ±20%, so read both). The largest parameter difference between the two ways is
printed as a sanity check (expect float-rounding size, ~1e-6, growing slowly with epochs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from worstforget.core.seeds import generator  # noqa: E402
from worstforget.datasets import dataset_info, load_dataset  # noqa: E402
from worstforget.training.ensemble import fit_stacked  # noqa: E402
from worstforget.training.loop import TrainConfig, fit  # noqa: E402
from worstforget.training.original import ModelSpec  # noqa: E402


def run_case(label: str, spec: ModelSpec, data, cfg: TrainConfig, weights: torch.Tensor, seeds: list[int],
             repeats: int) -> dict:
    def sequential() -> list[torch.nn.Module]:
        return [fit(spec.build(data, seed=s), data, cfg, seed=s, sample_weights=weights[i])
                for i, s in enumerate(seeds)]

    def vmapped() -> list[torch.nn.Module]:
        return fit_stacked(spec, data, seeds=seeds, sample_weights=weights, cfg=cfg).models()

    seq_times, vmap_times = [], []
    seq_models = vmap_models = None
    for _ in range(repeats):  # interleaved, so a burst of background load hits both ways
        start = time.perf_counter()
        seq_models = sequential()
        seq_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        vmap_models = vmapped()
        vmap_times.append(time.perf_counter() - start)
    diff = max(float((a - b).abs().max()) for sm, vm in zip(seq_models, vmap_models)
               for a, b in zip(sm.state_dict().values(), vm.state_dict().values()))
    return {"case": label, "seq_best": min(seq_times), "seq_median": statistics.median(seq_times),
            "vmap_best": min(vmap_times), "vmap_median": statistics.median(vmap_times),
            "ratio": min(seq_times) / min(vmap_times),
            "ratio_median": statistics.median(seq_times) / statistics.median(vmap_times), "max_param_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=16, help="ensemble size M")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the MLP case")
    parser.add_argument("--cnn-epochs", type=int, default=1, help="epochs of the CNN case (0 skips it)")
    parser.add_argument("--cnn-width", type=int, default=8, help="base width of the small cnn (norm none)")
    parser.add_argument("--hidden", default="256,256", help="MLP hidden widths")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the dataset's default")
    parser.add_argument("--keep", type=float, default=0.5, help="probability a sample is in a model's train set")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per case")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    defaults = dataset_info(args.dataset).default_train
    cfg = TrainConfig(**defaults).with_updates(epochs=args.epochs, batch_size=args.batch_size)
    seeds = list(range(args.models))
    weights = (torch.rand(args.models, data.num_train, generator=generator(0, "bench-masks")) < args.keep).float()
    sizes = weights.sum(1)

    print(f"dataset {args.dataset}: {data.num_train} train samples, {args.models} models keeping "
          f"{int(sizes.min())}–{int(sizes.max())} each; batch {cfg.batch_size}; "
          f"torch threads {torch.get_num_threads()}")
    hidden = tuple(int(h) for h in args.hidden.split(","))
    mlp = ModelSpec("mlp", cfg, norm="none", params={"hidden": hidden})
    cases = [(f"mlp {args.hidden} × {cfg.epochs} ep", mlp, cfg)]
    if args.cnn_epochs > 0 and data.is_image:
        cnn_cfg = cfg.with_updates(epochs=args.cnn_epochs)
        cases.append((f"cnn w{args.cnn_width} none × {cnn_cfg.epochs} ep",
                      ModelSpec("cnn", cnn_cfg, norm="none", params={"width": args.cnn_width}), cnn_cfg))
    load_before = os.getloadavg()[0]
    rows = [run_case(label, spec, data, c, weights, seeds, args.repeats) for label, spec, c in cases]
    load_after = os.getloadavg()[0]

    header = (f"{'case':<28} {'sequential s (best/median)':>27} {'vmapped s (best/median)':>25} "
              f"{'seq/vmap (best/median)':>23} {'max |Δθ|':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:<28} {r['seq_best']:>13.2f} / {r['seq_median']:<11.2f} {r['vmap_best']:>11.2f} / "
              f"{r['vmap_median']:<11.2f} {r['ratio']:>12.2f}× / {r['ratio_median'] :.2f}×  "
              f"{r['max_param_diff']:>9.1e}")
    # other processes on the cores distort the ratio (each parallel kernel waits for a descheduled
    # thread, and sequential training runs 16× more of them): say how busy the machine was
    print(f"1-minute load average {load_before:.2f} before, {load_after:.2f} after "
          f"({os.cpu_count()} CPUs; this benchmark itself adds up to {args.threads}; trust the ratios when the "
          "load before is well below 1)")


if __name__ == "__main__":
    main()
