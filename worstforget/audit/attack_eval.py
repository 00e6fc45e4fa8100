"""Attack evaluation: N unlearned and N retrained models per forget set, their per-example statistics,
the registered attacks on them, and the pipeline over named forget sets (worst case, random, heuristic).

Models are executor tasks (core/executor.py): the N models of a set are one task when their method can train
as a stack (Retrain, and the methods that declare `stackable`: vmapped stacks of at most `stack_capacity`
models), else one task per model; every model's statistics are cached on disk, under a lock, so drivers and
workers sharing the cache folder compute each once. A stacked model's `seconds` is the wall time of one run of
its method alone (`units.run_seconds`), not its share of a stack's, so RTE fractions compare a method with
Retrain as each would run."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.cache import COMPUTED, ArrayCache
from ..core.executor import Call, Executor, serial
from ..core.hashing import stable_hash
from ..core.progress import NullProgress, Progress
from ..core.runtime import Timer
from ..forget_sets import forget_mask, forget_weights, forgotten_classes
from ..methods import make_method
from ..methods.stacked import stackable
from ..scoring.attacks import ATTACKS, Stats
from ..setting import Setting
from ..training.ensemble import chunk_sizes, stack_capacity
from ..training.loop import predict_logits
from ..training.outputs import logit_scaled_confidence
from .result import AttackEvaluation
from .units import (
    Unit,
    UnitPlan,
    method_label,
    run_seconds,
    stack_recipe,
    stackable_method,
    train_stack,
    worth_stacking,
)

LOGGER = logging.getLogger("worstforget")

STATS_VERSION = 2  # 2: class-wise forget sets measure the test split on the remaining classes
RETRAIN_SEED_OFFSET = 100_000
CHALLENGE_TIME_RULE = 0.2  # the NeurIPS'23 challenge rejected unlearning slower than ~20% of retraining


def per_model_arrays(model: nn.Module, setting: Setting, forget_set: torch.Tensor) -> dict[str, np.ndarray]:
    """What the attacks need from one model: per-forget-example statistics and split accuracies."""
    data = setting.data
    logits = predict_logits(model, data.x_train).double()
    test_logits = predict_logits(model, data.x_test).double()
    forget = forget_mask(data, forget_set)
    correct = logits.argmax(1) == data.y_train
    y_f = data.y_train[forget]
    keep = ~torch.isin(data.y_test, forgotten_classes(data, forget))  # class-wise: remaining classes only
    test_logits, y_test = test_logits[keep], data.y_test[keep]
    return {
        "lsc": logit_scaled_confidence(logits[forget], y_f).cpu().numpy(),
        "loss": F.cross_entropy(logits[forget], y_f, reduction="none").cpu().numpy(),
        "test_loss": F.cross_entropy(test_logits, y_test, reduction="none").cpu().numpy(),
        "acc": np.array([correct[forget].float().mean().item() * 100, correct[~forget].float().mean().item() * 100,
                         (test_logits.argmax(1) == y_test).float().mean().item() * 100]),
    }


def _key(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, seed: int) -> str:
    return stable_hash({"v": STATS_VERSION, "original": setting.original_key, "spec": setting.spec.to_dict(),
                        "method": method, "params": params, "forget": forget_set, "seed": seed})


def model_statistics(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, seeds: list[int], *,
                     progress: Progress | None = None, executor: Executor | None = None) -> list[dict[str, np.ndarray]]:
    """Per-model arrays for `method` run with each seed (cached per model). Models missing from the cache train
    together as vmapped stacks when the method and the architecture allow it."""
    calls = statistics_calls(method, params, forget_set, seeds)
    return _flatten((executor or serial()).map(setting, calls, progress=progress, description=f"{method} models"))


def statistics_calls(method: str, params: dict, forget_set: torch.Tensor, seeds: list[int]) -> list[Call]:
    """The tasks behind `model_statistics`: one for all the seeds when the method can train as a stack (Retrain
    or a method declaring `stackable`; the task runs them one by one where the architecture cannot stack), else
    one per model. Each task returns a list of per-model arrays, in the order of its seeds."""
    forget_set, where = forget_set.cpu(), f"a set of {len(forget_set)} samples"
    instance = make_method(method, params)
    if instance.name == "retrain" or stackable(instance):
        kind = "retrained" if instance.name == "retrain" else method_label(method, params)
        return [Call(stacked_statistics_task, (method, dict(params), forget_set, list(seeds)),
                     label=f"{len(seeds)} {kind} models (seeds {seeds[0]}..{seeds[-1]}) on {where}")]
    return [Call(model_statistics_task, (method, dict(params), forget_set, s),
                 label=f"{method_label(method, params)} model on {where}, seed {s}") for s in seeds]


def _flatten(lists: list[list]) -> list:
    return [item for part in lists for item in part]


def _statistics_cache(setting: Setting) -> ArrayCache:
    return ArrayCache(setting.records.root, enabled=setting.records.enabled)


def _cached_or(cache: ArrayCache, key: str, compute) -> dict:
    """The cached statistics of `key`, else `compute()` under the entry's lock (a process that waited on the
    lock reads what the holder stored)."""
    found = cache.get("model-stats", key)
    if found is not None:
        return found
    with cache.lock("model-stats", key):
        found = cache.get("model-stats", key) if cache.path("model-stats", key).is_file() else None
        return found if found is not None else compute()


def model_statistics_task(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, seed: int, *,
                          progress: Progress | None = None) -> list[dict[str, np.ndarray]]:
    """One unlearned model's per-model arrays (cached)."""
    cache = _statistics_cache(setting)
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)
    key = _key(setting, instance.name, instance.hyperparameters(), forget_set, seed)

    def compute() -> dict:
        with Timer() as timer:
            model = instance.apply(setting.original, setting.data, forget_weights(setting.data, forget_set), seed=seed,
                                   spec=setting.spec)
        arrays = {**per_model_arrays(model, setting, forget_set), "seconds": np.array(timer.seconds)}
        _store(cache, key, arrays, timer.seconds)
        return arrays

    return [_cached_or(cache, key, compute)]


