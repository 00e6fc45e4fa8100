"""Retrain: the original's recipe from scratch on the images of the retained concepts only (exact unlearning;
cached per forget set and seed in the setting). Not a loop from the original: it needs a binary w."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import ConfigError
from .base import ConceptMethod, register_concept_method


@register_concept_method("retrain")
@dataclass
class ConceptRetrain(ConceptMethod):
    """Exact Retrain: the original's recipe on the retained concepts' images only."""

    iterative = False

    def apply(self, setting, w: torch.Tensor, *, seed: int, steps: int | None = None) -> nn.Module:
        w = w.detach().cpu()
        if not bool(((w == 0) | (w == 1)).all()):
            raise ConfigError("retrain needs a binary forget set (it cannot be the search's lower level)")
        denoiser, _ = setting.retrain(torch.nonzero(w == 1).flatten(), seed)
        return denoiser
