"""The NeurIPS'23 challenge ε and forgetting quality: hand-worked cases, special rules, a brute-force
transcription of the released algorithm, and properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worstforget.scoring.privacy import (
    BOUND_ALPHA,
    DELTA,
    EPSILON_CAP,
    PrivacyInputError,
    bucket_epsilon_limit,
    clopper_pearson_upper,
    final_score,
    forget_score,
    forgetting_quality,
    per_example_epsilon,
    per_example_points,
    resolution_note,
    threshold_epsilon,
)
from worstforget.scoring.privacy import epsilon as eps_mod

# ----------------------------------------------------------------------------- brute-force reference


def _torch_linspace(lo: float, hi: float, n: int) -> np.ndarray:
    """torch.linspace's formula (first half from start, second half back from end), float64."""
    if n == 1:
        return np.array([lo])
    k = np.arange(n)
    step = (hi - lo) / (n - 1)
    return np.where(k < n // 2, lo + step * k, hi - step * (n - 1 - k))


def _brute_force(retrain: np.ndarray, unlearn: np.ndarray, families=("single", "band"), alpha=None) -> float:
    """One example, written straight from the released algorithm: every threshold against every value.
    With alpha, each rate is replaced by its Clopper–Pearson upper bound (scipy's beta quantile) and the
    zero-rate special cases do not apply."""
    pos, neg = (retrain, unlearn) if np.median(retrain) > np.median(unlearn) else (unlearn, retrain)
    pd, nd = np.ptp(pos), np.ptp(neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        if min(pd, nd) / max(pd, nd) < 0.01:
            return EPSILON_CAP
    fprs, fnrs, trials = [], [], []  # trials: (negatives, positives) of each family's rates
    if "band" in families:
        p, n = (neg, pos) if pd >= nd else (pos, neg)  # band positive = the peakier set
        w = min(pd, nd)
        lo, hi = p.min() + w - 2.0, p.max() + 2.0
        rights = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
        left = np.concatenate([np.linspace(r - w - 2.0, r - w + 2.0, 400) for r in rights])
        right = np.repeat(rights, 400)
        inside = lambda v: (left[None] <= v[:, None]) & (v[:, None] <= right[None])  # noqa: E731
        fprs.append(inside(n).mean(0))
        fnrs.append(1 - inside(p).mean(0))
        trials.append((len(n), len(p)))
    if "single" in families:
        pooled = np.concatenate([pos, neg])
        t = _torch_linspace(pooled.min(), pooled.max(), int(np.ceil(np.ptp(pooled) * 100)))
        fprs.append((neg[:, None] >= t[None]).mean(0))
        fnrs.append((pos[:, None] < t[None]).mean(0))
        trials.append((len(neg), len(pos)))
    fpr, fnr = np.concatenate(fprs), np.concatenate(fnrs)
    if alpha is not None:
        from scipy.stats import beta

        def upper(rate, n):
            k = np.round(rate * n)
            return np.where(k >= n, 1.0, beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1)))

        n_neg = np.concatenate([np.full(len(f), t[0]) for f, t in zip(fprs, trials)])
        n_pos = np.concatenate([np.full(len(f), t[1]) for f, t in zip(fprs, trials)])
        fpr, fnr = upper(fpr, n_neg), upper(fnr, n_pos)
        with np.errstate(invalid="ignore"):
            terms = np.stack([np.log(1 - DELTA - fpr) - np.log(fnr), np.log(1 - DELTA - fnr) - np.log(fpr)])
        terms = terms[np.isfinite(terms)]
        return max(0.0, terms.max()) if terms.size else 0.0
    if np.any((fpr == 0) & (fnr == 0)):
        return EPSILON_CAP
    keep = (fpr > 0) & (fnr > 0)  # exactly one rate 0: discarded
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(invalid="ignore"):  # log of a negative number: that term does not count
        terms = np.stack([np.log(1 - DELTA - fpr) - np.log(fnr), np.log(1 - DELTA - fnr) - np.log(fpr)])
    terms = terms[np.isfinite(terms)]
    best = max(0.0, terms.max()) if terms.size else 0.0
    return min(best, EPSILON_CAP)


# ----------------------------------------------------------------------------- hand-worked cases