def stacked_statistics_task(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, seeds: list[int],
                            *, progress: Progress | None = None) -> list[dict[str, np.ndarray]]:
    """Per-model arrays of `method` for `seeds` (cached per model); the missing ones trained together as vmapped
    stacks, or one after another where the architecture cannot be stacked."""
    cache = _statistics_cache(setting)
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)
    keys = [_key(setting, instance.name, instance.hyperparameters(), forget_set, s) for s in seeds]
    found = {s: cache.get("model-stats", k) for s, k in zip(seeds, keys)}
    if all(v is not None for v in found.values()):
        return [found[s] for s in seeds]
    with cache.lock("model-stats", stable_hash(keys)):  # one lock for the stack: it trains its models together
        found = {s: (found[s] if found[s] is not None else cache.get("model-stats", k)) for s, k in zip(seeds, keys)}
        missing = [s for s in seeds if found[s] is None]
        w = forget_weights(setting.data, forget_set)
        trained = _stacked(setting, method, params, forget_set, missing, progress or NullProgress()) if missing else {}
        for s in missing:
            if s not in trained:  # not stackable here, or left the finite range in its stack: alone
                with Timer() as timer:
                    model = instance.apply(setting.original, setting.data, w, seed=s, spec=setting.spec)
                trained[s] = {**per_model_arrays(model, setting, forget_set), "seconds": np.array(timer.seconds)}
            _store(cache, keys[seeds.index(s)], trained[s], float(trained[s]["seconds"]))
            found[s] = trained[s]
    return [found[s] for s in seeds]


def _store(cache: ArrayCache, key: str, arrays: dict, seconds: float) -> None:
    cache.put("model-stats", key, arrays)
    COMPUTED["model-stats"] += 1
    LOGGER.info("computed model-stats %s in %.2fs", key, seconds)


