"""The worst-case audit: search the forget set a method finds hardest, then run the method and Retrain on it,
on baseline sets of the same size — random sets, and one-shot heuristics (lowest objective under the
original, most memorised, most exposed) — and, on request, attack every set."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.executor import Call, Executor, serial
from ..core.progress import Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed, generator
from ..forget_sets import BASELINES
from ..methods import METHODS, make_method
from ..scoring.attacks import ATTACKS
from ..search import SearchConfig, jaccard, overlap, search_worst_case, top_m
from ..search.objectives import uses_references
from ..search.problem import Problem
from ..search.solvers import SOLVERS, check_solver
from ..setting import Setting
from .result import SearchAudit
from .selection import SELECT_MODELS_MAX, SELECT_SEED, select_by_attack
from .units import method_label, run_on_kinds

SELECT_MODELS_MIN = 4  # U-LiRA's halvings need 2 shadows and 2 targets a side


@dataclass
class AuditOptions:
    num_random: int = 5  # random forget sets of the same size
    eval_methods: list[str] = field(default_factory=list)  # further methods run on every set (transfer table)
    eval_params: dict[str, dict] = field(default_factory=dict)  # their hyper-parameters (e.g. tuned)
    seeds: int = 2  # unlearning seeds per set (method and Retrain)
    stability: bool = True  # search again with seed + 1 and report the Jaccard overlap
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))  # one-shot sets (forget_sets)
    attacks: list[str] = field(default_factory=list)  # per-example attacks on every set (`evaluate`'s)
    num_models: int = 16  # unlearned and retrained models per set for the attacks
    # attack-validated selection among candidate sets with this many models a side (0: off); None: on when a
    # per-example attack judges the sets (lira, rmia), with as many models as that attack (`num_models`): its
    # ranking of sets changes with the model count (results/worst_case_matrix), so the choice uses the judge's
    select_models: int | None = None

    def validate(self) -> "AuditOptions":
        if self.num_random < 1 or self.seeds < 1:
            raise ConfigError("an audit needs at least one random set and one unlearning seed")
        if self.attacks and self.num_models < 2:
            raise ConfigError("--num-models must be at least 2 for attacks")
        if self.select_models is None:
            judged = {"lira", "rmia"} & set(self.attacks)
            self.select_models = min(max(SELECT_MODELS_MIN, self.num_models), SELECT_MODELS_MAX) if judged else 0
        if self.select_models and self.select_models < SELECT_MODELS_MIN:
            raise ConfigError(f"--select-models must be 0 (no selection) or at least 4 (U-LiRA needs 2 shadows "
                              f"and 2 targets a side), got {self.select_models}")
        if self.select_models > SELECT_MODELS_MAX or self.num_models > SELECT_SEED:
            # the seed blocks of the report (0…), the selection (50000…) and the composed set (60000…) must not meet
            raise ConfigError(f"--select-models must be at most {SELECT_MODELS_MAX} and --num-models at most "
                              f"{SELECT_SEED}, got {self.select_models} and {self.num_models}")
        self.eval_methods = [METHODS.canonical(m) for m in self.eval_methods]
        self.eval_params = {METHODS.canonical(m): p for m, p in self.eval_params.items()}
        for m in self.eval_methods:
            make_method(m, self.eval_params.get(m, {}))
        self.attacks = [ATTACKS.canonical(a) for a in self.attacks]
        self.baselines = [BASELINES.canonical(b) for b in self.baselines]
        return self


def random_units(problem: Problem, count: int, seed: int) -> list[torch.Tensor]:
    """`count` random sets of m units, each from its own seeded stream."""
    n, m = problem.num_vars, problem.budget
    return [torch.randperm(n, generator=generator(seed, f"random-set-{r}"))[:m].sort().values for r in range(count)]


DEFAULT_BASELINES = ("lowest_loss", "memorization", "exposure")


def baseline_units(problem: Problem, name: str, seed: int, progress: Any = None) -> torch.Tensor:
    """The m units (samples, or classes by their mean score) a one-shot baseline picks."""
    # the one-shot kinds of forget_sets, scored with the search's reference models and objective (seed unused)
    scores = BASELINES.get(name).score(problem.setting, num_models=problem.config.reference_models,
                                       objective=problem.values, progress=progress).to(torch.float64)
    return top_m(problem.reduce(scores.to(problem.data.device)).cpu(), problem.budget)


def audit_worst_case(setting: Setting, method: str, params: dict | None, cfg: SearchConfig, *, seed: int = 0,
                     options: AuditOptions | None = None, resume: bool = False, state_dir: str | Path | None = None,
                     progress: Progress | None = None, executor: Executor | None = None) -> SearchAudit:
    """Search the worst-case forget set for `method`, then evaluate it against random and heuristic sets.

    Every input is validated here, before any work. Returns the typed result; `.write(folder)` stores it.
    """
    options = (options or AuditOptions()).validate()
    cfg = cfg.validate()
    name = METHODS.canonical(method)
    params = dict(params or {})
    instance = make_method(name, params).resolved(setting.spec.train.batch_size)
    check_solver(cfg.solver, instance)
    problem = Problem(setting=setting, method=instance, config=cfg)
    randoms = random_units(problem, options.num_random, seed)
    baselines = {b: baseline_units(problem, b, seed, progress) for b in options.baselines}
    refs = {**{f"random_{r}": u for r, u in enumerate(randoms)}, **baselines}
    start = best_start(problem, baselines, seed) if cfg.init == "heuristic" else None
    init_units = baselines[start["baseline"]] if start else None
    executor = executor or serial()
    stability, again = None, None
    if uses_references(cfg.objective):  # shared by every search: trained (or read) once, here, not per worker
        setting.references(cfg.reference_models, progress=progress)
    if options.stability:  # the search and its seed+1 twin are independent: two tasks (outer steps stay in order)
        found, again = executor.map(setting, [
            Call(search_task, (name, params, cfg, seed, state_dir, resume, refs, init_units),
                 label=f"search for {method_label(name, params)}, seed {seed}"),
            Call(search_task, (name, params, cfg, seed + 1, state_dir, resume, refs, init_units),
                 label=f"stability search for {method_label(name, params)}, seed {seed + 1}")],
            progress=progress, description="searches")
        stability = {"seed_a": seed, "seed_b": seed + 1, "jaccard": jaccard(found.units, again.units)}
    else:
        found = search_task(setting, name, params, cfg, seed, state_dir, resume, refs, init_units, progress=progress)

    selection = None
    if options.select_models:
        found, selection = _select(setting, name, params, cfg, seed, problem, baselines, randoms, found, again,
                                   options, progress, executor)

    methods = [(name, params)] + [(m, options.eval_params.get(m, {})) for m in options.eval_methods
                                  if m not in (name, "retrain")]
    seeds = list(range(options.seeds))
    sets: dict[str, list[torch.Tensor]] = {"worst_case": [found.indices],
                                           **{b: [problem.members(u)] for b, u in baselines.items()},
                                           "random": [problem.members(u) for u in randoms]}
    kinds = run_on_kinds(setting, methods, sets, seeds=seeds, progress=progress, executor=executor)

    history = found.history
    trace = {"weights": found.weight_history.numpy(), "final_weights": found.weights.numpy(),
             "objective": np.asarray(history["objective"]), "step_size": np.asarray(history["step_size"]),
             "overlap_with_initial": np.asarray(history["overlap_with_initial"]),
             "overlap_with_random": np.asarray([_trace(history, f"overlap_with_random_{r}")
                                                for r in range(len(randoms))])}
    forget_sets = {"worst_case": found.indices.numpy(), "worst_case_units": found.units.numpy(),
                   "initial_units": found.initial_units.numpy(),
                   "random": [s.numpy() for s in sets["random"]]}
    for b, units in baselines.items():
        trace[f"overlap_with_{b}"] = _trace(history, f"overlap_with_{b}")
        forget_sets[b] = sets[b][0].numpy()
        forget_sets[f"{b}_units"] = units.numpy()
    if again is not None:
        forget_sets["stability_units"] = again.units.numpy()

    header = {"command": "search", **setting.header(), "method": name, "params": params, "solver": cfg.solver,
              "objective": cfg.objective, "granularity": cfg.granularity, "forget_size": int(len(found.indices)),
              "forget_units": int(problem.budget), "seed": seed}
    config = {"search": cfg.to_dict(), "audit": asdict(options), "method_params": instance.hyperparameters(),
              "eval_params": {m: p for m, p in methods}}
    audit = SearchAudit(header=header, seeds=seeds, kinds=kinds, provenance=setting.provenance(config),
                        search=trace, search_info={**_cost(setting, found, again, kinds, problem, options, selection),
                                                   **({"init": start} if start else {}),
                                                   **({"selection": selection} if selection else {})},
                        forget_sets=forget_sets, stability=stability,
                        baseline_overlap={b: overlap(found.units, u) for b, u in baselines.items()})
    if options.attacks:
        from .attack_eval import evaluate_sets

        audit.evaluation = evaluate_sets(setting, [(name, params)], sets, num_models=options.num_models,
                                         attacks=options.attacks, progress=progress, executor=executor)
    return audit


def _trace(history: dict, key: str) -> np.ndarray:
    """A per-step overlap of the search's history (NaN where a run kept none: one resumed from an older state)."""
    steps = len(history["objective"])
    return np.asarray(history.get(key, [float("nan")] * steps), dtype=np.float64)


