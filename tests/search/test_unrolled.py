"""The unrolled solver: its lower level is the method's own `apply` with a differentiable stepper.

Checked here: with the graph off (or w detached) both backends take exactly the plain `Stepper`'s steps
(SGD + momentum + weight decay, SalUn's masked weights never move); both backends give the same
hypergradient, also with BatchNorm; each matches central finite differences; `higher` stays confined
to one module; non-differentiable methods are refused.
"""
from __future__ import annotations

import ast
import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypergradients import assert_matches_finite_differences

import worstforget
from worstforget.core.errors import ConfigError
from worstforget.methods import make_method
from worstforget.search import SearchConfig, search_worst_case
from worstforget.search.config import UNROLL_BACKENDS
from worstforget.search.problem import Problem
from worstforget.search.solvers import SOLVERS
from worstforget.search.solvers.unrolled import Unroll, stepper_class

BACKENDS = ("higher", "torch.func")
EQUIVALENCE_METHODS = ("finetune", "random_label", "l1_sparse", "scrub", "neggrad_plus", "salun", "bad_teacher",
                       "unsir")
SGD_VARIANT = {"bad_teacher": {"optimizer": "sgd"}, "unsir": {"optimizer": "sgd"}}  # their papers use Adam


@pytest.fixture()
def setting(prepared):
    return prepared(dataset="synthetic", train_overrides={"epochs": 15})


@pytest.fixture()
def bn_setting(prepared):
    """An MLP with BatchNorm: running statistics are state the unrolled run must carry like plain training."""
    return prepared(dataset="synthetic", model="mlp", norm="batch", train_overrides={"epochs": 5})


def forget_first(setting, n: int = 20) -> torch.Tensor:
    w = torch.zeros(setting.data.num_train)
    w[:n] = 1.0
    return w


def assert_same_run(plain, unrolled, *, tol: float = 1e-6) -> None:
    ours = [p.detach() for p in unrolled.parameters()]
    assert len(ours) == len(list(plain.parameters()))
    for p, q in zip(plain.parameters(), ours):
        torch.testing.assert_close(q, p.detach(), rtol=tol, atol=tol)
    for b, c in zip(plain.buffers(), unrolled.buffers()):
        torch.testing.assert_close(c.float(), b.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EQUIVALENCE_METHODS)
def test_unrolled_run_without_graph_is_the_plain_run(setting, name, backend):
    """Graph tracking off: the method's own apply with the differentiable stepper is ordinary training."""
    method = make_method(name, {"lr": 0.05, **SGD_VARIANT.get(name, {})}).resolved(32)
    w = forget_first(setting)
    for steps in (1, 7):
        plain = method.apply(setting.original, setting.data, w, seed=3, max_steps=steps)
        unrolled = method.apply(setting.original, setting.data, w, seed=3, max_steps=steps,
                                stepper=Unroll(backend, track=False))
        assert_same_run(plain, unrolled)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ("finetune", "salun"))
def test_unrolled_run_with_graph_and_detached_weights_is_the_plain_run(setting, name, backend):
    method = make_method(name, {"lr": 0.05}).resolved(32)
    w = forget_first(setting)
    plain = method.apply(setting.original, setting.data, w, seed=3, max_steps=5)
    unrolled = method.apply(setting.original, setting.data, w, seed=3, max_steps=5, stepper=Unroll(backend))
    assert_same_run(plain, unrolled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_state_follows_the_plain_run(bn_setting, backend):
    method = make_method("finetune", {"lr": 0.05}).resolved(32)
    w = forget_first(bn_setting)
    plain = method.apply(bn_setting.original, bn_setting.data, w, seed=1, max_steps=6)
    unrolled = method.apply(bn_setting.original, bn_setting.data, w, seed=1, max_steps=6,
                            stepper=Unroll(backend, track=False))
    before, after = list(bn_setting.original.buffers()), list(plain.buffers())
    assert len(after) == 6  # two BatchNorm layers: running mean, running variance, batch count
    assert not torch.equal(before[0], after[0])  # the run moved the running statistics
    assert_same_run(plain, unrolled)


def salun_mask(method, setting, w) -> dict[str, torch.Tensor]:
    ctx = method.context(setting.original, setting.data, w, seed=3)
    method.prepare(copy.deepcopy(setting.original).train(), ctx)
    return ctx.grad_mask


@pytest.mark.parametrize("track", (False, True))
@pytest.mark.parametrize("backend", BACKENDS)
def test_salun_masked_weights_never_move(setting, backend, track):
    """Masked weights stay bit-identical to the original after K steps, momentum and weight decay included
    (a gradient-only mask lets weight decay and momentum move them)."""
    method = make_method("salun", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-3}).resolved(32)
    w = forget_first(setting)
    mask = salun_mask(method, setting, w)
    unrolled = method.apply(setting.original, setting.data, w, seed=3, max_steps=6,
                            stepper=Unroll(backend, track=track))
    frozen = moved = 0
    for (n, p0), p in zip(setting.original.named_parameters(), unrolled.parameters()):
        keep = mask[n] == 0
        assert torch.equal(p.detach()[keep], p0.detach()[keep]), n
        frozen += int(keep.sum())
        moved += int((p.detach()[~keep] != p0.detach()[~keep]).sum())
    assert frozen > 0 and moved > 0  # the check is not vacuous: both kinds of weight exist


