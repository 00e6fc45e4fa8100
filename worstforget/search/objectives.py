"""Per-sample values of the upper objective under a model: what 'still fits the forget set' means.

Each objective maps (logits, labels, references) to one value per sample, lower = the sample is worse
forgotten; the search minimises Σ w_i value_i(θ_u(w)) + γ‖w‖², so it looks for the samples the method
forgets worst. `references` holds per-sample statistics of models that never trained on the sample
(`SampleReferences`, rows aligned with the logits); objectives that do not read it get None.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..core.registry import Registry
from ..training.outputs import logit_scaled_confidence
from ..training.reference import SampleReferences, exposure

Objective = Callable[[torch.Tensor, torch.Tensor, "SampleReferences | None"], torch.Tensor]
OBJECTIVES: Registry[Objective] = Registry("search objective")


def uses_references(kind: str) -> bool:
    """Whether the objective `kind` reads the reference statistics (the search then trains or loads them)."""
    return bool(getattr(OBJECTIVES.get(kind), "uses_references", False))


@OBJECTIVES.register("loss")
def loss_objective(logits: torch.Tensor, y: torch.Tensor, refs: SampleReferences | None = None) -> torch.Tensor:
    """Cross-entropy of the true label (the paper's objective)."""
    return F.cross_entropy(logits, y, reduction="none")


@OBJECTIVES.register("margin")
def margin_objective(logits: torch.Tensor, y: torch.Tensor, refs: SampleReferences | None = None) -> torch.Tensor:
    """Minus the logit-scaled confidence: keeps ranking samples whose loss has saturated near 0."""
    return -logit_scaled_confidence(logits, y)


@OBJECTIVES.register("exposure")
def exposure_objective(logits: torch.Tensor, y: torch.Tensor, refs: SampleReferences | None) -> torch.Tensor:
    """Minus |φ − mean φ of models that never trained on the sample|, φ the logit-scaled confidence.

    Two-sided (over-forgetting stands out as much as under-forgetting); see training/reference.py `exposure`
    for the measurements behind the units and the form.

    Read with `--lower-level method`: with the paper's sign steps (lr 1e-3) the model hardly moves and the
    search found sets at TPR@0.1%FPR 0.23 (digits, finetune), no better than the loss objective's 0.18.
    """
    if refs is None:
        raise ValueError("the exposure objective needs the reference statistics (SampleReferences)")
    return -exposure(logits, y, refs)


exposure_objective.uses_references = True


@OBJECTIVES.register("confidence")
def confidence_objective(logits: torch.Tensor, y: torch.Tensor, refs: SampleReferences | None) -> torch.Tensor:
    """Minus |p_y − mean p_y of models that never trained on the sample|, p_y the true-label probability.

    The probability scale of the accuracy gap and of MIA-Efficacy (an SVC on this confidence): a sample
    the unlearned model still gets right with confidence while a model that never saw it does not (or the
    reverse, for relabelling) moves both. Two-sided, like `exposure`, whose logit scale U-LiRA reads.
    """
    if refs is None:
        raise ValueError("the confidence objective needs the reference statistics (SampleReferences)")
    return -(torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1) - refs.prob_mean).abs()


confidence_objective.uses_references = True


def per_sample_objective(logits: torch.Tensor, y: torch.Tensor, kind: str,
                         refs: SampleReferences | None = None) -> torch.Tensor:
    """The registered objective `kind` of every sample. (N,)"""
    return OBJECTIVES.get(kind)(logits, y, refs)


def class_means(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of per-sample values within each class. (C,)"""
    sums = torch.zeros(num_classes, dtype=values.dtype, device=values.device).index_add_(0, y, values)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(values.dtype)
    return sums / counts
