"""Units of work, and Retrain plus methods run over kinds of forget sets.

A unit — unlearn one forget set with one method and seed, then evaluate it — is a pure function of
(original model key, method and hyper-parameters, forget set, seed, evaluation settings); its record is
cached on disk under a hash of those, so audits can be split across processes or machines that share
the cache folder. `run_units` runs a list of units: the units of one stackable recipe (Retrain, or a method
that declares `stackable`) and one forget-set size that are not cached yet train together (`worth_stacking`:
Retrain's always, a method's from MIN_STACKED_RUNS), as vmapped stacks of at most `stack_capacity` models
(training/ensemble.py for Retrain, methods/stacked.py for the methods), one executor task per stack, each record
still cached under its own unit key; every other unit is a task of its own.
`run_on_sets` (and `run_on_kinds` for several kinds of sets at once) runs Retrain and every method on every set
with every seed and returns the per-run arrays the typed results aggregate; `compare_methods` and
`unlearn_on_set` are the `compare` and `unlearn` commands.

Stacked units. A model trained in a stack is bit for bit the model trained in any other stack (the stack's rows
never mix), so records do not depend on how units were chunked — the executor, its workers or free memory. They
match the method's own `apply` (the sequential loop) up to float rounding: the same initialisation, batches,
augmentation, schedule (and, for Retrain, validation selection). A method's unit computed one by one, because
fewer than MIN_STACKED_RUNS were missing from the cache, therefore differs from its stacked twin in its last
bits; the plan decides that alike on every executor. Timing: a stack's
wall time is not one run's, so a stacked record's RTE is the wall time of one run alone (`run_seconds`: the
method's `apply` on a set of the same size, the loop every unstacked unit's RTE is measured with), measured once
per setting, method and size and cached; `RTE_stack` (models trained together) and `RTE_stack_seconds` (their
wall time) say what the audit spent.
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..core.cache import file_lock
from ..core.errors import ConfigError, WorstforgetError
from ..core.executor import Call, Executor, serial
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer, sync
from ..forget_sets import forget_mask, forget_size, forget_weights, forgotten_classes, random_forget_set
from ..methods import UnlearningMethod, make_method
from ..methods.base import STREAMS
from ..methods.exact import Retrain
from ..methods.stacked import run_stacked, stackable
from ..scoring.metrics import evaluate
from ..setting import Setting
from ..training.accel import current_accel
from ..training.ensemble import check_stackable, chunk_sizes, fit_stacked, has_convolutions, stack_capacity
from ..training.loop import TrainConfig
from ..training.optim import preload_torch_optim
from .result import Comparison, SetKind, run_arrays

RECORD_VERSION = 3  # 2: method reports (retrained fraction...) in the record; 3: MIA_logit, saturated share
Methods = list[tuple[str, dict]]


def unit_key(setting: Setting, instance: UnlearningMethod, forget_set: torch.Tensor, seed: int) -> str:
    fields = {"v": RECORD_VERSION, "original": setting.original_key, "method": method_identity(instance),
              "spec": setting.spec.to_dict(), "forget": forget_set, "seed": seed, "mia_seed": setting.mia_seed,
              "mia_resamples": setting.mia_resamples}
    if len(forgotten_classes(setting.data, forget_mask(setting.data, forget_set))):
        # class-wise forgetting: TA and the attacker's non-members on the remaining classes
        fields["class_protocol"] = 1
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


# --- units, and Retrain units stacked ------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Unit:
    """One run: `method` with `params` on `forget_set` with `seed`; `where` names the set (e.g. 'random set 2
    of 5') in progress lines, logs and errors."""

    method: str
    params: dict
    forget_set: torch.Tensor
    seed: int = 0
    where: str = "a set"


def cached_unit(setting: Setting, instance: UnlearningMethod, forget_set: torch.Tensor, seed: int) -> dict | None:
    """The unit's cached record, or None (also when caching is off, or the entry is unusable: storing the
    recomputed record warns about it, once)."""
    return setting.records.get("unit", unit_key(setting, instance, forget_set, seed))


# A method's runs train as a stack only when at least this many of one size are to be computed: a smaller stack,
# with the one run alone that times its RTE, is no faster on a CPU than its runs one by one (benchmarks/
# bench_stack_size.py in results/audit_cost.md: 8 is where finetune, NegGrad+ and a Fashion-MNIST MLP all gain).
# The plan decides from the runs missing from the cache, so every executor decides alike. Retrain always stacks:
# its RTE comes from the original's training time, and its stack has the MLP's batched-product path.
MIN_STACKED_RUNS = 8


def worth_stacking(instance: UnlearningMethod, count: int) -> bool:
    """Whether `count` runs of `instance` (from `stackable_method`) still to compute go into a stack: any number
    of Retrain's, at least MIN_STACKED_RUNS of a method's."""
    return isinstance(instance, Retrain) or count >= MIN_STACKED_RUNS


def stackable_method(setting: Setting, method: str, params: dict) -> UnlearningMethod | None:
    """The resolved method instance when runs of `method` can train as one stack — the built-in Retrain
    (training/ensemble.py) or a method that declares it (methods/stacked.py) — on an architecture a stack can
    train (no dropout; convolutions on a GPU only); else None (its units then run one by one)."""
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)
    if not (type(instance) is Retrain or stackable(instance)):  # a plug-in may override the name
        return None
    if setting.data.device.type == "cpu" and has_convolutions(setting.spec, setting.data):
        # on a CPU a vmapped convolution (a grouped one) is slower than the runs' own, one after another
        # (results/audit_cost.md: finetune and Retrain on the digits CNN), so conv nets stack on a GPU only
        return None
    try:
        check_stackable(setting.spec, setting.data)
    except ConfigError:
        return None
    return instance


