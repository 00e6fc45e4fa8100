"""ROC analysis of a membership score: the curve, its AUC, TPR at a fixed low FPR, and storage-size curves.

Convention throughout: a *higher* score means "member" (for unlearning audits: "still remembers the
example"). Everything is exact over the empirical samples (every distinct score is a threshold), and
vectorised with numpy; no sklearn dependency, though the results agree with `sklearn.metrics`.
"""
from __future__ import annotations

import numpy as np

from .scores import PrivacyInputError, as_float_array


def _two_samples(scores_members, scores_nonmembers) -> tuple[np.ndarray, np.ndarray]:
    pos = as_float_array(scores_members, "scores_members", ndim=1, finite=False).ravel()
    neg = as_float_array(scores_nonmembers, "scores_nonmembers", ndim=1, finite=False).ravel()
    if pos.size == 0 or neg.size == 0:
        raise PrivacyInputError("ROC analysis needs at least one member and one non-member score")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise PrivacyInputError("membership scores contain NaN; drop those examples before the ROC analysis")
    return pos, neg


def roc_curve(scores_members, scores_nonmembers) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC curve of the rule "member if score ≥ t", over every distinct score t.

    Args:
        scores_members: (n_pos,) scores of true members (positives).
        scores_nonmembers: (n_neg,) scores of true non-members (negatives).

    Returns:
        ``(fpr, tpr)``, two float64 arrays of equal length starting at (0, 0) and ending at (1, 1), both
        non-decreasing (thresholds run from +∞ down to the smallest score). Tied scores form one point,
        so a tie between a member and a non-member is a diagonal segment.
    """
    pos, neg = _two_samples(scores_members, scores_nonmembers)
    scores = np.concatenate([pos, neg])  # (n,)
    is_pos = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(-scores, kind="stable")  # descending
    s, y = scores[order], is_pos[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # One ROC point per distinct score: the last position of each run of equal values. (`!=` rather than
    # np.diff so that runs of ±inf are recognised as ties.)
    last_of_run = np.r_[s[1:] != s[:-1], True]
    fpr = np.r_[0.0, fp[last_of_run] / neg.size]
    tpr = np.r_[0.0, tp[last_of_run] / pos.size]
    return fpr, tpr


def auc(scores_members, scores_nonmembers) -> float:
    """Area under the ROC curve = P(member score > non-member score) + ½ P(tie) (Mann–Whitney U).

    Args:
        scores_members: (n_pos,) scores of members.
        scores_nonmembers: (n_neg,) scores of non-members.

    Returns:
        AUC in [0, 1]; 0.5 means the score carries no membership signal.
    """
    pos, neg = _two_samples(scores_members, scores_nonmembers)
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks give ties half credit
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _tpr_at(fpr_curve: np.ndarray, tpr_curve: np.ndarray, target, strict: bool = True) -> np.ndarray:
    target = np.asarray(target, dtype=np.float64)
    if np.any(np.isnan(target)) or np.any(target < 0):
        raise PrivacyInputError(f"target FPR must be >= 0, got {target}")
    # fpr_curve is non-decreasing and tpr_curve rises with it, so the largest TPR with FPR < target (≤ when
    # not strict) sits at the last curve point with FPR < target (≤).
    idx = np.searchsorted(fpr_curve, target, side="left" if strict else "right") - 1  # (...,)
    return np.where(idx >= 0, tpr_curve[np.maximum(idx, 0)], 0.0)


def tpr_at_fpr(scores_members, scores_nonmembers, fpr=0.01, *, strict: bool = True):
    """Largest TPR over thresholds whose FPR < ``fpr`` (the LiRA low-FPR metric, as the reference computes it).

    The reference (tensorflow/privacy ``mi_lira_2021/plot.py``) reads ``tpr[np.where(fpr < .001)[0][-1]]``:
    a strict ``<``. The two rules differ only when the target is an exact multiple of 1/n_neg — e.g. at
    0.1% with 1,000 or 10,000 non-members, where ``≤`` also admits the threshold with exactly
    n_neg/1000 false positives.

    Args:
        scores_members: (n_pos,) scores of members.
        scores_nonmembers: (n_neg,) scores of non-members.
        fpr: Target false-positive rate, a float or an array of them.
        strict: True (default): FPR < target, the reference's rule; with a target of 0 the result is 0
            (no threshold has a negative FPR). False: FPR ≤ target.

    Returns:
        A float for a scalar ``fpr``, else a float64 array shaped like ``fpr``.
    """
    f, t = roc_curve(scores_members, scores_nonmembers)
    out = _tpr_at(f, t, fpr, strict)
    return float(out) if out.ndim == 0 else out


def member_threshold(scores_nonmembers, fpr: float) -> float:
    """The score v with "member if score > v" achieving `tpr_at_fpr` (strict FPR < ``fpr``) exactly: the
    (k+1)-th largest non-member score, k the most non-members the rule may accept (−∞ when all may be). Whatever
    the members, TPR at that FPR is the fraction of member scores above v — so a set's TPR is the mean of its
    examples' own fractions, which is what ranks examples by their part in it (`lira.u_lira_per_example`)."""
    neg = np.sort(as_float_array(scores_nonmembers, "scores_nonmembers", ndim=1, finite=False).ravel())[::-1]
    if neg.size == 0 or np.isnan(neg).any():
        raise PrivacyInputError("a threshold needs at least one non-member score and no NaN")
    k = int(np.ceil(fpr * neg.size)) - 1  # fp < fpr·n  ⇔  fp ≤ k
    if k < 0:  # fpr = 0: no threshold accepts anyone
        return float("inf")
    return float(neg[k]) if k < neg.size else float("-inf")


