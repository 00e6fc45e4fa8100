"""(U-)LiRA scores on planted Gaussians, and the ROC helpers they are summarised with."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from worstforget.scoring.privacy import (
    PrivacyInputError,
    auc,
    curve_area,
    downsample_roc,
    lira_attack_metrics,
    lira_offline,
    lira_online,
    lira_scores,
    roc_curve,
    tpr_at_fpr,
)


def _planted(shift: float, n: int = 400, m: int = 24, seed: int = 0):
    """Per-example Gaussians: out ~ N(μ_i, σ_i), in ~ N(μ_i + shift, σ_i); half the targets are in."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, size=n)
    sigma = rng.uniform(0.5, 1.5, size=n)
    keep = rng.random((m, n)) < 0.5  # (M, n) which shadow model is in for which example
    stats = mu + shift * keep + sigma * rng.normal(size=(m, n))
    member = rng.random(n) < 0.5
    target = mu + shift * member + sigma * rng.normal(size=n)
    return target, stats, keep, member


def _auc_of(scores, member):
    return auc(scores[member], scores[~member])


# ----------------------------------------------------------------------------- LiRA


def test_online_separates_planted_gaussians():
    target, stats, keep, member = _planted(shift=3.0)
    scores = lira_scores(target, stats, keep)
    assert _auc_of(scores, member) > 0.9
    metrics = lira_attack_metrics(scores[member], scores[~member])
    assert metrics["auc"] == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    assert metrics["tpr_at_1pct_fpr"] > 0.2


def test_offline_and_fixed_variance_also_separate():
    target, stats, keep, member = _planted(shift=3.0, seed=1)
    for kwargs in ({"online": False}, {"online": False, "one_sided": False},
                   {"fix_variance": True}, {"online": False, "fix_variance": True}):
        scores = lira_scores(target, stats, keep, **kwargs)
        assert np.all(np.isfinite(scores)), kwargs
        assert _auc_of(scores, member) > 0.85, kwargs


def test_identical_in_and_out_is_chance():
    target, stats, keep, member = _planted(shift=0.0, seed=2)
    for online in (True, False):
        assert abs(_auc_of(lira_scores(target, stats, keep, online=online), member) - 0.5) < 0.1


def test_online_matches_formula_with_median_and_population_std():
    rng = np.random.default_rng(3)
    s_in, s_out = rng.normal(2, 1, size=(7, 3)), rng.normal(0, 2, size=(9, 3))
    target = np.array([1.0, -0.5, 3.0])
    want = (norm.logpdf(target, np.median(s_in, 0), s_in.std(0) + 1e-30)
            - norm.logpdf(target, np.median(s_out, 0), s_out.std(0) + 1e-30))
    np.testing.assert_allclose(lira_online(target, s_in, s_out), want, rtol=1e-12)
    # Offline one-sided: log Φ((t − μ_out)/σ_out).
    np.testing.assert_allclose(lira_offline(target, s_out),
                               norm.logcdf(target, np.median(s_out, 0), s_out.std(0) + 1e-30), rtol=1e-12)


def test_fixed_variance_uses_one_global_spread():
    rng = np.random.default_rng(4)
    s_in = rng.normal([0.0, 10.0, 20.0], 1.0, size=(6, 3))
    s_out = rng.normal([1.0, 11.0, 21.0], 2.0, size=(6, 3))
    target = np.array([0.5, 10.5, 20.5])
    mu_in, mu_out = np.median(s_in, 0), np.median(s_out, 0)
    sd_in = np.std(s_in - mu_in)  # residuals about each example's centre, pooled over examples
    sd_out = np.std(s_out - mu_out)
    want = norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)
    np.testing.assert_allclose(lira_online(target, s_in, s_out, fix_variance=True), want, rtol=1e-10)


def test_masks_and_missing_shadows():
    rng = np.random.default_rng(5)
    stats = rng.normal(size=(6, 3))
    keep = np.zeros((6, 3), dtype=bool)
    keep[:3, :2] = True  # example 2 has no "in" shadow model
    online = lira_scores(np.zeros(3), stats, keep)
    assert np.isfinite(online[:2]).all() and np.isnan(online[2])
    assert np.isfinite(lira_scores(np.zeros(3), stats, keep, online=False)).all()
    # Equivalent explicit masks on separate arrays.
    np.testing.assert_allclose(lira_online(np.zeros(3), stats, stats, mask_in=keep, mask_out=~keep), online)
    # Several audited models at once: (T, n) targets give (T, n) scores.
    assert lira_scores(np.zeros((4, 3)), stats, keep, online=False).shape == (4, 3)
    with pytest.raises(PrivacyInputError):
        lira_scores(np.zeros(3), stats, keep.astype(int))
    with pytest.raises(PrivacyInputError):
        lira_scores(np.zeros(4), stats, keep)


