"""Per-example likelihood-ratio membership scores (LiRA / U-LiRA) from shadow-model statistics.

Owns: online LiRA (Gaussians fitted to both "in" and "out" shadow statistics), offline LiRA ("out"
only), the fixed-variance variant, splitting one shadow array by a per-example in/out mask, and the
attack summary (AUC, TPR at 1 % and 0.1 % FPR, a downsampled ROC curve for storage).

Follows Carlini et al., "Membership Inference Attacks From First Principles" (S&P 2022; reference code
``tensorflow/privacy`` ``research/mi_lira_2021/plot.py`` and ``advanced_mia.compute_score_lira``) and its
unlearning form U-LiRA (Hayes et al., "Inexact Unlearning Needs More Careful Evaluations"): for a
forget example, the *in* shadows are models that still carry the example (trained on it and not
unlearned, i.e. original-like) and the *out* shadows are models retrained without it; the target is the
audited unlearned model. Statistics are logit-scaled confidences (`scores.logit_scaled_confidence`).

Conventions shared with the references: per-example centre = median (or mean) across shadow models,
spread = population standard deviation (ddof = 0) plus 1e-30. Scores are oriented so that *higher
means more member-like* ("still remembers"); the references return the negated quantity.
"""
from __future__ import annotations

import warnings

import numpy as np

from .roc import _tpr_at, balanced_accuracy, curve_area, downsample_roc, member_threshold, roc_curve
from .scores import PrivacyInputError, as_float_array

STD_EPS = 1e-30  # added to every standard deviation, as in the reference code


def _shadow(stats, mask, name: str) -> np.ndarray:
    """Shadow statistics (M, n) with entries outside ``mask`` set to NaN."""
    arr = as_float_array(stats, name, ndim=2, finite=False)
    if mask is None:
        valid = np.isfinite(arr)
    else:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != arr.shape:
            raise PrivacyInputError(f"the mask for {name} must be a bool array of shape {arr.shape}, "
                                    f"got {m.dtype} {m.shape}")
        valid = m & np.isfinite(arr)
    return np.where(valid, arr, np.nan)


