"""Unlearning methods: the contract every registered method must meet, the 0/1-weights ≡ subset
equivalence of the retain-side methods (against an independent reference loop), batch-level weighting,
method-specific behaviour, and hyper-parameter parsing (`parse_params`, `make_method`).

Contract tests are parametrized over `METHODS.names()`, so a newly registered method is covered for free.
"""
from __future__ import annotations

import copy
import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

import worstforget.methods.finetune as finetune_module
from worstforget.core.errors import ConfigError
from worstforget.core.seeds import generator
from worstforget.forget_sets import random_forget_set
from worstforget.methods import METHODS, make_method, parse_params
from worstforget.methods.relabel import random_other_labels, saliency_mask
from worstforget.training.loop import per_sample_loss

ALL_METHODS = METHODS.names()
FORGET_SIZE = 30
BATCH = 32

# Cheap settings, applied to whichever of these fields a method has (new methods inherit them for free).
CHEAP = {"epochs": 2, "batch_size": BATCH, "num_fisher_samples": 64, "steps": 50, "shards": 2, "slices": 2,
         "blocks": 2}

# Methods that audit their own partitioned original (SISA's ensemble, ARCANE's class scorers) built from
# the recipe instead of the single trained model handed to `apply`.
PARTITIONED = {n for n in ALL_METHODS if hasattr(METHODS.get(n), "partitioned_original")}

# Methods that have nothing to do when the forget set is empty: they must hand back the model they audit.
UNCHANGED_WITHOUT_FORGET = {"gradient_ascent", "boundary_shrink", "boundary_expand", "noop", "influence",
                            "puma", "ssd", "rum", *PARTITIONED}


@pytest.fixture(scope="module")
def shared_method_cache(tmp_path_factory):
    """One cache for this module, so partitioned originals (SISA, ARCANE) are trained once, not per test."""
    return tmp_path_factory.mktemp("method-cache")


@pytest.fixture(autouse=True)
def use_shared_method_cache(isolated_cache, shared_method_cache, monkeypatch):
    monkeypatch.setenv("WORSTFORGET_CACHE", str(shared_method_cache))  # after conftest's per-test dir


def small_params(name: str, **extra) -> dict:
    """Cheap hyper-parameters (CHEAP) for the fields the method has, plus `extra`."""
    names = {f.name for f in fields(METHODS.get(name))}
    params = {k: v for k, v in CHEAP.items() if k in names}
    params.update(extra)
    return params


def audited_model(method, data, spec, trained) -> torch.nn.Module:
    """The model `method` unlearns from: `trained`, or the method's own partitioned original."""
    if not hasattr(method, "partitioned_original"):
        return trained
    original = method.partitioned_original(data, spec)
    modules = [v for v in vars(original).values() if isinstance(v, torch.nn.Module)]
    assert len(modules) == 1, f"{method.name}: cannot tell which module its partitioned original is"
    return modules[0]


def forget_set(data, size: int = FORGET_SIZE, seed: int = 0) -> torch.Tensor:
    return random_forget_set(data.num_train, size, seed)


