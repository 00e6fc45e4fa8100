"""Gradient ascent: raise the diffusion loss ‖ε̂(x_t, t, c) − ε‖² of the concept's real training images (the
baseline every unlearning benchmark carries; it has no floor, so its steps and lr bound the damage)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ConceptMethod, Draws, flat, noised_draws, per_concept_mean, register_concept_method


def concept_images(setting, per_concept: int) -> torch.Tensor:
    """(C, P, ...) real training images of every concept in the denoiser's space (P = the smallest count)."""
    data = setting.data
    memo = setting.__dict__.setdefault("_concept_images", {})
    if per_concept not in memo:
        rows = [torch.nonzero(data.concept_train == c).flatten() for c in range(data.num_concepts)]
        size = min(per_concept, min(len(r) for r in rows))
        memo[per_concept] = setting.model.encode(torch.stack([data.x_train[r[:size]] for r in rows]))
    return memo[per_concept]


@register_concept_method("gradient_ascent", aliases=("ga", "ascent"))
@dataclass
class GradientAscent(ConceptMethod):
    """Gradient ascent on the concept's diffusion loss of its real images."""

    lr: float = 1e-3
    steps: int = 50
    images: int = 64  # real images per concept it draws from

    def draw(self, setting, g: torch.Generator) -> Draws:
        return noised_draws(setting, concept_images(setting, self.images), self.per_concept, g)

    def concept_losses(self, setting, denoiser: nn.Module, concepts: torch.Tensor, draws: Draws) -> torch.Tensor:
        model = setting.model
        x0, noise, t, c = flat(draws, concepts)
        pred = model.predict_noise(denoiser, model.add_noise(x0, noise, t), t, model.condition(c))
        return -per_concept_mean((pred - noise).pow(2).flatten(1).mean(1), len(concepts))
