"""What a hypergradient solver is, and the registry of solvers.

A solver maps the upper variable w to (f(w), ∇_w f, per-sample values ℓ_i(θ_u(w))), where
f(w) = Σ w_i ℓ_i(θ_u(w)) + γ‖w‖² and θ_u(w) is the method's weighted unlearning run from the trained model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...core.errors import ConfigError
from ...core.registry import Registry
from ..problem import Problem


@dataclass
class Hypergradient:
    value: float  # f(w)
    grad: torch.Tensor  # ∇_w f, float64, shape of w
    per_sample: torch.Tensor  # ℓ_i(θ_u(w)), float64, (N,)


Solver = Callable[[Problem, torch.Tensor, int], Hypergradient]


def upper_objective(reduced: torch.Tensor, w_var: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(w) = Σ_i r_i w_i + γ‖w‖², the one definition every solver uses (r: the reduced per-variable values).

    Returned as a tensor, so a solver whose r depends on w (the unrolled one) can differentiate through it.
    """
    return (reduced * w_var).sum() + gamma * (w_var**2).sum()


def upper_value_and_grad(reduced: torch.Tensor, w_var: torch.Tensor, gamma: float) -> tuple[float, torch.Tensor]:
    """f(w) and its partial derivative r + 2γw, r held fixed (the first-order and warm solvers' hypergradient)."""
    return float(upper_objective(reduced, w_var, gamma)), reduced + 2 * gamma * w_var


def check_solver(solver: str, method) -> None:
    """The unrolled solver needs a method whose SGD steps can be differentiated; say so before any work.

    Only SGD (momentum, weight decay) is unrolled: sign steps have zero derivative, and higher's
    differentiable Adam places ε differently from torch.optim.Adam, so it would not unroll the same run.
    """
    if SOLVERS.canonical(solver) != "unrolled":
        return
    if not method.differentiable:
        raise ConfigError(f"method {method.name} cannot be differentiated through its training steps; "
                          "use --solver first-order")
    if method.optimizer != "sgd":
        raise ConfigError(f"method {method.name} takes {method.optimizer} steps and the unrolled solver unrolls "
                          "SGD only; use --param optimizer=sgd or --solver first-order")


SOLVERS: Registry[Solver] = Registry("search solver")
