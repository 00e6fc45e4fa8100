"""Population-level comparisons that need no shadow models: the loss-threshold attack, the two-sample
KS test (TOFU's forget quality) and RUM's tug-of-war (ToW) score.

Owns only arithmetic on arrays and accuracy dictionaries; losses and accuracies come from elsewhere.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .roc import _tpr_at, balanced_accuracy, curve_area, roc_curve
from .scores import PrivacyInputError, as_float_array

TOW_SPLITS = ("forget", "retain", "test")


def loss_threshold_attack(loss_members, loss_nonmembers) -> dict[str, float]:
    """The global loss-threshold membership attack (Yeom et al.): a low loss means "member".

    Args:
        loss_members: (n_pos,) per-example losses of true members.
        loss_nonmembers: (n_neg,) per-example losses of true non-members.

    Returns:
        ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr`` and ``balanced_accuracy`` of the score −loss,
        swept over every threshold.
    """
    # Infinite losses (a zero probability) are legitimate extreme scores; NaN is rejected by roc_curve.
    pos = as_float_array(loss_members, "loss_members", ndim=1, finite=False)
    neg = as_float_array(loss_nonmembers, "loss_nonmembers", ndim=1, finite=False)
    fpr, tpr = roc_curve(-pos, -neg)
    low = _tpr_at(fpr, tpr, np.array([0.01, 0.001]))  # FPR < target, as LiRA's plot.py
    return {
        "auc": curve_area(fpr, tpr),
        "tpr_at_1pct_fpr": float(low[0]),
        "tpr_at_0.1pct_fpr": float(low[1]),
        "balanced_accuracy": balanced_accuracy(fpr, tpr),
    }


def ks_test(a, b) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``, exact/asymptotic "auto").

    TOFU reports the p-value between unlearned- and retrained-model statistics as "forget quality":
    a large p-value means the samples are compatible.

    Args:
        a: (n_a,) first sample.
        b: (n_b,) second sample.

    Returns:
        ``(statistic, p_value)`` as floats.
    """
    x = as_float_array(a, "a", ndim=1)
    y = as_float_array(b, "b", ndim=1)
    if x.size == 0 or y.size == 0:
        raise PrivacyInputError("the KS test needs two non-empty samples")
    from scipy.stats import ks_2samp

    res = ks_2samp(x, y)
    return float(res.statistic), float(res.pvalue)


def tug_of_war(acc_u: Mapping[str, float], acc_r: Mapping[str, float]) -> float:
    """RUM's tug-of-war: Π over {forget, retain, test} of (1 − |Acc_U − Acc_R| / 100).

    Args:
        acc_u: Accuracies of the unlearned model in percent, with keys "forget", "retain", "test"
            (other keys are ignored).
        acc_r: The same for the retrained reference.

    Returns:
        ToW in [0, 1]; 1 when every accuracy matches the reference.
    """
    factors = []
    for split in TOW_SPLITS:
        if split not in acc_u or split not in acc_r:
            raise PrivacyInputError(f"tug_of_war needs '{split}' accuracy for both models; got keys "
                                    f"{sorted(acc_u)} and {sorted(acc_r)}")
        u, r = float(acc_u[split]), float(acc_r[split])
        if not (0.0 <= u <= 100.0 and 0.0 <= r <= 100.0):
            raise PrivacyInputError(f"{split} accuracies must be percentages in [0, 100], got {u} and {r}")
        factors.append(1.0 - abs(u - r) / 100.0)
    return float(np.prod(factors))
