"""Optimisers and learning-rate schedules shared by training, unlearning and the search's lower level."""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from ..core.errors import ConfigError


class SignSGD(Optimizer):
    """θ ← θ − lr·sign(g + wd·θ), optionally with momentum on the sign input (signum).

    The lower level of the first-order search: because d sign(x)/dx = 0 almost everywhere, the
    unlearned parameters do not depend on the forget weights to first order, so the hypergradient
    reduces to the partial derivative of the upper objective. Weight decay is a keyword argument
    here (passing it positionally to torch.optim.SGD turns it into dampening).
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["momentum"]:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(g, alpha=1 - group["momentum"])
                    g = buf
                p.add_(torch.sign(g), alpha=-group["lr"])


def make_optimizer(kind: str, params, *, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "sign":
        return SignSGD(params, lr=lr, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {kind!r}; use sgd, sign or adam")


SCHEDULES = ("cosine", "step", "constant", "onecycle")
ONECYCLE_WARMUP = 0.2  # share of the steps the one-cycle schedule spends warming up (Myrtle/airbench use ~0.2)


def lr_factor(schedule: str, step: int, total: int, *, milestones: tuple[float, ...] = (0.5, 0.75),
              gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at `step` of `total` steps.

    `step` decays by `gamma` at the given fractions of training (the paper's 91/136 of 182 epochs);
    `cosine` anneals to zero; `constant` keeps it; `onecycle` rises linearly from 0 to 1 over the first
    ONECYCLE_WARMUP of the steps and falls linearly back to 0 at the end (the short-run CIFAR recipes'
    triangle). The triangle is read at the middle of each step, (step + ½) / total, so neither the first
    nor the last step has a zero learning rate.
    """
    if schedule == "constant" or total <= 0:
        return 1.0
    frac = step / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":
        return gamma ** sum(frac >= m for m in milestones)
    if schedule == "onecycle":
        mid = (step + 0.5) / total
        if mid < ONECYCLE_WARMUP:
            return mid / ONECYCLE_WARMUP
        return max(0.0, (1.0 - mid) / (1.0 - ONECYCLE_WARMUP))
    raise ConfigError(f"unknown schedule {schedule!r}; use {', '.join(SCHEDULES)}")