def stack_recipe(setting: Setting, instance: UnlearningMethod) -> TrainConfig:
    """The recipe a stack's memory is sized by: Retrain's own; for a method, batches of its size from each stream
    one step may read (`stack_capacity` counts one batch's activations per model)."""
    if isinstance(instance, Retrain):
        return instance.recipe(setting.spec)
    return setting.spec.train.with_updates(batch_size=instance.batch_size * len(STREAMS))


def train_stack(setting: Setting, instance: UnlearningMethod, runs: list[tuple[torch.Tensor, int]],
                progress: Progress | None = None) -> tuple[list[torch.nn.Module | None], float]:
    """Run `instance` (from `stackable_method`) on each (forget set, seed) of `runs` as one stack: the eval-mode
    models (None for a run that did not stay finite: run it alone for its own error) and the stack's wall time."""
    data = setting.data
    weights = torch.stack([forget_weights(data, f) for f, _ in runs])
    with Timer() as timer:
        if isinstance(instance, Retrain):
            pairs = [Retrain.seeds(s) for _, s in runs]  # (init, order) per run, as Retrain.apply draws them
            stack = fit_stacked(setting.spec, data, seeds=[order for _, order in pairs],
                                init_seeds=[init for init, _ in pairs], sample_weights=1.0 - weights,
                                cfg=instance.recipe(setting.spec), progress=progress,
                                description=f"retrain ×{len(runs)}", accel=current_accel())
            finite = [True] * len(runs)  # fit_stacked selects on validation; `check_finite` reads the result
        else:
            stack, finite = run_stacked(instance, setting.original, data, weights, [s for _, s in runs],
                                        spec=setting.spec, progress=progress)
        sync(data.device)
    return [m if ok else None for m, ok in zip(stack.models(), finite)], timer.seconds


