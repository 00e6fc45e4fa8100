"""Methods that train on the retain side: FT, ℓ1-sparse, EU-k (re-initialise) and CF-k (freeze)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from ..training.models import weight_layers
from .base import Context, Phase, UnlearningMethod, ce
from .registry import register_method


def retain_ce(model: nn.Module, batches, ctx: Context) -> torch.Tensor:
    b = batches["retain"]
    return b.retain_mean(ce(model, b))


@register_method("finetune", aliases=("ft",))
@dataclass(kw_only=True)
class Finetune(UnlearningMethod):
    """FT: fine-tune the trained model on the retain set (catastrophic forgetting of the rest)."""

    stackable = True

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        return [Phase(("retain",), retain_ce)]


@register_method("l1_sparse")
@dataclass(kw_only=True)
class L1Sparse(UnlearningMethod):
    """ℓ1-sparse: FT plus α_t‖θ‖₁ with α_t decaying linearly to 0 over the run (Jia et al. 2023)."""

    stackable = True

    alpha: float = 5e-4  # initial ℓ1 coefficient

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        def loss(model, batches, ctx):
            decay = self.alpha * (1.0 - ctx.step / ctx.total_steps)
            l1 = sum(p.abs().sum() for p in model.parameters())
            return retain_ce(model, batches, ctx) + decay * l1

        return [Phase(("retain",), loss)]


def _last_layers(model: nn.Module, k: int) -> list[nn.Module]:
    layers = weight_layers(model)
    if not 1 <= k <= len(layers):
        raise ConfigError(f"k must be between 1 and {len(layers)} (the model's weight layers), got {k}")
    return layers[-k:]


def _freeze_all_but(model: nn.Module, keep: list[nn.Module]) -> None:
    keep_ids = {id(p) for m in keep for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep_ids)


@register_method("eu_k")
@dataclass(kw_only=True)
class ExactUnlearningK(UnlearningMethod):
    """EU-k: re-initialise the last k layers once, freeze the rest, train them on the retain set."""

    stackable = True

    k: int = 1

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = _last_layers(model, self.k)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            for layer in layers:
                layer.reset_parameters()  # PyTorch's default init, the scale the layer was trained from
        _freeze_all_but(model, layers)
        return model

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        return [Phase(("retain",), retain_ce)]


@register_method("cf_k")
@dataclass(kw_only=True)
class CatastrophicForgettingK(UnlearningMethod):
    """CF-k: freeze all but the last k layers and fine-tune those on the retain set."""

    stackable = True

    k: int = 1

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        _freeze_all_but(model, _last_layers(model, self.k))
        return model

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        return [Phase(("retain",), retain_ce)]
