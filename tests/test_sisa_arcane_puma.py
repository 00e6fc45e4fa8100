"""SISA, ARCANE and PUMA: exactness of the two exact methods, PUMA's direction, caching and determinism.

Exactness is checked against an independent call of the shared block-training helper: an unlearned
constituent must equal its checkpoint retrained on the remaining data, and untouched constituents must be
bit-identical to the original's. Run with `python -m pytest tests/test_sisa_arcane_puma.py -v` (CPU, seconds).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from worstforget.datasets import load_dataset
from worstforget.methods import METHODS, make_method
from worstforget.methods import sisa as sisa_mod
from worstforget.methods.arcane import arcane_scorer, binary_view
from worstforget.methods.sisa import (
    Ensemble,
    block_seeds,
    sisa_constituent,
    train_blocks,
)
from worstforget.training.loop import TrainConfig, accuracy, fit, per_sample_loss
from worstforget.training.original import ModelSpec, original_model

SPEC = ModelSpec("mlp", TrainConfig(epochs=3, lr=0.05, batch_size=32), params={"hidden": (16,)})
SISA = {"shards": 3, "slices": 2}
ARCANE = {"blocks": 3}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic data, the recipe, and the single original; caches under a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORSTFORGET_CACHE", str(tmp_path_factory.mktemp("cache")))
        data = load_dataset("synthetic")
        original, _ = original_model(SPEC, data)
        yield data, SPEC, original


def weights(data, idx, value=1.0):
    w = torch.zeros(data.num_train)
    w[torch.as_tensor(idx, dtype=torch.long)] = value
    return w


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module | dict) -> None:
    sb = b if isinstance(b, dict) else b.state_dict()
    sa = a.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def differs(a: torch.nn.Module, b: dict) -> bool:
    return any(not torch.equal(v, b[k]) for k, v in a.state_dict().items())


# ------------------------------------------------------------------------------------------------- SISA


def test_registered_and_report_is_not_a_hyperparameter():
    for name in ("sisa", "arcane", "puma"):
        cls = METHODS.get(name)
        assert not cls.differentiable and not cls.iterative
        method = make_method(name)
        assert "last_report" not in method.hyperparameters()
        assert method.last_report == {}


def test_sisa_assignment_is_a_balanced_partition():
    shard_of, slice_of = sisa_mod.sisa_assignment(103, 4, 3, seed=1)
    sizes = torch.bincount(shard_of, minlength=4)
    assert int(sizes.sum()) == 103 and int(sizes.max() - sizes.min()) <= 1
    for s in range(4):
        per_slice = torch.bincount(slice_of[shard_of == s], minlength=3)
        assert int(per_slice.max() - per_slice.min()) <= 1
    again = sisa_mod.sisa_assignment(103, 4, 3, seed=1)
    assert torch.equal(again[0], shard_of) and torch.equal(again[1], slice_of)


def test_sisa_unlearning_is_exact(env):
    data, spec, original = env
    method = make_method("sisa", SISA).resolved(spec.train.batch_size)
    orig = method.partitioned_original(data, spec)
    # two points in the last slice of shard 0, one in the first slice of shard 1, none in shard 2
    late0 = torch.nonzero((orig.shard_of == 0) & (orig.slice_of == 1)).flatten()[:2]
    early1 = torch.nonzero((orig.shard_of == 1) & (orig.slice_of == 0)).flatten()[:1]
    w = weights(data, late0)
    w[early1] = 0.7  # binarised: ≥ 0.5 deletes
    w[torch.nonzero(orig.shard_of == 2).flatten()[:3]] = 0.4  # < 0.5 keeps: shard 2 stays untouched
    unlearned = method.apply(original, data, w, seed=3, spec=spec)
    deleted = w >= 0.5

    assert_same_state(unlearned.constituents[2], orig.checkpoints[2][2])  # bit-identical
    for shard, first in ((0, 1), (1, 0)):  # restart from the checkpoint before the earliest affected slice
        ref = sisa_constituent(spec, data, orig.seed, shard)
        ref.load_state_dict(orig.checkpoints[shard][first])
        train_blocks(ref, data, orig.block_of(shard, deleted), orig.cfg, start=first,
                     seeds=block_seeds(3, "sisa-unlearn", shard, 2))
        assert_same_state(unlearned.constituents[shard], ref)
        assert differs(unlearned.constituents[shard], orig.checkpoints[shard][2])
    rep = method.last_report
    assert set(sisa_mod.Sisa.report_keys) <= set(rep)
    assert rep["original_train_seconds"] > 0 and rep["single_model_train_seconds"] > 0
    assert rep["retrained_shards"] == 2 and 0 < rep["retrained_fraction"] < 1


def test_sisa_original_is_cached_and_reused(env, monkeypatch):
    data, spec, _ = env
    method = make_method("sisa", SISA).resolved(spec.train.batch_size)
    first = method.partitioned_original(data, spec)
    assert sisa_mod.ModelCache().path(first.key).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached SISA original was retrained")

    monkeypatch.setattr(sisa_mod, "fit", no_training)
    again = method.partitioned_original(data, spec)
    assert again.key == first.key and again.train_seconds == first.train_seconds
    for s in range(first.shards):
        for r in range(first.slices + 1):
            assert all(torch.equal(v, again.checkpoints[s][r][k]) for k, v in first.checkpoints[s][r].items())
    # a different partition is a different cache entry
    other = make_method("sisa", {"shards": 2, "slices": 2}).resolved(spec.train.batch_size)
    monkeypatch.undo()
    assert other.partitioned_original(data, spec).key != first.key


def test_sisa_deterministic_and_output_shape(env):
    data, spec, original = env
    method = make_method("sisa", SISA).resolved(spec.train.batch_size)
    w = weights(data, torch.arange(0, 40, 4))
    a = method.apply(original, data, w, seed=5, spec=spec)
    b = method.apply(original, data, w, seed=5, spec=spec)
    assert_same_state(a, b.state_dict())
    out = a(data.x_test)
    assert out.shape == (len(data.y_test), data.num_classes)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(out)), atol=1e-5)  # log of the mean softmax
    c = method.apply(original, data, w, seed=6, spec=spec)  # retrained slices follow the unlearning seed
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_vote_aggregation_is_the_majority():
    torch.manual_seed(0)
    members = [torch.nn.Linear(4, 3) for _ in range(5)]
    x = torch.randn(50, 4)
    votes = torch.stack([m(x).argmax(1) for m in members])  # (5, 50)
    counts = torch.nn.functional.one_hot(votes, 3).sum(0)
    out = Ensemble(members, "vote")(x)
    assert torch.equal(out.argmax(1), counts.argmax(1))
    assert torch.allclose(out.exp().sum(1), torch.ones(50), atol=1e-5)
    assert torch.isfinite(out).all()
    with pytest.raises(Exception):
        Ensemble(members, "median")


# ----------------------------------------------------------------------------------------------- ARCANE


def test_arcane_unlearning_is_exact(env):
    data, spec, original = env
    method = make_method("arcane", ARCANE).resolved(spec.train.batch_size)
    orig = method.partitioned_original(data, spec)
    members = (orig.block_of >= 0)
    assert members.sum(0).max() <= 2  # each sample sits in at most two scorers
    # a sample only class 0's scorer uses, in its last block
    only0 = torch.nonzero((orig.block_of[0] == orig.blocks - 1) & (members.sum(0) == 1)).flatten()[:1]
    w = weights(data, only0)
    unlearned = method.apply(original, data, w, seed=2, spec=spec)
    for c in (1, 2):
        assert_same_state(unlearned.scorers[c], orig.checkpoints[c][orig.blocks])
    ref = arcane_scorer(spec, data, orig.seed, 0)
    ref.load_state_dict(orig.checkpoints[0][orig.blocks - 1])
    train_blocks(ref, binary_view(data, 0), orig.member_block(0, w >= 0.5), orig.cfg, start=orig.blocks - 1,
                 seeds=block_seeds(2, "arcane-unlearn", 0, orig.blocks))
    assert_same_state(unlearned.scorers[0], ref)
    assert differs(unlearned.scorers[0], orig.checkpoints[0][orig.blocks])
    assert method.last_report["retrained_classes"] == 1
    assert 0 < method.last_report["retrained_fraction"] < 1
    out = unlearned(data.x_test)
    assert out.shape == (len(data.y_test), data.num_classes)


def test_arcane_unused_sample_costs_nothing_and_is_deterministic(env):
    data, spec, original = env
    method = make_method("arcane", ARCANE).resolved(spec.train.batch_size)
    orig = method.partitioned_original(data, spec)
    unused = torch.nonzero((orig.block_of < 0).all(0)).flatten()
    assert len(unused) > 0  # non-representative samples nobody drew as a negative
    unlearned = method.apply(original, data, weights(data, unused[:5]), seed=0, spec=spec)
    assert_same_state(unlearned, orig.scorers.state_dict())
    assert method.last_report["retrained_fraction"] == 0
    w = weights(data, torch.arange(0, 60, 3))
    a = method.apply(original, data, w, seed=4, spec=spec)
    b = method.apply(original, data, w, seed=4, spec=spec)
    assert_same_state(a, b.state_dict())


# ------------------------------------------------------------------------------------------------- PUMA


def test_puma_moves_forget_loss_towards_retrain(env):
    data, _, _ = env
    # a few mislabeled points the original memorises (no best-epoch selection, long enough to fit them)
    spec = ModelSpec("mlp", TrainConfig(epochs=30, lr=0.05, batch_size=32, select_best=False), params={"hidden": (16,)})
    forget = torch.arange(8) * 11
    y = data.y_train.clone()
    y[forget] = (y[forget] + 1) % data.num_classes
    mislabeled = replace(data, y_train=y, fingerprint="synthetic-mislabeled")
    original = fit(spec.build(mislabeled), mislabeled, spec.train, seed=0)
    kept_state = {k: v.clone() for k, v in original.state_dict().items()}
    w = weights(mislabeled, forget)
    retrained = make_method("retrain").apply(original, mislabeled, w, seed=0, spec=spec)
    method = make_method("puma").resolved(spec.train.batch_size)
    unlearned = method.apply(original, mislabeled, w, seed=0, spec=spec)

    def loss(m):
        return float(per_sample_loss(m, mislabeled.x_train[forget], mislabeled.y_train[forget]).mean())

    before, after, target = loss(original), loss(unlearned), loss(retrained)
    assert before < target  # the setting is meaningful: Retrain does not fit the mislabeled points
    assert before < after and abs(after - target) < abs(before - target)
    assert accuracy(unlearned, mislabeled.x_test, mislabeled.y_test) >= accuracy(original, mislabeled.x_test,
                                                                                  mislabeled.y_test) - 5
    rep = method.last_report
    assert rep["retrained_fraction"] == 0.0 and rep["criteria_change_after"] <= rep["criteria_change_before"]
    again = method.apply(original, mislabeled, w, seed=0, spec=spec)
    assert_same_state(unlearned, again.state_dict())
    assert unlearned(mislabeled.x_test).shape == (len(mislabeled.y_test), mislabeled.num_classes)
    assert_same_state(original, kept_state)  # the original is left untouched


def test_puma_with_nothing_to_forget_is_the_original(env):
    data, spec, original = env
    out = make_method("puma").apply(original, data, torch.zeros(data.num_train), seed=0, spec=spec)
    assert_same_state(out, original.state_dict())
