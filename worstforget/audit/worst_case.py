"""The full worst-case audit: search, then compare the found set with random and heuristic sets."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.progress import NullProgress, Progress
from ..core.provenance import code_version, environment
from ..core.seeds import generator
from ..methods import METHODS, make_method
from ..scoring.metrics import mean_std
from ..search import SearchConfig, jaccard, overlap, search_worst_case, top_m
from ..search.problem import Problem
from ..setting import Setting
from .units import compare_on_set, summarize_runs

SCHEMA_VERSION = 1
METRICS = ("UA", "MIA", "RA", "TA", "RTE")


@dataclass
class AuditOptions:
    num_random: int = 5  # random forget sets of the same size
    eval_methods: list[str] = field(default_factory=list)  # further methods run on every set (transfer table)
    eval_params: dict[str, dict] = field(default_factory=dict)  # their hyper-parameters (e.g. tuned)
    seeds: int = 2  # unlearning seeds per set (method and Retrain)
    stability: bool = True  # search again with seed + 1 and report the Jaccard overlap
    heuristic: bool = True  # the m lowest-objective samples under the original model


def random_units(problem: Problem, count: int, seed: int) -> list[torch.Tensor]:
    n, m = problem.num_vars, problem.budget
    return [torch.randperm(n, generator=generator(seed, f"random-set-{r}"))[:m].sort().values for r in range(count)]


def heuristic_units(problem: Problem) -> torch.Tensor:
    """The cheap baseline: the m samples (classes) the original model fits best by the search objective."""
    values = problem.reduce(problem.values(problem.setting.original))
    return top_m(-values.cpu(), problem.budget)


def run_search_audit(setting: Setting, method: str, params: dict, cfg: SearchConfig, *, seed: int = 0,
                     options: AuditOptions | None = None, resume: bool = False, state_dir: str | Path | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Search the worst-case forget set for `method`, then evaluate it against random and heuristic sets.

    Returns a dict with `summary` (JSON-able) and `arrays` (for the HDF5 file).
    """
    options = options or AuditOptions()
    progress = progress or NullProgress()
    name = METHODS.canonical(method)
    instance = make_method(name, params).resolved(setting.spec.train.batch_size)
    problem = Problem(setting=setting, method=instance, config=cfg.validate())
    randoms = random_units(problem, options.num_random, seed)
    refs = {f"random_{r}": u for r, u in enumerate(randoms)}
    heuristic = heuristic_units(problem) if options.heuristic else None
    if heuristic is not None:
        refs["heuristic"] = heuristic
    found = search_worst_case(setting, name, params, cfg, seed=seed, state_dir=state_dir, resume=resume,
                              reference_sets=refs, progress=progress)
    stability = None
    if options.stability:
        again = search_worst_case(setting, name, params, cfg, seed=seed + 1, state_dir=state_dir, resume=resume,
                                  progress=progress)
        stability = {"seed_a": seed, "seed_b": seed + 1, "jaccard": jaccard(found.units, again.units),
                     "units_b": again.units}

    methods = [(name, params)] + [(METHODS.canonical(m), options.eval_params.get(METHODS.canonical(m), {}))
                                  for m in options.eval_methods if METHODS.canonical(m) not in (name, "retrain")]
    seeds = list(range(options.seeds))
    sets: dict[str, list[torch.Tensor]] = {"worst_case": [found.indices],
                                           "random": [problem.members(u) for u in randoms]}
    if heuristic is not None:
        sets["heuristic"] = [problem.members(heuristic)]
    results = {kind: [compare_on_set(setting, methods, s, seeds=seeds, progress=progress) for s in members]
               for kind, members in sets.items()}

    from ..training.original import training_seconds

    train_seconds = training_seconds(setting.spec, setting.data, records=setting.records)
    summary: dict[str, Any] = {
        "dataset": setting.data.name, "model": setting.spec.name, "method": name, "params": params,
        "solver": cfg.solver, "objective": cfg.objective, "granularity": cfg.granularity,
        "num_train": setting.data.num_train, "forget_size": int(len(found.indices)),
        "forget_units": int(problem.budget), "seed": seed, "unlearn_seeds": seeds,
        "search": {"seconds": found.seconds, "train_seconds": train_seconds,
                   "cost_vs_training": found.seconds / train_seconds if train_seconds > 0 else None,
                   "objective": found.history["objective"],
                   "overlap_with_initial": found.history["overlap_with_initial"],
                   "overlap_with_random": [found.history.get(f"overlap_with_random_{r}") for r in range(len(randoms))],
                   "overlap_with_heuristic": found.history.get("overlap_with_heuristic"),
                   "inner_steps": problem.inner_steps, "key": found.key},
        "stability": None if stability is None else {k: v for k, v in stability.items() if k != "units_b"},
        "heuristic_overlap": None if heuristic is None else overlap(found.units, heuristic),
        "config": {"search": cfg.to_dict(), "model": setting.spec.to_dict(), "audit": options.__dict__,
                   "method_params": instance.hyperparameters(),
                   "eval_params": {m: p for m, p in methods}},
        "code_version": code_version(), "environment": environment(), "setting": setting.describe(),
    }
    for kind, per_set in results.items():
        summary[kind] = _summarize(per_set, [m for m, _ in methods], pooled=kind == "random")
    arrays = {"found": found, "randoms": randoms, "heuristic": heuristic, "sets": sets, "results": results,
              "stability": stability, "methods": [m for m, _ in methods]}
    return {"summary": summary, "arrays": arrays}