def _fit(shadow: np.ndarray, center: str, fix_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example centre (n,) and spread (n,) of NaN-masked shadow statistics (M, n).

    Examples with no usable shadow model get NaN. With ``fix_variance`` the spread is one global value:
    the standard deviation of every usable statistic minus its own example's centre (as in
    ``advanced_mia``), so differences between examples' centres do not inflate it.
    """
    with warnings.catch_warnings():  # all-NaN columns (examples without shadows) are expected here
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmedian(shadow, axis=0) if center == "median" else np.nanmean(shadow, axis=0)  # (n,)
        if fix_variance:
            residual = shadow - mu[None, :]  # (M, n)
            sd = np.full(mu.shape, np.nanstd(residual) if np.isfinite(residual).any() else np.nan)
            sd[np.isnan(mu)] = np.nan
        else:
            sd = np.nanstd(shadow, axis=0)  # (n,) ddof = 0
    return mu, sd


def _check_target(target, n: int) -> np.ndarray:
    t = as_float_array(target, "target", finite=False)
    if t.ndim == 0 or t.shape[-1] != n:
        raise PrivacyInputError(f"target must have shape (..., {n}) to match the shadow statistics, got {t.shape}")
    return t


def _check_center(center: str) -> None:
    if center not in ("median", "mean"):
        raise PrivacyInputError(f"center must be 'median' or 'mean', got {center!r}")


def lira_online(target, stats_in, stats_out, *, mask_in=None, mask_out=None, fix_variance: bool = False,
                center: str = "median") -> np.ndarray:
    """Online LiRA: log N(target; μ_in, σ_in) − log N(target; μ_out, σ_out), per example.

    Args:
        target: (n,) statistic of each example under the audited model, or (..., n) for several
            audited models at once.
        stats_in: (M_in, n) statistics under shadow models that carry the example ("in"; for U-LiRA:
            not unlearned).
        stats_out: (M_out, n) statistics under shadow models without it ("out"; retrained).
        mask_in: Optional bool (M_in, n); False marks entries of ``stats_in`` to ignore (e.g. shadow
            models that were out for that example). NaN entries are ignored too.
        mask_out: Optional bool (M_out, n), the same for ``stats_out``.
        fix_variance: Use one global σ_in and one global σ_out for all examples instead of per-example
            spreads (more stable with few shadow models).
        center: "median" (reference default) or "mean" across shadow models.

    Returns:
        float64 scores shaped like ``target``; higher = more member-like. NaN for examples that have no
        usable in or no usable out shadow model.
    """
    _check_center(center)
    s_in, s_out = _shadow(stats_in, mask_in, "stats_in"), _shadow(stats_out, mask_out, "stats_out")
    if s_in.shape[1] != s_out.shape[1]:
        raise PrivacyInputError(f"stats_in covers {s_in.shape[1]} examples but stats_out {s_out.shape[1]}")
    t = _check_target(target, s_in.shape[1])
    from scipy.stats import norm  # here: scipy.stats costs ~0.6 s to import, and `--help` needs none of it

    mu_in, sd_in = _fit(s_in, center, fix_variance)
    mu_out, sd_out = _fit(s_out, center, fix_variance)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return norm.logpdf(t, mu_in, sd_in + STD_EPS) - norm.logpdf(t, mu_out, sd_out + STD_EPS)


def lira_offline(target, stats_out, *, mask_out=None, fix_variance: bool = False, center: str = "median",
                 one_sided: bool = True) -> np.ndarray:
    """Offline LiRA: how far the target sits from the "out" Gaussian, per example.

    Args:
        target: (n,) or (..., n) statistic of each example under the audited model(s).
        stats_out: (M_out, n) statistics under shadow models without the example (retrained).
        mask_out: Optional bool (M_out, n) marking usable entries of ``stats_out``.
        fix_variance: One global σ_out for all examples.
        center: "median" or "mean" across shadow models.
        one_sided: True (default, the paper's offline test) scores log Φ((target − μ_out)/σ_out): only
            values *above* the out distribution look like members. False scores −log N(target; μ_out,
            σ_out), the two-sided form of the reference ``plot.py``/``advanced_mia`` code.

    Returns:
        float64 scores shaped like ``target``; higher = more member-like; NaN where no out shadow exists.
    """
    _check_center(center)
    s_out = _shadow(stats_out, mask_out, "stats_out")
    t = _check_target(target, s_out.shape[1])
    from scipy.stats import norm

    mu, sd = _fit(s_out, center, fix_variance)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if one_sided:
            return norm.logcdf(t, mu, sd + STD_EPS)  # log keeps resolution deep in the upper tail
        return -norm.logpdf(t, mu, sd + STD_EPS)


def lira_scores(target, stats, in_mask, *, online: bool = True, fix_variance: bool = False,
                center: str = "median", one_sided: bool = True) -> np.ndarray:
    """LiRA scores from one shadow array and a per-example in/out mask (the ``keep.npy`` layout).

    Args:
        target: (n,) or (..., n) statistic under the audited model(s).
        stats: (M, n) statistic of every example under every shadow model.
        in_mask: bool (M, n); True where shadow model m is "in" for example i (carries it), False where
            it is "out" (retrained without it).
        online: Online (both Gaussians) if True, else offline (out only).
        fix_variance: Global instead of per-example variance.
        center: "median" or "mean".
        one_sided: Offline only: one-sided (default) or two-sided test, see `lira_offline`.

    Returns:
        float64 scores shaped like ``target``; higher = more member-like.
    """
    keep = np.asarray(in_mask)
    if keep.dtype != bool:
        raise PrivacyInputError(f"in_mask must be a bool array, got {keep.dtype}")
    if online:
        return lira_online(target, stats, stats, mask_in=keep, mask_out=~keep, fix_variance=fix_variance,
                           center=center)
    return lira_offline(target, stats, mask_out=~keep, fix_variance=fix_variance, center=center,
                        one_sided=one_sided)


def lira_attack_metrics(scores_pos, scores_neg, *, max_points: int = 200) -> dict:
    """Summary of an attack that calls an example a member when its score is high.

    Args:
        scores_pos: (n_pos,) scores of true members (e.g. forget examples under models that did not
            unlearn them, or under the audited unlearned model when testing it against retraining).
        scores_neg: (n_neg,) scores of true non-members.
        max_points: Cap on the stored ROC points (log-spaced in FPR, see `roc.downsample_roc`).

    Returns:
        JSON-ready dict: ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr`` (largest TPR with FPR <
        target), ``balanced_accuracy``, ``n_pos``, ``n_neg`` and ``roc_fpr``/``roc_tpr`` lists for
        log-log plots (the first point has FPR 0, which log axes omit).

    Raises:
        PrivacyInputError: empty inputs or NaN scores (drop examples without shadow models first).
    """
    fpr, tpr = roc_curve(scores_pos, scores_neg)
    low = _tpr_at(fpr, tpr, np.array([0.01, 0.001]))  # FPR < target, as LiRA's plot.py
    f_ds, t_ds = downsample_roc(fpr, tpr, max_points)
    return {
        "auc": curve_area(fpr, tpr),
        "tpr_at_1pct_fpr": float(low[0]),
        "tpr_at_0.1pct_fpr": float(low[1]),
        "balanced_accuracy": balanced_accuracy(fpr, tpr),
        "n_pos": int(np.size(scores_pos)),
        "n_neg": int(np.size(scores_neg)),
        "roc_fpr": f_ds.tolist(),
        "roc_tpr": t_ds.tolist(),
    }


def u_lira_halvings(stats_u, stats_r, *, halvings: int = 20, seed: int = 0, online: bool = True,
                    fix_variance: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """U-LiRA scores under random halvings of the models into shadows and targets.

    Args:
        stats_u: (M, n) statistic of every forget example under M unlearned models.
        stats_r: (M', n) the same under M' retrained models.
        halvings: how many; the first is the fixed split (first half shadows, then swapped), the others permute
            each side's models with a generator seeded by `seed`.
        online, fix_variance: as `lira_online` (offline: `lira_offline` on the retrained shadows).

    Each halving scores both ways (shadows and targets swapped), as one U-LiRA evaluation does.

    Returns:
        per halving, (scores of the unlearned targets, scores of the retrained targets), each (targets, n).
    """
    u, r = as_float_array(stats_u, "stats_u", ndim=2, finite=False), as_float_array(stats_r, "stats_r", ndim=2,
                                                                                    finite=False)
    if u.shape[1] != r.shape[1]:
        raise PrivacyInputError(f"stats_u covers {u.shape[1]} examples but stats_r {r.shape[1]}")
    if min(len(u), len(r)) < 4:
        raise PrivacyInputError("U-LiRA needs at least 4 models of each kind (2 shadows and 2 targets)")
    rng = np.random.default_rng(seed)
    hu, hr = len(u) // 2, len(r) // 2
    out = []
    for h in range(halvings):
        pu = np.arange(len(u)) if h == 0 else rng.permutation(len(u))
        pr = np.arange(len(r)) if h == 0 else rng.permutation(len(r))
        pos, neg = [], []
        for (su, tu), (sr, tr) in (((pu[:hu], pu[hu:]), (pr[:hr], pr[hr:])), ((pu[hu:], pu[:hu]), (pr[hr:], pr[:hr]))):
            for targets, scores in ((u[tu], pos), (r[tr], neg)):
                if online:
                    scores.append(lira_online(targets, u[su], r[sr], fix_variance=fix_variance))
                else:
                    scores.append(lira_offline(targets, r[sr], fix_variance=fix_variance))
        out.append((np.concatenate(pos), np.concatenate(neg)))
    return out


def u_lira_split_average(stats_u, stats_r, *, splits: int = 20, seed: int = 0,
                         halvings: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Online U-LiRA averaged over `splits` halvings of the models into shadows and targets (`u_lira_halvings`).

    One halving of few models moves TPR at low FPR by tens of points; the average keeps the models' draw as the
    only noise, which is what a choice between forget sets needs. `halvings`: those `u_lira_halvings` already
    gave for these statistics (computed here otherwise).

    Returns:
        {"tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "auc"}: means over the halvings, plus "splits".
    """
    rows = []
    for pos, neg in halvings or u_lira_halvings(stats_u, stats_r, halvings=splits, seed=seed):
        a, b = pos.ravel(), neg.ravel()
        m = lira_attack_metrics(a[np.isfinite(a)], b[np.isfinite(b)], max_points=2)
        rows.append((m["tpr_at_1pct_fpr"], m["tpr_at_0.1pct_fpr"], m["auc"]))
    mean = np.mean(rows, axis=0)
    return {"tpr_at_1pct_fpr": float(mean[0]), "tpr_at_0.1pct_fpr": float(mean[1]), "auc": float(mean[2]),
            "splits": len(rows)}


def u_lira_per_example(stats_u, stats_r, *, splits: int = 20, seed: int = 0,
                       halvings: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Each forget example's share of `u_lira_split_average`: per halving, the fraction of its unlearned-target
    scores above the set's threshold at 0.1% (1%) FPR (`roc.member_threshold`), averaged over the halvings; and
    its mean score. Where no score is NaN, the mean over examples is the set's TPR exactly. `halvings`: as in
    `u_lira_split_average`.

    Returns:
        {"tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "score"}: (n,) float64 arrays.
    """
    halvings = halvings or u_lira_halvings(stats_u, stats_r, halvings=splits, seed=seed)
    n = np.shape(stats_u)[1]
    out = {"tpr_at_0.1pct_fpr": np.zeros(n), "tpr_at_1pct_fpr": np.zeros(n), "score": np.zeros(n)}
    for pos, neg in halvings:
        finite = np.isfinite(pos)  # (targets, n)
        count = np.maximum(finite.sum(axis=0), 1)
        b = neg.ravel()
        b = b[np.isfinite(b)]
        for key, fpr in (("tpr_at_0.1pct_fpr", 0.001), ("tpr_at_1pct_fpr", 0.01)):
            out[key] += (finite & (pos > member_threshold(b, fpr))).sum(axis=0) / count
        out["score"] += np.where(finite, pos, 0.0).sum(axis=0) / count
    return {k: v / len(halvings) for k, v in out.items()}
