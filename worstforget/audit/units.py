"""Units of work, and Retrain plus methods run over kinds of forget sets.

A unit — unlearn one forget set with one method and seed, then evaluate it — is a pure function of
(original model key, method and hyper-parameters, forget set, seed, evaluation settings); its record is
cached on disk under a hash of those, so audits can be split across processes or machines that share
the cache folder. `run_on_sets` (and `run_on_kinds` for several kinds of sets at once) runs Retrain and
every method on every set with every seed — all independent units, fanned out by an executor
(core/executor.py; serial by default) — and returns the per-run arrays the typed results aggregate;
`compare_methods` and `unlearn_on_set` are the `compare` and `unlearn` commands.
"""
from __future__ import annotations

import torch

from ..core.errors import WorstforgetError
from ..core.executor import Call, Executor, serial
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer, sync
from ..methods import UnlearningMethod, make_method
from ..scoring.metrics import evaluate
from ..forget_sets import forget_mask, forget_size, forget_weights, forgotten_classes, random_forget_set
from ..setting import Setting
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


def unit_task(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, seed: int, *,
              progress: Progress | None = None) -> dict:
    """`run_unit` as an executor task."""
    return run_unit(setting, method, params, forget_set, seed=seed, progress=progress)


def method_label(method: str, params: dict) -> str:
    """'finetune(epochs=2, lr=0.01)': a method with its hyper-parameters, for logs and errors."""
    return method + ("(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")


def unit_call(method: str, params: dict, forget_set: torch.Tensor, seed: int, where: str) -> Call:
    """The task of one unit; `where` names the forget set (e.g. 'random set 2 of 5')."""
    return Call(unit_task, (method, dict(params), forget_set.cpu(), seed),
                label=f"{method_label(method, params)} on {where} ({len(forget_set)} samples), seed {seed}")


def run_on_kinds(setting: Setting, methods: Methods, kinds: dict[str, list[torch.Tensor]], *, seeds: list[int],
                 progress: Progress | None = None, executor: Executor | None = None) -> dict[str, SetKind]:
    """Retrain and every method on every set of every kind with every seed: per kind, per-run arrays
    (num_sets, num_seeds). All units are independent: one executor map, Retrain's units first."""
    names = ["retrain", *[name for name, _ in methods if name != "retrain"]]
    slots, calls = [], []
    for who, params in [("retrain", {}), *[(n, p) for n, p in methods if n != "retrain"]]:
        for kind, sets in kinds.items():
            for i, forget in enumerate(sets):
                for j, s in enumerate(seeds):
                    slots.append((kind, who, i, j))
                    calls.append(unit_call(who, params, forget, s, f"{kind or 'the'} set {i + 1} of {len(sets)}"))
    results = (executor or serial()).map(setting, calls, progress=progress, description="units")
    records = {kind: {who: [[{} for _ in seeds] for _ in sets] for who in names} for kind, sets in kinds.items()}
    for (kind, who, i, j), record in zip(slots, results):
        records[kind][who][i][j] = record
    return {kind: SetKind(sets=[s.cpu().numpy() for s in sets], metrics=run_arrays(records[kind]))
            for kind, sets in kinds.items()}


def run_on_sets(setting: Setting, methods: Methods, sets: list[torch.Tensor], *, seeds: list[int],
                progress: Progress | None = None, executor: Executor | None = None) -> SetKind:
    """Retrain and every method on every set with every seed: per-run arrays (num_sets, num_seeds)."""
    return run_on_kinds(setting, methods, {"": sets}, seeds=seeds, progress=progress, executor=executor)[""]


def random_sets(setting: Setting, forget_ratio: float, num_sets: int, set_seed: int) -> list[torch.Tensor]:
    m = forget_size(setting.data.num_train, forget_ratio)
    return [random_forget_set(setting.data.num_train, m, set_seed + r) for r in range(num_sets)]


def compare_methods(setting: Setting, methods: Methods, *, forget_ratio: float, num_sets: int, seeds: list[int],
                    set_seed: int = 0, progress: Progress | None = None,
                    executor: Executor | None = None) -> Comparison:
    """Every method and Retrain on `num_sets` random forget sets (the `compare` command)."""
    sets = random_sets(setting, forget_ratio, num_sets, set_seed)
    block = run_on_kinds(setting, methods, {"random": sets}, seeds=seeds, progress=progress, executor=executor)["random"]
    header = {"command": "compare", **setting.header(), "methods": [n for n, _ in methods],
              "params": {n: p for n, p in methods}, "forget_ratio": forget_ratio, "forget_size": len(sets[0]),
              "set_seeds": [set_seed + r for r in range(num_sets)]}
    return Comparison(header=header, seeds=seeds, kinds={"random": block}, provenance=setting.provenance())


def unlearn_on_set(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, *, seeds: list[int],
                   source: dict | str, progress: Progress | None = None,
                   executor: Executor | None = None) -> Comparison:
    """One method and Retrain on one forget set over several seeds (the `unlearn` command)."""
    block = run_on_sets(setting, [(method, params)], [forget_set], seeds=seeds, progress=progress, executor=executor)
    header = {"command": "unlearn", **setting.header(), "method": method, "params": params,
              "forget_size": int(len(forget_set)), "forget_source": source}
    kind = "given" if isinstance(source, str) else "random"
    return Comparison(header=header, seeds=seeds, kinds={kind: block}, provenance=setting.provenance())


__all__ = ["RECORD_VERSION", "run_unit", "run_on_sets", "run_on_kinds", "compare_methods", "unlearn_on_set",
           "random_sets", "unit_key", "check_finite", "unit_task", "unit_call", "method_label"]
