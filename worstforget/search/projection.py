"""Exact Euclidean projection onto the capped simplex {w : 0 ≤ w ≤ 1, Σw = m}.

The projection is clip(a − μ, 0, 1) for the scalar μ solving φ(μ) = Σ clip(a_i − μ, 0, 1) = m. φ is
piecewise linear and non-increasing with breakpoints at a_i and a_i − 1, so sorting the breakpoints,
evaluating φ at all of them with prefix sums, and interpolating inside the bracketing segment gives
μ exactly in O(N log N) — no bisection tolerance (the reference code stops at |Δμ| ≤ 1e-5).
"""
from __future__ import annotations

import torch


def project_capped_simplex(a: torch.Tensor, m: float) -> torch.Tensor:
    """Project a (N,) vector onto {0 ≤ w ≤ 1, Σw = m}; computed in float64, returned in a's dtype."""
    n = a.numel()
    if not 0 <= m <= n:
        raise ValueError(f"budget m={m} must lie in [0, {n}]")
    x = a.detach().to(torch.float64).flatten()
    if m == 0:
        return torch.zeros_like(a)
    if m == n:
        return torch.ones_like(a)
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
    return (x - mu).clamp(0, 1).to(a.dtype).view_as(a)


def top_m(w: torch.Tensor, m: int, *, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the m largest entries, sorted; ties resolved by `tie_break` (larger first) if given."""
    import numpy as np

    primary = w.detach().cpu().double().numpy()
    secondary = np.zeros_like(primary) if tie_break is None else tie_break.detach().cpu().double().numpy()
    order = np.lexsort((-secondary, -primary))  # descending by w, then by tie_break; stable otherwise
    return torch.as_tensor(np.sort(order[:m]), dtype=torch.long)
