"""The upper level: projected gradient steps on the forget weights, with checkpoints and resume.

Every outer step t runs the lower level with its own seed derived from (seed, t), so a search resumed
from the checkpoint after step t continues exactly as an uninterrupted run would. A solver that carries
state across outer steps (the warm solver's continuing run) has it kept here and stored in the checkpoint
after every step, so its resume is exact too.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import ConfigError, WorstforgetError
from ..core.hashing import stable_hash
from ..core.progress import NullProgress, Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed, generator
from ..methods import make_method
from ..setting import Setting
from .checkpoint import STATE_VERSION, SearchCheckpoint
from .config import SearchConfig
from .problem import Problem
from .projection import top_m, upper_step
from .solvers import SOLVERS, check_solver, solver_state


@dataclass
class SearchResult:
    """What the search found and how it got there."""

    weights: torch.Tensor  # (n_vars,) final relaxed w (samples, or classes)
    units: torch.Tensor  # top-m sample (or class) indices
    indices: torch.Tensor  # training indices of the worst-case forget set
    initial_units: torch.Tensor  # top-m of w₀ (ties broken by a seeded permutation)
    weight_history: torch.Tensor  # (outer_steps + 1, n_vars)
    history: dict[str, list] = field(default_factory=dict)  # objective, overlaps... per outer step
    seconds: float = 0.0
    key: str = ""


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a| for two index sets of equal size."""
    return float(torch.isin(a.cpu(), b.cpu()).float().mean()) if len(a) else float("nan")


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = torch.isin(a.cpu(), b.cpu()).sum().item()
    union = len(a) + len(b) - inter
    return inter / union if union else float("nan")


def search_key(setting: Setting, method: str, params: dict, cfg: SearchConfig, seed: int,
               init_units: torch.Tensor | None = None) -> str:
    return stable_hash({"v": STATE_VERSION, "original": setting.original_key, "method": method, "params": params,
                        "search": cfg.key_dict(), "seed": seed, "spec": setting.spec.to_dict(),
                        **({"init_units": init_units.cpu()} if init_units is not None else {})})