def test_single_threshold_case_by_hand():
    # Retrained R = {0, 1, 2, 3}, unlearned U = {2.5, 3.5, 4.5, 5.5}; both ranges are 3 (no peaky guard).
    # median(U) = 4 > median(R) = 1.5, so U is the positive class; the rule says "U" when value ≥ t.
    # Sorted: 0R 1R 2R 2.5U 3R 3.5U 4.5U 5.5U. Thresholds t in
    #   (2, 2.5]: FNR = 0/4 (all U ≥ t), FPR = 1/4 (R's 3)          -> one rate 0: discarded
    #   (2.5, 3]: FNR = 1/4 (U's 2.5 < t), FPR = 1/4 (R's 3 ≥ t)     -> ε = ln((1 − δ − 1/4) / (1/4))
    #   (3, 3.5]: FNR = 1/4, FPR = 0/4                               -> discarded
    #   t ≤ 2 has FNR = 0, t > 3 has FPR = 0                         -> discarded
    # so the single-threshold family gives ε = ln(3 − 4δ) ≈ 1.09860.
    retrain = np.array([[0.0], [1.0], [2.0], [3.0]])
    unlearn = np.array([[2.5], [3.5], [4.5], [5.5]])
    expected = math.log((1 - DELTA - 0.25) / 0.25)
    single = per_example_epsilon(retrain, unlearn, families=("single",))
    np.testing.assert_allclose(single, [expected], rtol=1e-12)
    # No band beats (1/4, 1/4) either: separating perfectly is impossible because 2.5 < 3.
    np.testing.assert_allclose(per_example_epsilon(retrain, unlearn), [expected], rtol=1e-12)
    assert single[0] == pytest.approx(_brute_force(retrain[:, 0], unlearn[:, 0], ("single",)), rel=1e-12)


def test_band_case_by_hand_beats_single_threshold():
    # Retrained R = {0, 5.05, 10, 12} (range 12), unlearned U = {4.9, 5.0, 5.1, 5.2} (range 0.3);
    # ratio 0.3/12 = 0.025 ≥ 0.01, so no peaky guard. Sorted: 0R 4.9U 5.0U 5.05R 5.1U 5.2U 10R 12R.
    # Single threshold: median(R) = 7.525 > median(U) = 5.05, so R is positive ("R" when value ≥ t):
    #   t in (5.0, 5.05]:  FNR = 1/4 (R's 0), FPR = 2/4 (U's 5.1, 5.2)
    #                      ε = max(ln(1 − δ − 2/4) − ln(1/4), ln(1 − δ − 1/4) − ln(2/4)) = ln((1/2 − δ)/(1/4))
    #   t in (5.1, 5.2]:   FNR = 2/4, FPR = 1/4 -> the same value
    #   t in (4.9, 5.0]:   FNR = 1/4, FPR = 3/4 -> both terms < 0 -> ε = 0
    #   t in (0, 4.9]:     FNR = 1/4, FPR = 4/4 -> ln(1 − δ − 1) undefined, other term < 0 -> ε = 0
    #   t in (5.05, 5.1]:  FNR = FPR = 2/4 -> 0;   t ≤ 0 or t > 5.2: one rate is 0 -> discarded
    #   => single family ε = ln(2 − 4δ) ≈ 0.69313.
    # Band: U is peakier, predicted inside [l, r]. With l in (0, 4.9] and r in [5.1, 5.2) the band holds
    #   U's 4.9, 5.0, 5.1 (FNR = 1/4) and R's 5.05 (FPR = 1/4) -> ε = ln((1 − δ − 1/4)/(1/4)) = ln(3 − 4δ).
    #   FPR = 0 would need excluding 5.05, leaving ≤ 2 U inside (FNR > 0: discarded); FNR = 0 forces
    #   5.05 inside (FPR > 0: discarded); so nothing beats (1/4, 1/4). The grids do reach such a band:
    #   right ends run from 4.9 + 0.3 − 2 = 3.2 to 5.2 + 2 = 7.2 every ≈ 0.01, left ends r − 0.3 ± 2.
    retrain = np.array([[0.0], [5.05], [10.0], [12.0]])
    unlearn = np.array([[4.9], [5.0], [5.1], [5.2]])
    single = math.log((0.5 - DELTA) / 0.25)
    band = math.log((0.75 - DELTA) / 0.25)
    np.testing.assert_allclose(per_example_epsilon(retrain, unlearn, families=("single",)), [single], rtol=1e-12)
    np.testing.assert_allclose(per_example_epsilon(retrain, unlearn, families=("band",)), [band], rtol=1e-12)
    np.testing.assert_allclose(per_example_epsilon(retrain, unlearn), [band], rtol=1e-12)
    assert _brute_force(retrain[:, 0], unlearn[:, 0], ("band",)) == pytest.approx(band, rel=1e-12)


