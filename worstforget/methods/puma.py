"""PUMA (Wu, Hashemi & Srinivasa, AAAI 2022): "Performance Unchanged Model Augmentation for Training Data Removal".

This file owns the registered `puma` method. Per-sample gradients (for the Fisher) and weighted gradients
come from `influence.py` (`per_sample_grads`, `flat_grad`). The Woodbury solve is IU's identity, written
here for several right-hand sides with the m×m Gram computed once (IU's is inline in its `apply`); the
influence of re-weighting every sample on every criterion uses forward-mode derivatives
(`directional_losses`), so no N × #params matrix of per-sample gradients is ever built.

The model: at the trained optimum θ̂ of (1/N)Σℓ_i, re-weighting sample i by 1 + ε_i moves the parameters,
to first order (a Taylor expansion of the optimality condition), by −(ε_i/N)·H⁻¹g_i. So

    Δθ(ε) = (1/N)·H⁻¹·(Σ_i w_i g_i − Σ_j ε_j g_j)

removes the forget samples (weight w_i of sample i taken away; 0/1 weights remove whole samples) and
re-weights the others by ε. H is a damped empirical Fisher (Gauss–Newton) of the full training objective,
λI + (1/N)Σ g gᵀ, estimated from sampled per-sample gradients — every sample the forget weights touch
(up to `num_fisher_samples`) and as many of the others — and inverted with the Woodbury identity. λ is
`damping` times the Fisher's largest eigenvalue: the Fisher is rank-deficient, and in its null space the
first-order step is 1/λ times the gradient, so an absolute λ that suits one model wrecks another; a
relative λ is a scale-free trust region.

"Performance unchanged": the performance criteria are the mean retained loss of each class (retained
weight 1 − w). Their first-order change is ΔL = b − Aε, with b_k = q_kᵀΣw g/N, A_kj = q_kᵀg_j/N and
q_k = H⁻¹∇L_k. PUMA picks the re-weighting ε minimising ½‖b − Aε‖² by projected SGD (step `eta` in units
of the inverse Lipschitz constant of the sampled coordinate block, `steps` steps, seeded minibatches of
coordinates), projected onto −(1 − w_j) ≤ ε_j ≤ `max_reweight`·(1 − w_j) so no weight turns negative and
fully forgotten samples are not re-weighted. Started at ε = 0 and stopped early, it stays a small
correction rather than undoing the removal. Finally θ ← θ + α·Δθ(ε). No retraining: fast and approximate.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from ..core.progress import Progress
from ..core.runtime import Timer
from ..core.seeds import generator
from ..datasets import Dataset
from .base import UnlearningMethod, check_weights
from .influence import flat_grad, per_sample_grads
from .registry import register_method


def fisher_factor(model: nn.Module, data: Dataset, w: torch.Tensor, *, samples: int, seed: int,
                  batch_size: int) -> torch.Tensor:
    """U with UᵀU ≈ (1/N)Σ_i g_i g_iᵀ: sampled per-sample gradients, each stratum scaled to its population share.

    Strata: samples the forget weights touch (w > 0) and the others, each subsampled to `samples` rows, so
    the directions the removal moves along are always in the estimate.
    """
    n = data.num_train
    rows = []
    for name, mask in (("touched", w > 0), ("untouched", w == 0)):
        idx = torch.nonzero(mask).flatten()
        if len(idx) == 0:
            continue
        pick = idx[torch.randperm(len(idx), generator=generator(seed, f"puma-fisher-{name}"))[:samples].to(idx.device)]
        g = per_sample_grads(model, data.x_train[pick], data.y_train[pick], batch_size)
        rows.append(g * (len(idx) / (n * len(pick))) ** 0.5)
    return torch.cat(rows)


def woodbury_solve(u: torch.Tensor, gram: torch.Tensor, damping: float, v: torch.Tensor) -> torch.Tensor:
    """(λI + UᵀU)⁻¹ V for V of shape (P,) or (P, K), through an m×m solve with the Gram UUᵀ (m = rows of U)."""
    small = gram + damping * torch.eye(len(gram), device=gram.device, dtype=gram.dtype)
    return (v - u.T @ torch.linalg.solve(small, u @ v)) / damping


def directional_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor,
                       batch_size: int) -> torch.Tensor:
    """(K, n) derivatives of every sample's cross-entropy along each column of `directions` (P, K): G·D, transposed.

    Forward-mode (jvp) over the data: K forward passes instead of materialising n per-sample gradients.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    sizes = [params[n].numel() for n in names]
    out = torch.empty(directions.shape[1], len(y), device=x.device)
    for k in range(directions.shape[1]):
        tangent = {n: t.view_as(params[n]) for n, t in zip(names, directions[:, k].split(sizes))}
        for chunk in torch.arange(len(y), device=x.device).split(batch_size):
            def losses(p, xb=x[chunk], yb=y[chunk]):
                return F.cross_entropy(functional_call(model, (p, buffers), (xb,)), yb, reduction="none")

            out[k, chunk] = jvp(losses, (params,), (tangent,))[1]
    return out


