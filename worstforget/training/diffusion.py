"""A tiny concept-conditional diffusion model (`ConceptDiffusion`) trained here on an objects × styles set.

The denoiser is diffusers' `UNet2DConditionModel` with cross-attention on a two-token prompt [object token,
style token], so ESD-x ("xattn": the cross-attention `attn2` weights) means what it means on Stable
Diffusion. The tokens come from a fixed embedding table (`ConceptEncoder`: seeded random tokens, never trained), the
part Stable Diffusion's frozen text encoder plays: training, Retrain and unlearning all update the denoiser only,
and no token carries what the forgotten images looked like. Classifier-free guidance's null prompt is a pair of
null tokens, seen in training for `cond_dropout` of the samples.

diffusers is imported on use (the `generative` extra); `import worstforget` never needs it.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.errors import WorstforgetError
from ..core.seeds import generator as seeded

# The scheduler both training and the search's fixed timestep grid use (squared-cosine betas suit 8×8 images).
NUM_TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"


def require_diffusers():
    """diffusers, or one line saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise WorstforgetError("the generative task needs diffusers: pip install 'worstforget[generative]'") from None
    return diffusers


@dataclass(frozen=True)
class DiffusionConfig:
    """The tiny model and its training recipe (the original's and exact Retrain's)."""

    channels: tuple[int, ...] = (16, 32)
    token_dim: int = 32
    steps: int = 1000  # optimiser steps
    batch_size: int = 64
    lr: float = 3e-3
    cond_dropout: float = 0.1  # share of samples trained with the null prompt (classifier-free guidance)
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}


