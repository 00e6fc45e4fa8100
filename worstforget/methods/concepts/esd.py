"""ESD (Gandikota et al., 2023): erase a concept by negative guidance. The unlearned denoiser is regressed,
on noised samples of the original's own generations of the concept, onto the original's guidance pointed
away from it: target = ε*(x_t, ∅) − η (ε*(x_t, c) − ε*(x_t, ∅)), ε* the frozen original. `params` picks
ESD-x (xattn, the default, as the paper's prompt-wise runs), ESD-u (noxattn) or all."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ConceptMethod, Draws, flat, noised_draws, per_concept_mean, register_concept_method


def esd_target(eps_cond: torch.Tensor, eps_null: torch.Tensor, eta: float) -> torch.Tensor:
    """ε*(x_t, ∅) − η (ε*(x_t, c) − ε*(x_t, ∅)): the original's prediction guided away from the concept."""
    return eps_null - eta * (eps_cond - eps_null)


@register_concept_method("esd")
@dataclass
class ESD(ConceptMethod):
    """Erasing concepts by negative guidance (ESD-x: cross-attention; params=noxattn: ESD-u)."""

    negative_guidance: float = 1.0  # η

    def draw(self, setting, g: torch.Generator) -> Draws:
        return noised_draws(setting, setting.pool(), self.per_concept, g)

    def concept_losses(self, setting, denoiser: nn.Module, concepts: torch.Tensor, draws: Draws) -> torch.Tensor:
        model = setting.model
        x0, noise, t, c = flat(draws, concepts)
        x_t = model.add_noise(x0, noise, t)
        cond, null = model.condition(c), model.unconditional(len(c))
        with torch.no_grad():
            eps_c, eps_0 = model.predict_noise(setting.original, torch.cat([x_t, x_t]), torch.cat([t, t]),
                                               torch.cat([cond, null])).chunk(2)
            target = esd_target(eps_c, eps_0, self.negative_guidance)
        pred = model.predict_noise(denoiser, x_t, t, cond)
        return per_concept_mean((pred - target).pow(2).flatten(1).mean(1), len(concepts))
