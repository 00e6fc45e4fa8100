"""Uncertainty intervals for metrics repeated over seeds or resampled examples.

Owns the Student-t interval of a mean (RUM reports ToW as mean ± 95 % t-CI over seeds) and a
vectorised percentile bootstrap driven by a seeded numpy Generator.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .scores import PrivacyInputError, as_float_array

_BOOTSTRAP_CHUNK = 1 << 22  # resampled values held in memory at once


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise PrivacyInputError(f"confidence must lie in (0, 1), got {confidence}")


def mean_t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval: mean ± t_{(1+c)/2, n−1} · s/√n.

    Args:
        values: (n,) observations, e.g. one metric over n seeds.
        confidence: Coverage of the interval.

    Returns:
        ``(mean, low, high)``. With a single value there is no spread estimate, so the result is
        ``(value, nan, nan)``; identical values give a zero-width interval.

    Raises:
        PrivacyInputError: empty or non-finite values, or confidence outside (0, 1).
    """
    _check_confidence(confidence)
    x = as_float_array(values, "values", ndim=1)
    if x.size == 0:
        raise PrivacyInputError("mean_t_interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    from scipy.stats import t as student_t

    half = student_t.ppf((1.0 + confidence) / 2.0, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def bootstrap_interval(values, statistic: Callable[..., np.ndarray] = np.mean, *, n_resamples: int = 10_000,
                       seed: int | np.random.Generator = 0, confidence: float = 0.95
                       ) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``statistic`` over resamples (with replacement) of ``values``.

    Args:
        values: (n,) observations (e.g. per-example ε or per-seed scores).
        statistic: Reduction called as ``statistic(resamples, axis=-1)`` on a (b, n) block of resamples,
            returning (b,); numpy reductions such as ``np.mean`` and ``np.median`` qualify.
        n_resamples: Number of bootstrap resamples.
        seed: Seed or ``np.random.Generator``; the same seed and inputs give the same interval.
        confidence: Coverage; the interval is the (1 ∓ c)/2 quantiles of the resampled statistic.

    Returns:
        ``(estimate, low, high)`` with ``estimate = statistic(values)``.

    Raises:
        PrivacyInputError: empty or non-finite values, n_resamples < 1, or a bad confidence.
    """
    _check_confidence(confidence)
    x = as_float_array(values, "values", ndim=1)
    if x.size == 0:
        raise PrivacyInputError("bootstrap_interval needs at least one value")
    if n_resamples < 1:
        raise PrivacyInputError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK // x.size)  # resamples per block, to bound memory
    stats = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        b = min(rows, n_resamples - start)
        idx = rng.integers(0, x.size, size=(b, x.size))  # (b, n) indices drawn with replacement
        stats[start:start + b] = statistic(x[idx], axis=-1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(statistic(x)), float(low), float(high)