def _stacked(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, seeds: list[int],
             progress: Progress) -> dict:
    """Models of `method` for `seeds` trained as stacks of at most `stack_capacity` models, as per-model arrays;
    {} where the method or the architecture cannot be stacked, or too few of a method's models are missing
    (`worth_stacking`; then they train one by one)."""
    instance = stackable_method(setting, method, params)
    if instance is None or not worth_stacking(instance, len(seeds)):
        return {}
    seconds = np.array(run_seconds(setting, instance, forget_set, progress=progress))  # one run alone
    out, start = {}, 0
    for size in chunk_sizes(len(seeds), stack_capacity(setting.spec, setting.data, stack_recipe(setting, instance))):
        part, start = seeds[start:start + size], start + size
        models, _ = train_stack(setting, instance, [(forget_set, s) for s in part], progress)
        out.update({s: {**per_model_arrays(m, setting, forget_set), "seconds": seconds}
                    for s, m in zip(part, models) if m is not None})
    return out


def stack(per_model: list[dict], key: str) -> np.ndarray:
    return np.stack([p[key] for p in per_model])


def evaluate_unlearning(setting: Setting, method: str, params: dict, forget_set: torch.Tensor, *,
                        num_models: int = 16, attacks: list[str] | None = None, seed: int = 0,
                        retrain_seconds: float | None = None, progress: Progress | None = None,
                        executor: Executor | None = None) -> dict:
    """Run the attacks on N unlearned vs N retrained models for one forget set.

    Returns JSON-able scores (with intervals where seeds allow) plus per-example arrays under
    `per_example`. RTE is reported as a fraction of one sequential Retrain and flagged against the
    challenge's 20% rule.
    """
    plan = _Plan(method, params, forget_set, num_models, seed)
    results = (executor or serial()).map(setting, plan.calls, progress=progress, description="attack models")
    return plan.scores(results, attacks, retrain_seconds)


class _Plan:
    """The model tasks of one (method, forget set) attack evaluation, and its scores from their results."""

    def __init__(self, method: str, params: dict, forget_set: torch.Tensor, num_models: int, seed: int):
        self.forget_set, self.num_models, self.seed = forget_set, num_models, seed
        seeds = list(range(seed, seed + num_models))
        # retrained references use other seeds, so `retrain` as the audited method is the calibration run
        # (retrain vs retrain): what a perfect unlearner scores at this N
        ref_seeds = [RETRAIN_SEED_OFFSET + s for s in seeds]
        unlearned = statistics_calls(method, params, forget_set, seeds)
        self.calls = unlearned + statistics_calls("retrain", {}, forget_set, ref_seeds)
        self.split = len(unlearned)

    def scores(self, results: list, attacks: list[str] | None, retrain_seconds: float | None) -> dict:
        per_u, per_r = _flatten(results[:self.split]), _flatten(results[self.split:])
        return attack_scores(per_u, per_r, self.forget_set, attacks=attacks, seed=self.seed,
                             num_models=self.num_models, retrain_seconds=retrain_seconds)


