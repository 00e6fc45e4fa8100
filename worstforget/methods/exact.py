"""Exact Retrain and the no-op floor."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.progress import Progress
from ..core.seeds import derive_seed
from ..datasets import Dataset
from ..training.loop import TrainConfig, fit
from .base import UnlearningMethod, check_weights
from .registry import register_method


@register_method("retrain")
@dataclass(kw_only=True)
class Retrain(UnlearningMethod):
    """Retrain: train from a fresh initialisation on the retain set only, with the original's recipe."""

    differentiable = False
    iterative = False
    epochs: int | None = None  # None: the original model's training epochs
    lr: float | None = None  # None: the original's learning rate

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        if spec is None:
            raise ConfigError("retrain needs the original model's recipe (spec); it cannot audit a bare checkpoint "
                              "without --model, --epochs and --lr")
        w = check_weights(forget_weights, data)
        init_seed, order_seed = self.seeds(seed)
        return fit(spec.build(data, seed=init_seed), data, self.recipe(spec), seed=order_seed, sample_weights=1.0 - w,
                   progress=progress, description="retrain")

    def recipe(self, spec) -> TrainConfig:
        """The run's training recipe: the original's, with this method's epochs, lr and batch size (the
        stacked Retrain runs of an audit, audit/units.py, train with the same)."""
        return spec.train.with_updates(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)

    @staticmethod
    def seeds(seed: int) -> tuple[int, int]:
        """(initialisation seed, batch-order seed) of the run with `seed`."""
        return derive_seed(seed, "retrain-init"), derive_seed(seed, "retrain-order")


@register_method("noop", aliases=("none",))
@dataclass(kw_only=True)
class NoOp(UnlearningMethod):
    """No-op: returns the trained model unchanged — the floor every audit is compared with."""

    differentiable = False
    iterative = False

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        check_weights(forget_weights, data)
        return copy.deepcopy(original).eval()
