"""Attack-based evaluation of named forget sets (worst case, random, heuristic) for several methods,
and its outputs: evaluation.json (scores with intervals) and evaluation.h5 (per-example values)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .attacks import evaluate_unlearning
from .audit import Setting, run_unit
from .metrics import mean_std
from .progress import Progress
from .utils import atomic_path, code_version, environment, write_json

SCALARS = ("forget_quality", "epsilon_score", "forget_quality_bounded", "epsilon_score_bounded", "lira_auc",
           "lira_tpr_at_1pct_fpr", "lira_tpr_at_0.1pct_fpr", "ks_pvalue", "ks_statistic", "tow", "loss_auc",
           "rte_fraction")


def _scalar(v: Any) -> float | None:
    if isinstance(v, dict) and "value" in v:
        return float(v["value"])
    if isinstance(v, (int, float, np.floating)):
        return float(v)
    return None


def evaluate_sets(setting: Setting, methods: list[tuple[str, dict]], sets: dict[str, list[torch.Tensor]], *,
                  num_models: int, attacks: list[str] | None, progress: Progress | None = None) -> dict:
    """Scores per set kind and method; several sets of one kind (random) are summarised as mean ± std."""
    scores: dict[str, Any] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for kind, members in sets.items():
        scores[kind] = {}
        for name, params in methods:
            results = []
            for i, forget in enumerate(members):
                retrain = run_unit(setting, "retrain", {}, forget, seed=0, progress=progress)["RTE"]
                res = evaluate_unlearning(setting, name, params, forget, num_models=num_models, attacks=attacks,
                                          retrain_seconds=retrain, progress=progress)
                results.append(res["scores"])
                for key, value in res["per_example"].items():
                    arrays[f"{kind}/{i}/{name}/{key}"] = np.asarray(value)
                arrays[f"{kind}/{i}/forget_set"] = forget.cpu().numpy()
            if len(results) == 1:
                scores[kind][name] = results[0]
            else:
                scores[kind][name] = {k: mean_std([_scalar(r.get(k)) for r in results if _scalar(r.get(k)) is not None])
                                      for k in SCALARS if any(_scalar(r.get(k)) is not None for r in results)}
                scores[kind][name]["per_set"] = results
    return {"scores": scores, "arrays": arrays}


def write_evaluation(out_dir: str | Path, evaluation: dict, *, setting: Setting, config: dict) -> dict[str, Path]:
    import h5py

    out = Path(out_dir)
    paths = {"json": out / "evaluation.json", "h5": out / "evaluation.h5"}
    out.mkdir(parents=True, exist_ok=True)
    def fill(group) -> None:
        for key, value in evaluation["arrays"].items():
            group.create_dataset(key, data=value, compression="gzip" if value.size > 1000 else None)

    with atomic_path(paths["h5"]) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = 1
            f.attrs["worstforget_version"] = code_version()
            fill(f)
    result = out / "result.h5"
    if result.is_file():  # a search result also carries the per-example scores, under /evaluation
        import shutil

        with atomic_path(result) as tmp:
            shutil.copyfile(result, tmp)
            with h5py.File(tmp, "a") as f:
                if "evaluation" in f:
                    del f["evaluation"]
                fill(f.create_group("evaluation"))
    write_json(paths["json"], {"scores": evaluation["scores"], "config": config, "setting": setting.describe(),
                               "code_version": code_version(), "environment": environment()})
    return paths