def test_attack_metrics_storage_format():
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(1, 1, size=3000), rng.normal(0, 1, size=5000)
    metrics = lira_attack_metrics(pos, neg)
    assert len(metrics["roc_fpr"]) == len(metrics["roc_tpr"]) <= 200
    assert metrics["roc_fpr"][0] == 0.0 and metrics["roc_fpr"][-1] == 1.0 and metrics["roc_tpr"][-1] == 1.0
    assert metrics["tpr_at_1pct_fpr"] == pytest.approx(tpr_at_fpr(pos, neg, 0.01))
    assert metrics["tpr_at_0.1pct_fpr"] <= metrics["tpr_at_1pct_fpr"]
    assert 0.5 < metrics["balanced_accuracy"] < 1.0
    with pytest.raises(PrivacyInputError):
        lira_attack_metrics(np.array([np.nan, 1.0]), neg)


# ----------------------------------------------------------------------------- ROC helpers


def test_tpr_at_fpr_by_hand():
    # Members m = {.95, .9, .6, .3}, non-members n = {.92, .5, .4, .2, .1}. Sorted high to low:
    # .95m .92n .9m .6m .5n .4n .3m .2n .1n, so the ROC visits (FP, TP) = (0,1) (1,1) (1,2) (1,3) (2,3)
    # (3,3) (3,4) (4,4) (5,4); FPR = FP/5, TPR = TP/4.
    members = np.array([0.95, 0.9, 0.6, 0.3])
    nonmembers = np.array([0.92, 0.5, 0.4, 0.2, 0.1])
    # Default: FPR < target, the reference's rule (tensorflow/privacy mi_lira_2021/plot.py).
    assert tpr_at_fpr(members, nonmembers, 0.0) == 0.0  # no threshold has FPR < 0
    assert tpr_at_fpr(members, nonmembers, 0.1) == 0.25  # FP < 0.5 → FP = 0 → TP = 1
    assert tpr_at_fpr(members, nonmembers, 0.2) == 0.25  # FP < 1 → still FP = 0
    assert tpr_at_fpr(members, nonmembers, 0.6) == 0.75  # FP < 3 → FP = 2 → TP = 3
    np.testing.assert_array_equal(tpr_at_fpr(members, nonmembers, [0.0, 0.2, 1.0]), [0.0, 0.25, 1.0])
    # strict=False: FPR ≤ target; differs exactly where the target is a multiple of 1/5.
    assert tpr_at_fpr(members, nonmembers, 0.0, strict=False) == 0.25  # FP = 0 → TP ≤ 1
    assert tpr_at_fpr(members, nonmembers, 0.1, strict=False) == 0.25
    assert tpr_at_fpr(members, nonmembers, 0.2, strict=False) == 0.75  # FP ≤ 1 → TP = 3
    assert tpr_at_fpr(members, nonmembers, 0.6, strict=False) == 1.0  # FP ≤ 3 → TP = 4
    np.testing.assert_array_equal(tpr_at_fpr(members, nonmembers, [0.0, 0.2, 1.0], strict=False), [0.25, 0.75, 1.0])
    # AUC: pairs with m > n: .95 beats 5, .9 beats 4, .6 beats 4, .3 beats 2 → 15/20.
    assert auc(members, nonmembers) == 0.75


def test_roc_extremes_and_sklearn_agreement():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=500), rng.normal(size=500)
    assert abs(auc(a, b) - 0.5) < 0.06
    assert auc(a + 100, b) == 1.0 and tpr_at_fpr(a + 100, b, 0.001) == 1.0  # FPR < 1/500: FP = 0
    tied = np.round(rng.normal(size=300), 1)
    other = np.round(rng.normal(0.3, 1, size=200), 1)
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert auc(tied, other) == pytest.approx(roc_auc_score(labels, np.r_[tied, other]), abs=1e-12)
    fpr, tpr = roc_curve(tied, other)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert curve_area(fpr, tpr) == pytest.approx(auc(tied, other), abs=1e-12)
    f_ds, t_ds = downsample_roc(fpr, tpr, 10)
    assert len(f_ds) <= 10


def test_roc_handles_infinite_ties():
    fpr, tpr = roc_curve(np.array([np.inf, np.inf, 0.0]), np.array([np.inf, -1.0]))
    # +inf is one threshold holding 2 members and 1 non-member.
    np.testing.assert_allclose(fpr, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 2 / 3, 1.0, 1.0])
