"""Relabelling methods: random labels (RL), SalUn, Boundary Shrink and Boundary Expanding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..training.loop import predict_logits
from .base import Batch, Context, Phase, UnlearningMethod, ce
from .registry import register_method


def random_other_labels(y: torch.Tensor, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from the true one for every sample."""
    shift = torch.randint(1, num_classes, y.shape, generator=g).to(y.device)
    return (y + shift) % num_classes


def draw_fake_labels(batches: dict[str, Batch], ctx: Context) -> dict[str, torch.Tensor]:
    """The step's random wrong labels ỹ ≠ y, one per sample of the batch, from the run's generator."""
    b = batches["all"]
    return {"fake": random_other_labels(b.y, ctx.data.num_classes, ctx.rng)}


def relabel_loss(model: nn.Module, batches: dict[str, Batch], ctx: Context) -> torch.Tensor:
    """Σ (1−w)·CE(y) + w·CE(ỹ) over a batch of the whole training set, ỹ ≠ y random (`draw_fake_labels`).

    With 0/1 weights this is training on D_r ∪ {(x, ỹ): x ∈ D_f}, shuffled together.
    """
    b = batches["all"]
    logits = model(b.x)
    per_sample = (1 - b.w) * F.cross_entropy(logits, b.y, reduction="none") + \
        b.w * F.cross_entropy(logits, b.drawn["fake"], reduction="none")
    return per_sample.mean()


@register_method("random_label", aliases=("rl",))
@dataclass(kw_only=True)
class RandomLabel(UnlearningMethod):
    """RL: train on the retain set together with the forget set under random wrong labels."""

    stackable = True

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        return [Phase(("all",), relabel_loss, draw=draw_fake_labels)]


@register_method("salun")
@dataclass(kw_only=True)
class SalUn(UnlearningMethod):
    """SalUn: RL restricted to the parameters most salient for the forget set given (top fraction)."""

    stackable = True

    sparsity: float = 0.5  # fraction of parameters allowed to change

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        ctx.grad_mask = saliency_mask(model, ctx, self.sparsity, self.batch_size or 128)
        return model

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        return [Phase(("all",), relabel_loss, draw=draw_fake_labels)]


def saliency_mask(model: nn.Module, ctx: Context, keep: float, batch_size: int) -> dict[str, torch.Tensor]:
    """1 for the `keep` fraction of weights with the largest |∇θ Σ w_i CE_i| (a global threshold)."""
    data, w = ctx.data, ctx.weights
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    forget = torch.nonzero(w > 0).flatten()
    was_training = model.training
    model.eval()
    for idx in forget.split(batch_size):
        loss = (F.cross_entropy(model(data.x_train[idx]), data.y_train[idx], reduction="none") * w[idx]).sum()
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                grads[n] += g.abs()
    model.train(was_training)
    flat = torch.cat([g.flatten() for g in grads.values()])
    k = max(1, int(round(keep * flat.numel())))
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    return {n: (g >= threshold).float() for n, g in grads.items()}


@register_method("boundary_shrink", aliases=("bs",))
@dataclass(kw_only=True)
class BoundaryShrink(UnlearningMethod):
    """BS: relabel each forget sample with the nearest wrong class found by an FGSM step, fine-tune on D_f."""

    differentiable = False
    bound: float = 0.1  # FGSM step in [0, 1] pixel units

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        data, teacher = ctx.data, ctx.original
        labels = data.y_train.clone()
        forget = torch.nonzero(ctx.weights > 0).flatten()
        for idx in (forget.split(1024) if len(forget) else ()):
            x = data.x_train[idx].clone().requires_grad_(True)
            loss = F.cross_entropy(teacher(x), data.y_train[idx])
            (grad,) = torch.autograd.grad(loss, x)
            x_adv = x.detach() + (self.bound / data.input_std) * grad.sign()
            logits = predict_logits(teacher, x_adv)
            # the nearest *other* class: if the step did not cross the boundary, take the runner-up
            logits[torch.arange(len(idx)), data.y_train[idx]] = -torch.inf
            labels[idx] = logits.argmax(1)
        ctx.extra["shrink_labels"] = labels
        return model

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        def loss(model, batches, ctx):
            b = batches["forget"]
            return b.forget_mean(ce(model, b, ctx.extra["shrink_labels"][b.idx]))

        return [Phase(("forget",), loss)]


@register_method("boundary_expand", aliases=("be", "boundary_expanding"))
@dataclass(kw_only=True)
class BoundaryExpand(UnlearningMethod):
    """BE: add a shadow class, train the forget set into it, then remove the shadow neuron."""

    stackable = True

    differentiable = False

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        old: nn.Linear = model.classifier
        with torch.random.fork_rng(devices=[]):  # the shadow neuron's init comes from the run's seed
            torch.manual_seed(ctx.seed)
            wide = nn.Linear(old.in_features, old.out_features + 1).to(old.weight)
        with torch.no_grad():
            wide.weight[:-1].copy_(old.weight)
            wide.bias[:-1].copy_(old.bias)
        model.classifier = wide
        return model

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        def loss(model, batches, ctx):
            b = batches["forget"]
            shadow = torch.full_like(b.y, ctx.data.num_classes)
            return b.forget_mean(ce(model, b, shadow))

        return [Phase(("forget",), loss)]

    def finish(self, model: nn.Module, ctx: Context) -> nn.Module:
        wide: nn.Linear = model.classifier
        narrow = nn.Linear(wide.in_features, wide.out_features - 1).to(wide.weight)
        with torch.no_grad():
            narrow.weight.copy_(wide.weight[:-1])
            narrow.bias.copy_(wide.bias[:-1])
        model.classifier = narrow
        return model