class ConceptEncoder(nn.Module):
    """Concept id → [object token, style token]; the last row of each table is the null token. The tokens are
    fixed unit-variance Gaussians drawn from their own seed (frozen: the "text encoder")."""

    def __init__(self, num_objects: int, num_styles: int, dim: int):
        super().__init__()
        self.num_objects, self.num_styles = num_objects, num_styles
        g = seeded(0, "concept-tokens")
        self.register_buffer("objects", torch.randn(num_objects + 1, dim, generator=g))
        self.register_buffer("styles", torch.randn(num_styles + 1, dim, generator=g))

    def forward(self, concepts: torch.Tensor) -> torch.Tensor:
        """(B,) concept ids (−1: the null prompt) → (B, 2, dim)."""
        null = concepts < 0
        obj = torch.where(null, self.num_objects, concepts // self.num_styles)
        sty = torch.where(null, self.num_styles, concepts % self.num_styles)
        return torch.stack([self.objects[obj], self.styles[sty]], dim=1)


def build_denoiser(image_shape: tuple[int, ...], cfg: DiffusionConfig, seed: int) -> nn.Module:
    diffusers = require_diffusers()
    torch.manual_seed(seed)  # diffusers initialises from the global stream; seeded per model for reproducibility
    channels, size = cfg.channels, image_shape[-1]
    return diffusers.UNet2DConditionModel(
        sample_size=size, in_channels=image_shape[0], out_channels=image_shape[0], block_out_channels=channels,
        layers_per_block=1, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",), mid_block_type=None,
        cross_attention_dim=cfg.token_dim, attention_head_dim=8, norm_num_groups=8)


class TinyConceptDiffusion:
    """`ConceptDiffusion` for the embedded concept sets: pixels in [−1, 1], a frozen concept encoder."""

    def __init__(self, denoiser: nn.Module, prompts: list[str], image_shape: tuple[int, ...], *, num_objects: int,
                 num_styles: int, token_dim: int):
        diffusers = require_diffusers()
        self.denoiser, self.concepts = denoiser, list(prompts)
        self.encoder = ConceptEncoder(num_objects, num_styles, token_dim).to(next(denoiser.parameters()).device)
        self.image_shape = tuple(image_shape)
        self.num_train_timesteps = NUM_TRAIN_TIMESTEPS
        self.scheduler = diffusers.DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)
        self._ddim_config = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                                 clip_sample=True, set_alpha_to_one=True)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def condition(self, concepts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(concepts.to(self.device))

    def unconditional(self, batch: int) -> torch.Tensor:
        return self.condition(torch.full((batch,), -1, dtype=torch.long))

    def predict_noise(self, denoiser: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                      cond: torch.Tensor) -> torch.Tensor:
        return denoiser(x_t, t, encoder_hidden_states=cond).sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.scheduler.alphas_cumprod.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def parameters_for(self, which: str) -> list[nn.Parameter]:
        return select_parameters(self.denoiser, which)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def generate(self, denoiser: nn.Module, concepts: torch.Tensor, *, steps: int, guidance: float,
                 generator: torch.Generator) -> torch.Tensor:
        """DDIM (η = 0) with classifier-free guidance: deterministic given the generator's initial noise."""
        diffusers = require_diffusers()
        sched = diffusers.DDIMScheduler(**self._ddim_config)
        sched.set_timesteps(steps)
        n = len(concepts)
        x = torch.randn((n, *self.image_shape), generator=generator).to(self.device)
        cond = torch.cat([self.condition(concepts), self.unconditional(n)])
        was_training = denoiser.training
        denoiser.eval()
        for t in sched.timesteps:
            eps_c, eps_u = self.predict_noise(denoiser, torch.cat([x, x]), t.expand(2 * n).to(self.device),
                                              cond).chunk(2)
            x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
        denoiser.train(was_training)
        return self.decode(x)


def select_parameters(denoiser: nn.Module, which: str) -> list[nn.Parameter]:
    """ESD's parameter groups by name: xattn = the cross-attention blocks (`attn2`, ESD-x); noxattn = all but
    cross-attention, the time embedding and the output convolution (ESD-u, as ESD's code filters them);
    all = every parameter."""
    named = list(denoiser.named_parameters())
    if which == "all":
        return [p for _, p in named]
    if which == "xattn":
        return [p for n, p in named if "attn2" in n]
    if which == "noxattn":
        return [p for n, p in named if not ("attn2" in n or "time_embedding" in n or n.startswith("conv_out"))]
    raise WorstforgetError(f"unknown parameter group {which!r}; use all, xattn or noxattn")


def diffusion_loss(model, denoiser: nn.Module, x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖ε̂(x_t, t, c) − ε‖² (mean over pixels); the regression target is ε itself. (B,)"""
    pred = model.predict_noise(denoiser, model.add_noise(x0, noise, t), t, cond)
    return (pred - noise).pow(2).flatten(1).mean(1)


def train_concept_diffusion(x: torch.Tensor, concepts: torch.Tensor, *, num_objects: int, num_styles: int,
                            prompts: list[str], cfg: DiffusionConfig, seed: int | None = None,
                            device: str | torch.device = "cpu", progress=None,
                            description: str = "train diffusion") -> TinyConceptDiffusion:
    """Train a denoiser from scratch on images x (N, C, H, W) in [0, 1] with their concept ids."""
    seed = cfg.seed if seed is None else seed
    denoiser = build_denoiser(tuple(x.shape[1:]), cfg, seed).to(device)
    model = TinyConceptDiffusion(denoiser, prompts, tuple(x.shape[1:]), num_objects=num_objects,
                                 num_styles=num_styles, token_dim=cfg.token_dim)
    encoder = model.encoder
    g = seeded(seed, "diffusion-train")
    x, concepts = x.to(device), concepts.to(device)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    denoiser.train()
    task = progress.task(description, cfg.steps) if progress is not None else None
    n = len(x)
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g).to(device)
        c = concepts[idx].clone()
        c[(torch.rand(cfg.batch_size, generator=g) < cfg.cond_dropout).to(device)] = -1
        noise = torch.randn((cfg.batch_size, *x.shape[1:]), generator=g).to(device)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (cfg.batch_size,), generator=g).to(device)
        cond = encoder(c)  # fixed tokens: no gradient reaches them
        loss = diffusion_loss(model, denoiser, model.encode(x[idx]), cond, noise, t).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if task is not None:
            task.advance(1, loss=loss.item())
    if task is not None:
        task.close()
    denoiser.eval()
    return model


def copy_denoiser(denoiser: nn.Module) -> nn.Module:
    return copy.deepcopy(denoiser)
