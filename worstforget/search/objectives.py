"""Per-sample values of the upper objective under a model: what 'still fits the forget set' means."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..scoring.metrics import logit_scaled_confidence


def per_sample_objective(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Lower = the model fits the sample better. `loss`: cross-entropy; `margin`: minus the
    logit-scaled confidence, which keeps ranking samples whose loss has saturated near 0. (N,)"""
    if kind == "loss":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "margin":
        return -logit_scaled_confidence(logits, y)
    raise ValueError(kind)


def class_means(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of per-sample values within each class. (C,)"""
    sums = torch.zeros(num_classes, dtype=values.dtype, device=values.device).index_add_(0, y, values)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(values.dtype)
    return sums / counts