def test_threshold_epsilon_special_rules():
    eps = threshold_epsilon([0.0, 0.0, 0.25, 0.25, 1.0, 0.5, 0.25], [0.0, 0.25, 0.0, 0.25, 1.0, 0.5, 0.75])
    assert eps[0] == np.inf  # FPR = FNR = 0: perfect separation
    assert np.isnan(eps[1]) and np.isnan(eps[2])  # exactly one rate 0: discarded
    assert eps[3] == pytest.approx(math.log((0.75 - DELTA) / 0.25))
    assert np.isnan(eps[4])  # both log arguments negative (1 − δ − 1 < 0): discarded
    assert eps[5] == 0.0  # a coin flip: both terms negative, clipped at 0
    assert eps[6] == 0.0  # FPR + FNR = 1 is also chance level: clipped to 0


# ----------------------------------------------------------------------------- special cases


def test_identical_samples_give_zero_and_full_quality():
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(16, 12))
    eps = per_example_epsilon(stats, stats.copy())
    np.testing.assert_array_equal(eps, 0.0)  # every rule has TPR = FPR, so both ε terms are ≤ 0
    assert forgetting_quality(eps, 16) == 1.0


def test_iid_samples_show_the_finite_sample_floor_and_shifts_score_lower():
    # Two independent samples of one distribution are not ε ≈ 0 under the released rules: the best of
    # ~10^5 thresholds finds a tail where one side outnumbers the other a few to one (ε ≈ ln 5).
    rng = np.random.default_rng(1)
    retrain = rng.normal(size=(32, 40))
    same = per_example_epsilon(retrain, rng.normal(size=(32, 40)))
    shifted = per_example_epsilon(retrain, rng.normal(2.0, 1.0, size=(32, 40)))
    assert np.all(same < math.log(31))
    assert math.log(3) < np.median(same) < math.log(8)
    assert np.median(shifted) > np.median(same) + 0.7
    assert forgetting_quality(same, 32) > forgetting_quality(shifted, 32) + 0.1


def test_perfect_separation_gives_cap_and_zero_quality():
    rng = np.random.default_rng(2)
    retrain = rng.normal(0.0, 1.0, size=(8, 5))
    unlearn = rng.normal(20.0, 1.0, size=(8, 5))
    eps = per_example_epsilon(retrain, unlearn)
    np.testing.assert_array_equal(eps, EPSILON_CAP)
    assert forgetting_quality(eps, 8) == 0.0


def test_peaky_guard():
    rng = np.random.default_rng(3)
    wide = rng.uniform(-5, 5, size=(10, 1))  # range ≈ 10
    narrow = 0.03 * rng.uniform(-1, 1, size=(10, 1))  # range < 0.06: ratio < 0.01, same centre
    assert per_example_epsilon(wide, narrow)[0] == EPSILON_CAP
    assert per_example_epsilon(narrow, wide)[0] == EPSILON_CAP
    not_peaky = 0.3 * rng.uniform(-1, 1, size=(10, 1))  # ratio ≈ 0.06: computed normally
    assert per_example_epsilon(wide, not_peaky)[0] < EPSILON_CAP


def test_constant_samples():
    same = np.full((4, 1), 2.0)
    assert per_example_epsilon(same, same)[0] == 0.0  # 0/0 range ratio is not "peaky"; nothing separates
    assert per_example_epsilon(same, same + 1.0)[0] == EPSILON_CAP  # two constants are perfectly separable