def attack_scores(per_u: list[dict], per_r: list[dict], forget_set: torch.Tensor, *, attacks: list[str] | None,
                  seed: int, num_models: int, retrain_seconds: float | None) -> dict:
    """The attacks on the per-model arrays of N unlearned (`per_u`) and N retrained (`per_r`) models."""
    attacks = [ATTACKS.canonical(a) for a in (attacks or ATTACKS.names())]
    acc = lambda per: {k: stack(per, "acc")[:, i] for i, k in enumerate(("forget", "retain", "test"))}  # noqa: E731
    stats = Stats(lsc_u=stack(per_u, "lsc"), lsc_r=stack(per_r, "lsc"), loss_u=stack(per_u, "loss"),
                  loss_r=stack(per_r, "loss"), test_loss_u=stack(per_u, "test_loss"),
                  test_loss_r=stack(per_r, "test_loss"), acc_u=acc(per_u), acc_r=acc(per_r),
                  seconds_u=stack(per_u, "seconds"), seconds_r=stack(per_r, "seconds"), seed=seed)
    out: dict = {"num_models": num_models, "attacks": attacks}
    per_example: dict[str, np.ndarray] = {"lsc_unlearned": stats.lsc_u, "lsc_retrained": stats.lsc_r}
    for name in attacks:
        for k, v in ATTACKS.get(name)(stats).items():  # keys as each attack declares them (lira_fixed_auc, ...)
            if isinstance(v, np.ndarray) and v.ndim >= 1 and k.endswith("per_example"):
                per_example[k] = v
            else:
                out[k] = v
    reference = retrain_seconds if retrain_seconds is not None else float(np.median(stats.seconds_r))
    fraction = float(np.median(stats.seconds_u)) / reference if reference > 0 else float("nan")
    out.update(rte_seconds=float(np.median(stats.seconds_u)), rte_fraction=fraction,
               exceeds_challenge_time=bool(fraction > CHALLENGE_TIME_RULE),
               accuracy_unlearned={k: float(v.mean()) for k, v in stats.acc_u.items()},
               accuracy_retrained={k: float(v.mean()) for k, v in stats.acc_r.items()})
    if "lira_per_example" in per_example:
        order = np.argsort(-per_example["lira_per_example"])[:10]
        out["most_exposed"] = forget_set.cpu().numpy()[order].tolist()
    return {"scores": out, "per_example": per_example}


def evaluate_sets(setting: Setting, methods: list[tuple[str, dict]], sets: dict[str, list[torch.Tensor]], *,
                  num_models: int, attacks: list[str] | None, config: dict | None = None,
                  progress: Progress | None = None, executor: Executor | None = None) -> AttackEvaluation:
    """Attack every method on every set of every kind (N unlearned vs N retrained models per set). Every
    model of every set is an independent task: one executor map (with each set's Retrain unit, the RTE
    reference), then the attacks in the driver."""
    executor = executor or serial()
    # each set's Retrain unit (seed 0), the RTE reference: stacked across sets like an audit's
    where = [(kind, i) for kind, members in sets.items() for i in range(len(members))]
    units = UnitPlan(setting, [Unit("retrain", {}, sets[kind][i], 0, f"{kind} set {i + 1} of {len(sets[kind])}")
                               for kind, i in where], parallelism=executor.parallelism)
    calls: list[Call] = list(units.calls)
    plans: dict[tuple[str, int, str], tuple[_Plan, int]] = {}  # (kind, set, method) → its plan, its first call
    for kind, members in sets.items():
        for i, forget in enumerate(members):
            for name, params in methods:
                plans[kind, i, name] = plan, first = _Plan(name, params, forget, num_models, 0), len(calls)
                calls.extend(plan.calls)
    results = executor.map(setting, calls, progress=progress, description="attack models")
    rte = dict(zip(where, units.records(results[:len(units.calls)])))
    scores: dict[str, dict[str, list[dict]]] = {}
    arrays: dict[str, np.ndarray] = {}
    for kind, members in sets.items():
        scores[kind] = {name: [] for name, _ in methods}
        for i, forget in enumerate(members):
            arrays[f"{kind}/{i}/forget_set"] = forget.cpu().numpy()
            for name, _ in methods:
                plan, first = plans[kind, i, name]
                res = plan.scores(results[first:first + len(plan.calls)], attacks, rte[kind, i]["RTE"])
                scores[kind][name].append(res["scores"])
                for key, value in res["per_example"].items():
                    arrays[f"{kind}/{i}/{name}/{key}"] = np.asarray(value)
    provenance = setting.provenance({"methods": {n: p for n, p in methods}, "attacks": attacks,
                                     "num_models": num_models, **(config or {})})
    return AttackEvaluation(config=provenance.pop("config"), scores=scores, arrays=arrays, provenance=provenance)