def zero_one_weights(data, idx: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(data.num_train)
    w[idx] = 1.0
    return w


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def forget_loss(model, data, idx) -> float:
    return float(per_sample_loss(model, data.x_train[idx], data.y_train[idx]).mean())


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", ALL_METHODS)
def test_apply_returns_new_module_with_same_architecture(name, synthetic, trained, tiny_spec):
    method = make_method(name, small_params(name))
    out = method.apply(trained, synthetic, zero_one_weights(synthetic, forget_set(synthetic)), seed=0, spec=tiny_spec)
    reference = audited_model(method, synthetic, tiny_spec, trained)
    assert isinstance(out, torch.nn.Module)
    assert out is not trained and out is not reference
    before, after = reference.state_dict(), out.state_dict()
    assert list(after) == list(before)  # e.g. boundary_expand must have removed its shadow neuron
    assert {k: tuple(v.shape) for k, v in after.items()} == {k: tuple(v.shape) for k, v in before.items()}
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not out.training
    assert out(synthetic.x_test[:5]).shape == (5, synthetic.num_classes)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_apply_leaves_original_parameters_bit_identical(name, synthetic, trained, tiny_spec):
    before = snapshot(trained)
    grad_flags = [p.requires_grad for p in trained.parameters()]
    make_method(name, small_params(name)).apply(trained, synthetic, zero_one_weights(synthetic, forget_set(synthetic)),
                                                seed=0, spec=tiny_spec)
    after = trained.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert [p.requires_grad for p in trained.parameters()] == grad_flags


@pytest.mark.parametrize("name", ALL_METHODS)
def test_apply_is_deterministic_under_fixed_seed(name, synthetic, trained, tiny_spec):
    w = zero_one_weights(synthetic, forget_set(synthetic))
    first = snapshot(make_method(name, small_params(name)).apply(trained, synthetic, w, seed=3, spec=tiny_spec))
    second = snapshot(make_method(name, small_params(name)).apply(trained, synthetic, w, seed=3, spec=tiny_spec))
    for k in first:
        assert torch.equal(first[k], second[k]), k


@pytest.mark.parametrize("name", ALL_METHODS)
def test_all_zero_forget_weights_are_handled(name, synthetic, trained, tiny_spec):
    method = make_method(name, small_params(name))
    out = method.apply(trained, synthetic, torch.zeros(synthetic.num_train), seed=0, spec=tiny_spec)
    after = out.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    if name in UNCHANGED_WITHOUT_FORGET:
        reference = audited_model(method, synthetic, tiny_spec, trained).state_dict()
        assert list(after) == list(reference)
        for k, v in reference.items():
            assert torch.equal(after[k], v), k


@pytest.mark.parametrize("bad", [-0.1, 1.5])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_weights_outside_unit_interval_raise_config_error(name, bad, synthetic, trained, tiny_spec):
    w = zero_one_weights(synthetic, forget_set(synthetic))
    w[7] = bad
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        make_method(name, small_params(name)).apply(trained, synthetic, w, seed=0, spec=tiny_spec)


@pytest.mark.parametrize("shape", ["short", "column"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_weights_of_wrong_shape_raise_config_error(name, shape, synthetic, trained, tiny_spec):
    n = synthetic.num_train
    w = torch.zeros(n - 1) if shape == "short" else torch.zeros(n, 1)
    with pytest.raises(ConfigError, match="shape"):
        make_method(name, small_params(name)).apply(trained, synthetic, w, seed=0, spec=tiny_spec)


@pytest.mark.parametrize("name", ["noop", "finetune"])  # every method validates through check_weights
def test_nan_forget_weights_raise_config_error(name, synthetic, trained, tiny_spec):
    w = zero_one_weights(synthetic, forget_set(synthetic))
    w[3] = float("nan")
    with pytest.raises(ConfigError):
        make_method(name, small_params(name)).apply(trained, synthetic, w, seed=0, spec=tiny_spec)


# ----------------------------------------------------------------------------- 0/1 weights ≡ the subset


def reference_retain_sgd(original, data, forget_idx, *, seed, method, trainable=lambda name: True,
                         reinit_classifier=False, l1_alpha=0.0):
    """Hand-written SGD on the retain indices only, in the order the shared loop promises: each epoch a
    fresh permutation of the retain indices from generator(seed, 'unlearn-order'), cut into batches."""
    model = copy.deepcopy(original).train()
    if reinit_classifier:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.classifier.reset_parameters()
    params = [p for n, p in model.named_parameters() if trainable(n)]
    opt = torch.optim.SGD(params, lr=method.lr, momentum=method.momentum, weight_decay=method.weight_decay)
    keep = torch.ones(data.num_train, dtype=torch.bool)
    keep[forget_idx] = False
    retain = torch.nonzero(keep).flatten()
    g = generator(seed, "unlearn-order")
    total = method.epochs * math.ceil(len(retain) / method.batch_size)
    step = 0
    for _ in range(method.epochs):
        order = retain[torch.randperm(len(retain), generator=g)]
        for chunk in order.split(method.batch_size):
            loss = F.cross_entropy(model(data.x_train[chunk]), data.y_train[chunk])
            if l1_alpha:
                loss = loss + l1_alpha * (1 - step / total) * sum(p.abs().sum() for p in model.parameters())
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return model.eval()


LAST_LAYER = lambda n: n.startswith("classifier.")  # noqa: E731

SUBSET_CASES = {
    "finetune": ({}, {}),
    "l1_sparse": ({"alpha": 5e-3}, {"l1_alpha": 5e-3}),
    "cf_k": ({"k": 1}, {"trainable": LAST_LAYER}),
    "eu_k": ({"k": 1}, {"trainable": LAST_LAYER, "reinit_classifier": True}),
}


@pytest.mark.parametrize("name", list(SUBSET_CASES))
def test_zero_one_weights_match_retain_subset_reference_loop(name, synthetic, trained):
    method_extra, ref_extra = SUBSET_CASES[name]
    method = make_method(name, {"epochs": 2, "batch_size": BATCH, "lr": 0.05, **method_extra})
    idx = forget_set(synthetic)
    out = method.apply(trained, synthetic, zero_one_weights(synthetic, idx), seed=5)
    ref = reference_retain_sgd(trained, synthetic, idx, seed=5, method=method, **ref_extra)
    moved = False
    for (n, p), (_, q), (_, p0) in zip(out.named_parameters(), ref.named_parameters(), trained.named_parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{name} {n}: {m}")
        moved |= not torch.equal(p, p0)
    assert moved  # the comparison is not vacuous


def spy_on_retain_batches(monkeypatch) -> list[dict]:
    records: list[dict] = []
    real = finetune_module.retain_ce

    def spy(model, batches, ctx):
        b = batches["retain"]
        loss = real(model, batches, ctx)
        with torch.no_grad():
            per_sample = F.cross_entropy(model(b.x), b.y, reduction="none")
        records.append({"idx": b.idx.clone(), "w": b.w.clone(), "loss": loss.detach(), "per_sample": per_sample})
        return loss

    monkeypatch.setattr(finetune_module, "retain_ce", spy)
    return records


def test_finetune_batch_retain_mean_with_zero_one_weights_is_plain_retain_mean(monkeypatch, synthetic, trained):
    records = spy_on_retain_batches(monkeypatch)
    idx = forget_set(synthetic)
    make_method("finetune", {"epochs": 1, "batch_size": BATCH}).apply(trained, synthetic,
                                                                      zero_one_weights(synthetic, idx), seed=0)
    retain = sorted(set(range(synthetic.num_train)) - set(idx.tolist()))
    assert len(records) == math.ceil(len(retain) / BATCH)
    seen = torch.cat([r["idx"] for r in records])
    assert sorted(seen.tolist()) == retain  # one pass visits every retain sample once, no forget sample
    for r in records:
        assert torch.all(r["w"] == 0)
        torch.testing.assert_close(r["loss"], r["per_sample"].mean())


def test_finetune_batch_retain_mean_with_fractional_weights_is_stream_normalised(monkeypatch, synthetic, trained):
    records = spy_on_retain_batches(monkeypatch)
    n = synthetic.num_train
    w = torch.rand(n, generator=torch.Generator().manual_seed(1))
    w[:20] = 1.0  # fully forgotten: never in the retain stream
    w[20:40] = 0.0
    make_method("finetune", {"epochs": 1, "batch_size": BATCH}).apply(trained, synthetic, w, seed=0)
    in_stream = w < 1
    norm = (1 - w[in_stream]).mean()
    assert sorted(torch.cat([r["idx"] for r in records]).tolist()) == torch.nonzero(in_stream).flatten().tolist()
    differs_from_plain_mean = False
    for r in records:
        wb = w[r["idx"]]
        torch.testing.assert_close(r["w"], wb)
        expected = ((1 - wb) * r["per_sample"]).sum() / (len(wb) * norm)
        torch.testing.assert_close(r["loss"], expected)
        differs_from_plain_mean |= not torch.isclose(r["loss"], r["per_sample"].mean())
    assert differs_from_plain_mean


# ----------------------------------------------------------------------------- method-specific behaviour


def test_gradient_ascent_increases_forget_loss(synthetic, trained):
    idx = forget_set(synthetic)
    out = make_method("gradient_ascent", {"epochs": 3, "lr": 0.01, "batch_size": BATCH}).apply(
        trained, synthetic, zero_one_weights(synthetic, idx), seed=0)
    assert forget_loss(out, synthetic, idx) > forget_loss(trained, synthetic, idx)


def test_random_other_labels_never_equal_true_label():
    num_classes = 5
    y = torch.arange(2000) % num_classes
    fake = random_other_labels(y, num_classes, torch.Generator().manual_seed(0))
    assert fake.shape == y.shape
    assert torch.all(fake != y)
    assert torch.all((fake >= 0) & (fake < num_classes))
    for c in range(num_classes):  # every wrong class is reachable from every true class
        assert set(fake[y == c].tolist()) == set(range(num_classes)) - {c}
    again = random_other_labels(y, num_classes, torch.Generator().manual_seed(0))
    assert torch.equal(fake, again)


def test_salun_only_changes_parameters_inside_its_mask(synthetic, trained):
    method = make_method("salun", {"epochs": 2, "batch_size": BATCH, "lr": 0.05, "sparsity": 0.3})
    w = zero_one_weights(synthetic, forget_set(synthetic))
    ctx = method.context(trained, synthetic, w, seed=0)
    mask = saliency_mask(copy.deepcopy(trained).train(), ctx, method.sparsity, BATCH)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert 0.25 < kept < 0.5
    out = method.apply(trained, synthetic, w, seed=0)
    original = dict(trained.named_parameters())
    changed_inside = False
    for n, p in out.named_parameters():
        frozen = mask[n] == 0
        assert torch.equal(p.detach()[frozen], original[n].detach()[frozen]), n
        changed_inside |= bool((p.detach() != original[n].detach())[~frozen].any())
    assert changed_inside


@pytest.mark.parametrize("name", ["eu_k", "cf_k"])
def test_k_methods_with_k1_change_only_the_last_layer(name, synthetic, trained):
    out = make_method(name, {"epochs": 2, "batch_size": BATCH, "k": 1}).apply(
        trained, synthetic, zero_one_weights(synthetic, forget_set(synthetic)), seed=0)
    original = trained.state_dict()
    for k, v in out.state_dict().items():
        if k.startswith("classifier."):
            assert not torch.equal(v, original[k]), k
        else:
            assert torch.equal(v, original[k]), k


@pytest.mark.parametrize("name", ["eu_k", "cf_k"])
def test_k_methods_reject_k_beyond_the_weight_layers(name, synthetic, trained):
    with pytest.raises(ConfigError, match="k must be between"):
        make_method(name, {"epochs": 1, "k": 3}).apply(trained, synthetic,
                                                        zero_one_weights(synthetic, forget_set(synthetic)))


def test_retrain_result_does_not_depend_on_original_weights(synthetic, trained, tiny_spec):
    other = tiny_spec.build(synthetic, seed=123)  # untrained, different weights
    assert not torch.equal(other.classifier.weight, trained.classifier.weight)
    w = zero_one_weights(synthetic, forget_set(synthetic))
    method = make_method("retrain", {"epochs": 2})
    a = snapshot(method.apply(trained, synthetic, w, seed=4, spec=tiny_spec))
    b = snapshot(method.apply(other, synthetic, w, seed=4, spec=tiny_spec))
    c = snapshot(method.apply(trained, synthetic, w, seed=5, spec=tiny_spec))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the unlearning seed, not the original, decides


def test_retrain_without_spec_raises_config_error(synthetic, trained):
    with pytest.raises(ConfigError, match="spec"):
        make_method("retrain").apply(trained, synthetic, zero_one_weights(synthetic, forget_set(synthetic)))


def test_noop_returns_identical_parameters(synthetic, trained):
    out = make_method("noop").apply(trained, synthetic, zero_one_weights(synthetic, forget_set(synthetic)))
    assert out is not trained
    for k, v in trained.state_dict().items():
        assert torch.equal(out.state_dict()[k], v), k


def test_influence_increases_forget_loss(synthetic, trained):
    idx = forget_set(synthetic)
    out = make_method("influence").apply(trained, synthetic, zero_one_weights(synthetic, idx), seed=0)
    assert forget_loss(out, synthetic, idx) > forget_loss(trained, synthetic, idx)


# ----------------------------------------------------------------------------- hyper-parameters


def test_parse_params_rejects_unknown_key():
    with pytest.raises(ConfigError, match="nosuch"):
        parse_params("finetune", ["nosuch=1"])


def test_parse_params_rejects_pair_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        parse_params("finetune", ["lr"])


@pytest.mark.parametrize("pair", ["epochs=2.5", "epochs=abc", "lr=fast", "augment=1", "schedule=3"])
def test_parse_params_rejects_wrong_type(pair):
    with pytest.raises(ConfigError, match="expected"):
        parse_params("finetune", [pair])


def test_parse_params_converts_ints_to_floats_for_float_fields():
    out = parse_params("finetune", ["lr=1", "epochs=3", "weight-decay=0", "augment=False"])
    assert out == {"lr": 1.0, "epochs": 3, "weight_decay": 0.0, "augment": False}
    assert type(out["lr"]) is float and type(out["weight_decay"]) is float
    assert type(out["epochs"]) is int


def test_parse_params_accepts_none_for_optional_fields():
    assert parse_params("retrain", ["epochs=None", "lr=0.1"]) == {"epochs": None, "lr": 0.1}


def test_parse_params_accepts_tuple_for_tuple_field():
    assert parse_params("scrub", ["lr_decay_epochs=(3, 5)"]) == {"lr_decay_epochs": (3, 5)}


def test_make_method_with_unknown_name_suggests_close_names():
    with pytest.raises(ConfigError, match="Did you mean") as info:
        make_method("finetun")
    assert "finetune" in str(info.value)


def test_make_method_resolves_aliases_and_rejects_unknown_hyperparameters():
    assert type(make_method("ft")) is METHODS.get("finetune")
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        make_method("finetune", {"nosuch": 1})
