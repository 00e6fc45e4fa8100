"""Hypergradient solvers (one registry): first-order (sign-SGD lower level, the paper's) and unrolled."""
from __future__ import annotations

import torch

from ..problem import Problem
from . import first_order  # noqa: F401  (registers first_order)
from .base import SOLVERS, Hypergradient, Solver, check_solver


@SOLVERS.register("unrolled")
def unrolled(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
    """Differentiate through K SGD steps of the weighted method (higher or torch.func): keeps the implicit term."""
    from .unrolled import unrolled_hypergradient  # imported on use: autodiff backends load only when needed

    return unrolled_hypergradient(problem, w_var, seed)


__all__ = ["SOLVERS", "Hypergradient", "Solver", "check_solver"]