def search_task(setting: Setting, name: str, params: dict, cfg: SearchConfig, seed: int, state_dir: str | Path | None,
                resume: bool, refs: dict[str, torch.Tensor] | None, init_units: torch.Tensor | None = None, *,
                progress: Progress | None = None):
    """`search_worst_case` as an executor task (one computed search in the run log's line for it)."""
    from ..core.cache import COMPUTED

    found = search_worst_case(setting, name, params, cfg, seed=seed, state_dir=state_dir, resume=resume,
                              reference_sets=refs, init_units=init_units, progress=progress)
    COMPUTED["search"] += 1
    return found


def best_start(problem: Problem, baselines: dict[str, torch.Tensor], seed: int) -> dict:
    """`--init heuristic`: the baseline set whose binary weights give the lowest search objective f(w) (one
    lower-level solve each, with the first outer step's seed), so the search starts where it would rather be."""
    if not baselines:
        raise ConfigError("--init heuristic needs at least one baseline (--baselines)")
    solve = SOLVERS.get(problem.config.solver)
    values = {}
    for b, units in baselines.items():
        w = torch.zeros(problem.num_vars, dtype=torch.float64)
        w[units] = 1.0
        values[b] = float(solve(problem, w.to(problem.data.device), derive_seed(seed, "outer-step", 0)).value)
    best = min(values, key=values.get)
    return {"baseline": best, "objective": values}


