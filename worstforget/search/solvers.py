"""Hypergradient solvers: the registry and the first-order (sign-SGD lower level) solver.

A solver maps the upper variable w to (f(w), ∇_w f, per-sample values ℓ_i(θ_u(w))), where
f(w) = Σ w_i ℓ_i(θ_u(w)) + γ‖w‖² and θ_u(w) is the method's weighted unlearning run from the trained model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError
from ..registry import Registry
from .problem import Problem


@dataclass
class Hypergradient:
    value: float  # f(w)
    grad: torch.Tensor  # ∇_w f, float64, shape of w
    per_sample: torch.Tensor  # ℓ_i(θ_u(w)), float64, (N,)


Solver = Callable[[Problem, torch.Tensor, int], Hypergradient]


def check_solver(solver: str, method) -> None:
    """The unrolled solver needs a method whose SGD steps can be differentiated; say so before any work."""
    if SOLVERS.canonical(solver) == "unrolled" and (not method.differentiable or method.optimizer != "sgd"):
        raise ConfigError(f"method {method.name} cannot be differentiated through its training steps; "
                          "use --solver first-order")
SOLVERS: Registry[Solver] = Registry("search solver")


@SOLVERS.register("first_order", aliases=("first-order", "sign"))
def first_order(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
    """The paper's solver: K sign-SGD steps of the weighted method; the hypergradient is ℓ + 2γw.

    sign(·) has zero derivative almost everywhere, so θ_u does not depend on w to first order and the
    implicit term vanishes; only the partial derivative of the upper objective remains.
    """
    cfg = problem.config
    w_var = w_var.detach().to(torch.float64)
    w = problem.expand(w_var).float()
    method = problem.method
    if method.iterative:
        lower = problem.lower(optimizer="sign", lr=cfg.inner_lr if cfg.inner_lr is not None else 1e-3,
                              momentum=0.0, batch_size=cfg.inner_batch_size or method.batch_size)
        model = lower.apply(problem.setting.original, problem.data, w, seed=seed, spec=problem.setting.spec,
                            max_steps=problem.inner_steps, progress=problem.progress)
    else:  # retrain, influence, plugins: run the method itself on the weighted set
        model = method.apply(problem.setting.original, problem.data, w, seed=seed, spec=problem.setting.spec,
                             progress=problem.progress)
    per_sample = problem.values(model)
    reduced = problem.reduce(per_sample)
    value = float((reduced * w_var).sum() + cfg.gamma * (w_var**2).sum())
    return Hypergradient(value=value, grad=reduced + 2 * cfg.gamma * w_var, per_sample=per_sample)


def _register_unrolled() -> None:
    def unrolled(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
        """Differentiate through K SGD steps of the weighted method (higher): keeps the implicit term."""
        from .bilevel import unrolled_hypergradient

        return unrolled_hypergradient(problem, w_var, seed)

    SOLVERS.register("unrolled")(unrolled)


_register_unrolled()
