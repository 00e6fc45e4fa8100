"""Exact Euclidean projection onto the capped simplex {w : 0 ≤ w ≤ 1, Σw = m}.

The projection is clip(a − μ, 0, 1) for the scalar μ solving φ(μ) = Σ clip(a_i − μ, 0, 1) = m. φ is
piecewise linear and non-increasing with breakpoints at a_i and a_i − 1, so sorting the breakpoints,
evaluating φ at all of them with prefix sums, and interpolating inside the bracketing segment gives
μ exactly in O(N log N) — no bisection tolerance (the reference code stops at |Δμ| ≤ 1e-5).

Huge inputs (a raw upper step of 1e20 × the hypergradient) break that scheme as it stands: once
|a_i| ≥ 2^53, a_i − 1 == a_i in float64, breakpoints merge and Σw drifts far from m. The answer only
depends on values within one unit of μ, so the input is first re-centred and clipped to [−1, 1] where
that provably changes nothing (see `_recentred`); the breakpoint scheme then runs on O(1) numbers.
"""
from __future__ import annotations

import math

import torch

from ..core.errors import WorstforgetError


def project_capped_simplex(a: torch.Tensor, m: float) -> torch.Tensor:
    """Project a (N,) vector onto {0 ≤ w ≤ 1, Σw = m}; computed in float64, returned in a's dtype.

    Exact for any finite input magnitude (up to float64 rounding of O(1) numbers); the float64 result
    satisfies |Σw − m| ≤ 1e-9·max(1, m) and 0 ≤ w ≤ 1, which is checked.

    Raises:
        ValueError: m outside [0, N].
        WorstforgetError: the input holds NaN or ±inf (in the search: a diverged lower level or an
            overflowing upper step).
    """
    n = a.numel()
    if not 0 <= m <= n:
        raise ValueError(f"budget m={m} must lie in [0, {n}]")
    x = a.detach().to(torch.float64).flatten()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = n - int(finite.sum())
        raise WorstforgetError(f"the search step holds NaN or inf in {bad} of {n} weights: the hypergradient "
                               "diverged in the lower level (lower --inner-lr) or the upper step overflowed "
                               "(lower --upper-lr)")
    if m == 0:
        return torch.zeros_like(a)
    if m == n:
        return torch.ones_like(a)
    w = _project_unit_range(_recentred(x, m), m)
    _check_feasible(w, m)
    return w.to(a.dtype).view_as(a)


def _recentred(x: torch.Tensor, m: float) -> torch.Tensor:
    """clip(x − c, −1, 1) with c the ⌈m⌉-th largest entry: the same projection, on numbers in [−1, 1].

    Why the projection does not change (s_1 ≥ … ≥ s_N are the sorted entries, k = ⌈m⌉, c = s_k, 0 < m < N):

    1. Shift: clip((a_i + t) − (μ + t), 0, 1) = clip(a_i − μ, 0, 1), so μ solves the problem for a iff
       μ − c solves it for a − c, with the same w. Subtracting c changes nothing.
    2. Bracket: φ(c − 1) ≥ k ≥ m, since each of s_1 … s_k ≥ c contributes clip(s_i − c + 1, 0, 1) = 1; and
       φ(c) ≤ k − 1 < m, since only entries > c contribute, at most 1 each, and they are among s_1 … s_{k−1}.
       φ is continuous and non-increasing, so some μ* ∈ [c − 1, c) has φ(μ*) = m.
    3. Clip: an entry a_i ≥ c + 1 has a_i − μ* > 1, so w_i = 1, and c + 1 in its place gives 1 too; an entry
       a_i ≤ c − 1 has a_i − μ* ≤ 0, so w_i = 0, and c − 1 in its place gives 0 too. Replacing a by
       clip(a, c − 1, c + 1) leaves every term of φ(μ*) unchanged, so μ* still solves the clipped problem,
       and the projection, being unique, is the same w.
    4. Rounding: where |a_i − c| ≥ 1 the float64 difference is also beyond ±1 (rounding is monotone and
       ±1 are representable; an overflow to ±inf is beyond too), so it clips to the same ±1. Where
       |a_i − c| < 1 and |c| ≥ 2, a_i and c share a sign with c/2 ≤ a_i ≤ 2c, so the difference is exact
       (Sterbenz); where |c| < 2 every number involved is O(1) and rounds at the 1e-16 level.
    """
    k = math.ceil(m)
    c = torch.kthvalue(x, x.numel() - k + 1).values  # the k-th largest
    return (x - c).clamp(-1.0, 1.0)


def _project_unit_range(x: torch.Tensor, m: float) -> torch.Tensor:
    """The breakpoint scheme of the module docstring, for float64 x (N,) and 0 < m < N."""
    n = x.numel()
    xs, _ = torch.sort(x)  # ascending
    prefix = torch.cat([x.new_zeros(1), torch.cumsum(xs, 0)])  # prefix[k] = sum of k smallest

    def phi(mu: torch.Tensor) -> torch.Tensor:
        # samples with a_i ≥ μ+1 contribute 1; with μ < a_i < μ+1 contribute a_i − μ; others 0
        lo = torch.searchsorted(xs, mu, right=True)  # count of a_i ≤ μ
        hi = torch.searchsorted(xs, mu + 1, right=False)  # count of a_i < μ+1
        mid_sum = prefix[hi] - prefix[lo]
        return (n - hi) + mid_sum - mu * (hi - lo)

    breaks = torch.unique(torch.cat([x, x - 1]))  # ascending; φ decreases as μ grows
    values = phi(breaks)
    # largest breakpoint with φ ≥ m, and the next one (φ < m); φ is linear between them
    # (φ(min a − 1) = n > m and φ(max a) = 0 < m, so 0 ≤ k ≤ len − 2)
    k = int(torch.searchsorted(-values, torch.tensor([-float(m)], dtype=torch.float64), right=True)[0]) - 1
    b0, b1, v0, v1 = breaks[k], breaks[k + 1], values[k], values[k + 1]
    mu = b0 + (v0 - m) * (b1 - b0) / (v0 - v1) if v0 != v1 else b0
    return (x - mu).clamp(0, 1)


def _check_feasible(w: torch.Tensor, m: float) -> None:
    """The result must be feasible; anything else is a bug here, not a user error."""
    total = float(w.sum())
    if not (abs(total - m) <= 1e-9 * max(1.0, m) and float(w.min()) >= 0 and float(w.max()) <= 1):
        raise AssertionError(f"capped-simplex projection is infeasible: Σw = {total!r} for m = {m!r}, "
                             f"w in [{float(w.min())}, {float(w.max())}]")


def top_m(w: torch.Tensor, m: int, *, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the m largest entries, sorted; ties resolved by `tie_break` (larger first) if given."""
    import numpy as np

    primary = w.detach().cpu().double().numpy()
    secondary = np.zeros_like(primary) if tie_break is None else tie_break.detach().cpu().double().numpy()
    order = np.lexsort((-secondary, -primary))  # descending by w, then by tie_break; stable otherwise
    return torch.as_tensor(np.sort(order[:m]), dtype=torch.long)


def upper_step(w: torch.Tensor, grad: torch.Tensor, m: float, *, lr: float, normalize: bool
               ) -> tuple[torch.Tensor, float]:
    """One projected step of the upper level: w − (lr / σ)·grad onto {0 ≤ w ≤ 1, Σw = m}, σ the gradient's
    standard deviation (1 with `normalize` off, the paper's raw step). Returns the new w and the step size."""
    scale = float(grad.std().clamp_min(1e-12)) if normalize else 1.0
    step = lr / scale
    return project_capped_simplex(w - step * grad, m), step

