"""Orchestration shared by the commands: resolve the setting, run and cache units of work.

A *unit* — unlearn one forget set with one method and seed, then evaluate it — is a pure function of
(original model key, method and hyper-parameters, forget set, seed); its record is cached on disk under
a hash of those, so audits can be split across processes or machines that share the cache folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import ModelCache, RecordCache
from .datasets import Dataset, dataset_info, load_dataset
from .errors import ConfigError, WorstforgetError
from .metrics import avg_gap, evaluate, forget_mask, forgotten_classes, mean_std, random_forget_set
from .original import ModelSpec, original_model
from .progress import NullProgress, Progress
from .train import TrainConfig
from .unlearn import make_method
from .utils import Timer, resolve_device, stable_hash

RECORD_VERSION = 1  # bump when the content of a cached unit record changes


@dataclass
class Setting:
    """A dataset, the original model trained on it, and the caches every unit uses."""

    data: Dataset
    spec: ModelSpec
    original: nn.Module
    original_key: str
    records: RecordCache
    mia_seed: int = 0
    mia_resamples: int = 1  # draws of the SVC attacker's training sample per evaluation

    def describe(self) -> dict:
        return {"dataset": self.data.describe(), "model": self.spec.to_dict(), "original_key": self.original_key}


def prepare_setting(*, dataset: str = "digits", model: str | None = None, norm: str | None = None,
                    data_dir: str | None = None, download: bool = False, device: str = "auto",
                    checkpoint: str | None = None, train_overrides: dict | None = None, seed: int = 0,
                    split_seed: int = 0, cache: bool = True, cache_dir: str | None = None,
                    progress: Progress | None = None) -> Setting:
    """Load the data and obtain the original model (cached training, or a user checkpoint)."""
    dev = resolve_device(device)
    if cache_dir:  # methods that keep their own partitioned originals (sisa, arcane) read the same folder
        os.environ["WORSTFORGET_CACHE"] = str(cache_dir)
    info = dataset_info(dataset)
    data = load_dataset(dataset, data_dir=data_dir, download=download, split_seed=split_seed, device=str(dev))
    train_cfg = TrainConfig.from_dict(info.default_train).with_updates(**(train_overrides or {})).validate()
    spec = ModelSpec(name=model or info.default_model, train=train_cfg, seed=seed, norm=norm)
    original, key = original_model(spec, data, checkpoint=checkpoint, progress=progress,
                                   cache=ModelCache(cache_dir, enabled=cache))
    return Setting(data=data, spec=spec, original=original, original_key=key,
                   records=RecordCache(cache_dir, enabled=cache))


def forget_weights(data: Dataset, forget_set: torch.Tensor) -> torch.Tensor:
    """0/1 forget weights of a forget set (the ordinary method on that set). (num_train,)"""
    return forget_mask(data, forget_set).float()


def check_forget_set(indices: Any, num_train: int, *, source: str = "forget set") -> torch.Tensor:
    """Validate user indices: a non-empty 1-D integer array of unique in-range training indices."""
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise WorstforgetError(f"{source} must be a 1-D array of training indices, got shape {arr.shape}")
    if arr.size == 0:
        raise WorstforgetError(f"{source} is empty; give at least one training index")
    if arr.dtype.kind not in "iu":
        raise WorstforgetError(f"{source} must hold integer indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_train:
        raise WorstforgetError(f"{source} has indices outside [0, {num_train}) (min {arr.min()}, max {arr.max()}); "
                               "indices address the training split")
    if len(np.unique(arr)) != len(arr):
        raise WorstforgetError(f"{source} contains duplicate indices; give each training index once")
    if len(arr) >= num_train:
        raise WorstforgetError(f"{source} covers the whole training split; leave something to retain")
    return torch.as_tensor(np.sort(arr), dtype=torch.long)


def load_forget_set(path: str | Path, num_train: int) -> torch.Tensor:
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WorstforgetError(f"cannot read forget set {path} ({exc}); save indices with numpy.save") from None
    return check_forget_set(arr, num_train, source=f"forget set {path.name}")


def forget_size(num_train: int, ratio: float) -> int:
    if not 0 < ratio < 1:
        raise ConfigError(f"--forget-ratio must be strictly between 0 and 1, got {ratio}")
    return max(1, int(round(ratio * num_train)))


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
        if hasattr(instance, "partitioned_original"):  # sisa/arcane: build their sharded original outside the timing
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


__all__ = ["Setting", "prepare_setting", "run_unit", "compare_on_set", "compare_methods", "summarize_runs",
           "check_forget_set", "load_forget_set", "forget_size", "forget_weights", "random_forget_set"]
