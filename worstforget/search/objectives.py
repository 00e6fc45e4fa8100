"""Per-sample values of the upper objective under a model: what 'still fits the forget set' means.

Each objective maps (logits, labels) to one value per sample, lower = the model fits the sample better;
the search minimises Σ w_i value_i(θ_u(w)) + γ‖w‖², so it looks for the samples the method leaves best fitted.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..core.registry import Registry
from ..scoring.metrics import logit_scaled_confidence

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OBJECTIVES: Registry[Objective] = Registry("search objective")


@OBJECTIVES.register("loss")
def loss_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true label (the paper's objective)."""
    return F.cross_entropy(logits, y, reduction="none")


@OBJECTIVES.register("margin")
def margin_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the logit-scaled confidence: keeps ranking samples whose loss has saturated near 0."""
    return -logit_scaled_confidence(logits, y)


def per_sample_objective(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The registered objective `kind` of every sample. (N,)"""
    return OBJECTIVES.get(kind)(logits, y)


def class_means(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of per-sample values within each class. (C,)"""
    sums = torch.zeros(num_classes, dtype=values.dtype, device=values.device).index_add_(0, y, values)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(values.dtype)
    return sums / counts