def initial_weights(problem: Problem, seed: int,
                    init_units: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w₀ and its top-m set. Uniform w₀ = m/n has only ties; they are broken by a seeded permutation,
    so the 'initial set' is a random set and moving away from it is the sanity check that matters.
    `init = "heuristic"` starts from the binary w of `init_units` (a baseline set the caller chose)."""
    n, m = problem.num_vars, problem.budget
    tie = torch.randperm(n, generator=generator(seed, "search-init")).double()
    if problem.config.init in ("random", "heuristic"):
        if problem.config.init == "heuristic":
            if init_units is None or len(init_units) != m:
                raise ConfigError(f"--init heuristic needs a start set of {m} units (none or a wrong size was given)")
            units = init_units.cpu().sort().values
        else:
            units = top_m(torch.zeros(n), m, tie_break=tie)
        w0 = torch.zeros(n, dtype=torch.float64)
        w0[units] = 1.0
        return w0, units
    w0 = torch.full((n,), m / n, dtype=torch.float64)
    return w0, top_m(w0, m, tie_break=tie)


def search_worst_case(setting: Setting, method: str, params: dict | None, cfg: SearchConfig, *, seed: int = 0,
                      state_dir: str | Path | None = None, resume: bool = False,
                      reference_sets: dict[str, torch.Tensor] | None = None,
                      init_units: torch.Tensor | None = None, progress: Progress | None = None) -> SearchResult:
    """Find the forget set (of size ratio·N) that the method finds hardest to erase.

    Args:
        setting: data, original model and caches (`audit.prepare_setting`).
        method: registered unlearning method used as the lower level.
        params: its hyper-parameters.
        cfg: search settings.
        seed: seeds the lower-level runs and the tie-break of the initial set.
        state_dir: where the per-step checkpoint lives (default: the cache folder); none without the cache.
        resume: continue from a checkpoint of the same search (same key) if one exists.
        reference_sets: named unit-index sets (random sets, baselines) whose overlap is logged each step.
        init_units: the start set for `cfg.init == "heuristic"`.
        progress: progress sink.
    """
    cfg = cfg.validate()
    params = dict(params or {})
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)
    solve = SOLVERS.get(cfg.solver)
    check_solver(cfg.solver, instance)
    problem = Problem(setting=setting, method=instance, config=cfg, progress=progress)
    carry = solver_state(solve, problem)  # None unless the solver keeps state across outer steps
    key = search_key(setting, instance.name, params, cfg, seed, init_units if cfg.init == "heuristic" else None)
    checkpoint = None
    if setting.records.enabled:
        checkpoint = SearchCheckpoint(Path(state_dir or setting.records.root / "search"), key, problem.num_vars,
                                      stateful=carry is not None)
    w0, initial = initial_weights(problem, seed, init_units)
    w, start = w0.clone(), 0
    history: dict[str, list] = {"objective": [], "overlap_with_initial": [], "step_size": []}
    for name in (reference_sets or {}):
        history[f"overlap_with_{name}"] = []
    weights = [w0.clone()]
    elapsed = 0.0
    last_grad = torch.zeros_like(w0)
    # one process at a time runs a given search: a second one waits, then finds it done
    with checkpoint.lock() if checkpoint else nullcontext():
        state = checkpoint.load(cfg.outer_steps) if checkpoint else None
        if state is not None and (resume or state["done"]):
            start, history, elapsed = state["step"], state["history"], state["seconds"]
            weights, last_grad = state["weights"], state["last_grad"]
            w = weights[-1].clone()
            if carry is not None and start < cfg.outer_steps:
                carry.load_state_dict(state["solver_state"])
        if checkpoint:
            checkpoint.begin(weights)
        task = (progress or NullProgress()).task(f"search ({cfg.solver}, {instance.name})", cfg.outer_steps)
        task.advance(start)
        m = problem.budget
        for t in range(start, cfg.outer_steps):
            with Timer() as timer:
                w_dev, step_seed = w.to(setting.data.device), derive_seed(seed, "outer-step", t)
                hg = solve(problem, w_dev, step_seed, **({} if carry is None else {"state": carry}))
                grad = hg.grad.cpu()
                check_hypergradient(hg, grad, t, cfg, instance.name)
                w, step = upper_step(w, grad, m, lr=cfg.upper_lr, normalize=cfg.normalize_step)
            elapsed += timer.seconds
            last_grad = grad
            units = top_m(w, m, tie_break=-grad)  # among equal weights, prefer the lower objective
            history["objective"].append(hg.value)
            history["step_size"].append(step)
            history["overlap_with_initial"].append(overlap(units, initial))
            for name, ref in (reference_sets or {}).items():
                history[f"overlap_with_{name}"].append(overlap(units, ref))
            weights.append(w.clone())
            if checkpoint:
                checkpoint.save(w, step=t + 1, done=t + 1 == cfg.outer_steps, history=history, seconds=elapsed,
                                last_grad=last_grad, solver_state=None if carry is None else carry.state_dict())
            task.advance(1, objective=hg.value, moved=1 - history["overlap_with_initial"][-1])
        task.close()
    units = top_m(w, m, tie_break=-last_grad)
    return SearchResult(weights=w, units=units, indices=problem.members(units), initial_units=initial,
                        weight_history=torch.stack(weights), history=history, seconds=elapsed, key=key)


def check_hypergradient(hg, grad: torch.Tensor, t: int, cfg: SearchConfig, method: str) -> None:
    """A NaN or ±inf hypergradient means the lower level diverged: stop with the step, not a garbage set."""
    if bool(torch.isfinite(grad).all()) and math.isfinite(float(hg.value)):
        return
    what = "gradient" if not bool(torch.isfinite(grad).all()) else "objective"
    raise WorstforgetError(f"the hypergradient's {what} holds NaN or inf at outer step {t + 1} of "
                           f"{cfg.outer_steps} ({method}, {cfg.solver} solver); the lower level diverged: lower "
                           "--inner-lr or the method's lr (--param lr=...)")
