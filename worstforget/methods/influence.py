"""Influence unlearning (IU / WoodFisher; the influence-function family PUMA belongs to)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..core.progress import Progress
from ..core.seeds import generator
from ..datasets import Dataset
from .base import UnlearningMethod, check_weights
from .registry import register_method


def flat_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
              batch_size: int) -> torch.Tensor:
    """∇θ Σ_i weights_i · CE_i as one flat vector (model in eval mode)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), device=x.device)
    for chunk in torch.arange(len(y), device=x.device).split(batch_size):
        loss = (F.cross_entropy(model(x[chunk]), y[chunk], reduction="none") * weights[chunk]).sum()
        total += torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    return total


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(n, P) per-sample gradients of the cross-entropy, vectorised with torch.func."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(p, xi, yi):
        out = functional_call(model, ({**p}, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None])

    rows = []
    for chunk in torch.arange(len(y), device=x.device).split(batch_size):
        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x[chunk], y[chunk])
        rows.append(torch.cat([g[n].flatten(1) for n in names], dim=1))
    return torch.cat(rows)


@register_method("influence", aliases=("iu", "wfisher", "woodfisher"))
@dataclass(kw_only=True)
class Influence(UnlearningMethod):
    """IU: one Newton-style step θ ← θ + α·H⁻¹v, H the damped empirical Fisher of sampled retain gradients.

    v = ∇L_f/N − ∇L_r·n_f/(N·n_r) (Koh & Liang's removal direction, as in WoodFisher unlearning).
    H = λI + (1/n) Σ g_j g_jᵀ over n retain samples is inverted exactly through the Woodbury identity
    (an n×n solve), which equals WoodFisher's rank-one recursion without its accumulated rounding.
    """

    differentiable = False
    iterative = False
    alpha: float = 1.0  # step size along H⁻¹v
    damping: float = 1e-3  # λ
    num_fisher_samples: int = 512  # retain samples whose gradients form the Fisher (memory: n × #params)

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data)
        model = copy.deepcopy(original).to(data.device).eval()
        bs = self.batch_size or 256
        n_f, n_r = float(w.sum()), float((1 - w).sum())
        if n_f == 0 or n_r == 0:
            return model
        n = n_f + n_r
        g_f = flat_grad(model, data.x_train, data.y_train, w, bs)
        g_r = flat_grad(model, data.x_train, data.y_train, 1 - w, bs)
        v = g_f / n - g_r * n_f / (n * n_r)
        retain = torch.nonzero(w < 1).flatten()
        pick = retain[torch.randperm(len(retain), generator=generator(seed, "influence-fisher"))
                      [: self.num_fisher_samples].to(retain.device)]
        G = per_sample_grads(model, data.x_train[pick], data.y_train[pick], bs)  # (n_s, P)
        m = len(pick)
        # (λI + GᵀG/m)⁻¹ v = (v − Gᵀ (mλ I + G Gᵀ)⁻¹ G v) / λ   (Woodbury)
        small = G @ G.T + m * self.damping * torch.eye(m, device=G.device)
        step = (v - G.T @ torch.linalg.solve(small, G @ v)) / self.damping
        with torch.no_grad():
            offset = 0
            for p in (p for p in model.parameters() if p.requires_grad):
                p.add_(self.alpha * step[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        return model
