"""The paper's solver: a sign-SGD lower level, whose hypergradient is the upper objective's partial derivative."""
from __future__ import annotations

import torch

from ..problem import Problem
from .base import SOLVERS, Hypergradient


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
