"""The unrolled solver: the only module that imports `higher`.

The lower level runs K differentiable SGD steps of the method's weighted objective (the same loop as
`UnlearningMethod.apply`, with higher's functional model and differentiable optimiser in place of the
plain ones), and the hypergradient is taken through θ_K(w) — so it keeps the implicit term, how
forgetting a sample changes its own loss, which the first-order solver drops.
Memory grows linearly with K (higher keeps every intermediate set of weights).
"""
from __future__ import annotations

import copy

import higher
import torch
from torch import nn

from ...methods import Context, UnlearningMethod, run_loop
from ...training.optim import make_optimizer
from ..objectives import per_sample_objective
from ..problem import Problem
from .base import Hypergradient, check_solver


class HigherStepper:
    """Stepper for `run_loop` that takes differentiable optimiser steps."""

    def __init__(self, fmodel: nn.Module, diffopt):
        self.model = fmodel
        self.diffopt = diffopt

    def set_lr(self, lr: float) -> None:
        for group in self.diffopt.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, ctx: Context) -> None:
        mask = ctx.grad_mask
        callback = None
        if mask is not None:  # SalUn's saliency mask, as a gradient transform (momentum/decay not undone)
            masks = [mask.get(n) for n, _ in ctx.extra["param_names"]]
            callback = lambda grads: [g if m is None or g is None else g * m for g, m in zip(grads, masks)]  # noqa: E731
        self.diffopt.step(loss, grad_callback=callback)


def unrolled_lower_level(method: UnlearningMethod, original: nn.Module, data, w: torch.Tensor, *, seed: int,
                         spec=None, max_steps: int, track_higher_grads: bool = True, progress=None):
    """Run the method's loop K steps inside higher; returns (fmodel, ctx) with fmodel's weights at step K.

    With track_higher_grads=False this is ordinary training (the equivalence tests rely on that).
    """
    check_solver("unrolled", method)
    ctx = method.context(original, data, w, seed=seed, spec=spec)
    model = copy.deepcopy(original).to(data.device).train()
    model = method.prepare(model, ctx)
    params = method.trainable(model, ctx)
    ids = {id(p) for p in params}
    ctx.extra["param_names"] = [(n, p) for n, p in model.named_parameters() if id(p) in ids]
    opt = make_optimizer("sgd", params, lr=method.lr, momentum=method.momentum, weight_decay=method.weight_decay)
    fmodel_ctx = higher.innerloop_ctx(model, opt, copy_initial_weights=True, track_higher_grads=track_higher_grads)
    fmodel, diffopt = fmodel_ctx.__enter__()
    run_loop(method, HigherStepper(fmodel, diffopt), ctx, max_steps=max_steps, progress=progress)
    return fmodel, ctx


def unrolled_hypergradient(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
    cfg, data = problem.config, problem.data
    dtype = data.x_train.dtype
    w_var = w_var.detach().to(dtype).clone().requires_grad_(True)
    method = problem.lower(lr=cfg.inner_lr if cfg.inner_lr is not None else problem.method.lr,
                           batch_size=cfg.inner_batch_size or problem.method.batch_size)
    fmodel, _ = unrolled_lower_level(method, problem.setting.original, data, problem.expand(w_var), seed=seed,
                                     spec=problem.setting.spec, max_steps=problem.inner_steps, progress=problem.progress)
    fmodel.eval()
    logits = torch.cat([fmodel(chunk) for chunk in data.x_train.split(1024)])
    per_sample = per_sample_objective(logits, data.y_train, cfg.objective)
    reduced = problem.reduce(per_sample)
    value = (reduced * w_var).sum() + cfg.gamma * (w_var**2).sum()
    (grad,) = torch.autograd.grad(value, w_var)
    return Hypergradient(value=float(value.detach()), grad=grad.detach().to(torch.float64),
                         per_sample=per_sample.detach().to(torch.float64))