# Objectives whose searches compete in attack-validated selection beside the search's own: each is a hypothesis
# of what separates the method from Retrain (logit exposure, the probability gap, a fit the method leaves intact).
PORTFOLIO = ("exposure", "confidence", "loss")


def _select(setting: Setting, name: str, params: dict, cfg: SearchConfig, seed: int, problem: Problem,
            baselines: dict[str, torch.Tensor], randoms: list[torch.Tensor], found, again, options: AuditOptions,
            progress, executor):
    """Attack-validated selection (audit/selection.py) among the search and its stability twin, a search with each
    other PORTFOLIO objective, and the baseline sets. Returns the search's result carrying the chosen set (its
    trace stays the search's) and the selection's record."""
    refs = {**{f"random_{r}": u for r, u in enumerate(randoms)}, **baselines}
    runs = {"search": found, **({"stability": again} if again is not None else {})}
    names = [f"objective_{o}" for o in PORTFOLIO if o != cfg.objective]
    calls = [Call(search_task, (name, params, replace(cfg, objective=n[len("objective_"):]), seed, None, False, refs,
                                None), label=f"search for {method_label(name, params)} by the {n[10:]} objective")
             for n in names]
    with Timer() as timer:
        if any(uses_references(n[len("objective_"):]) for n in names):  # once, here, not in every worker
            setting.references(cfg.reference_models, progress=progress)
        if calls:
            runs.update(zip(names, executor.map(setting, calls, progress=progress, description="candidate searches")))
    candidates = {**{k: r.indices for k, r in runs.items()}, **{b: problem.members(u) for b, u in baselines.items()}}
    record = select_by_attack(setting, name, params, candidates, num_models=options.select_models,
                              compose_sets=not problem.by_class, progress=progress, executor=executor)
    record["search_seconds"] = timer.seconds
    record["overlap_with_search"] = {k: overlap(v, found.indices) for k, v in candidates.items()}
    pick = record["chosen"]
    if pick in runs:
        return runs[pick], record
    # a baseline or the composed set (sample-wise: its units are training indices): the search's trace, that set
    units = (torch.tensor(record["composed"], dtype=torch.long) if pick == "composed"
             else baselines[pick].cpu().sort().values)
    return replace(found, units=units, indices=problem.members(units)), record


def _cost(setting: Setting, found, again, kinds: dict, problem: Problem, options: AuditOptions,
          selection: dict | None = None) -> dict:
    """What the search cost against training the original — or, when that time is unknown (a checkpoint),
    against one Retrain on a random set (its median over runs): the search, its stability twin and the
    reference models behind the objective and the baselines (trained by this run, or shared from the cache)."""
    from ..training.reference import TRAINED_HERE, reference_key

    if setting.train_seconds:
        reference, label = setting.train_seconds, "training the original"
    else:
        reference, label = float(np.median(kinds["random"].metrics["retrain"]["RTE"])), "one Retrain"
    ratio = (lambda s: s / reference if reference > 0 and s is not None else None)  # noqa: E731
    cost = {"seconds": found.seconds, "train_seconds": setting.train_seconds, "cost_reference": label,
            "cost_ratio": ratio(found.seconds), "inner_steps": problem.inner_steps, "key": found.key,
            "stability_seconds": again.seconds if again is not None else None}
    k = problem.config.reference_models
    if uses_references(problem.config.objective) or {"memorization", "exposure"} & set(options.baselines):
        stats = setting.references(k)
        trained = reference_key(setting.spec, setting.data, num_models=k, seed=0) in TRAINED_HERE
        cost["reference_models"] = {"num_models": k, "seconds": stats.seconds,
                                    "source": "trained" if trained else "cache", "cost_ratio": ratio(stats.seconds)}
    parts = [found.seconds, cost["stability_seconds"] or 0.0]
    if "reference_models" in cost and cost["reference_models"]["source"] == "trained":
        parts.append(cost["reference_models"]["seconds"] or 0.0)
    if selection:
        cost["selection_seconds"] = selection["search_seconds"] + selection["seconds"]
        parts.append(cost["selection_seconds"])
    cost["total_seconds"] = float(sum(parts))
    cost["total_cost_ratio"] = ratio(cost["total_seconds"])
    return cost


__all__ = ["AuditOptions", "BASELINES", "audit_worst_case", "baseline_units", "random_units"]
