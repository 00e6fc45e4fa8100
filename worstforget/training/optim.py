"""Optimisers and learning-rate schedules shared by training, unlearning and the search's lower level."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ..core.registry import Registry


class PlainOptimizer:
    """The part of `torch.optim.Optimizer` the library's loops use: one parameter group, per-parameter state,
    `zero_grad`, `step`, and `state_dict` / `load_state_dict` in torch's format.

    Why not torch's base class: building or stepping one imports `torch._dynamo` (about 1.3 s in every process on
    two CPU cores, longer than the default digits training takes to start), for compile support these loops never
    use. A `higher` unroll, which needs torch's classes, builds torch's own.
    """

    def __init__(self, params: Iterable[torch.Tensor], defaults: dict):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not all(isinstance(q, torch.Tensor) for q in params):
            raise TypeError(f"{type(self).__name__} takes a sequence of tensors (one parameter group)")
        self.defaults = dict(defaults)
        self.param_groups = [{"params": params, **defaults}]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for q in group["params"]:
                if q.grad is None:
                    continue
                if set_to_none:
                    q.grad = None
                else:
                    q.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """torch's layout: parameters numbered in group order, state keyed by those numbers (tensors shared)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for q in group["params"]:
                index.setdefault(id(q), len(index))
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(q)] for q in group["params"]]})
        return {"state": {index[id(q)]: dict(v) for q, v in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state saved by this class or by the matching torch optimiser."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(saved, self.param_groups)):
            raise ValueError("the saved optimiser state has other parameter groups than this optimiser")
        params = {i: q for a, b in zip(saved, self.param_groups) for i, q in zip(a["params"], b["params"])}
        for a, b in zip(saved, self.param_groups):
            b.update({k: v for k, v in a.items() if k in b and k != "params"})
        self.state = {}
        for i, entry in state_dict["state"].items():
            q = params[int(i)]
            self.state[q] = {k: v.to(dtype=q.dtype, device=q.device).clone() if isinstance(v, torch.Tensor) else v
                             for k, v in entry.items()}


class SGD(PlainOptimizer):
    """SGD with momentum, (Nesterov) and weight decay: torch.optim.SGD's single-tensor update, the one it takes on
    a CPU, operation for operation, so the trained weights are the same bits (tested against torch's)."""

    def __init__(self, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": 0.0, "weight_decay": weight_decay,
                                  "nesterov": nesterov, "maximize": False})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            for q in group["params"]:
                if q.grad is None:
                    continue
                grad = -q.grad if group["maximize"] else q.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(q, alpha=group["weight_decay"])
                if momentum != 0:
                    state = self.state.setdefault(q, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                q.add_(grad, alpha=-lr)


class SignSGD(PlainOptimizer):
    """θ ← θ − lr·sign(g + wd·θ), optionally with momentum on the sign input (signum).

    The lower level of the first-order search: because d sign(x)/dx = 0 almost everywhere, the
    unlearned parameters do not depend on the forget weights to first order, so the hypergradient
    reduces to the partial derivative of the upper objective.
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for q in group["params"]:
                if q.grad is None:
                    continue
                g = q.grad
                if group["weight_decay"]:
                    g = g.add(q, alpha=group["weight_decay"])
                if group["momentum"]:
                    buf = self.state.setdefault(q, {}).setdefault("momentum", torch.zeros_like(q))
                    buf.mul_(group["momentum"]).add_(g, alpha=1 - group["momentum"])
                    g = buf
                q.add_(torch.sign(g), alpha=-group["lr"])


def library_optimizer(kind: str, device: torch.device | str) -> bool:
    """Whether `make_optimizer(kind, ...)` (and the training loop, for "sgd") on `device` builds the library's
    own class rather than torch's: SGD on a CPU, and sign-SGD anywhere."""
    return kind == "sign" or (kind == "sgd" and torch.device(device).type == "cpu")


def preload_torch_optim(kind: str, device: torch.device | str) -> None:
    """Before a timed run of `kind` steps on `device`: import what torch's optimiser classes import when first
    built or stepped (`torch._dynamo`, about 1.3 s on two CPU cores), a cost of the process, not of the run.
    Nothing to do where the optimiser is the library's own."""
    if not library_optimizer(kind, device):
        import torch._dynamo  # noqa: F401


OptimizerFactory = Callable[..., object]  # (params, *, lr, momentum, weight_decay) -> optimiser
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(params, *, lr: float, momentum: float, weight_decay: float, nesterov: bool = False):
    """SGD with momentum and weight decay (torch.optim.SGD's update).

    On a CPU the library's `SGD`; on an accelerator torch's class, for its foreach kernels there.
    """
    params = list(params)
    kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if all(library_optimizer("sgd", q.device) for q in params):
        return SGD(params, **kwargs)
    return torch.optim.SGD(params, **kwargs)


@OPTIMIZERS.register("sign")
def sign(params, *, lr: float, momentum: float, weight_decay: float) -> SignSGD:
    """Sign-SGD: the paper's first-order lower level (zero derivative in the forget weights)."""
    return SignSGD(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Adam:
    """Adam (torch.optim.Adam; `momentum` is unused)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(kind: str, params, *, lr: float, momentum: float, weight_decay: float):
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