def test_matches_brute_force_on_random_small_cases():
    rng = np.random.default_rng(4)
    for _ in range(12):
        m_r, m_u, n = rng.integers(2, 8), rng.integers(2, 8), 2
        scale = rng.choice([0.05, 0.5, 3.0])
        retrain = rng.normal(0, scale, size=(m_r, n))
        unlearn = rng.normal(rng.normal(0, scale), scale * rng.choice([0.3, 1.0, 3.0]), size=(m_u, n))
        if rng.random() < 0.3:  # ties on and near the threshold grid
            retrain, unlearn = np.round(retrain, 1), np.round(unlearn, 1)
        got = per_example_epsilon(retrain, unlearn)
        want = [_brute_force(retrain[:, i], unlearn[:, i]) for i in range(n)]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- confidence-bounded rates


def test_clopper_pearson_upper_closed_forms():
    n, alpha = 8, 0.05
    # 0 errors: P(X = 0) = (1 − p)^n = α at the bound; n − 1 errors: P(X ≤ n − 1) = 1 − p^n = α
    np.testing.assert_allclose(clopper_pearson_upper(0, n, alpha), 1 - alpha ** (1 / n), rtol=1e-10)
    np.testing.assert_allclose(clopper_pearson_upper(n - 1, n, alpha), (1 - alpha) ** (1 / n), rtol=1e-10)
    assert clopper_pearson_upper(n, n, alpha) == 1.0
    bounds = clopper_pearson_upper(np.arange(n + 1), n, alpha)
    assert np.all(np.diff(bounds) > 0) and np.all(bounds > np.arange(n + 1) / n - 1e-12)


def test_bounded_perfect_separation_is_what_the_model_count_can_prove():
    rng = np.random.default_rng(2)
    retrain, unlearn = rng.normal(0.0, 1.0, size=(8, 5)), rng.normal(20.0, 1.0, size=(8, 5))
    # the best rule has 0 errors on both sides; each rate is bounded by 1 − (α/2)^(1/8) ≈ 0.369
    u = 1 - (BOUND_ALPHA / 2) ** (1 / 8)
    expected = math.log((1 - DELTA - u) / u)
    eps = per_example_epsilon(retrain, unlearn, confidence_alpha=BOUND_ALPHA)
    np.testing.assert_allclose(eps, expected, rtol=1e-9)
    assert 0.5 < expected < 0.6  # eight models per side cannot prove more than this


def test_bounded_rates_give_full_quality_to_iid_samples_and_still_rank_shifts():
    rng = np.random.default_rng(1)
    retrain = rng.normal(size=(32, 40))
    same = rng.normal(size=(32, 40))
    bounded = per_example_epsilon(retrain, same, confidence_alpha=BOUND_ALPHA)
    official = per_example_epsilon(retrain, same)
    assert forgetting_quality(bounded, 32) >= 0.95 > 0.5 > forgetting_quality(official, 32)
    shifted = per_example_epsilon(retrain, rng.normal(2.0, 1.0, size=(32, 40)), confidence_alpha=BOUND_ALPHA)
    assert forgetting_quality(shifted, 32) < forgetting_quality(bounded, 32) - 0.4
    # the peaky guard is part of the rules in both modes: a deterministic unlearner scores 0
    constant = np.full((32, 40), 0.25)
    assert forgetting_quality(per_example_epsilon(retrain, constant, confidence_alpha=BOUND_ALPHA), 32) == 0.0


