"""Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024): shrink the parameters that
matter far more to the forget set than to the training set as a whole, leave every other one untouched."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..core.progress import Progress
from ..datasets import Dataset
from .base import UnlearningMethod, check_weights
from .fisher import squared_gradients
from .registry import register_method


def importances(model: nn.Module, data: Dataset, w: torch.Tensor, *, batch_size: int
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(global, forget) diagonal importances: mean squared per-sample gradient over the whole training
    set, and its w-weighted mean Σ w_i g_i² / Σ w_i over the forget side. The model is used as given."""
    rows = torch.stack([torch.ones_like(w), w])
    total, forget = squared_gradients(model, data.x_train, data.y_train, rows, batch_size=batch_size)
    n, mass = float(data.num_train), float(w.sum())
    return {k: v / n for k, v in total.items()}, {k: v / mass for k, v in forget.items()}


def dampen_(model: nn.Module, global_imp: dict[str, torch.Tensor], forget_imp: dict[str, torch.Tensor], *,
            alpha: float, dampening: float) -> float:
    """In place: θ ← θ · min(λ·I_D / I_f, 1) where I_f > α·I_D; every other parameter keeps its exact bits.

    Returns the fraction of parameters dampened.
    """
    selected = total = 0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in forget_imp:
                continue
            g, f = global_imp[n], forget_imp[n]
            chosen = f > alpha * g  # implies f > 0, so the ratio below is finite where it is used
            factor = (dampening * g / torch.where(chosen, f, torch.ones_like(f))).clamp(max=1.0)
            p.copy_(torch.where(chosen, p * factor, p))
            selected += int(chosen.sum())
            total += chosen.numel()
    return selected / max(total, 1)


@register_method("ssd", aliases=("selective_synaptic_dampening",))
@dataclass(kw_only=True)
class SelectiveSynapticDampening(UnlearningMethod):
    """SSD: diagonal importances of the forget side vs the whole training set; parameters with
    I_f > α·I_D are multiplied by min(λ·I_D/I_f, 1). One pass of per-sample gradients, no training.

    Source: Foster et al., "Fast Machine Unlearning Without Retraining Through Selective Synaptic
    Dampening", AAAI 2024 — α = 10 (selection) and λ = 1 (dampening) as in the paper; the exponent of the
    reference code's dampening factor is fixed at its value 1. Importances are means of squared
    *per-sample* gradients (the diagonal empirical Fisher); the reference squares minibatch gradients,
    which depends on the batch size. Forget weights enter as Σ w_i g_i² / Σ w_i; an empty forget side
    changes nothing. After `apply`, `last_report["dampened_fraction"]` is the share of parameters scaled.
    """

    differentiable = False
    iterative = False
    alpha: float = 10.0  # selection: dampen where forget importance > alpha × global importance
    dampening: float = 1.0  # λ: the scale is min(λ · global / forget, 1)

    report_keys: ClassVar[tuple[str, ...]] = ("dampened_fraction",)

    def __post_init__(self) -> None:
        self.last_report: dict = {}

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data).detach()
        model = copy.deepcopy(original).to(data.device).eval()
        fraction = 0.0
        if float(w.sum()) > 0:
            global_imp, forget_imp = importances(model, data, w, batch_size=self.batch_size or 128)
            fraction = dampen_(model, global_imp, forget_imp, alpha=self.alpha, dampening=self.dampening)
        self.last_report = {"dampened_fraction": fraction}
        return model
