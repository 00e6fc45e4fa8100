"""The worst-case search: exact projection, the first-order hypergradient, movement, planted hard examples,
determinism and resume (the unrolled solver is tested in test_unrolled.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worstforget.core.cache import ModelCache
from worstforget.methods import make_method
from worstforget.search import (
    SearchConfig,
    loop,
    project_capped_simplex,
    search_worst_case,
    top_m,
)
from worstforget.search.problem import Problem
from worstforget.search.solvers import SOLVERS
from worstforget.search.solvers.base import upper_objective, upper_value_and_grad
from worstforget.setting import prepare_setting
from worstforget.training.original import original_model


def test_upper_objective_by_hand_and_its_partial_derivative_by_autograd():
    reduced = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    w = torch.tensor([0.2, 0.7, 0.1], dtype=torch.float64, requires_grad=True)
    value, grad = upper_value_and_grad(reduced, w.detach(), 0.3)
    assert value == pytest.approx(0.5 * 0.2 - 1.0 * 0.7 + 2.0 * 0.1 + 0.3 * (0.04 + 0.49 + 0.01), abs=1e-15)
    (auto,) = torch.autograd.grad(upper_objective(reduced, w, 0.3), w)
    assert torch.allclose(grad, auto, rtol=0, atol=1e-15)


def brute_force_projection(a: np.ndarray, m: float) -> np.ndarray:
    """Reference: bisection on μ to machine precision (independent of the sort-based method)."""
    lo, hi = a.min() - 1.0, a.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.clip(a - mid, 0, 1).sum() > m:
            lo = mid
        else:
            hi = mid
    return np.clip(a - (lo + hi) / 2, 0, 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=40), st.floats(0.01, 0.99))
def test_projection_is_feasible_and_matches_brute_force(values, frac):
    a = torch.tensor(values, dtype=torch.float64)
    m = frac * len(values)
    w = project_capped_simplex(a, m)
    assert float(w.min()) >= 0 and float(w.max()) <= 1
    assert abs(float(w.sum()) - m) < 1e-9
    np.testing.assert_allclose(w.numpy(), brute_force_projection(a.numpy(), m), atol=1e-8)


def test_projection_is_the_closest_feasible_point():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, generator=g, dtype=torch.float64) * 2
    w = project_capped_simplex(a, 7)
    for _ in range(200):  # random feasible points are never closer
        v = project_capped_simplex(torch.rand(30, generator=g, dtype=torch.float64) * 3, 7)
        assert float(((a - w) ** 2).sum()) <= float(((a - v) ** 2).sum()) + 1e-12


def test_top_m_breaks_ties_and_returns_unique_sorted_indices():
    w = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.0])
    assert top_m(w, 2, tie_break=torch.tensor([0.0, 3.0, 1.0, 0.0, 0.0])).tolist() == [1, 3]


@pytest.fixture()
def setting(prepared):
    return prepared(dataset="synthetic", train_overrides={"epochs": 15})


def test_first_order_gradient_is_loss_plus_ridge(setting):
    cfg = SearchConfig(solver="first_order", inner_steps=2, gamma=0.1)
    problem = Problem(setting=setting, method=make_method("finetune").resolved(32), config=cfg)
    w = torch.full((setting.data.num_train,), 0.1, dtype=torch.float64)
    hg = SOLVERS.get("first_order")(problem, w, 0)
    torch.testing.assert_close(hg.grad, hg.per_sample + 2 * 0.1 * w)


def test_search_moves_is_deterministic_and_resumes(setting, tmp_path, monkeypatch):
    cfg = SearchConfig(solver="first_order", outer_steps=4, inner_steps=5)
    a = search_worst_case(setting, "finetune", {}, cfg, seed=1, state_dir=tmp_path / "a")
    b = search_worst_case(setting, "finetune", {}, cfg, seed=1, state_dir=tmp_path / "b")
    assert torch.equal(a.indices, b.indices)
    assert len(a.indices) == round(0.1 * setting.data.num_train) == len(torch.unique(a.indices))
    assert a.history["overlap_with_initial"][-1] < 0.6  # the set left its (random) start
    w = a.weights
    assert float(w.min()) >= 0 and float(w.max()) <= 1 and abs(float(w.sum()) - len(a.indices)) < 1e-6
    # interrupted inside its third outer step (the lower level raises), then resumed: the resumed run computes
    # steps 3 and 4 only and ends exactly where the uninterrupted one did
    real, seeds = SOLVERS.get("first_order"), []

    def interrupted(problem, w, seed):
        seeds.append(seed)
        if len(seeds) == 3:
            raise KeyboardInterrupt
        return real(problem, w, seed)

    monkeypatch.setattr(loop, "SOLVERS", _Only(interrupted))
    with pytest.raises(KeyboardInterrupt):
        search_worst_case(setting, "finetune", {}, cfg, seed=1, state_dir=tmp_path / "c")
    state = torch.load(next((tmp_path / "c").glob("search-*.pt")), weights_only=True)
    assert state["step"] == 2 and not state["done"]
    seeds.clear()
    monkeypatch.setattr(loop, "SOLVERS", _Only(lambda problem, w, seed: seeds.append(seed) or real(problem, w, seed)))
    resumed = search_worst_case(setting, "finetune", {}, cfg, seed=1, state_dir=tmp_path / "c", resume=True)
    assert len(seeds) == 2
    assert torch.equal(resumed.indices, a.indices) and torch.equal(resumed.weights, a.weights)
    assert torch.equal(resumed.weight_history, a.weight_history) and resumed.history == a.history


class _Only:
    """A solver registry holding one solver, whatever name is asked for."""

    def __init__(self, solver):
        self.solver = solver

    def get(self, name):
        return self.solver


def test_planted_prototypes_are_found(tmp_path):
    """Points planted deep inside their class (far beyond the class mean) stay fitted whatever is
    unlearned: with the margin objective the search must pick them far more often than chance."""
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path),
                              train_overrides={"epochs": 15})
    data = setting.data
    means = torch.stack([data.x_train[data.y_train == c].mean(0) for c in range(data.num_classes)])
    y_new = torch.arange(12) % data.num_classes
    x_new = 3.0 * means[y_new] + 0.05 * torch.randn(12, means.shape[1], generator=torch.Generator().manual_seed(0))
    x = torch.cat([data.x_train, x_new])
    y = torch.cat([data.y_train, y_new])
    planted = torch.arange(data.num_train, data.num_train + 12)
    new_data = replace(data, x_train=x, y_train=y, fingerprint=data.fingerprint + "-planted")
    original, key = original_model(setting.spec, new_data, cache=ModelCache(tmp_path))  # trained with them
    setting = replace(setting, data=new_data, original=original, original_key=key)
    cfg = SearchConfig(outer_steps=5, inner_steps=10, forget_ratio=0.1, objective="margin")
    found = search_worst_case(setting, "finetune", {"lr": 0.05}, cfg, seed=0, state_dir=tmp_path / "s")
    recall = float(torch.isin(planted, found.indices).float().mean())
    chance = len(found.indices) / len(y)
    assert recall > 3 * chance