def test_bounded_matches_brute_force_on_random_small_cases():
    rng = np.random.default_rng(6)
    for _ in range(10):
        m_r, m_u = rng.integers(2, 9), rng.integers(2, 9)
        retrain = rng.normal(0, 1.0, size=(m_r, 2))
        unlearn = rng.normal(rng.normal(0, 2.0), rng.choice([0.3, 1.0, 3.0]), size=(m_u, 2))
        got = per_example_epsilon(retrain, unlearn, confidence_alpha=0.1)
        want = [_brute_force(retrain[:, i], unlearn[:, i], alpha=0.1) for i in range(2)]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    retrain, unlearn = rng.normal(size=(6, 30)), rng.normal(0.5, 1.0, size=(6, 30))
    full = per_example_epsilon(retrain, unlearn)
    monkeypatch.setattr(eps_mod, "_CHUNK_ELEMENTS", 1)  # one example per chunk
    np.testing.assert_array_equal(per_example_epsilon(retrain, unlearn), full)
    monkeypatch.setattr(eps_mod._EpsLookup, "MAX_TABLE", 0)  # direct formula instead of the lookup table
    np.testing.assert_allclose(per_example_epsilon(retrain, unlearn), full, rtol=1e-12)
    bounded = per_example_epsilon(retrain, unlearn, confidence_alpha=BOUND_ALPHA)  # formula path
    monkeypatch.setattr(eps_mod._EpsLookup, "MAX_TABLE", 1 << 23)
    np.testing.assert_allclose(per_example_epsilon(retrain, unlearn, confidence_alpha=BOUND_ALPHA), bounded,
                               rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_epsilon_bounded_and_symmetric(data):
    m_r = data.draw(st.integers(2, 6))
    m_u = data.draw(st.integers(2, 6))
    values = st.floats(-5, 5, allow_nan=False, allow_infinity=False)
    retrain = np.array(data.draw(st.lists(values, min_size=m_r, max_size=m_r)))[:, None]
    unlearn = np.array(data.draw(st.lists(values, min_size=m_u, max_size=m_u)))[:, None]
    eps = per_example_epsilon(retrain, unlearn)
    assert 0.0 <= eps[0] <= EPSILON_CAP
    # The released rules break ties in the medians and the ranges by argument order; elsewhere swapping
    # retrained and unlearned samples must not change ε.
    assume(np.median(retrain) != np.median(unlearn) and np.ptp(retrain) != np.ptp(unlearn))
    np.testing.assert_allclose(per_example_epsilon(unlearn, retrain), eps, rtol=1e-12)


# ----------------------------------------------------------------------------- scoring


def test_buckets_and_points_for_512_models():
    assert bucket_epsilon_limit(512) == 7.0  # ceil(ln 511) = ceil(6.24)
    eps = np.array([0.0, 0.49, 0.5, 1.2, 6.5, 6.99, 7.0, 50.0, np.inf])
    expected = [1.0, 1.0, 0.5, 0.25, 2.0 ** -13, 2.0 ** -13, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(per_example_points(eps, 512), expected)
    assert forgetting_quality(eps, 512) == pytest.approx(np.mean(expected))


def test_small_model_counts_have_coarse_buckets():
    assert bucket_epsilon_limit(3) == 1.0  # ceil(ln 2)
    np.testing.assert_array_equal(per_example_points([0.2, 0.7, 1.0], 3), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(per_example_points([0.0], 2), [0.0])  # ceil(ln 1) = 0: no buckets at all


def test_forget_score_and_final_score():
    rng = np.random.default_rng(6)
    stats = rng.normal(size=(8, 6))
    assert forget_score(stats, stats) == 1.0
    # F · (RA_U / RA_R) · (TA_U / TA_R) = 0.5 · (90/100) · (80/85)
    assert final_score(0.5, 90.0, 100.0, 80.0, 85.0) == pytest.approx(0.5 * 0.9 * 80 / 85)
    assert final_score(0.5, [89.0, 91.0], [100.0], 80.0, 85.0) == pytest.approx(0.5 * 0.9 * 80 / 85)
    with pytest.raises(PrivacyInputError):
        final_score(0.5, 90.0, 0.0, 80.0, 85.0)


def test_resolution_note_states_the_limits():
    note = resolution_note(512)
    assert "6.24" in note and "14 buckets" in note and "ceil(ln(N−1)) = 7" in note
    small = resolution_note(8)
    assert "1.95" in small and "4 buckets" in small
    assert "no scoring buckets" in resolution_note(2)
    # what 16 models can prove with the bounded rates: ε = 1.35, so complete separation scores ¼
    assert "at most ε = 1.35" in resolution_note(16) and "still scores 0.25" in resolution_note(16)


def test_input_validation():
    good = np.zeros((4, 3))
    with pytest.raises(PrivacyInputError):
        per_example_epsilon(good, np.zeros((4, 2)))  # different example counts
    with pytest.raises(PrivacyInputError):
        per_example_epsilon(np.zeros((1, 3)), good)  # one model
    with pytest.raises(PrivacyInputError):
        per_example_epsilon(good, np.full((4, 3), np.nan))
    with pytest.raises(PrivacyInputError):
        per_example_epsilon(good, good, families=("triple",))
    with pytest.raises(PrivacyInputError):
        per_example_epsilon(good, good, confidence_alpha=1.5)
    with pytest.raises(ValueError):  # PrivacyInputError is a ValueError for library callers
        bucket_epsilon_limit(1)
