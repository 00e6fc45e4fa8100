"""Fisher forgetting (Golatkar et al., CVPR 2020) and the per-sample squared gradients it shares with SSD.

FF perturbs every parameter with Gaussian noise whose variance is α / F, F the diagonal Fisher
information of the retain side: parameters the retained data do not constrain get large noise, which
destroys what only the forget set had taught them, while well-constrained ones barely move.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from ..core.progress import Progress
from ..core.seeds import generator
from ..datasets import Dataset
from ..training.models import weight_layers
from .base import UnlearningMethod, check_weights
from .registry import register_method

# The reference's constants (Golatkar et al.'s code, kept by Unlearn-Sparse's `fisher_new`).
FISHER_FLOOR = 1e-8  # added to F before inverting
MAX_INVERSE = 1e3  # 1/F is clamped here for hidden parameters ...
MAX_INVERSE_OUTPUT = 1e2  # ... and here for the output layer
BOOST = 10.0  # variance multiplier of the output layer and of 1-D parameters (biases, norm scales)


def squared_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, *,
                      batch_size: int, all_labels: bool = False) -> list[dict[str, torch.Tensor]]:
    """Weighted sums of per-sample squared gradients, one dict of per-parameter sums per row of `weights`.

    Row k gives Σ_i weights[k, i] · s_i with s_i = (∇θ CE(f(x_i), y_i))² (the empirical Fisher) or, with
    `all_labels`, s_i = Σ_c p_c(x_i) · (∇θ CE(f(x_i), c))² (the Fisher's expectation over the model's own
    labels). Per-sample gradients are vmapped in chunks; samples whose weights are all 0 are skipped.
    The model is evaluated as it is (callers put it in eval mode, as the references do).

    Args:
        weights: (K, N) non-negative weights over the N samples.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    sums = [{n: torch.zeros_like(p) for n, p in params.items()} for _ in range(len(weights))]

    def log_probs(p, xi):
        logp = F.log_softmax(functional_call(model, (p, buffers), (xi[None],)), dim=1)[0]
        return logp, logp.detach()

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    active = torch.nonzero(weights.sum(0) > 0).flatten()
    if all_labels:  # one jacobian row per class: keep chunk × classes near batch_size
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1]) if len(x) else 1
        chunk_size = max(1, batch_size // num_classes)
    else:
        chunk_size = batch_size
    for chunk in active.split(chunk_size):
        if all_labels:
            jac, logp = vmap(jacrev(log_probs, has_aux=True), in_dims=(None, 0))(params, x[chunk])  # (B, C, *shape)
            probs = logp.exp()  # (B, C); ∇CE(c) = −∇log p_c, the sign vanishes in the square
            per_sample = {n: torch.einsum("bc,bc...->b...", probs, jac[n].square()) for n in names}
        else:
            g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x[chunk], y[chunk])  # (B, *shape)
            per_sample = {n: g[n].square() for n in names}
        v = weights[:, chunk].to(x.dtype)  # (K, B)
        for k in range(len(weights)):
            for n in names:
                sums[k][n] += torch.tensordot(v[k], per_sample[n], dims=1)
    return sums


def output_parameters(model: nn.Module) -> set[int]:
    """ids of the final layer's parameters (the reference treats the classifier specially)."""
    return {id(p) for p in weight_layers(model)[-1].parameters()}


def noise_variance(model: nn.Module, fisher: dict[str, torch.Tensor], *, alpha: float,
                   row_mean: bool = True) -> dict[str, torch.Tensor]:
    """Per-parameter noise variance: α · min(1/(F + 1e-8), cap), averaged over each row's inputs (dim 1)
    when `row_mean`, ×10 for the output layer and for 1-D parameters; cap = 1e2 on the output layer, else 1e3."""
    output = output_parameters(model)
    out = {}
    for n, p in model.named_parameters():
        if n not in fisher:
            continue
        is_output = id(p) in output
        var = (1.0 / (fisher[n] + FISHER_FLOOR)).clamp(max=MAX_INVERSE_OUTPUT if is_output else MAX_INVERSE)
        var = alpha * var
        if row_mean and p.dim() > 1:  # one variance per output unit (and kernel position), as the reference
            var = var.mean(dim=1, keepdim=True).expand_as(p).clone()
        if is_output or p.dim() == 1:
            var = var * BOOST
        out[n] = var
    return out


def retain_fisher(model: nn.Module, data: Dataset, w: torch.Tensor, *, batch_size: int) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the retain side: Σ_i (1−w_i) s_i / Σ_i (1−w_i), s_i over the model's own labels."""
    keep = 1.0 - w
    (total,) = squared_gradients(model, data.x_train, data.y_train, keep[None], batch_size=batch_size, all_labels=True)
    mass = float(keep.sum())
    return {n: t / mass if mass > 0 else t for n, t in total.items()}


@register_method("fisher", aliases=("ff", "fisher_forgetting"))
@dataclass(kw_only=True)
class FisherForgetting(UnlearningMethod):
    """FF: θ ← θ + √var · ε, ε ~ N(0, I) seeded by the run's seed, var from `noise_variance` of the retain Fisher.

    Source: Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless Net", CVPR 2020, and their released
    code as kept by Unlearn-Sparse (`unlearn/fisher.py:fisher_new`): the clamps, the row averaging and the ×10
    for the classifier and 1-D parameters are theirs; α = 1e-6 is the value in Golatkar et al.'s code
    (Unlearn-Sparse leaves `--alpha` to the user). The Fisher is per sample, Σ_c p_c (∇ log p_c)² averaged
    over retain samples with weights 1 − w, as Golatkar et al.'s batch-size-1 loop computes it (Unlearn-Sparse
    squares batch-mean gradients of 32 samples instead, which shrinks F and so enlarges the noise).
    The class-removal special case of the reference (zeroing a forgotten class's classifier row) is not
    applied: forget sets here are arbitrary samples. Not iterative, nothing to differentiate.
    """

    differentiable = False
    iterative = False
    alpha: float = 1e-6  # noise scale: variance = alpha / Fisher (before clamps and multipliers)
    row_mean: bool = True  # average the variance over each output unit's inputs, as the reference does

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data).detach()
        model = copy.deepcopy(original).to(data.device).eval()
        fisher = retain_fisher(model, data, w, batch_size=self.batch_size or 128)
        variance = noise_variance(model, fisher, alpha=self.alpha, row_mean=self.row_mean)
        g = generator(seed, "fisher-noise")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in variance:
                    eps = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
                    p.add_(variance[n].sqrt() * eps)
        return model
