"""A shared check of unrolled hypergradients against central finite differences (float64 problems)."""
from __future__ import annotations

import pytest
import torch

from worstforget.search.solvers import SOLVERS


def assert_matches_finite_differences(problem, w: torch.Tensor, seed: int, *, gamma: float) -> None:
    """∇f(w)·v equals (f(w + εv) − f(w − εv)) / 2ε along three coordinates and two random directions, and the
    implicit term (the derivative through the lower level) is large enough for the check to mean something."""
    solve = SOLVERS.get("unrolled")
    hg = solve(problem, w, seed)
    implicit = hg.grad - problem.reduce(hg.per_sample) - 2 * gamma * w
    assert float(implicit.abs().max()) > 1e-3  # the derivative through the steps is being checked, not only ℓ
    n = len(w)
    g = torch.Generator().manual_seed(0)
    directions = [torch.eye(n, dtype=torch.float64)[i] for i in (0, n // 5, 3 * n // 4)]
    directions += [torch.randn(n, generator=g, dtype=torch.float64) / n**0.5 for _ in range(2)]
    eps = 1e-6
    for v in directions:
        up, down = solve(problem, w + eps * v, seed).value, solve(problem, w - eps * v, seed).value
        assert float(hg.grad @ v) == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)
