"""The shape every concept-conditional diffusion model takes for concept unlearning, the prompt-wise search and
the generation metrics: the tiny conditional UNet trained here on an embedded objects × styles set and a user's
Stable Diffusion folder (`--model sd:PATH`) both implement it, so ESD, concept ablation and the search are
written once."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ConceptDiffusion(Protocol):
    """A concept is an index into `concepts` (e.g. an (object, style) pair and its prompt)."""

    denoiser: torch.nn.Module  # the network unlearning updates (a UNet predicting the added noise)
    concepts: list[str]  # one prompt per concept, e.g. "a painting of a 3 in ink style"
    num_train_timesteps: int

    def condition(self, concepts: torch.Tensor) -> Any:
        """Conditioning the denoiser takes for concept ids (long tensor, shape [B])."""

    def unconditional(self, batch: int) -> Any:
        """The empty prompt's conditioning (classifier-free guidance's null), batch copies."""

    def predict_noise(self, denoiser: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """ε̂(x_t, t, cond) of `denoiser` (the original or an unlearned copy)."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε (the training scheduler's forward process)."""

    def parameters_for(self, which: str) -> list[torch.nn.Parameter]:
        """The parameters a method updates: "all", "xattn" (cross-attention / conditioning path, ESD-x) or
        "noxattn" (everything else, ESD-u)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → the space the denoiser works in (identity for pixel models, the VAE for Stable Diffusion)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `encode`; images in [0, 1]."""

    def generate(self, denoiser: torch.nn.Module, concepts: torch.Tensor, *, steps: int, guidance: float,
                 generator: torch.Generator) -> torch.Tensor:
        """Images in [0, 1] for each concept id, sampled with classifier-free guidance."""
