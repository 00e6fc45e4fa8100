"""Stacked runs of a method (methods/stacked.py): run i of a stack is the method's own `apply` with weights i and
seed i — equal to rounding in float64, batches, augmentation, schedule and BatchNorm statistics included — and
bit for bit the same run in any stack, at any thread count."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from worstforget.core.errors import ConfigError
from worstforget.datasets import Augment, load_dataset
from worstforget.forget_sets import forget_weights, random_forget_set
from worstforget.methods import make_method
from worstforget.methods.stacked import run_stacked, stackable
from worstforget.training.loop import TrainConfig
from worstforget.training.original import ModelSpec

STACKABLE = ("finetune", "l1_sparse", "gradient_ascent", "neggrad_plus", "random_label", "scrub", "salun", "eu_k",
             "cf_k", "boundary_expand")


@pytest.fixture(scope="module")
def images() -> tuple:
    """200 digits as 1×8×8 images, float64, with random crops and flips (so every run's augmentation stream
    matters), and an untrained CNN with BatchNorm as the 'original' (exactness needs no trained model)."""
    data = load_dataset("digits")
    keep = slice(0, 200)
    data = replace(data, x_train=data.x_train[keep].double(), y_train=data.y_train[keep],
                   x_val=data.x_val.double(), x_test=data.x_test.double(), augment=Augment(crop_pad=1, flip=True))
    spec = ModelSpec("cnn", TrainConfig(epochs=1, lr=0.05, batch_size=32), params={"width": 4})
    return data, spec, spec.build(data, seed=0).double()


def _weights(data, sizes_seed: int, m: int, count: int) -> torch.Tensor:
    return torch.stack([forget_weights(data, random_forget_set(data.num_train, m, sizes_seed + i))
                        for i in range(count)]).double()


# the stackable methods at short runs, and two whose learning rate moves within the run: a cosine schedule, and
# SCRUB's decay after its third epoch
CASES = [(name, {"epochs": 2}) for name in STACKABLE] + [("finetune", {"epochs": 2, "schedule": "cosine"}),
                                                         ("scrub", {"epochs": 4, "lr": 0.05})]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_each_stacked_run_is_the_methods_own_run(images, name, params):
    data, spec, original = images
    method = make_method(name, {**params, "batch_size": 16}).resolved(32)
    weights, seeds = _weights(data, 0, 20, 3), [4, 9, 11]
    stack, finite = run_stacked(method, original, data, weights, seeds, spec=spec)
    assert finite == [True] * 3
    moved = 0.0
    for i, model in enumerate(stack.models()):
        alone = method.apply(original, data, weights[i], seed=seeds[i], spec=spec)
        for (key, a), b in zip(model.state_dict().items(), alone.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=key)  # BatchNorm's running statistics too
        pairs = zip(model.state_dict().values(), original.state_dict().values())
        moved = max(moved, max(float((a - b).abs().max()) for a, b in pairs))
    assert moved > 1e-3  # the runs did train (an untouched copy would pass the comparison too)
    assert not stack.template.training and all(not m.training for m in stack.models())


def test_a_run_is_the_same_bits_in_any_stack_and_at_any_thread_count(synthetic, trained):
    method = make_method("neggrad_plus", {"epochs": 3}).resolved(32)
    weights = torch.stack([forget_weights(synthetic, random_forget_set(synthetic.num_train, 20, i)) for i in range(5)])
    seeds = [7, 8, 9, 10, 11]
    threads = torch.get_num_threads()
    rows = []
    try:
        for count, start, n_threads in [(5, 0, 2), (1, 2, 2), (2, 2, 2), (3, 1, 1), (5, 0, 1)]:
            torch.set_num_threads(n_threads)
            stack, _ = run_stacked(method, trained, synthetic, weights[start:start + count], seeds[start:start + count])
            rows.append({k: v[2 - start].clone() for k, v in stack.params.items()})  # the run with seed 9
    finally:
        torch.set_num_threads(threads)
    for row in rows[1:]:
        assert all(torch.equal(rows[0][k], row[k]) for k in rows[0])
    # and it is that seed's run: another seed on the same set gives other weights
    other, _ = run_stacked(method, trained, synthetic, weights[2:3], [99])
    assert not torch.equal(other.params["classifier.weight"][0], rows[0]["classifier.weight"])


def test_only_methods_whose_losses_allow_it_stack():
    assert all(stackable(make_method(n, {})) for n in STACKABLE)
    # bad teaching steps with Adam; Boundary Shrinking's loss reads labels each run computed; UNSIR learns a
    # noise per run; Retrain and the no-op are no loop
    for name in ("retrain", "noop", "bad_teacher", "boundary_shrink", "unsir", "rum", "fisher", "ssd"):
        assert not stackable(make_method(name, {})), name
    assert not stackable(make_method("finetune", {"optimizer": "adam"}))  # the stack steps with SGD only
    # a subclass with losses of its own does not inherit the promise; it declares it again where it holds
    Finetune = type(make_method("finetune", {}))

    class Mine(Finetune):
        pass

    class Declared(Finetune):
        stackable = True

    assert not stackable(Mine()) and stackable(Declared())


def test_runs_on_sets_of_different_sizes_are_refused(synthetic, trained):
    method = make_method("finetune", {"epochs": 1}).resolved(32)
    weights = torch.stack([forget_weights(synthetic, random_forget_set(synthetic.num_train, m, 0)) for m in (20, 30)])
    with pytest.raises(ConfigError, match="forget sets of one size"):
        run_stacked(method, trained, synthetic, weights, [0, 1])
    with pytest.raises(ConfigError, match="cannot train as a stack"):
        run_stacked(make_method("bad_teacher", {}).resolved(32), trained, synthetic, weights[:1], [0])


def test_a_run_that_leaves_the_finite_range_is_reported_not_returned(synthetic, trained):
    weights = torch.stack([forget_weights(synthetic, random_forget_set(synthetic.num_train, 20, i)) for i in range(2)])
    # gradient ascent at an absurd learning rate overflows; the original is left as it was
    before = copy.deepcopy(trained.state_dict())
    _, finite = run_stacked(make_method("gradient_ascent", {"lr": 1e30, "epochs": 3}).resolved(32), trained,
                            synthetic, weights, [0, 1])
    assert finite == [False, False]
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    _, finite = run_stacked(make_method("gradient_ascent", {"epochs": 1}).resolved(32), trained, synthetic, weights,
                            [0, 1])
    assert finite == [True, True]
