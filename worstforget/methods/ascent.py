"""Methods that push the forget-set loss up: gradient ascent and NegGrad+."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Context, Phase, UnlearningMethod, ce
from .registry import register_method


@register_method("gradient_ascent", aliases=("ga",))
@dataclass(kw_only=True)
class GradientAscent(UnlearningMethod):
    """GA: maximise the cross-entropy of the forget set (minimise its negative)."""

    stackable = True

    epochs: int = 5
    lr: float = 1e-3

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        def loss(model, batches, ctx):
            b = batches["forget"]
            return -b.forget_mean(ce(model, b))

        return [Phase(("forget",), loss)]


@register_method("neggrad_plus", aliases=("ng_plus", "ngplus"))
@dataclass(kw_only=True)
class NegGradPlus(UnlearningMethod):
    """NegGrad+: β·CE(retain) − (1−β)·CE(forget), retain-led, forget batches cycling beside."""

    stackable = True

    beta: float = 0.95  # weight of the retain term

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        def loss(model, batches, ctx) -> torch.Tensor:
            r, f = batches["retain"], batches["forget"]
            return self.beta * r.retain_mean(ce(model, r)) - (1 - self.beta) * f.forget_mean(ce(model, f))

        return [Phase(("retain", "forget"), loss)]
