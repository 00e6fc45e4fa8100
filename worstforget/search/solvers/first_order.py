"""The paper's solver: K lower-level steps, whose hypergradient is the upper objective's partial derivative."""
from __future__ import annotations

import torch

from ...methods import UnlearningMethod
from ..problem import Problem
from .base import SOLVERS, Hypergradient, upper_value_and_grad

SIGN_LR = 1e-3  # the paper's sign-SGD step when --inner-lr is not given


def lower_method(problem: Problem) -> UnlearningMethod:
    """The method the K inner steps run, by `config.lower_level`.

    sign: sign-SGD (no momentum) at `inner_lr` (default SIGN_LR), the paper's lower level; method: the
    method's own optimiser, momentum, weight decay and learning rate (`inner_lr` overrides the rate).
    """
    cfg, method = problem.config, problem.method
    batch_size = cfg.inner_batch_size or method.batch_size
    if cfg.lower_level == "method":
        return problem.lower(lr=cfg.inner_lr if cfg.inner_lr is not None else method.lr, batch_size=batch_size)
    return problem.lower(optimizer="sign", lr=cfg.inner_lr if cfg.inner_lr is not None else SIGN_LR,
                         momentum=0.0, batch_size=batch_size)


@SOLVERS.register("first_order", aliases=("first-order", "sign"))
def first_order(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
    """K steps of the weighted method (`lower_method`); the hypergradient is ℓ + 2γw.

    With sign steps, sign(·) has zero derivative almost everywhere, so θ_u does not depend on w to first
    order and the implicit term vanishes: only the partial derivative of the upper objective remains. With
    the method's own steps the implicit term is not zero; it is dropped (a first-order approximation; the
    unrolled solver keeps it), and the lower level is the run an attacker of the method actually faces.
    """
    cfg = problem.config
    w_var = w_var.detach().to(torch.float64)
    w = problem.expand(w_var).float()
    method = problem.method
    if method.iterative:
        model = lower_method(problem).apply(problem.setting.original, problem.data, w, seed=seed,
                                            spec=problem.setting.spec,
                                            max_steps=None if problem.whole_run else problem.inner_steps,
                                            progress=problem.progress)
    else:  # retrain, influence, plugins: run the method itself on the weighted set
        model = method.apply(problem.setting.original, problem.data, w, seed=seed, spec=problem.setting.spec,
                             progress=problem.progress)
    per_sample = problem.values(model)
    reduced = problem.reduce(per_sample)
    value, grad = upper_value_and_grad(reduced, w_var, cfg.gamma)
    return Hypergradient(value=value, grad=grad, per_sample=per_sample)
