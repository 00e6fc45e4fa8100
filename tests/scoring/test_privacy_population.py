"""Loss-threshold attack, KS test, tug-of-war, and the t / bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from worstforget.scoring.privacy import (
    PrivacyInputError,
    bootstrap_interval,
    ks_test,
    loss_threshold_attack,
    mean_t_interval,
    tug_of_war,
)


def test_loss_threshold_attack():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.exponential(0.1, size=2000), rng.exponential(0.1, size=2000)
    same = loss_threshold_attack(members, nonmembers)
    assert abs(same["auc"] - 0.5) < 0.05
    separable = loss_threshold_attack(members, nonmembers + 10.0)  # members' losses are all lower
    assert separable["auc"] == 1.0
    assert separable["tpr_at_1pct_fpr"] == separable["tpr_at_0.1pct_fpr"] == 1.0
    assert separable["balanced_accuracy"] == 1.0


def test_ks_test():
    rng = np.random.default_rng(1)
    a = rng.normal(size=400)
    stat_shift, p_shift = ks_test(a, rng.normal(0.5, 1.0, size=400))
    assert p_shift < 1e-6 and stat_shift > 0.15
    stat_same, p_same = ks_test(a, a.copy())
    assert stat_same == 0.0 and p_same == 1.0
    assert ks_test(a, rng.normal(size=400))[1] > 0.01
    with pytest.raises(PrivacyInputError):
        ks_test([], a)


def test_tug_of_war():
    acc = {"forget": 90.0, "retain": 99.0, "test": 92.0}
    assert tug_of_war(acc, dict(acc)) == 1.0
    # (1 − |90 − 85|/100)(1 − |99 − 100|/100)(1 − |92 − 93|/100) = 0.95 · 0.99 · 0.99
    ref = {"forget": 85.0, "retain": 100.0, "test": 93.0, "val": 50.0}
    assert tug_of_war(acc, ref) == pytest.approx(0.95 * 0.99 * 0.99)
    with pytest.raises(PrivacyInputError):
        tug_of_war({"forget": 90.0, "retain": 99.0}, ref)
    with pytest.raises(PrivacyInputError):
        tug_of_war({**acc, "test": 150.0}, ref)


def test_mean_t_interval_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), se = s/√5 = sqrt(0.5); half-width = t_{0.975, 4} · sqrt(0.5)
    half = stats.t.ppf(0.975, 4) * np.sqrt(0.5)
    mean, low, high = mean_t_interval(values)
    assert mean == 3.0
    assert (low, high) == pytest.approx((3.0 - half, 3.0 + half), rel=1e-12)
    assert half == pytest.approx(1.963, abs=1e-3)  # t_{0.975,4} ≈ 2.7764
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 4, loc=3.0, scale=np.sqrt(0.5)), rel=1e-12)
    one = mean_t_interval([7.0])
    assert one[0] == 7.0 and np.isnan(one[1]) and np.isnan(one[2])
    assert mean_t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(PrivacyInputError):
        mean_t_interval([])


def test_bootstrap_interval():
    rng = np.random.default_rng(2)
    values = rng.normal(5.0, 2.0, size=200)
    est, low, high = bootstrap_interval(values, n_resamples=2000, seed=3)
    assert est == pytest.approx(values.mean())
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(200), rel=0.15)
    assert bootstrap_interval(values, n_resamples=2000, seed=3) == (est, low, high)  # deterministic
    assert bootstrap_interval(values, n_resamples=2000, seed=4) != (est, low, high)
    med = bootstrap_interval(values, np.median, n_resamples=500, seed=np.random.default_rng(0))
    assert med[1] <= np.median(values) <= med[2]
    with pytest.raises(PrivacyInputError):
        bootstrap_interval(values, n_resamples=0)
