"""Cost of the worst-case search as a multiple of training the original model once, measured in one run.

    python benchmarks/bench_search_cost.py [--dataset digits] [--outer-steps 20] [--threads 2]

Trains the original model (no cache) and runs the search with each solver (no cache), interleaved
`--repeats` times, and prints search seconds / training seconds. Read the ratios, not the seconds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from worstforget.core.cache import ModelCache
from worstforget.search import SearchConfig, search_worst_case
from worstforget.setting import prepare_setting
from worstforget.training.original import original_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--outer-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        setting = prepare_setting(dataset=args.dataset, device="cpu", cache_dir=tmp)
        setting.records.enabled = False  # every search runs from scratch
        times: dict[str, list[float]] = {"train": [], "first_order": [], "unrolled": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            original_model(setting.spec, setting.data, cache=ModelCache(enabled=False))
            times["train"].append(time.perf_counter() - start)
            for solver in ("first_order", "unrolled"):
                cfg = SearchConfig(solver=solver, outer_steps=args.outer_steps)
                start = time.perf_counter()
                search_worst_case(setting, args.method, {}, cfg, seed=0, state_dir=tmp)
                times[solver].append(time.perf_counter() - start)
    train = statistics.median(times["train"])
    print(f"dataset {args.dataset}, method {args.method}, {args.outer_steps} outer steps, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'what':12s} {'seconds':>9s} {'× training':>11s}")
    for name, values in times.items():
        print(f"{name:12s} {statistics.median(values):9.2f} {statistics.median(values) / train:11.2f}")


if __name__ == "__main__":
    main()
