"""Concept ablation (Kumari et al., 2023): make the concept's prompt produce what an anchor concept's prompt
produces. On noised samples of the original's generations of the anchor, the unlearned denoiser conditioned on
the concept is regressed onto the frozen original conditioned on the anchor. The anchor of (object, style) is
the same object in the anchor style (`anchor_style`, default the first, "plain"; the next style for concepts
already in it): a style is ablated to the plain rendering of the same object."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ConceptMethod, Draws, flat, noised_draws, per_concept_mean, register_concept_method


def anchors(num_objects: int, num_styles: int, anchor_style: int) -> torch.Tensor:
    """Anchor concept id of every concept id (object-major ids)."""
    c = torch.arange(num_objects * num_styles)
    obj, sty = c // num_styles, c % num_styles
    target = torch.where(sty == anchor_style, (anchor_style + 1) % num_styles, anchor_style)
    return obj * num_styles + target


@register_concept_method("ablation", aliases=("concept_ablation", "ca"))
@dataclass
class ConceptAblation(ConceptMethod):
    """Concept ablation: the concept's prompt regressed onto an anchor concept (same object, plain style)."""

    lr: float = 3e-4
    anchor_style: int = 0

    def _anchors(self, setting) -> torch.Tensor:
        return anchors(setting.data.num_objects, setting.data.num_styles, self.anchor_style).to(setting.device)

    def draw(self, setting, g: torch.Generator) -> Draws:
        return noised_draws(setting, setting.pool()[self._anchors(setting)], self.per_concept, g)

    def concept_losses(self, setting, denoiser: nn.Module, concepts: torch.Tensor, draws: Draws) -> torch.Tensor:
        model = setting.model
        x0, noise, t, c = flat(draws, concepts)
        x_t = model.add_noise(x0, noise, t)
        with torch.no_grad():
            target = model.predict_noise(setting.original, x_t, t, model.condition(self._anchors(setting)[c]))
        pred = model.predict_noise(denoiser, x_t, t, model.condition(c))
        return per_concept_mean((pred - target).pow(2).flatten(1).mean(1), len(concepts))
