"""Logit-scaled confidence: agreement with a direct float64 computation, stability, the challenge floor."""
from __future__ import annotations

import math

import numpy as np
import pytest

from worstforget.scoring.privacy import (
    CHALLENGE_FLOOR,
    PrivacyInputError,
    logit_scaled_confidence,
)


def _direct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y − log(1 − p_y) from an explicit float64 softmax (fine for moderate logits)."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p_y = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
    p_rest = p.sum(axis=-1) - p_y
    return np.log(p_y) - np.log(p_rest)


def test_matches_direct_float64_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(50, 10))
    labels = rng.integers(0, 10, size=50)
    np.testing.assert_allclose(logit_scaled_confidence(logits, labels), _direct(logits, labels), rtol=1e-10, atol=1e-10)
    # The challenge path agrees too while no probability is anywhere near the 1e-45 floor.
    np.testing.assert_allclose(logit_scaled_confidence(logits, labels, floor=CHALLENGE_FLOOR),
                               _direct(logits, labels), rtol=1e-10, atol=1e-10)


def test_hand_value_two_classes():
    # Two classes: p_y / p_rest = e^{z_y − z_other}, so φ is exactly the logit margin.
    out = logit_scaled_confidence(np.array([[2.0, -1.0], [0.0, 0.0]]), np.array([0, 1]))
    np.testing.assert_allclose(out, [3.0, 0.0], atol=1e-15)


def test_stacked_models():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 7, 5))  # (M, N, C)
    labels = rng.integers(0, 5, size=7)
    out = logit_scaled_confidence(logits, labels)
    assert out.shape == (4, 7) and out.dtype == np.float64
    for m in range(4):
        np.testing.assert_allclose(out[m], logit_scaled_confidence(logits[m], labels), rtol=1e-14)


def test_stable_for_huge_logits():
    logits = np.array([[1e6, 0.0, 0.0], [1e6, 0.0, 0.0], [500.0, 480.0, -300.0]])
    labels = np.array([0, 1, 1])
    out = logit_scaled_confidence(logits, labels)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], 1e6 - math.log(2.0), rtol=1e-15)  # z_y − logsumexp(0, 0)
    np.testing.assert_allclose(out[1], -1e6, rtol=1e-15)  # 0 − logsumexp(1e6, 0)
    np.testing.assert_allclose(out[2], -20.0, atol=1e-8)  # 480 − logsumexp(500, −300)


def test_challenge_floor_saturates():
    # float32 logits, as a network returns them: exp underflows and the 1e-45 floor takes over, so φ
    # saturates at ±ln(1e45) ≈ ±103.6 instead of reaching ±1000.
    logits = np.array([[1000.0, 0.0, 0.0]], dtype=np.float32)
    cap = -math.log(CHALLENGE_FLOOR)
    high = logit_scaled_confidence(logits, np.array([0]), floor=CHALLENGE_FLOOR)
    low = logit_scaled_confidence(logits, np.array([1]), floor=CHALLENGE_FLOOR)
    np.testing.assert_allclose(high, [cap], rtol=1e-12)
    np.testing.assert_allclose(low, [-cap], rtol=1e-12)
    assert logit_scaled_confidence(logits, np.array([0]))[0] == pytest.approx(1000.0 - math.log(2.0))
    np.testing.assert_array_equal(logits, [[1000.0, 0.0, 0.0]])  # the caller's array is left alone


def test_input_validation():
    with pytest.raises(PrivacyInputError):
        logit_scaled_confidence(np.zeros((3, 1)), np.zeros(3, dtype=int))  # one class
    with pytest.raises(PrivacyInputError):
        logit_scaled_confidence(np.zeros((3, 4)), np.array([0, 1, 4]))  # label out of range
    with pytest.raises(PrivacyInputError):
        logit_scaled_confidence(np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]))  # float labels
    with pytest.raises(PrivacyInputError):
        logit_scaled_confidence(np.zeros((3, 4)), np.zeros(2, dtype=int))  # shape mismatch
