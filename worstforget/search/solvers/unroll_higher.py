"""The `higher` backend of the unrolled lower level; the only module of the package that imports higher.

higher's patched module holds the fast weights and its differentiable SGD takes the steps; SalUn's
mask zeroes masked gradients and then restores masked values after each step, exactly as the plain
`Stepper` does, so momentum and weight decay cannot move them either.
"""
from __future__ import annotations

import higher
import torch
from torch import nn

from ...methods import Context, UnlearningMethod


class HigherStepper:
    """Differentiable SGD steps on higher's functional copy of the model."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], method: UnlearningMethod, *, track: bool = True):
        self.names = [n for n, _ in model.named_parameters()]  # the order of higher's fast weights
        # higher copies torch's own optimiser classes into differentiable ones: torch's SGD, whatever the device
        opt = torch.optim.SGD(params, lr=method.lr, momentum=method.momentum, weight_decay=method.weight_decay)
        self.model = higher.monkeypatch(model, copy_initial_weights=True, track_higher_grads=track)
        self.diffopt = higher.optim.get_diff_optim(opt, list(model.parameters()), fmodel=self.model,
                                                   track_higher_grads=track)
        self.track = track

    def set_lr(self, lr: float) -> None:
        for group in self.diffopt.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, ctx: Context) -> None:
        if ctx.grad_mask is None:
            self.diffopt.step(loss)
            return
        masks = [ctx.grad_mask.get(n) for n in self.names]
        before = list(self.model.fast_params)
        after = self.diffopt.step(loss, grad_callback=lambda grads: [
            g if g is None or m is None else g * m for g, m in zip(grads, masks)])
        kept = [a if m is None else torch.where(m.bool(), a, b) for a, b, m in zip(after, before, masks)]
        if not self.track:
            kept = [k.detach().requires_grad_(k.requires_grad) for k in kept]
        self.model.update_params(kept)