class UnitPlan:
    """The executor tasks behind a list of units, and the units' records from the tasks' results.

    Units of a stackable method (`stackable_method`) are grouped by method and forget-set size. Where at least
    MIN_STACKED_RUNS of a method's group (any number of Retrain's) are not cached yet, they are split into stacks
    (`chunk_sizes`: within the driver's `stack_capacity`, and at least one per worker while units last) and the
    group's cached units are shared out among those stacks, so every unit still has a task that says whether it
    computed or read it. Each stack is one `stack_task`, which trains only the units missing from the cache when
    it runs. Every other unit is one `unit_task`. Stacks come first."""

    def __init__(self, setting: Setting, units: list[Unit], *, parallelism: int = 1):
        self.units = list(units)
        self.calls: list[Call] = []
        self.returns: list[list[int]] = []  # per call: the units whose records it returns, in its order
        groups: dict[tuple, tuple[UnlearningMethod, list[int], list[int]]] = {}  # → (method, missing, cached)
        single: list[int] = []
        for i, unit in enumerate(self.units):
            instance = stackable_method(setting, unit.method, unit.params)
            if instance is None:
                single.append(i)
                continue
            group = (json.dumps(method_identity(instance), sort_keys=True, default=str), len(unit.forget_set))
            _, missing, cached = groups.setdefault(group, (instance, [], []))
            (missing if cached_unit(setting, instance, unit.forget_set, unit.seed) is None else cached).append(i)
        for instance, missing, cached in groups.values():
            if not worth_stacking(instance, len(missing)):
                single.extend(missing + cached)  # too few to gain from a stack: one by one
                continue
            capacity = stack_capacity(setting.spec, setting.data, stack_recipe(setting, instance))
            stacks, start = [], 0
            for size in chunk_sizes(len(missing), capacity, parallelism) or [0]:
                stacks.append(missing[start:start + size])
                start += size
            for n, i in enumerate(cached):  # reading a record costs nothing: anywhere will do
                stacks[n % len(stacks)].append(i)
            for members in stacks:
                members.sort()
                self.calls.append(stack_call([self.units[i] for i in members]))
                self.returns.append(members)
        for i in sorted(single):
            unit = self.units[i]
            self.calls.append(unit_call(unit.method, unit.params, unit.forget_set, unit.seed, unit.where))
            self.returns.append([i])

    def records(self, results: list) -> list[dict]:
        """Each unit's record, in the order of the units, from the results of `calls`."""
        out: list[dict | None] = [None] * len(self.units)
        for members, result in zip(self.returns, results):
            for i, record in zip(members, result if isinstance(result, list) else [result]):
                out[i] = record
        return out  # type: ignore[return-value]


def run_units(setting: Setting, units: list[Unit], *, progress: Progress | None = None,
              executor: Executor | None = None, description: str = "units") -> list[dict]:
    """The records of `units`, in their order (see `UnitPlan`): one executor map."""
    executor = executor or serial()
    plan = UnitPlan(setting, units, parallelism=executor.parallelism)
    return plan.records(executor.map(setting, plan.calls, progress=progress, description=description))


def stack_call(units: list[Unit]) -> Call:
    """The task training the units of one stack (one stackable method, one forget-set size)."""
    first, last = units[0], units[-1]
    label = method_label(first.method, first.params)
    if len(units) == 1:
        label += f" on {first.where} ({len(first.forget_set)} samples), seed {first.seed}"
    else:
        seeds = ", ".join(str(s) for s in sorted({u.seed for u in units}))
        label += (f" ×{len(units)} stacked, on {first.where} … {last.where} ({len(first.forget_set)} samples), "
                  f"seeds {seeds}")
    return Call(stack_task, (first.method, dict(first.params), [(u.forget_set.cpu(), u.seed) for u in units]),
                label=label)


def stack_task(setting: Setting, method: str, params: dict, runs: list[tuple[torch.Tensor, int]], *,
               progress: Progress | None = None) -> list[dict]:
    """Records of `method` (with `params`) on each (forget set, seed) of `runs`, whose forget sets have one size.
    Cached ones are read; the others train as stacks of at most this machine's `stack_capacity` models under one
    lock, are evaluated one by one and cached under their own unit keys."""
    instance = stackable_method(setting, method, params)
    if instance is None:  # not expected from a plan: run them one by one
        return [run_unit(setting, method, params, f, seed=s, progress=progress) for f, s in runs]
    keys = [unit_key(setting, instance, f, s) for f, s in runs]
    records = [cached_unit(setting, instance, f, s) for f, s in runs]
    missing = [i for i, r in enumerate(records) if r is None]
    if not missing:
        return records  # type: ignore[return-value]
    lock = (file_lock(setting.records.path("unit-stack", stable_hash([keys[i] for i in missing])).with_suffix(".lock"))
            if setting.records.enabled else nullcontext())
    with lock:  # two drivers with the same plan train a stack once; the second reads its records
        for i in missing:
            records[i] = cached_unit(setting, instance, *runs[i])
        missing = [i for i, r in enumerate(records) if r is None]
        if not missing:
            return records  # type: ignore[return-value]
        alone = run_seconds(setting, instance, runs[missing[0]][0], progress=progress)
        start = 0
        for size in chunk_sizes(len(missing), stack_capacity(setting.spec, setting.data,
                                                             stack_recipe(setting, instance))):
            part, start = missing[start:start + size], start + size
            models, seconds = train_stack(setting, instance, [runs[i] for i in part], progress)
            for i, model in zip(part, models):
                forget, seed = runs[i]
                if model is None:  # left the finite range in the stack: alone, it fails with the loop's own error
                    records[i] = run_unit(setting, method, params, forget, seed=seed, progress=progress)
                    continue
                check_finite(model, instance.name, seed)
                metrics = evaluate(model, setting.data, forget, mia_seed=setting.mia_seed,
                                   mia_resamples=setting.mia_resamples)
                record = {**metrics, "RTE": alone, "RTE_stack": float(len(part)), "RTE_stack_seconds": seconds}
                records[i] = setting.records.get_or_compute("unit", keys[i], lambda r=record: r)
    return records  # type: ignore[return-value]


