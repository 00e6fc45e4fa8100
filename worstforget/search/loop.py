"""The upper level: projected gradient steps on the forget weights, with checkpoints and resume.

Every outer step t runs the lower level with its own seed derived from (seed, t), so a search resumed
from the checkpoint after step t continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import WorstforgetError
from ..core.hashing import stable_hash
from ..core.io import atomic_path
from ..core.progress import NullProgress, Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed, generator
from ..methods import make_method
from ..setting import Setting
from .config import SearchConfig
from .problem import Problem
from .projection import project_capped_simplex, top_m
from .solvers import SOLVERS, check_solver

STATE_VERSION = 1


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


def search_key(setting: Setting, method: str, params: dict, cfg: SearchConfig, seed: int) -> str:
    return stable_hash({"v": STATE_VERSION, "original": setting.original_key, "method": method, "params": params,
                        "search": cfg.to_dict(), "seed": seed, "spec": setting.spec.to_dict()})


def initial_weights(problem: Problem, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w₀ and its top-m set. Uniform w₀ = m/n has only ties; they are broken by a seeded permutation,
    so the 'initial set' is a random set and moving away from it is the sanity check that matters."""
    n, m = problem.num_vars, problem.budget
    tie = torch.randperm(n, generator=generator(seed, "search-init")).double()
    if problem.config.init == "random":
        units = top_m(torch.zeros(n), m, tie_break=tie)
        w0 = torch.zeros(n, dtype=torch.float64)
        w0[units] = 1.0
        return w0, units
    w0 = torch.full((n,), m / n, dtype=torch.float64)
    return w0, top_m(w0, m, tie_break=tie)


def search_worst_case(setting: Setting, method: str, params: dict | None, cfg: SearchConfig, *, seed: int = 0,
                      state_dir: str | Path | None = None, resume: bool = False,
                      reference_sets: dict[str, torch.Tensor] | None = None,
                      progress: Progress | None = None) -> SearchResult:
    """Find the forget set (of size ratio·N) that the method finds hardest to erase.

    Args:
        setting: data, original model and caches (`audit.prepare_setting`).
        method: registered unlearning method used as the lower level.
        params: its hyper-parameters.
        cfg: search settings.
        seed: seeds the lower-level runs and the tie-break of the initial set.
        state_dir: where the per-step checkpoint lives (default: the cache folder).
        resume: continue from a checkpoint of the same search (same key) if one exists.
        reference_sets: named unit-index sets (random sets, heuristic) whose overlap is logged each step.
        progress: progress sink.
    """
    cfg = cfg.validate()
    params = dict(params or {})
    instance = make_method(method, params).resolved(setting.spec.train.batch_size)
    solve = SOLVERS.get(cfg.solver)
    check_solver(cfg.solver, instance)
    problem = Problem(setting=setting, method=instance, config=cfg, progress=progress)
    key = search_key(setting, instance.name, params, cfg, seed)
    state_path = Path(state_dir or setting.records.root / "search") / f"search-{key}.pt"
    w0, initial = initial_weights(problem, seed)
    w, start = w0.clone(), 0
    history: dict[str, list] = {"objective": [], "overlap_with_initial": [], "step_size": []}
    for name in (reference_sets or {}):
        history[f"overlap_with_{name}"] = []
    weights = [w0.clone()]
    elapsed = 0.0
    last_grad = torch.zeros_like(w0)
    state = _load_state(state_path) if setting.records.enabled else None
    if state is not None and (resume or state.get("done")):
        if state.get("key") != key:
            raise WorstforgetError(f"checkpoint {state_path} belongs to another search; delete it or drop --resume")
        w, start, history, elapsed = state["w"], state["step"], state["history"], state["seconds"]
        weights, last_grad = list(state["weights"]), state["last_grad"]
    task = (progress or NullProgress()).task(f"search ({cfg.solver}, {instance.name})", cfg.outer_steps)
    task.advance(start)
    m = problem.budget
    for t in range(start, cfg.outer_steps):
        with Timer() as timer:
            hg = solve(problem, w.to(setting.data.device), derive_seed(seed, "outer-step", t))
            grad = hg.grad.cpu()
            scale = grad.std().clamp_min(1e-12) if cfg.normalize_step else torch.tensor(1.0, dtype=torch.float64)
            step = cfg.upper_lr / float(scale)
            w = project_capped_simplex(w - step * grad, m)
        elapsed += timer.seconds
        last_grad = grad
        units = top_m(w, m, tie_break=-grad)  # among equal weights, prefer the lower objective
        history["objective"].append(hg.value)
        history["step_size"].append(step)
        history["overlap_with_initial"].append(overlap(units, initial))
        for name, ref in (reference_sets or {}).items():
            history[f"overlap_with_{name}"].append(overlap(units, ref))
        weights.append(w.clone())
        if setting.records.enabled:
            with atomic_path(state_path) as tmp:
                torch.save({"key": key, "w": w, "step": t + 1, "history": history, "seconds": elapsed,
                            "weights": torch.stack(weights), "last_grad": last_grad, "done": t + 1 == cfg.outer_steps}, tmp)
        task.advance(1, objective=hg.value, moved=1 - history["overlap_with_initial"][-1])
    task.close()
    units = top_m(w, m, tie_break=-last_grad)
    return SearchResult(weights=w, units=units, indices=problem.members(units), initial_units=initial,
                        weight_history=torch.stack(weights), history=history, seconds=elapsed, key=key)


def _load_state(path: Path) -> dict | None:
    """The search checkpoint, or None when there is none or it cannot be read (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file is never trusted
        return None
