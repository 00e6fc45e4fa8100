"""UNSIR (Tarun, Chundawat, Mandal & Kankanhalli, IEEE TNNLS 2023): learn inputs that maximise the trained
model's error on the forget labels, train on them beside the retain data (impair), then on the retain
data alone (repair)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.seeds import generator
from .base import Batch, Context, Phase, UnlearningMethod
from .finetune import retain_ce
from .registry import register_method


def error_maximising_noise(model: nn.Module, init: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float,
                           penalty: float, batch_size: int) -> torch.Tensor:
    """argmax_n CE(f(n), y) − penalty·‖n‖² per noise input, by `steps` Adam steps from `init`. (n, *input)

    Every noise input has its own objective and Adam's update is element-wise, so inputs are optimised in
    chunks without changing the result; `model` must be frozen and in eval mode.
    """
    out = []
    for chunk in torch.arange(len(labels), device=labels.device).split(batch_size):
        noise = init[chunk].clone().requires_grad_(True)
        opt = torch.optim.Adam([noise], lr=lr)
        for _ in range(steps):
            per_sample = -F.cross_entropy(model(noise), labels[chunk], reduction="none") + \
                penalty * noise.flatten(1).square().sum(1)
            opt.zero_grad(set_to_none=True)
            per_sample.sum().backward()
            opt.step()
        out.append(noise.detach())
    return torch.cat(out) if out else init.clone()


def impair_loss(model: nn.Module, batches: dict[str, Batch], ctx: Context) -> torch.Tensor:
    """Σ (1−w)·CE(x, y) + w·CE(noise, y) over a batch of the whole training set: with 0/1 weights, training
    on D_r ∪ {(noise_i, y_i): i ∈ D_f} shuffled together, one noise input per forget sample."""
    b = batches["all"]
    rows = ctx.extra["unsir_row"][b.idx]
    has_noise = rows >= 0
    noise = ctx.extra["unsir_noise"][rows[has_noise]]
    # one forward for real and noise inputs, so batch-norm statistics mix them as the reference's batches do
    logits = model(torch.cat([b.x, noise]))
    real = F.cross_entropy(logits[: len(b.x)], b.y, reduction="none")
    noisy = torch.zeros_like(real).index_put(
        (torch.nonzero(has_noise).flatten(),), F.cross_entropy(logits[len(b.x):], b.y[has_noise], reduction="none"))
    return ((1 - b.w) * real + b.w * noisy).mean()


@register_method("unsir")
@dataclass(kw_only=True)
class Unsir(UnlearningMethod):
    """UNSIR: error-maximising noise per forget sample, then `impair_epochs` passes over retain + noise at
    lr and the remaining passes over the retain side at repair_lr.

    Source: Tarun et al., "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023, and its released code:
    noise from N(0, 1) optimised by Adam (lr 0.1, 5 × 8 = 40 steps) on −CE + 0.1·‖n‖²; impair 1 epoch with
    Adam at lr 0.02, repair 1 epoch with Adam at lr 0.01. The paper forgets whole classes with one batch of
    noise per class; written against per-sample weights, each sample with w_i > 0 gets its own noise input
    labelled y_i (initialised from the run's seed), mixed in with weight w_i while the sample itself keeps
    weight 1 − w_i — the sample-wise form later benchmarks use. The retain side is the whole of it (the
    reference uses a small retain subset), and one Adam state spans both stages (the reference restarts it).
    """

    epochs: int = 2  # impair_epochs impair passes, then repair passes
    impair_epochs: int = 1
    lr: float = 0.02  # impair learning rate
    repair_lr: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    noise_steps: int = 40
    noise_lr: float = 0.1
    noise_penalty: float = 0.1  # weight of ‖noise‖² in the noise objective

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        data = ctx.data
        forget = torch.nonzero(ctx.weights.detach() > 0).flatten()
        init = torch.randn((len(forget), *data.input_shape), generator=generator(ctx.seed, "unsir-noise"),
                           dtype=data.x_train.dtype).to(data.device)
        ctx.extra["unsir_noise"] = error_maximising_noise(
            ctx.original, init, data.y_train[forget], steps=self.noise_steps, lr=self.noise_lr,
            penalty=self.noise_penalty, batch_size=self.batch_size or 128)
        row = torch.full((data.num_train,), -1, dtype=torch.long, device=data.device)
        row[forget] = torch.arange(len(forget), device=data.device)
        ctx.extra["unsir_row"] = row  # training index → its noise input (−1: none)
        return model

    def lr_scale(self, ctx: Context) -> float:
        stage = 1.0 if ctx.epoch < self.impair_epochs else (self.repair_lr / self.lr if self.lr else 0.0)
        return stage * super().lr_scale(ctx)

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        if epoch < self.impair_epochs:
            return [Phase(("all",), impair_loss)]
        return [Phase(("retain",), retain_ce)]
