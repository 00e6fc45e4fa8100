"""Hypergradient solvers (one registry): first-order (the paper's), warm (single loop) and unrolled.

A solver is `solve(problem, w, seed) -> Hypergradient`. One that carries state across outer steps has a
`new_state(problem)` attribute; the loop then calls `solve(problem, w, seed, state=state)` with the state it
keeps, and stores `state.state_dict()` in its per-step checkpoint (`state.load_state_dict` on resume).
"""
from __future__ import annotations

import torch

from ..problem import Problem
from . import first_order, warm  # noqa: F401  (register first_order, warm)
from .base import SOLVERS, Hypergradient, Solver, check_solver


@SOLVERS.register("unrolled")
def unrolled(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
    """Differentiate through K SGD steps of the weighted method (higher or torch.func): keeps the implicit term."""
    from .unrolled import unrolled_hypergradient  # imported on use: autodiff backends load only when needed

    return unrolled_hypergradient(problem, w_var, seed)


def solver_state(solve: Solver, problem: Problem):
    """A fresh state for a solver that carries one across outer steps; None for the others."""
    factory = getattr(solve, "new_state", None)
    return None if factory is None else factory(problem)


__all__ = ["SOLVERS", "Hypergradient", "Solver", "check_solver", "solver_state"]
