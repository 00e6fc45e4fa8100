"""Forget sets: training indices and their masks and weights (masks.py), and the one registry of set kinds
(kinds.py) — worst-case, lowest-loss, heuristic, memorization, exposure, random, class, given — each with its
table label and, for the one-shot kinds, a score over the training samples."""
from .kinds import (
    BASELINES,
    KIND_LABELS,
    KIND_NAMES,
    KINDS,
    SELECTORS,
    SET_KINDS,
    ForgetSetKind,
    KindView,
    baseline_names,
    exposure_scores,
    memorization_scores,
    register_kind,
    selector_names,
)
from .masks import (
    check_forget_set,
    forget_mask,
    forget_size,
    forget_weights,
    forgotten_classes,
    load_forget_set,
    random_forget_set,
    top_scores,
)

__all__ = ["KINDS", "SET_KINDS", "KIND_LABELS", "KIND_NAMES", "BASELINES", "SELECTORS", "KindView", "ForgetSetKind",
           "register_kind", "baseline_names", "selector_names", "memorization_scores", "exposure_scores",
           "check_forget_set", "forget_mask", "forget_size", "forget_weights", "forgotten_classes", "load_forget_set",
           "random_forget_set", "top_scores"]
