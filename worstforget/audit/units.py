"""Units of work, and Retrain plus methods run over kinds of forget sets.

A unit — unlearn one forget set with one method and seed, then evaluate it — is a pure function of
(original model key, method and hyper-parameters, forget set, seed, evaluation settings); its record is
cached on disk under a hash of those, so audits can be split across processes or machines that share
the cache folder. `run_on_sets` runs Retrain and every method on every set with every seed and returns
the per-run arrays the typed results aggregate; `compare_methods` and `unlearn_on_set` are the
`compare` and `unlearn` commands.
"""
from __future__ import annotations

import torch

from ..core.errors import WorstforgetError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer, sync
from ..methods import UnlearningMethod, make_method
from ..scoring.metrics import evaluate
from ..setting import Setting, forget_mask, forget_size, forget_weights, forgotten_classes, random_forget_set
from .result import Comparison, SetKind, run_arrays

RECORD_VERSION = 3  # 2: method reports (retrained fraction...) in the record; 3: MIA_logit, saturated share
Methods = list[tuple[str, dict]]


def unit_key(setting: Setting, instance: UnlearningMethod, forget_set: torch.Tensor, seed: int) -> str:
    fields = {"v": RECORD_VERSION, "original": setting.original_key, "method": method_identity(instance),
              "spec": setting.spec.to_dict(), "forget": forget_set, "seed": seed, "mia_seed": setting.mia_seed,
              "mia_resamples": setting.mia_resamples}
    if len(forgotten_classes(setting.data, forget_mask(setting.data, forget_set))):
        fields["class_protocol"] = 1  # class-wise forgetting: TA and the attacker's non-members on the remaining classes
    return stable_hash(fields)


def method_identity(instance: UnlearningMethod) -> dict:
    """What determines a method's behaviour: its name, hyper-parameters and, for plug-ins, their code."""
    return {"name": instance.name, "params": instance.hyperparameters(), "code": instance.code_key()}


def run_unit(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, *, seed: int,
             progress: Progress | None = None) -> dict:
    """Unlearn `forget_set` with `method` and evaluate: {UA, RA, TA, MIA, MIA_std, RTE, + the method's
    report numbers} (cached). RTE times `apply` alone; a partitioned original is built before the timer."""
    data = setting.data
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)

    def compute() -> dict:
        if instance.partitioned:
            instance.partitioned_original(data, setting.spec, progress=progress)
        with Timer() as timer:
            model = instance.apply(setting.original, data, forget_weights(data, forget_set), seed=seed,
                                   spec=setting.spec, progress=progress)
            sync(data.device)
        check_finite(model, instance.name, seed)
        metrics = evaluate(model, data, forget_set, mia_seed=setting.mia_seed, mia_resamples=setting.mia_resamples)
        report = getattr(instance, "last_report", {}) or {}
        return {**metrics, "RTE": timer.seconds, **{k: float(report[k]) for k in instance.report_keys if k in report}}

    return setting.records.get_or_compute("unit", unit_key(setting, instance, forget_set, seed), compute)


def check_finite(model: torch.nn.Module, method: str, seed: int) -> None:
    """A run whose weights hold NaN or ±inf diverged: say so in one line instead of scoring garbage."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise WorstforgetError(f"{method} diverged (seed {seed}): parameter {name} holds NaN or inf after "
                                   "unlearning; lower its learning rate (--param lr=...)")


def run_on_sets(setting: Setting, methods: Methods, sets: list[torch.Tensor], *, seeds: list[int],
                progress: Progress | None = None) -> SetKind:
    """Retrain and every method on every set with every seed: per-run arrays (num_sets, num_seeds)."""
    records: dict[str, list[list[dict]]] = {"retrain": []}
    for forget in sets:
        records["retrain"].append([run_unit(setting, "retrain", {}, forget, seed=s, progress=progress) for s in seeds])
    for name, params in methods:
        records[name] = [[run_unit(setting, name, params, forget, seed=s, progress=progress) for s in seeds]
                         for forget in sets]
    return SetKind(sets=[s.cpu().numpy() for s in sets], metrics=run_arrays(records))


def random_sets(setting: Setting, forget_ratio: float, num_sets: int, set_seed: int) -> list[torch.Tensor]:
    m = forget_size(setting.data.num_train, forget_ratio)
    return [random_forget_set(setting.data.num_train, m, set_seed + r) for r in range(num_sets)]


def compare_methods(setting: Setting, methods: Methods, *, forget_ratio: float, num_sets: int, seeds: list[int],
                    set_seed: int = 0, progress: Progress | None = None) -> Comparison:
    """Every method and Retrain on `num_sets` random forget sets (the `compare` command)."""
    sets = random_sets(setting, forget_ratio, num_sets, set_seed)
    block = run_on_sets(setting, methods, sets, seeds=seeds, progress=progress)
    header = {"command": "compare", **setting.header(), "methods": [n for n, _ in methods],
              "params": {n: p for n, p in methods}, "forget_ratio": forget_ratio, "forget_size": len(sets[0]),
              "set_seeds": [set_seed + r for r in range(num_sets)]}
    return Comparison(header=header, seeds=seeds, kinds={"random": block}, provenance=setting.provenance())


def unlearn_on_set(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, *, seeds: list[int],
                   source: dict | str, progress: Progress | None = None) -> Comparison:
    """One method and Retrain on one forget set over several seeds (the `unlearn` command)."""
    block = run_on_sets(setting, [(method, params)], [forget_set], seeds=seeds, progress=progress)
    header = {"command": "unlearn", **setting.header(), "method": method, "params": params,
              "forget_size": int(len(forget_set)), "forget_source": source}
    kind = "given" if isinstance(source, str) else "random"
    return Comparison(header=header, seeds=seeds, kinds={kind: block}, provenance=setting.provenance())


__all__ = ["RECORD_VERSION", "run_unit", "run_on_sets", "compare_methods", "unlearn_on_set", "random_sets",
           "unit_key", "check_finite"]
