"""The NeurIPS 2023 Machine Unlearning Challenge forgetting-quality score, as the released code computes it.

Owns: the per-example ε of the strongest threshold attack between two samples of a statistic (one
value per retrained model, one per unlearned model), the bucketed forgetting quality F, the
utility-adjusted final score, and a note on what ε a given number of models can resolve.

Reference: ``google-deepmind/unlearning_evaluation`` (``metric.py``, ``main.py``). Summary of the
computation for one forget example, with R = retrained-model values and U = unlearned-model values:

* "very peaky" guard: if (smaller range)/(larger range) < 0.01, ε = 50 at once;
* positive class = whichever of R/U has the larger median (ties: U);
* single-threshold family: ``ceil(100·(max − min))`` thresholds on [min, max] of the pooled values,
  predict positive if value ≥ t;
* double-threshold ("band") family: the peakier set (smaller range, ties: the lower-median set) is
  predicted inside [l, r]; right ends: ``np.linspace(p_min + w − 2, p_max + 2, ceil(100·Δ))``, and for
  each right end 400 left ends ``np.linspace(r − w − 2, r − w + 2, 400)``, w = the smaller range;
* per threshold (δ = 1e-5): FPR = FNR = 0 ⇒ ε = ∞; exactly one of them 0 ⇒ threshold discarded;
  else ε = max{log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR} clipped at ≥ 0 (a term whose
  log argument is negative is ignored; if both are, the threshold is discarded);
* ε_example = max over the kept thresholds of both families, clipped to [0, 50].

Instead of comparing every value with every threshold (≈160 000 band thresholds × 2N values per
example) we enumerate the 2N + 1 ways a threshold can split the sorted pooled values and ask which of
them the exact threshold grid realises; the ε of a threshold depends only on that split. This gives the
same maximum as the brute-force comparison, vectorised over chunks of examples, with the ε of every
(count, count) pair tabulated once.

Known differences from the released code. It builds the single-threshold grid with ``torch.linspace``
in float32 (the default dtype; the band grid is numpy float64 there too) and computes the rates and ε in
float32; here the grid follows the same formula in float64 and rates/ε are float64. The float32 grid
points sit up to ~1e-7 × max(|min|, |max|) away from the float64 ones, so a value lying in that sliver beside a
grid point is counted on the other side of it there; what that does to ε, measured, is in
`results/epsilon_float32_grid.md`.

The released float32 grid is whatever torch's CPU kernel produces (not the textbook formula rounded to
float32: the two disagree on ~25% of points), so matching it bit for bit would tie this code to that
kernel; the float64 grid is kept, and this difference is the price.
Where every threshold is discarded the original fails an assertion; here ε = 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .scores import PrivacyInputError, as_float_array

DELTA = 1e-5
EPSILON_CAP = 50.0
NUM_THRESHOLDS_PER_UNIT = 100
BAND_BUFFER = 2.0
PEAKY_RATIO = 0.01
BUCKET_WIDTH = 0.5
#: Level of the Clopper–Pearson bounds of the bounded forgetting quality (both rates jointly at 1 − α).
BOUND_ALPHA = 0.05
FAMILIES = ("single", "band")
#: Left ends per right end of the band family: ceil(2 · buffer · 100) = 400.
BAND_LEFT_THRESHOLDS = int(math.ceil(2 * BAND_BUFFER * NUM_THRESHOLDS_PER_UNIT))
#: Rough number of array elements per chunk of examples (bounds peak memory at a few hundred MB).
_CHUNK_ELEMENTS = 1 << 19


# ----------------------------------------------------------------------------- per-threshold ε


def clopper_pearson_upper(errors, trials, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson upper confidence bound, at level 1 − alpha, on a rate errors/trials.

    The exact binomial bound: the largest rate under which seeing at most `errors` errors in `trials`
    still has probability ≥ alpha; 1 when every trial was an error. Never 0, even for 0 errors.
    """
    from scipy.special import betaincinv

    k = np.asarray(errors, dtype=np.float64)
    n = np.broadcast_to(np.asarray(trials, dtype=np.float64), k.shape)
    with np.errstate(invalid="ignore"):
        bound = betaincinv(k + 1.0, np.maximum(n - k, 1.0), 1.0 - alpha)
    return np.where(k >= n, 1.0, bound)


