"""Optimisers and learning-rate schedules shared by training, unlearning and the search's lower level."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim import Optimizer

from ..core.registry import Registry


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


OptimizerFactory = Callable[..., Optimizer]  # (params, *, lr, momentum, weight_decay) -> Optimizer
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(params, *, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """SGD with momentum and decoupled-by-keyword weight decay (torch.optim.SGD)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("sign")
def sign(params, *, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """Sign-SGD: the paper's first-order lower level (zero derivative in the forget weights)."""
    return SignSGD(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params, *, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """Adam (torch.optim.Adam; `momentum` is unused)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(kind: str, params, *, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    return OPTIMIZERS.get(kind)(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


Schedule = Callable[[int, int], float]  # (step, total) -> multiplier of the base learning rate
SCHEDULES: Registry[Schedule] = Registry("schedule")
ONECYCLE_WARMUP = 0.2  # share of the steps the one-cycle schedule spends warming up (Myrtle/airbench use ~0.2)
STEP_MILESTONES, STEP_GAMMA = (0.5, 0.75), 0.1  # the paper's decay at 91 and 136 of 182 epochs


@SCHEDULES.register("constant")
def constant(step: int, total: int) -> float:
    """The base learning rate throughout."""
    return 1.0


@SCHEDULES.register("cosine")
def cosine(step: int, total: int) -> float:
    """Cosine annealing to zero over the run."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


@SCHEDULES.register("step")
def step_decay(step: int, total: int) -> float:
    """×0.1 at 50% and at 75% of the run (the paper's 91/136 of 182 epochs)."""
    return STEP_GAMMA ** sum(step / total >= m for m in STEP_MILESTONES)


@SCHEDULES.register("onecycle")
def onecycle(step: int, total: int) -> float:
    """Linear rise over the first ONECYCLE_WARMUP of the steps, linear fall to 0 at the end, read at the
    middle of each step, (step + ½) / total, so neither the first nor the last step has a zero rate."""
    mid = (step + 0.5) / total
    if mid < ONECYCLE_WARMUP:
        return mid / ONECYCLE_WARMUP
    return max(0.0, (1.0 - mid) / (1.0 - ONECYCLE_WARMUP))


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at `step` of `total` steps under a registered schedule."""
    fn = SCHEDULES.get(schedule)
    return 1.0 if total <= 0 else fn(step, total)