@register_method("puma")
@dataclass(kw_only=True)
class Puma(UnlearningMethod):
    """PUMA: remove the forget samples' first-order influence, re-weighting the rest so per-class loss is unchanged.

    Fractional forget weights remove that share of a sample (the first-order model is linear in weights).
    After `apply`, `last_report` holds the run time, the predicted per-class loss change before and after
    re-weighting, and `retrained_fraction` = 0 (nothing is retrained).
    """

    differentiable = False
    iterative = False
    damping: float = 0.01  # λ of the damped Fisher, relative to its largest eigenvalue
    num_fisher_samples: int = 512  # per stratum (touched by the forget weights / not): memory rows × #params
    eta: float = 0.5  # projected-SGD step, in units of 1/‖A_S‖²_F of the minibatch (stable below 2)
    steps: int = 500  # projected-SGD steps on the re-weighting ε
    max_reweight: float = 1.0  # upper bound of ε_j as a multiple of the retained weight 1 − w_j
    alpha: float = 1.0  # scale of the final parameter update

    report_keys: ClassVar[tuple[str, ...]] = ("retrained_fraction", "unlearn_seconds")

    def __post_init__(self) -> None:
        self.last_report: dict = {}

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data).detach()
        model = copy.deepcopy(original).to(data.device).eval()
        with Timer() as timer:
            report = self._unlearn(model, data, w, seed)
            if data.device.type == "cuda":
                torch.cuda.synchronize(data.device)
        self.last_report = {"retrained_fraction": 0.0, "unlearn_seconds": timer.seconds, **report}
        return model

    def _unlearn(self, model: nn.Module, data: Dataset, w: torch.Tensor, seed: int) -> dict:
        n, bs = data.num_train, self.batch_size or 256
        if float(w.sum()) == 0 or float((1 - w).sum()) == 0:
            return {"criteria_change_before": 0.0, "criteria_change_after": 0.0, "mean_abs_reweight": 0.0}
        x, y = data.x_train, data.y_train
        u = fisher_factor(model, data, w, samples=self.num_fisher_samples, seed=seed, batch_size=bs)
        gram = u @ u.T
        lam = self.damping * max(float(torch.linalg.eigvalsh(gram)[-1]), 1e-12)
        # criteria gradients ∇L_k: each class's weighted mean retained loss, from its own samples only
        kept = 1.0 - w
        crit = []
        for c in range(data.num_classes):
            idx = torch.nonzero((y == c) & (kept > 0)).flatten()
            if len(idx) == 0:
                continue
            crit.append(flat_grad(model, x[idx], y[idx], kept[idx] / kept[idx].sum(), bs))
        q = woodbury_solve(u, gram, lam, torch.stack(crit, dim=1))  # (P, K): H⁻¹∇L_k
        touched = torch.nonzero(w > 0).flatten()
        removal = flat_grad(model, x[touched], y[touched], w[touched], bs)  # Σ w g
        b = (removal @ q) / n  # (K,) predicted criteria change of the removal alone
        a = directional_losses(model, x, y, q, bs) / n  # (K, N): A_kj = q_kᵀ g_j / N
        eps = self._reweight(a, b, kept, seed)
        # Σ w g − Σ ε g is the gradient of Σ (w − ε)ℓ: one weighted backward pass
        step = woodbury_solve(u, gram, lam, flat_grad(model, x, y, w - eps, bs) / n)
        with torch.no_grad():
            offset = 0
            for p in (p for p in model.parameters() if p.requires_grad):
                p.add_(self.alpha * step[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        return {"criteria_change_before": float(b.abs().max()),
                "criteria_change_after": float((b - a @ eps).abs().max()),
                "mean_abs_reweight": float(eps.abs().mean())}

    def _reweight(self, a: torch.Tensor, b: torch.Tensor, kept: torch.Tensor, seed: int) -> torch.Tensor:
        """Projected SGD on ½‖b − Aε‖² over seeded minibatches of coordinates, within the weight box."""
        lo, hi = -kept, self.max_reweight * kept
        eps = torch.zeros_like(kept)
        free = torch.nonzero(kept > 0).flatten()
        residual = b.clone()
        bs = min(len(free), self.batch_size or len(free))
        g = generator(seed, "puma-reweight")
        for _ in range(self.steps):
            pick = free[torch.randperm(len(free), generator=g)[:bs].to(free.device)]
            a_s = a[:, pick]  # (K, B)
            lipschitz = float(a_s.pow(2).sum())
            if lipschitz == 0:
                continue
            new = (eps[pick] + self.eta / lipschitz * (a_s.T @ residual)).clamp(lo[pick], hi[pick])
            residual -= a_s @ (new - eps[pick])
            eps[pick] = new
        return eps
