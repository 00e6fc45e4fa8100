"""Vmapped ensemble training equals sequential `train.fit`, model by model."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from worstforget.core.errors import ConfigError
from worstforget.datasets import Augment, load_dataset
from worstforget.training.ensemble import (
    StackedModels,
    fit_ensemble,
    fit_stacked,
    predict_logits_ensemble,
)
from worstforget.training.loop import TrainConfig, fit, predict_logits
from worstforget.training.original import ModelSpec

TOL = {"rtol": 1e-4, "atol": 1e-5}
SEEDS = [3, 11, 42]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors gain nothing from threads, and busy CI machines make OpenMP barriers slow
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


@pytest.fixture(scope="module")
def tiny_digits():
    full = load_dataset("digits")
    return replace(full, x_train=full.x_train[:200], y_train=full.y_train[:200],
                   x_val=full.x_val[:60], y_val=full.y_val[:60], x_test=full.x_test[:100], y_test=full.y_test[:100])


def _masks(n: int) -> torch.Tensor:
    """Three weight rows: all ones, a 0/1 mask of 150 samples, and a sparser mask with non-binary weights."""
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(3, n)
    w[0] = 1.0
    w[1, torch.randperm(n, generator=g)[:150]] = 1.0
    keep = torch.randperm(n, generator=g)[:97]  # 97: a partial last batch of a different width
    w[2, keep] = 0.5 + torch.rand(97, generator=g)
    return w


def _sequential(spec: ModelSpec, data, cfg: TrainConfig, weights: torch.Tensor | None) -> list[torch.nn.Module]:
    return [fit(spec.build(data, seed=s), data, cfg, seed=s, sample_weights=None if weights is None else weights[i])
            for i, s in enumerate(SEEDS)]


def _assert_same(ensemble: list[torch.nn.Module], reference: list[torch.nn.Module]) -> None:
    assert len(ensemble) == len(reference)
    for i, (got, want) in enumerate(zip(ensemble, reference)):
        got_state, want_state = got.state_dict(), want.state_dict()
        assert got_state.keys() == want_state.keys()
        for name in want_state:
            torch.testing.assert_close(got_state[name], want_state[name], **TOL,
                                       msg=lambda m, i=i, name=name: f"model {i}, {name}: {m}")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "masks"])
def test_mlp_ensemble_matches_sequential_fit(synthetic, weighted):
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32)
    spec = ModelSpec("mlp", cfg, params={"hidden": (16,)})
    weights = _masks(synthetic.num_train) if weighted else None
    ensemble = fit_ensemble(spec, synthetic, seeds=SEEDS, sample_weights=weights, cfg=cfg)
    _assert_same(ensemble, _sequential(spec, synthetic, cfg, weights))


def test_stacked_sgd_fallback_matches_sequential_fit(synthetic, monkeypatch):
    # without torch's fused SGD kernel the update runs as masked in-place stacked tensor operations
    import worstforget.training.ensemble as ensemble

    monkeypatch.setattr(ensemble, "_has_fused_sgd", lambda device: False)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32)
    spec = ModelSpec("mlp", cfg, params={"hidden": (16,)})
    weights = _masks(synthetic.num_train)
    stack = fit_stacked(spec, synthetic, seeds=SEEDS, sample_weights=weights, cfg=cfg)
    reference = _sequential(spec, synthetic, cfg, weights)
    _assert_same(stack.models(), reference)
    logits = predict_logits_ensemble(stack, synthetic.x_test)  # (M, N, C)
    for i, model in enumerate(reference):
        torch.testing.assert_close(logits[i], predict_logits(model, synthetic.x_test), **TOL)


def test_generic_vmap_path_with_groupnorm_and_step_schedule(synthetic):
    # GroupNorm takes the MLP off the bmm fast path onto vmap(functional_call); a step schedule with
    # unequal steps per model checks each model's own schedule, and select_best=False the last epoch.
    # 32 units = 8 groups of 4: with hidden 16 (groups of 2) training is chaotic — a 1e-7 relative
    # change of the initial weights moves sequential fit itself by 0.1, so no reordering of sums can match
    cfg = TrainConfig(epochs=4, lr=0.05, batch_size=32, schedule="step", select_best=False)
    spec = ModelSpec("mlp", cfg, norm="group", params={"hidden": (32,)})
    weights = _masks(synthetic.num_train)
    stack = fit_stacked(spec, synthetic, seeds=SEEDS, sample_weights=weights, cfg=cfg)
    assert stack._plan is None
    _assert_same(stack.models(), _sequential(spec, synthetic, cfg, weights))


def test_cnn_ensemble_matches_sequential_fit_with_augmentation(tiny_digits):
    # a crop/flip augmentation makes every model consume its own augmentation stream batch by batch
    data = replace(tiny_digits, augment=Augment(crop_pad=1, flip=True))
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32)
    spec = ModelSpec("cnn", cfg, norm="none", params={"width": 8})
    weights = _masks(data.num_train)
    ensemble = fit_ensemble(spec, data, seeds=SEEDS, sample_weights=weights, cfg=cfg)
    _assert_same(ensemble, _sequential(spec, data, cfg, weights))


def test_batchnorm_needs_equal_active_set_sizes(tiny_digits):
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32)
    spec = ModelSpec("cnn", cfg, norm="batch", params={"width": 4})
    n = tiny_digits.num_train
    g = torch.Generator().manual_seed(1)
    halves = torch.zeros(3, n)
    for row in halves:
        row[torch.randperm(n, generator=g)[: n // 2]] = 1.0
    ensemble = fit_ensemble(spec, tiny_digits, seeds=SEEDS, sample_weights=halves, cfg=cfg)
    _assert_same(ensemble, _sequential(spec, tiny_digits, cfg, halves))  # running stats included
    with pytest.raises(ConfigError, match="--norm group or --norm none"):
        fit_ensemble(spec, tiny_digits, seeds=SEEDS, sample_weights=_masks(n), cfg=cfg)


def test_retrain_style_call_with_init_seeds_and_shared_weights(synthetic):
    # attacks.runner passes one retain mask expanded to every model and separate init/order seeds;
    # equal active sets also let a BatchNorm MLP through
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32)
    spec = ModelSpec("mlp", cfg, norm="batch", params={"hidden": (16,)})
    retain = torch.ones(synthetic.num_train)
    retain[:30] = 0
    init_seeds = [7, 8, 9]
    ensemble = fit_ensemble(spec, synthetic, seeds=SEEDS, init_seeds=init_seeds,
                            sample_weights=retain.expand(len(SEEDS), -1), cfg=cfg)
    reference = [fit(spec.build(synthetic, seed=i), synthetic, cfg, seed=s, sample_weights=retain)
                 for s, i in zip(SEEDS, init_seeds)]
    _assert_same(ensemble, reference)


def test_predict_logits_ensemble_matches_per_model(tiny_digits):
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    specs = (ModelSpec("mlp", cfg, params={"hidden": (32, 16)}),
             ModelSpec("cnn", cfg, norm="none", params={"width": 4}))
    for spec in specs:
        models = [spec.build(tiny_digits, seed=s) for s in SEEDS]
        logits = predict_logits_ensemble(models, tiny_digits.x_test, batch_size=37)  # (M, N, C)
        assert logits.shape == (len(SEEDS), len(tiny_digits.y_test), tiny_digits.num_classes)
        for i, model in enumerate(models):
            torch.testing.assert_close(logits[i], predict_logits(model, tiny_digits.x_test), **TOL)
        stack = StackedModels.from_models(models)
        torch.testing.assert_close(predict_logits_ensemble(stack, tiny_digits.x_test), logits, **TOL)


def test_invalid_inputs(synthetic):
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32)
    spec = ModelSpec("mlp", cfg, params={"hidden": (8,)})
    with pytest.raises(ConfigError, match="shape"):
        fit_ensemble(spec, synthetic, seeds=[0, 1], sample_weights=torch.ones(3, synthetic.num_train))
    empty = torch.ones(2, synthetic.num_train)
    empty[1] = 0
    with pytest.raises(ConfigError, match="model 1"):
        fit_ensemble(spec, synthetic, seeds=[0, 1], sample_weights=empty)
    with pytest.raises(ConfigError, match="init seeds"):
        fit_ensemble(spec, synthetic, seeds=[0, 1], init_seeds=[0])


def test_models_can_be_unstacked_twice_into_independent_modules(synthetic):
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32)
    spec = ModelSpec("mlp", cfg, params={"hidden": (8,)})
    stack = fit_stacked(spec, synthetic, seeds=SEEDS, sample_weights=_masks(synthetic.num_train), cfg=cfg)
    first, second = stack.models(), stack.models()  # the first call reuses the built modules, the second copies
    _assert_same(second, first)
    with torch.no_grad():
        first[0].classifier.weight.add_(1.0)
    assert not torch.equal(first[0].classifier.weight, second[0].classifier.weight)
    torch.testing.assert_close(second[0].classifier.weight, stack.params["classifier.weight"][0])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stacked"])
def test_fast_recipe_terms_match_sequential_fit(synthetic, monkeypatch, fused):
    """Nesterov momentum, label smoothing and the one-cycle schedule (the fast recipe) train each model as
    `fit` does, through the fused kernel and through the stacked fallback."""
    import worstforget.training.ensemble as ensemble

    if not fused:
        monkeypatch.setattr(ensemble, "_has_fused_sgd", lambda device: False)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32, nesterov=True, label_smoothing=0.1, schedule="onecycle")
    spec = ModelSpec("mlp", cfg, params={"hidden": (16,)})
    weights = _masks(synthetic.num_train)
    _assert_same(fit_ensemble(spec, synthetic, seeds=SEEDS, sample_weights=weights, cfg=cfg),
                 _sequential(spec, synthetic, cfg, weights))