def double_problem(setting, method, backend: str, *, n: int = 40, steps: int = 3, **cfg) -> Problem:
    """A float64 copy of the first n samples: small enough for exact finite differences."""
    data = setting.data
    small = replace(data, x_train=data.x_train[:n].double(), y_train=data.y_train[:n],
                    x_val=data.x_val.double(), x_test=data.x_test.double())
    local = replace(setting, data=small, original=copy.deepcopy(setting.original).double())
    cfg.setdefault("objective", "loss")  # exposure has its own finite-difference test (tests/test_exposure.py)
    config = SearchConfig(solver="unrolled", unroll_backend=backend, inner_steps=steps, gamma=1e-3, **cfg).validate()
    return Problem(setting=local, method=method, config=config)


def start_weights(n: int = 40) -> torch.Tensor:
    w = torch.full((n,), 0.25, dtype=torch.float64)
    w[::3] = 0.6
    return w


SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}


@pytest.mark.parametrize(("name", "params"), [("neggrad_plus", SGD), ("salun", SGD), ("scrub", {**SGD, "lr": 0.05})])
def test_backends_give_the_same_hypergradient(setting, name, params):
    method = make_method(name, params).resolved(16)
    results = [SOLVERS.get("unrolled")(double_problem(setting, method, b), start_weights(), 5) for b in BACKENDS]
    a, b = results
    assert a.value == pytest.approx(b.value, rel=1e-9)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(a.per_sample, b.per_sample, rtol=1e-9, atol=1e-12)
    assert float(a.grad.abs().max()) > 0


def test_backends_give_the_same_hypergradient_with_batchnorm(bn_setting):
    method = make_method("finetune", SGD).resolved(16)
    a, b = [SOLVERS.get("unrolled")(double_problem(bn_setting, method, be, steps=4), start_weights(), 2)
            for be in BACKENDS]
    assert a.value == pytest.approx(b.value, rel=1e-9)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-12)
    # the implicit term is there: the hypergradient is not just the upper objective's partial derivative
    assert float((a.grad - a.per_sample - 2e-3 * start_weights()).abs().max()) > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_hypergradient_matches_finite_differences(setting, backend):
    """Central differences of f(w) through 3 SGD steps with momentum and weight decay (float64), along
    coordinates and random directions (w ± εv stays inside (0, 1), so the streams do not change)."""
    method = make_method("neggrad_plus", SGD).resolved(16)
    problem = double_problem(setting, method, backend)
    assert_matches_finite_differences(problem, start_weights(), 5, gamma=1e-3)


def test_backend_names_are_validated_and_all_load():
    assert set(BACKENDS) == set(UNROLL_BACKENDS)
    for name in UNROLL_BACKENDS:
        assert callable(stepper_class(name))
    with pytest.raises(ConfigError, match="unroll-backend"):
        SearchConfig(unroll_backend="jax").validate()
    with pytest.raises(ConfigError, match="unroll backend"):
        stepper_class("jax")


def test_higher_is_imported_by_one_module_only_and_that_one_by_unrolled_only():
    root = Path(worstforget.__file__).parent
    importers, users = [], []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "higher" for a in node.names):
                importers.append(path.relative_to(root).as_posix())
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "higher":
                importers.append(path.relative_to(root).as_posix())
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("unroll_higher"):
                users.append(path.relative_to(root).as_posix())
    assert importers == ["search/solvers/unroll_higher.py"]
    assert users == ["search/solvers/unrolled.py"]


def test_unrolled_refuses_non_differentiable_methods(setting):
    with pytest.raises(ConfigError, match="first-order"):
        search_worst_case(setting, "boundary_shrink", {}, SearchConfig(solver="unrolled", outer_steps=1), seed=0)


@pytest.mark.parametrize("optimizer", ("sign", "adam"))
def test_unroll_refuses_optimizers_it_cannot_take_exactly(setting, optimizer):
    method = make_method("finetune", {"optimizer": optimizer}).resolved(32)
    with pytest.raises(ConfigError, match="SGD only.*first-order"):
        method.apply(setting.original, setting.data, forget_first(setting), max_steps=1, stepper=Unroll())
