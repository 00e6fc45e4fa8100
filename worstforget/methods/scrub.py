"""SCRUB (Kurmanji et al., NeurIPS 2023): teacher–student min-max distillation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Context, Phase, UnlearningMethod
from .registry import register_method


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample KL(teacher ‖ student) at temperature T, scaled by T² as in distillation. (B,)"""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(1) * temperature**2


@register_method("scrub")
@dataclass(kw_only=True)
class Scrub(UnlearningMethod):
    """SCRUB: max-steps push the student away from the teacher on D_f, min-steps keep it close on D_r.

    Each of the first `max_epochs` epochs runs a max pass over the forget set then a min pass over the
    retain set (the original alternation); later epochs run min passes only.
    """

    stackable = True

    lr: float = 5e-4
    temperature: float = 4.0
    gamma: float = 0.99  # weight of the retain cross-entropy in the min step
    alpha: float = 0.001  # weight of the retain KL in the min step
    max_epochs: int = 2
    lr_decay_epochs: tuple[int, ...] = (3, 5, 9)
    lr_decay: float = 0.1

    def lr_scale(self, ctx: Context) -> float:
        return self.lr_decay ** sum(ctx.epoch >= e for e in self.lr_decay_epochs)

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        def max_loss(model, batches, ctx):
            b = batches["forget"]
            with torch.no_grad():
                teacher = ctx.original(b.x)
            return -b.forget_mean(kl_to_teacher(model(b.x), teacher, self.temperature))

        def min_loss(model, batches, ctx):
            b = batches["retain"]
            logits = model(b.x)
            with torch.no_grad():
                teacher = ctx.original(b.x)
            per_sample = self.gamma * F.cross_entropy(logits, b.y, reduction="none") + \
                self.alpha * kl_to_teacher(logits, teacher, self.temperature)
            return b.retain_mean(per_sample)

        phases = [Phase(("forget",), max_loss)] if epoch < self.max_epochs else []
        return phases + [Phase(("retain",), min_loss)]