def _summarize(per_set: list[dict], methods: list[str], *, pooled: bool) -> dict:
    """Means (and spreads) over seeds — and over sets for the random baseline."""
    out: dict[str, Any] = {"avg_gap": {}, "std": {}}
    for who in ["retrain", *methods]:
        runs = [r for result in per_set for r in result[who]]
        stats = summarize_runs(runs)
        out[who] = {k: stats[k] if pooled else stats[k]["mean"] for k in METRICS if k in stats}
        out["std"][who] = {k: stats[k]["std"] for k in METRICS if k in stats}
        out["std"][who]["MIA_resample_std"] = mean_std([r.get("MIA_std", 0.0) for r in runs])["mean"]
    for who in methods:
        gaps = mean_std([g for result in per_set for g in result["avg_gap"][who]])
        out["avg_gap"][who] = gaps if pooled else gaps["mean"]
        out["std"].setdefault("avg_gap", {})[who] = gaps["std"]
    return out


def write_outputs(out_dir: str | Path, audit: dict[str, Any]) -> dict[str, Path]:
    """Write result.h5, worst_case_indices.npy and summary.json atomically (each appears whole or not at all)."""
    import json

    import h5py

    from ..core.io import atomic_path, to_jsonable, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, arrays = audit["summary"], audit["arrays"]
    found = arrays["found"]
    paths = {"h5": out / "result.h5", "npy": out / "worst_case_indices.npy", "json": out / "summary.json"}
    with atomic_path(paths["h5"]) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["worstforget_version"] = summary["code_version"]
            f.attrs["config_json"] = json.dumps(to_jsonable(summary["config"]))
            f.attrs["environment_json"] = json.dumps(summary["environment"])
            f.attrs["seed"] = summary["seed"]
            f.attrs["unlearn_seeds"] = summary["unlearn_seeds"]
            for key in ("dataset", "model", "method", "solver", "objective", "granularity"):
                f.attrs[key] = summary[key]
            s = f.create_group("search")
            s.create_dataset("weights", data=found.weight_history.float().numpy(), compression="gzip", shuffle=True)
            s.create_dataset("final_weights", data=found.weights.float().numpy())
            for k, v in found.history.items():
                s.create_dataset(k, data=np.asarray(v, dtype=np.float64))
            s.attrs["seconds"] = found.seconds
            s.attrs["key"] = found.key
            fs = f.create_group("forget_sets")
            fs.create_dataset("worst_case", data=found.indices.numpy().astype(np.int64))
            fs.create_dataset("worst_case_units", data=found.units.numpy().astype(np.int64))
            fs.create_dataset("initial_units", data=found.initial_units.numpy().astype(np.int64))
            rnd = fs.create_group("random")
            for r, members in enumerate(arrays["sets"]["random"]):
                rnd.create_dataset(str(r), data=members.numpy().astype(np.int64))
            if arrays["heuristic"] is not None:
                fs.create_dataset("heuristic", data=arrays["sets"]["heuristic"][0].numpy().astype(np.int64))
            if arrays["stability"] is not None:
                fs.create_dataset("stability_units", data=arrays["stability"]["units_b"].numpy().astype(np.int64))
            mg = f.create_group("metrics")
            for kind, per_set in arrays["results"].items():
                for who in ["retrain", *arrays["methods"]]:
                    g = mg.require_group(f"{kind}/{who}")
                    for metric in (*METRICS, "MIA_std"):
                        # (num_sets, num_seeds)
                        g.create_dataset(metric, data=np.array([[r[metric] for r in res[who]] for res in per_set]))
                    if who != "retrain":
                        g.create_dataset("avg_gap", data=np.array([res["avg_gap"][who] for res in per_set]))
    with atomic_path(paths["npy"]) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, found.indices.numpy().astype(np.int64))
    write_json(paths["json"], summary)
    return paths
