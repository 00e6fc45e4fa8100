"""The `torch.func` backend of the unrolled lower level: a hand-written functional SGD.

The model is called through `torch.func.functional_call` with its parameters and buffers passed as
arguments; BatchNorm's running statistics are explicit state that the forward updates as in plain
training, never tensors captured in a closure (which breaks torch.func). Each step's gradient comes
from `torch.autograd.grad(create_graph=True)`, so the parameters after K steps are a differentiable
function of the forget weights. The update is transcribed from `torch.optim.SGD`'s single-tensor path
(same operations in the same order), so with tracking off it reproduces the plain `Stepper`.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call

from ...methods import Context, UnlearningMethod


class FunctionalModel:
    """A module's forward as a function of explicit parameter and buffer tensors.

    What the method's loss hooks see during the run, and what `apply` returns: callable like the
    module, `parameters()` / `named_parameters()` give the current tensors (frozen ones included,
    as for the module), `train` / `eval` set the module's mode.
    """

    def __init__(self, module: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
        self.module = module
        self.params = params  # name → current tensor; the stepper replaces entries, never edits them
        self.state = buffers  # name → buffer; the forward updates running statistics in place

    def __call__(self, *args, **kwargs):
        return functional_call(self.module, (self.params, self.state), args, kwargs)

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(list(self.params.values()))

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(list(self.params.items()))

    def buffers(self) -> Iterator[torch.Tensor]:
        return iter(list(self.state.values()))

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True) -> "FunctionalModel":
        self.module.train(mode)
        return self

    def eval(self) -> "FunctionalModel":
        return self.train(False)


def sgd_update(p: torch.Tensor, grad: torch.Tensor, state: dict, *, lr: float, momentum: float,
               weight_decay: float) -> torch.Tensor:
    """One step of torch.optim.SGD (dampening 0, no Nesterov) as out-of-place, differentiable operations."""
    d = grad.add(p, alpha=weight_decay) if weight_decay != 0 else grad
    if momentum != 0:
        buf = d.clone() if "momentum" not in state else state["momentum"].mul(momentum).add(d)
        state["momentum"] = buf
        d = buf
    return p.add(d, alpha=-lr)


class FuncStepper:
    """Differentiable SGD steps on a `FunctionalModel` (see the module docstring)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], method: UnlearningMethod, *, track: bool = True):
        trainable = {id(p) for p in params}
        named = list(model.named_parameters())
        # fresh leaves: the module's own parameters are neither updated nor part of the graph
        tensors = {n: p.detach().clone().requires_grad_(id(p) in trainable) for n, p in named}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.model = FunctionalModel(model, tensors, buffers)
        self.names = [n for n, p in named if id(p) in trainable]
        self.lr, self.momentum, self.weight_decay = method.lr, method.momentum, method.weight_decay
        self.track = track
        self.state: dict[str, dict] = {n: {} for n in self.names}

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def step(self, loss: torch.Tensor, ctx: Context) -> None:
        params = self.model.params
        grads = torch.autograd.grad(loss, [params[n] for n in self.names], create_graph=self.track,
                                    allow_unused=True)
        masks = ctx.grad_mask or {}
        for n, g in zip(self.names, grads):
            if g is None:  # the loss does not reach it: torch's SGD skips it (no decay, no momentum)
                continue
            p, mask = params[n], masks.get(n)
            if mask is not None:
                g = g * mask
            new = sgd_update(p, g, self.state[n], lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
            if mask is not None:  # SalUn: a masked value never moves, whatever momentum and decay say
                new = torch.where(mask.bool(), new, p)
            if not self.track:
                new = new.detach().requires_grad_()
                self.state[n] = {k: v.detach() for k, v in self.state[n].items()}
            params[n] = new