def curve_area(fpr_curve: np.ndarray, tpr_curve: np.ndarray) -> float:
    """Trapezoidal area under a ROC curve (equals `auc` of the scores it came from)."""
    f = np.asarray(fpr_curve, dtype=np.float64)
    t = np.asarray(tpr_curve, dtype=np.float64)
    return float(np.sum(np.diff(f) * (t[1:] + t[:-1])) / 2.0)


def balanced_accuracy(fpr_curve: np.ndarray, tpr_curve: np.ndarray) -> float:
    """Best balanced accuracy max_t (TPR + TNR)/2 along a ROC curve (LiRA's reported "accuracy")."""
    return float(np.max(1.0 - (fpr_curve + (1.0 - tpr_curve)) / 2.0))


def downsample_roc(fpr_curve: np.ndarray, tpr_curve: np.ndarray, max_points: int = 200
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` ROC points, spaced logarithmically in FPR, for log-log plots and storage.

    Each kept point is the top of the ROC staircase at its FPR (the largest TPR reached at that FPR),
    so `tpr_at_fpr` read off the reduced curve never overstates the full curve. The first point
    (FPR = 0, which log axes drop) and the last point (1, 1) are always kept.

    Args:
        fpr_curve: Non-decreasing FPR values of a full ROC curve (as from `roc_curve`).
        tpr_curve: Matching TPR values.
        max_points: Upper bound on the returned length, at least 2.

    Returns:
        ``(fpr, tpr)`` float64 arrays of length ≤ ``max_points``.
    """
    if max_points < 2:
        raise PrivacyInputError(f"max_points must be >= 2, got {max_points}")
    f = np.asarray(fpr_curve, dtype=np.float64)
    t = np.asarray(tpr_curve, dtype=np.float64)
    if f.size <= max_points:
        return f.copy(), t.copy()
    positive = f[f > 0]
    lo = np.log10(positive.min()) if positive.size else 0.0
    grid = np.logspace(lo, 0.0, max_points - 2)  # (max_points-2,) log-spaced FPR targets
    idx = np.searchsorted(f, grid, side="right") - 1
    # Top of the staircase at FPR 0, the log grid, and the final (1, 1) point.
    first = np.searchsorted(f, 0.0, side="right") - 1
    keep = np.unique(np.concatenate([[first], idx, [f.size - 1]]))
    return f[keep], t[keep]
