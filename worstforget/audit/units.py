"""Units of work: unlearn one forget set with one method and seed, then evaluate it (cached).

A unit is a pure function of (original model key, method and hyper-parameters, forget set, seed); its
record is cached on disk under a hash of those, so audits can be split across processes or machines
that share the cache folder.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.hashing import stable_hash
from ..core.progress import NullProgress, Progress
from ..core.runtime import Timer
from ..methods import make_method
from ..scoring.metrics import avg_gap, evaluate, mean_std
from ..setting import (
    Setting,
    forget_mask,
    forget_size,
    forget_weights,
    forgotten_classes,
    random_forget_set,
)

RECORD_VERSION = 1  # bump when the content of a cached unit record changes


def run_unit(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, *, seed: int,
             progress: Progress | None = None) -> dict:
    """Unlearn `forget_set` with `method` and evaluate: {UA, RA, TA, MIA, RTE} (cached)."""
    data = setting.data
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)
    key_fields = {"v": RECORD_VERSION, "original": setting.original_key, "method": instance.name,
                  "params": instance.hyperparameters(), "spec": setting.spec.to_dict(),
                  "forget": forget_set, "seed": seed, "mia_seed": setting.mia_seed,
                  "mia_resamples": setting.mia_resamples}
    if len(forgotten_classes(data, forget_mask(data, forget_set))):  # class-wise protocol: TA and MIA on the remaining classes
        key_fields["class_protocol"] = 1
    key = stable_hash(key_fields)

    def compute() -> dict:
        if instance.partitioned:  # sisa/arcane: build their sharded original outside the timing
            instance.partitioned_original(data, setting.spec, progress=progress)
        with Timer() as timer:
            model = instance.apply(setting.original, data, forget_weights(data, forget_set), seed=seed,
                                   spec=setting.spec, progress=progress)
            if data.device.type == "cuda":
                torch.cuda.synchronize()
        metrics = evaluate(model, data, forget_set, mia_seed=setting.mia_seed, mia_resamples=setting.mia_resamples)
        return {**metrics, "RTE": timer.seconds}

    return setting.records.get_or_compute("unit", key, compute)


def compare_on_set(setting: Setting, methods: list[tuple[str, dict]], forget_set: torch.Tensor, *,
                   seeds: list[int], progress: Progress | None = None) -> dict:
    """Run Retrain and each method on one forget set for several seeds; metrics and Avg. Gaps per seed."""
    progress = progress or NullProgress()
    out: dict[str, Any] = {"retrain": [], "avg_gap": {}}
    for s in seeds:
        out["retrain"].append(run_unit(setting, "retrain", {}, forget_set, seed=s, progress=progress))
    for name, params in methods:
        runs = [run_unit(setting, name, params, forget_set, seed=s, progress=progress) for s in seeds]
        for r, ref in zip(runs, out["retrain"]):
            r["RTE_fraction"] = r["RTE"] / ref["RTE"] if ref["RTE"] > 0 else float("nan")
        out[name] = runs
        out["avg_gap"][name] = [avg_gap(r, ref) for r, ref in zip(runs, out["retrain"])]
    return out


def summarize_runs(runs: list[dict]) -> dict:
    keys = [k for k in ("UA", "MIA", "RA", "TA", "RTE", "RTE_fraction", "MIA_std") if k in runs[0]]
    return {k: mean_std([r[k] for r in runs]) for k in keys}


def compare_methods(setting: Setting, methods: list[tuple[str, dict]], *, forget_ratio: float, num_sets: int,
                    seeds: list[int], set_seed: int = 0, progress: Progress | None = None) -> dict:
    """Every method and Retrain on `num_sets` random forget sets: per-method mean ± std over sets × seeds."""
    m = forget_size(setting.data.num_train, forget_ratio)
    sets = [random_forget_set(setting.data.num_train, m, set_seed + r) for r in range(num_sets)]
    per_set = [compare_on_set(setting, methods, s, seeds=seeds, progress=progress) for s in sets]
    table: dict[str, Any] = {}
    for who in ["retrain", *[n for n, _ in methods]]:
        table[who] = summarize_runs([r for res in per_set for r in res[who]])
        if who != "retrain":
            table[who]["avg_gap"] = mean_std([g for res in per_set for g in res["avg_gap"][who]])
    return {"forget_size": m, "set_seeds": [set_seed + r for r in range(num_sets)], "seeds": seeds,
            "table": table, "runs": per_set}