def _eps_from_counts(fp, fn, n_neg, n_pos, delta: float, alpha: float | None = None) -> np.ndarray:
    """ε per threshold from false-positive / false-negative counts; −inf marks a discarded threshold.

    alpha None: the challenge's empirical rates and special cases. Otherwise both rates are replaced by
    Clopper–Pearson upper bounds at level 1 − alpha/2 each (jointly ≥ 1 − alpha), which are never 0, so
    neither "perfect separation = ∞" nor "one rate 0 = discard" arises: ε is what the counts prove.
    """
    fp = np.asarray(fp)
    fn = np.asarray(fn)
    if alpha is None:
        fpr, fnr = fp / n_neg, fn / n_pos
    else:
        fpr, fnr = clopper_pearson_upper(fp, n_neg, alpha / 2), clopper_pearson_upper(fn, n_pos, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        # log of a negative argument (FPR or FNR above 1 − δ) is NaN; fmax then keeps the other term,
        # exactly like the original's np.nanmax over the two.
        eps = np.fmax(np.log(1.0 - delta - fpr) - np.log(fnr), np.log(1.0 - delta - fnr) - np.log(fpr))
    eps = np.clip(eps, 0.0, None)  # NaN stays NaN
    if alpha is not None:
        return np.where(np.isnan(eps), -np.inf, eps)
    both_zero = (fp == 0) & (fn == 0)
    one_zero = (fp == 0) ^ (fn == 0)  # attributed to too few samples, so the threshold is dropped
    eps = np.where(one_zero | np.isnan(eps), -np.inf, eps)
    return np.where(both_zero, np.inf, eps)


def threshold_epsilon(fpr, fnr, delta: float = DELTA) -> np.ndarray:
    """ε of single decision rules from their error rates, with the challenge's special cases.

    Args:
        fpr: False-positive rate(s) in [0, 1].
        fnr: False-negative rate(s) in [0, 1], broadcastable with ``fpr``.
        delta: The δ of (ε, δ)-unlearning.

    Returns:
        float64 array: ``inf`` where FPR = FNR = 0 (perfect separation), ``nan`` where the threshold is
        discarded (exactly one rate is 0, or both log terms are undefined), otherwise
        ``max(log(1−δ−FPR) − log FNR, log(1−δ−FNR) − log FPR)`` clipped at 0.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = np.asarray(fnr, dtype=np.float64)
    eps = _eps_from_counts(fpr, fnr, 1.0, 1.0, delta)  # rates are counts out of 1
    return np.where(np.isneginf(eps), np.nan, eps)


# ----------------------------------------------------------------------------- grid counting
#
# A threshold's error counts depend only on how many pooled values lie below it, so instead of scoring
# every grid point against every value (the original's thresholds × models comparison) we score each
# achievable cut "the k smallest pooled values are below the threshold" (k = 0 … Mr + Mu) and ask the
# grid which cuts it realises. Cut k is realised iff some grid point g satisfies x_(k−1) < g ≤ x_(k),
# which we read off J(x) = #grid points ≤ x: the grid points with exactly k values below are those with
# index j in [J(x_(k−1)), J(x_(k))).


def _linspace_value(k, start, stop, num):
    """Point k of ``np.linspace(start, stop, num)`` for num > 1: k·step + start, the last point exactly stop."""
    return np.where(k == num - 1, stop, k * ((stop - start) / (num - 1)) + start)


def _torch_linspace_value(k, start, stop, num):
    """Point k of ``torch.linspace(start, stop, num)``: stepped from start for the first half, back from stop
    for the second, and ``[start]`` when num == 1 (the formula of PyTorch's scalar kernel, in float64)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(num > 1, (stop - start) / (num - 1), 0.0)
    value = np.where(k < num // 2, start + step * k, stop - step * (num - 1 - k))
    return np.where(num == 1, start, value)


def _fix_counts(count, x, grid_at, n_grid):
    """Walk each count J to the exact J with g[J−1] ≤ x < g[J] (the estimate is off only by rounding)."""
    while True:
        down = (count > 0) & (grid_at(np.maximum(count - 1, 0)) > x)
        if not down.any():
            break
        count = count - down
    while True:
        up = (count < n_grid) & (grid_at(np.minimum(count, np.maximum(n_grid - 1, 0))) <= x)
        if not up.any():
            break
        count = count + up
    return count


def _count_le(x: np.ndarray, start, stop, num, value_fn) -> np.ndarray:
    """How many points of the grid ``value_fn(·, start, stop, num)`` are ≤ x, for every x.

    Equivalent to ``np.searchsorted(grid, x, side="right")`` on each (non-decreasing) grid. The grids
    are arithmetic progressions up to rounding, so the count is floor((x − start)/step) + 1 unless x sits
    within rounding of a grid point; only those few values are settled against the exact grid values.
    All arguments broadcast together (start/stop/num are small, e.g. (c, R, 1) against x (c, 1, P)).
    """
    eps64 = np.finfo(np.float64).eps
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_step = np.where(num > 1, (num - 1) / (stop - start), 0.0)  # 0 for 0- or 1-point grids
        # Generous bound, in units of the step, on the rounding of both x − start and the grid points.
        tol = 1e-6 + 64 * eps64 * (np.abs(start) + np.abs(stop)) * inv_step
    pos = (x - start) * inv_step  # grid position of each value, (…)
    count = np.floor(pos)
    unsure = np.abs(pos - count - 0.5) > 0.5 - tol  # within tol of an integer position
    count += 1.0
    np.clip(count, 0, num, out=count)
    count = count.astype(np.int64)
    if unsure.any():
        shape = count.shape
        xs, ss, es, ns = (np.broadcast_to(v, shape)[unsure] for v in (x, start, stop, num))
        count[unsure] = _fix_counts(count[unsure], xs, lambda k: value_fn(k, ss, es, ns), ns)
    return count


def _realisable_cuts(count: np.ndarray, n_grid) -> np.ndarray:
    """Which cuts k = 0 … P some grid point realises, from J of the sorted pooled values. (…, P) → (…, P+1)

    Grid points with exactly k values below have index j in [J(x_(k−1)), J(x_(k))), taking J(x_(−1)) = 0
    and J(x_(P)) = n_grid; cut k is realised iff that range is non-empty.
    """
    p = count.shape[-1]
    ok = np.empty(count.shape[:-1] + (p + 1,), dtype=bool)
    ok[..., 0] = count[..., 0] > 0
    np.less(count[..., :-1], count[..., 1:], out=ok[..., 1:p])
    n_grid = np.asarray(n_grid)
    ok[..., p] = count[..., -1] < (n_grid[..., 0] if n_grid.ndim else n_grid)  # (…, 1) per-row grid sizes
    return ok


class _Pooled:
    """Both samples of each example, pooled and sorted, with running counts of each side."""

    def __init__(self, r: np.ndarray, u: np.ndarray):
        pooled = np.concatenate([r, u], axis=1)  # (c, P), P = Mr + Mu
        order = np.argsort(pooled, axis=1, kind="stable")
        self.values = np.take_along_axis(pooled, order, axis=1)  # (c, P) ascending
        zero = np.zeros((r.shape[0], 1), dtype=np.int64)
        # (c, P+1): how many of the k smallest pooled values are retrained / unlearned values, k = 0 … P
        self.below_r = np.concatenate([zero, np.cumsum(order < r.shape[1], axis=1)], axis=1)
        self.below_u = np.arange(pooled.shape[1] + 1)[None, :] - self.below_r
        self.n_r, self.n_u = r.shape[1], u.shape[1]
        self.r_is_pos = np.median(r, axis=1) > np.median(u, axis=1)  # (c,) larger median = positive (ties: u)


# ----------------------------------------------------------------------------- ε of many thresholds at once


class _EpsLookup:
    """ε of every threshold from how many retrained (a) and unlearned (b) values it predicts positive.

    Which side is the positive class varies per example. For realistic model counts all (a, b) pairs
    are tabulated once, so scoring ~10^5 thresholds per example is a table lookup; for very large counts
    it falls back to evaluating the formula directly (same values).
    """

    MAX_TABLE = 1 << 23

    def __init__(self, n_r: int, n_u: int, delta: float, alpha: float | None = None):
        self.n_r, self.n_u, self.delta, self.alpha = n_r, n_u, delta, alpha
        self.block = (n_r + 1) * (n_u + 1)
        self.table = None
        if 2 * self.block <= self.MAX_TABLE:
            a = np.arange(n_r + 1)[:, None]  # (n_r+1, 1) retrained values predicted positive
            b = np.arange(n_u + 1)[None, :]  # (1, n_u+1) unlearned values predicted positive
            r_pos = _eps_from_counts(b, n_r - a, n_u, n_r, delta, alpha)  # retrained side is the positive class
            u_pos = _eps_from_counts(a, n_u - b, n_r, n_u, delta, alpha)  # unlearned side is the positive class
            self.table = np.concatenate([r_pos.ravel(), u_pos.ravel()])

    def of_differences(self, a_hi, b_hi, a_lo, b_lo, r_is_pos) -> np.ndarray:
        """ε for a = a_hi − a_lo, b = b_hi − b_lo (all broadcast); entries with a or b < 0 are garbage
        and must be masked by the caller."""
        if self.table is not None:
            # The flat index is linear in (a, b), so the large subtraction happens once.
            hi = np.where(r_is_pos, 0, self.block) + a_hi * (self.n_u + 1) + b_hi
            return self.table.take(hi - (a_lo * (self.n_u + 1) + b_lo), mode="clip")
        a = np.maximum(a_hi - a_lo, 0)
        b = np.maximum(b_hi - b_lo, 0)
        tp, fp = np.where(r_is_pos, a, b), np.where(r_is_pos, b, a)
        n_pos = np.where(r_is_pos, self.n_r, self.n_u)
        n_neg = np.where(r_is_pos, self.n_u, self.n_r)
        return _eps_from_counts(fp, n_pos - tp, n_neg, n_pos, self.delta, self.alpha)


# ----------------------------------------------------------------------------- the two attack families


def _single_family(pool: _Pooled, lookup: _EpsLookup) -> np.ndarray:
    """Best ε of the single-threshold family ("positive if value ≥ t") for each example. → (c,)"""
    x = pool.values  # (c, P)
    lo, hi = x[:, :1], x[:, -1:]  # (c, 1) pooled min / max
    steps = np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT).astype(np.int64)  # (c, 1) thresholds per example
    cut_ok = _realisable_cuts(_count_le(x, lo, hi, steps, _torch_linspace_value), steps)  # (c, P+1)
    # With k values below t, the values ≥ t ("predicted positive") are the rest of each side.
    eps = lookup.of_differences(pool.n_r, pool.n_u, pool.below_r, pool.below_u, pool.r_is_pos[:, None])
    return np.max(eps, axis=1, where=cut_ok, initial=-np.inf)


def _band_family(pool: _Pooled, r: np.ndarray, u: np.ndarray, lookup: _EpsLookup) -> np.ndarray:
    """Best ε of the double-threshold (band) family for each example. r (c, Mr), u (c, Mu) → (c,)"""
    range_r = r.max(axis=1) - r.min(axis=1)
    range_u = u.max(axis=1) - u.min(axis=1)
    pos_diff = np.where(pool.r_is_pos, range_r, range_u)
    neg_diff = np.where(pool.r_is_pos, range_u, range_r)
    width = np.where(pos_diff > neg_diff, neg_diff, pos_diff)  # (c,) the smaller range
    # The original swaps roles when pos_diff >= neg_diff, so the band's positive is the peakier side and,
    # on equal ranges, the lower-median one.
    band_is_r = np.where(pos_diff >= neg_diff, ~pool.r_is_pos, pool.r_is_pos)  # (c,)
    p_min = np.where(band_is_r, r.min(axis=1), u.min(axis=1))
    p_max = np.where(band_is_r, r.max(axis=1), u.max(axis=1))

    right_lo = p_min + width - BAND_BUFFER  # same operation order as the original
    right_hi = p_max + BAND_BUFFER
    n_right = np.ceil((right_hi - right_lo) * NUM_THRESHOLDS_PER_UNIT).astype(np.int64)  # (c,) 400 or 401
    r_max = int(n_right.max())
    i = np.arange(r_max)[None, :]  # (1, r_max)
    valid = i < n_right[:, None]  # (c, r_max); rows past an example's own count are padding
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(n_right > 1, (right_hi - right_lo) / (n_right - 1), 0.0)[:, None]
    right = np.where(i == n_right[:, None] - 1, right_hi[:, None], i * step + right_lo[:, None])  # np.linspace
    right = np.where(valid, right, right_hi[:, None])  # keep padding finite; it is masked below
    centre = (right - width[:, None])[..., None]  # (c, r_max, 1)
    left_lo, left_hi = centre - BAND_BUFFER, centre + BAND_BUFFER  # each right end's 400 left ends span these

    x = pool.values[:, None, :]  # (c, 1, P)
    at_most_right = np.where(valid, (x <= right[..., None]).sum(axis=-1), 0)[..., None]  # (c, r_max, 1)
    le_r = np.take_along_axis(pool.below_r[:, None, :], at_most_right, axis=-1)  # (c, r_max, 1) retrained ≤ r
    le_u = at_most_right - le_r
    count = _count_le(x, left_lo, left_hi, BAND_LEFT_THRESHOLDS, _linspace_value)  # (c, r_max, P)
    cut_ok = _realisable_cuts(count, BAND_LEFT_THRESHOLDS)  # (c, r_max, P+1)
    # In [l, r] = (≤ r) minus (< l). A cut with k ≥ (#values ≤ r) leaves the band empty (or l > r): then
    # both counts are 0, FPR = 0 < FNR = 1 and the original discards the threshold, so we mask it.
    k = np.arange(pool.values.shape[1] + 1)  # (P+1,)
    cut_ok &= k < at_most_right
    eps = lookup.of_differences(le_r, le_u, pool.below_r[:, None, :], pool.below_u[:, None, :],
                                band_is_r[:, None, None])  # (c, r_max, P+1)
    return np.max(eps, axis=(1, 2), where=cut_ok, initial=-np.inf)


# ----------------------------------------------------------------------------- public API


def per_example_epsilon(stats_retrain, stats_unlearn, delta: float = DELTA, *,
                        families: Sequence[str] = FAMILIES, confidence_alpha: float | None = None) -> np.ndarray:
    """Per-example ε of the strongest threshold attack telling retrained from unlearned models.

    Args:
        stats_retrain: (N_retrain, n_examples) statistic (logit-scaled confidence) of each forget example
            under each retrained-from-scratch model.
        stats_unlearn: (N_unlearn, n_examples) the same under each unlearned model. The challenge uses
            N_retrain = N_unlearn = 512; unequal counts are allowed here (rates use each set's own size).
        delta: δ of (ε, δ)-unlearning.
        families: Attack families to maximise over, a subset of ``("single", "band")``; the challenge
            uses both. The peaky guard applies regardless.
        confidence_alpha: None (the challenge's rule) scores each threshold by its empirical FPR/FNR.
            A value in (0, 1) scores it by Clopper–Pearson upper bounds on both rates instead (level
            1 − alpha/2 each) — the "high-probability bounds" option the challenge describes but did
            not run. Empirical rates of finitely many models make two samples of one distribution look
            different somewhere among ~10^5 thresholds; the bounds only credit differences the counts
            support, so a retrain-vs-retrain comparison scores near 0 instead of ln 4 … ln 6. (They bound
            each threshold's ε, not the maximum over thresholds.)

    Returns:
        (n_examples,) float64 ε in [0, 50]. 50 means perfect separation (empirical rates) or the peaky
        guard; 0 means no attack showed a difference, including the degenerate case where every
        threshold was discarded (the released code stops on an assertion there instead).

    Raises:
        PrivacyInputError: wrong shapes, fewer than 2 models per side, non-finite values, a bad δ or
            family name.
    """
    r = as_float_array(stats_retrain, "stats_retrain", ndim=2)
    u = as_float_array(stats_unlearn, "stats_unlearn", ndim=2)
    if r.shape[1] != u.shape[1]:
        raise PrivacyInputError(f"stats_retrain has {r.shape[1]} examples but stats_unlearn has {u.shape[1]}; "
                                "both must be (num_models, num_examples) over the same forget examples")
    if r.shape[0] < 2 or u.shape[0] < 2:
        raise PrivacyInputError(f"need at least 2 models per side, got {r.shape[0]} retrained and "
                                f"{u.shape[0]} unlearned")
    if not 0.0 < delta < 1.0:
        raise PrivacyInputError(f"delta must lie in (0, 1), got {delta}")
    if confidence_alpha is not None and not 0.0 < confidence_alpha < 1.0:
        raise PrivacyInputError(f"confidence_alpha must lie in (0, 1) or be None, got {confidence_alpha}")
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise PrivacyInputError(f"families must be a non-empty subset of {FAMILIES}, got {tuple(families)}")

    r, u = r.T, u.T  # (n, M): one row per example
    n = r.shape[0]
    eps = np.zeros(n)
    if n == 0:
        return eps

    range_r = r.max(axis=1) - r.min(axis=1)
    range_u = u.max(axis=1) - u.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.minimum(range_r, range_u) / np.maximum(range_r, range_u)  # 0/0 = NaN is not "peaky"
    peaky = ratio < PEAKY_RATIO
    eps[peaky] = EPSILON_CAP
    todo = np.flatnonzero(~peaky)
    if todo.size == 0:
        return eps

    # Band work per example is (≈401 right ends) × (Mr + Mu + 1) cuts; the single family is far smaller.
    per_example = (BAND_LEFT_THRESHOLDS + 1) * (r.shape[1] + u.shape[1] + 1)
    chunk = max(1, _CHUNK_ELEMENTS // per_example)
    lookup = _EpsLookup(r.shape[1], u.shape[1], delta, confidence_alpha)
    for start in range(0, todo.size, chunk):
        idx = todo[start:start + chunk]
        best = np.full(idx.size, -np.inf)
        pool = _Pooled(r[idx], u[idx])
        if "single" in families:
            best = np.maximum(best, _single_family(pool, lookup))
        if "band" in families:
            best = np.maximum(best, _band_family(pool, r[idx], u[idx], lookup))
        eps[idx] = np.where(np.isneginf(best), 0.0, best)  # nothing kept: no measurable difference
    return np.clip(eps, 0.0, EPSILON_CAP)


def bucket_epsilon_limit(num_models: int) -> float:
    """The scoring's max_ε = ceil(ln(N − 1)); examples with ε at or above it score 0 (7 for N = 512)."""
    if int(num_models) != num_models or num_models < 2:
        raise PrivacyInputError(f"num_models must be an integer >= 2, got {num_models}")
    return float(math.ceil(math.log(num_models - 1)))


def per_example_points(eps, num_models: int) -> np.ndarray:
    """Score H(s) of each example: 2^(1 − n(s)) for ε in bucket n(s) of width 0.5, 0 from max_ε on.

    Args:
        eps: (n_examples,) per-example ε (from `per_example_epsilon`).
        num_models: Number of unlearned models N the ε were measured with (sets max_ε).

    Returns:
        (n_examples,) float64 points in {1, ½, ¼, …, 0}.
    """
    e = as_float_array(eps, "eps", ndim=1, finite=False)
    if np.isnan(e).any():
        raise PrivacyInputError("eps contains NaN; per_example_epsilon never returns NaN, so check its input")
    limit = bucket_epsilon_limit(num_models)
    n_buckets = int(limit / BUCKET_WIDTH)  # buckets [0, .5), [.5, 1), … up to max_ε
    bucket = np.maximum(np.floor(e / BUCKET_WIDTH), 0)  # first bucket whose upper edge exceeds ε
    return np.where(bucket < n_buckets, 0.5 ** np.minimum(bucket, n_buckets), 0.0)


def forgetting_quality(eps, num_models: int) -> float:
    """Forgetting quality F = mean over forget examples of H(s) (see `per_example_points`).

    Args:
        eps: (n_examples,) per-example ε.
        num_models: Number of unlearned models N (the challenge: 512, giving 14 buckets on [0, 7)).

    Returns:
        F in [0, 1]; 1 means every example is indistinguishable at this resolution.
    """
    points = per_example_points(eps, num_models)
    if points.size == 0:
        raise PrivacyInputError("forgetting quality needs at least one forget example")
    return float(points.mean())


def forget_score(stats_retrain, stats_unlearn, delta: float = DELTA) -> float:
    """F straight from the two (num_models, n_examples) statistic arrays, N taken from the unlearned side."""
    eps = per_example_epsilon(stats_retrain, stats_unlearn, delta)
    return forgetting_quality(eps, np.shape(stats_unlearn)[0])


def final_score(forgetting: float, ra_u, ra_r, ta_u, ta_r) -> float:
    """The challenge's final score F · (RA_U / RA_R) · (TA_U / TA_R).

    Args:
        forgetting: Forgetting quality F.
        ra_u: Retain accuracy of the unlearned models (a mean, or per-model values that are averaged).
        ra_r: Retain accuracy of the retrained models.
        ta_u: Test accuracy of the unlearned models.
        ta_r: Test accuracy of the retrained models.

    Returns:
        The utility-adjusted score; the ratios may exceed 1, as in the original.
    """
    ra_u, ra_r, ta_u, ta_r = (float(np.mean(np.asarray(v, dtype=np.float64))) for v in (ra_u, ra_r, ta_u, ta_r))
    if ra_r <= 0 or ta_r <= 0:
        raise PrivacyInputError(f"retrained accuracies must be positive, got RA_R={ra_r}, TA_R={ta_r}")
    return float(forgetting) * (ra_u / ra_r) * (ta_u / ta_r)


def resolution_note(num_models: int, delta: float = DELTA) -> str:
    """One paragraph on what ε an experiment with ``num_models`` models per side can and cannot show.

    Args:
        num_models: Number of models N on each side (retrained and unlearned).
        delta: δ used for ε.

    Returns:
        A human-readable note: the smallest rate step, the largest finite ε, and the scoring buckets.
    """
    limit = bucket_epsilon_limit(num_models)
    n = int(num_models)
    largest = max(math.log(n * (1 - delta) - 1), 0.0) if n * (1 - delta) > 1 else 0.0
    n_buckets = int(limit / BUCKET_WIDTH)
    # the bounded score's strongest provable ε: zero errors on both sides, each rate bounded above
    zero = float(clopper_pearson_upper(0, n, BOUND_ALPHA / 2))
    proven = max(math.log((1 - delta - zero) / zero), 0.0) if zero < 1 - delta else 0.0
    floor = float(per_example_points(np.array([proven]), n)[0])
    if n_buckets == 0:
        buckets = (f"max_ε = ceil(ln(N−1)) = {limit:g}, so there are no scoring buckets and the forgetting "
                   "quality is 0 whatever the data; use at least 3 models (realistically dozens).")
    else:
        buckets = (f"Scoring uses max_ε = ceil(ln(N−1)) = {limit:g}: {n_buckets} buckets of width 0.5 on "
                   f"[0, {limit:g}), worth 2^0 … 2^-{n_buckets - 1}; ε ≥ {limit:g} scores 0.")
        if largest < limit - BUCKET_WIDTH:
            buckets += (f" Buckets above ε = {largest:.2f} can only be skipped over: no finite ε lands there, "
                        "so an example either shows ε ≤ that value or jumps to the cap.")
    return (f"With N = {n} models per side the smallest non-zero FPR/FNR is 1/N = {1 / n:.3g}, so the largest "
            f"finite ε any threshold can show is ln(N(1−δ) − 1) = {largest:.2f} (FPR = FNR = 1/N); finite "
            "values are logs of count ratios, ln((N(1−δ) − a)/b) for a, b in 1…N, and perfect separation "
            f"is reported as the cap {EPSILON_CAP:g}. " + buckets +
            " Finite samples also set a floor: because ε is the best of ~10^5 thresholds, two samples from one "
            "distribution typically already show ε ≈ ln 4 … ln 6 (a tail where one side outnumbers the other), "
            "so a perfect unlearner scores F ≈ 0.17–0.19 in Gaussian simulations (N = 16–256, "
            "experiments/simulate_epsilon.py), not 1. "
            f"forget_quality_bounded scores thresholds by Clopper–Pearson upper bounds on FPR and FNR "
            f"(α = {BOUND_ALPHA:g}) instead: a perfect unlearner scores ≈ 1 whenever there are buckets, and N "
            f"sets how large a difference it can prove — at N = {n} at most ε = {proven:.2f}"
            + (f", so an example whose unlearned and retrained outputs separate completely still scores "
               f"{floor:.3g} (only the peaky guard scores 0)" if floor > 0 else "") +
            "; simulated F for two Gaussians one standard deviation apart: 0.94 at N = 16, 0.57 at N = 64, "
            "0.23 at N = 256.")