RUN_TIME_VERSION = 1


def run_seconds(setting: Setting, instance: UnlearningMethod, forget_set: torch.Tensor, *,
                progress: Progress | None = None) -> float:
    """Wall time of one run of `instance` on its own on a forget set of `forget_set`'s size: the RTE of stacked
    units. Retrain with the original's recipe, its training time known: that time scaled to the retain set's
    steps. Otherwise one `apply` (seed 0) timed once per setting, method, forget-set size and device type, and
    cached (the model is discarded)."""
    data = setting.data
    if isinstance(instance, Retrain) and setting.train_seconds and instance.recipe(setting.spec) == setting.spec.train:
        # the original was trained by this recipe and loop and timed once, on the whole split: Retrain runs the
        # same steps on the retain samples, so its time is that one scaled by the steps (no extra training)
        def steps(n: int) -> int:
            return math.ceil(n / setting.spec.train.batch_size)
        return setting.train_seconds * steps(data.num_train - len(forget_set)) / steps(data.num_train)
    key = stable_hash({"v": RUN_TIME_VERSION, "original": setting.original_key, "spec": setting.spec.to_dict(),
                       "method": method_identity(instance), "forget": len(forget_set), "device": data.device.type})

    def compute() -> dict:
        # the first torch optimiser a process builds imports torch._dynamo: not the method's time, and every
        # record of the stack shares this one
        preload_torch_optim(instance.optimizer, data.device)
        with Timer() as timer:
            instance.apply(setting.original, data, forget_weights(data, forget_set), seed=0, spec=setting.spec,
                           progress=progress)
            sync(data.device)
        return {"seconds": timer.seconds}

    def problem(record) -> str | None:
        ok = isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)) and record["seconds"] >= 0
        return None if ok else "lacks a non-negative 'seconds'"

    return float(setting.records.get_or_compute("run-time", key, compute, validate=problem)["seconds"])


# --- Retrain and methods over kinds of forget sets -------------------------------------------------------

def run_on_kinds(setting: Setting, methods: Methods, kinds: dict[str, list[torch.Tensor]], *, seeds: list[int],
                 progress: Progress | None = None, executor: Executor | None = None) -> dict[str, SetKind]:
    """Retrain and every method on every set of every kind with every seed: per kind, per-run arrays
    (num_sets, num_seeds). All units are independent: one executor map (`run_units`), Retrain's first."""
    names = ["retrain", *[name for name, _ in methods if name != "retrain"]]
    slots, units = [], []
    for who, params in [("retrain", {}), *[(n, p) for n, p in methods if n != "retrain"]]:
        for kind, sets in kinds.items():
            for i, forget in enumerate(sets):
                for j, s in enumerate(seeds):
                    slots.append((kind, who, i, j))
                    units.append(Unit(who, dict(params), forget, s, f"{kind or 'the'} set {i + 1} of {len(sets)}"))
    results = run_units(setting, units, progress=progress, executor=executor)
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
    block = run_on_kinds(setting, methods, {"random": sets}, seeds=seeds, progress=progress,
                         executor=executor)["random"]
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


__all__ = ["RECORD_VERSION", "run_unit", "run_units", "run_on_sets", "run_on_kinds", "compare_methods",
           "unlearn_on_set", "random_sets", "unit_key", "check_finite", "unit_task", "unit_call", "method_label",
           "Unit", "UnitPlan", "stack_task", "run_seconds", "stackable_method", "stack_recipe", "train_stack",
           "cached_unit", "MIN_STACKED_RUNS", "worth_stacking"]
