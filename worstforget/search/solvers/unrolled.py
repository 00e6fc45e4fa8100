"""The unrolled solver: the lower level is the method's own `apply`, run with a differentiable stepper.

`UnlearningMethod.apply` runs unchanged — context, prepare, trainable parameters, the shared loop for K
steps, finish — with an `Unroll` stepper factory in place of the in-place optimiser. Its steps are the
plain `Stepper`'s steps (SGD with momentum and weight decay; SalUn's masked parameters never move), taken
as differentiable functions, so the returned model's forward depends differentiably on the forget
weights and the hypergradient is taken through θ_K(w). It keeps the implicit term — how forgetting a
sample changes its own loss — which the first-order solver drops.

Two backends, chosen by `SearchConfig.unroll_backend` (names in `config.UNROLL_BACKENDS`):
  higher      higher's functional model and differentiable SGD (unroll_higher.py, the package's only
              importer of higher, loaded on use);
  torch.func  a hand-written functional SGD over explicit parameter and buffer tensors with
              `torch.func.functional_call` and `torch.autograd.grad(create_graph=True)` (unroll_func.py).
Memory grows linearly with K: every intermediate set of weights stays in the graph.
BatchNorm's running statistics are carried exactly as in plain training but are not differentiated
(neither backend tracks their in-place update), so with BatchNorm the hypergradient omits how they
depend on w; with GroupNorm or no normalisation it is the exact derivative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...core.errors import ConfigError
from ...methods import UnlearningMethod
from ..config import UNROLL_BACKENDS
from ..problem import Problem
from .base import Hypergradient, check_solver, upper_objective


def stepper_class(backend: str) -> type:
    """The stepper of a backend, imported on use (so `higher` is loaded only when asked for)."""
    if backend == "higher":
        from .unroll_higher import HigherStepper

        return HigherStepper
    if backend == "torch.func":
        from .unroll_func import FuncStepper

        return FuncStepper
    raise ConfigError(f"unknown unroll backend {backend!r}; use one of {', '.join(UNROLL_BACKENDS)}")


@dataclass(frozen=True)
class Unroll:
    """Stepper factory for `UnlearningMethod.apply(..., stepper=Unroll(...))`: differentiable SGD steps.

    Example:
        >>> model = method.apply(original, data, w, seed=0, max_steps=10, stepper=Unroll("torch.func"))
        >>> torch.autograd.grad(model(x).sum(), w)  # through all 10 steps
    """

    backend: str = "higher"
    track: bool = True  # False: the same steps without any graph (ordinary training, for equivalence checks)
    differentiable: ClassVar[bool] = True  # `apply` keeps the forget weights' graph

    def __call__(self, model: nn.Module, params: list[nn.Parameter], method: UnlearningMethod):
        check_solver("unrolled", method)
        return stepper_class(self.backend)(model, params, method, track=self.track)


def unrolled_hypergradient(problem: Problem, w_var: torch.Tensor, seed: int) -> Hypergradient:
    cfg, data = problem.config, problem.data
    check_solver("unrolled", problem.method)
    w_var = w_var.detach().to(data.x_train.dtype).clone().requires_grad_(True)
    method = problem.lower(lr=cfg.inner_lr if cfg.inner_lr is not None else problem.method.lr,
                           batch_size=cfg.inner_batch_size or problem.method.batch_size)
    model = method.apply(problem.setting.original, data, problem.expand(w_var), seed=seed, spec=problem.setting.spec,
                         max_steps=problem.inner_steps, progress=problem.progress,
                         stepper=Unroll(cfg.unroll_backend))
    logits = torch.cat([model(chunk) for chunk in data.x_train.split(1024)])  # eval mode, no augmentation
    per_sample = problem.objective(logits)  # reference statistics, if read, are constants in w
    reduced = problem.reduce(per_sample)
    value = upper_objective(reduced, w_var, cfg.gamma)
    (grad,) = torch.autograd.grad(value, w_var)
    return Hypergradient(value=float(value.detach()), grad=grad.detach().to(torch.float64),
                         per_sample=per_sample.detach().to(torch.float64))
