"""Per-example membership statistics from model outputs, and the privacy package's input error.

Owns LiRA's *logit-scaled confidence* φ = log p_y − log Σ_{j≠y} p_j (Carlini et al., S&P 2022), the
statistic that both the NeurIPS'23 unlearning-challenge score and (U-)LiRA are computed on, plus the
small validation helpers and the `PrivacyInputError` type shared by the other modules of
`worstforget.privacy`. Pure numpy/scipy: callers pass logits as arrays.
"""
from __future__ import annotations

import numpy as np

from ...core.errors import WorstforgetError

#: The additive floor of the released challenge code (`metric.compute_logit_scaled_confidence`) and of
#: LiRA's `score.py`: φ = log(p_y + 1e-45) − log(p_rest + 1e-45). It bounds |φ| by ln(1e45) ≈ 103.6.
CHALLENGE_FLOOR = 1e-45


class PrivacyInputError(WorstforgetError, ValueError):
    """Arrays handed to `worstforget.privacy` have the wrong shape, type or values.

    It is a `ValueError` for library callers and a `WorstforgetError` so the CLI prints it as one line.
    """


def as_float_array(values, name: str, *, ndim: int | None = None, finite: bool = True) -> np.ndarray:
    """`values` as a float64 array, checked for dimensionality and (optionally) finiteness."""
    arr = np.asarray(values, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise PrivacyInputError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise PrivacyInputError(f"{name} contains NaN or infinite values; drop or fix those entries first")
    return arr


def logit_scaled_confidence(logits, labels, *, floor: float | None = None) -> np.ndarray:
    """Logit-scaled confidence φ = log p_y − log Σ_{j≠y} p_j of the true label, in float64.

    With ``floor=None`` (default) φ is computed exactly and stably as
    ``z_y − logsumexp_{j≠y}(z_j)`` (the softmax normaliser cancels), so it stays finite and accurate
    for arbitrarily large logit margins.

    With ``floor=CHALLENGE_FLOOR`` it reproduces the released NeurIPS'23 challenge code (which copies
    LiRA's ``score.py``): subtract the row maximum and exponentiate *in the logits' own dtype* (float32
    for network outputs, so probabilities underflow to 0 once a margin exceeds ≈ 87–104), promote to
    float64, normalise, then ``log(p_y + floor) − log(p_rest + floor)``. φ therefore saturates at
    ±ln(1/floor) ≈ ±103.6, and values within a few units of that are distorted by the floor. Unlike the
    released code this never modifies the caller's array (the original subtracts the max in place).

    Args:
        logits: Array of shape (..., C) with C ≥ 2 classes, e.g. (N, C) for one model or (M, N, C) for a
            stack of M models.
        labels: Integer true labels broadcastable to ``logits.shape[:-1]``, e.g. (N,) for both cases above.
        floor: None for the exact computation, or the additive probability floor (``CHALLENGE_FLOOR`` to
            match the challenge).

    Returns:
        float64 array of shape ``logits.shape[:-1]``; higher means the model is more confident in the
        true label (more member-like).

    Raises:
        PrivacyInputError: fewer than two classes, non-integer labels, or labels out of range.
    """
    z = np.asarray(logits)
    if z.ndim < 2 or z.shape[-1] < 2:
        raise PrivacyInputError(f"logits must have shape (..., C) with C >= 2 classes, got {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    y = np.asarray(labels)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise PrivacyInputError(f"labels must be integers, got dtype {y.dtype}")
    try:
        y = np.broadcast_to(y.astype(np.int64), z.shape[:-1])
    except ValueError:
        raise PrivacyInputError(f"labels of shape {np.shape(labels)} do not match logits {z.shape}") from None
    num_classes = z.shape[-1]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise PrivacyInputError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    idx = y[..., None]  # (..., 1) for take/put_along_axis

    if floor is None:  # the project's one exact implementation (torch; differentiable where the search needs it)
        import torch

        from ...training.outputs import logit_scaled_confidence as exact

        flat = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64)).reshape(-1, num_classes)
        return exact(flat, torch.from_numpy(np.array(y, dtype=np.int64).reshape(-1))).numpy().reshape(y.shape)

    # Challenge path: keep the original's dtype sequence, because float32 underflow is part of what it
    # computes for real network outputs.
    shifted = z - z.max(axis=-1, keepdims=True)  # (..., C), input dtype
    probs = np.exp(shifted).astype(np.float64)
    probs /= probs.sum(axis=-1, keepdims=True)
    p_true = np.take_along_axis(probs, idx, axis=-1)[..., 0]
    np.put_along_axis(probs, idx, 0.0, axis=-1)
    p_rest = probs.sum(axis=-1)
    return np.log(p_true + floor) - np.log(p_rest + floor)
