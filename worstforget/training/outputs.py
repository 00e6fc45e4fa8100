"""Per-sample statistics of a model's outputs, defined once for every layer that reads them (the metrics,
the attacks, the reference models and the search objectives)."""
from __future__ import annotations

import torch


def logit_scaled_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_y − log Σ_{j≠y} p_j, computed stably from logits. (N,)"""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)
