"""SISA, ARCANE and PUMA: exactness of the two exact methods, PUMA's direction, caching and determinism.

Exactness is checked against an independent call of the shared block-training helper: an unlearned
group model must equal its checkpoint retrained on the remaining data, and untouched group models must be
bit-identical to the original's. The deletion logic SISA and ARCANE share (methods/partitioned.py) is also
checked on a hand-written partition whose retraining cost is computed by hand.
Run with `python -m pytest tests/test_sisa_arcane_puma.py -v` (CPU, seconds).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from worstforget.core.errors import ConfigError
from worstforget.datasets import load_dataset
from worstforget.methods import METHODS, make_method
from worstforget.methods import partitioned as partitioned_mod
from worstforget.methods import sisa as sisa_mod
from worstforget.methods.arcane import binary_view
from worstforget.methods.partitioned import (
    Partition,
    PartitionedMethod,
    block_seeds,
    block_work,
    recipe,
    train_blocks,
)
from worstforget.methods.sisa import Ensemble
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


def test_sisa_partition_is_its_shard_and_slice_assignment(synthetic):
    method = make_method("sisa", {"shards": 4, "slices": 3})
    part = method.partition(synthetic, seed=2)
    shard_of, slice_of = sisa_mod.sisa_assignment(synthetic.num_train, 4, 3, seed=2)
    assert part.blocks == 3 and part.block_of.shape == (4, synthetic.num_train)
    assert torch.equal((part.block_of >= 0).sum(0), torch.ones(synthetic.num_train, dtype=torch.long))
    assert torch.equal(part.block_of[shard_of, torch.arange(synthetic.num_train)], slice_of)


def test_sisa_unlearning_is_exact(env):
    data, spec, original = env
    method = make_method("sisa", SISA).resolved(spec.train.batch_size)
    orig = method.partitioned_original(data, spec)
    # two points in the last slice of shard 0, one in the first slice of shard 1, none in shard 2
    late0 = torch.nonzero(orig.block_of[0] == 1).flatten()[:2]
    early1 = torch.nonzero(orig.block_of[1] == 0).flatten()[:1]
    w = weights(data, late0)
    w[early1] = 0.7  # binarised: ≥ 0.5 deletes
    w[torch.nonzero(orig.block_of[2] >= 0).flatten()[:3]] = 0.4  # < 0.5 keeps: shard 2 stays untouched
    unlearned = method.apply(original, data, w, seed=3, spec=spec)
    deleted = w >= 0.5

    assert_same_state(unlearned.members[2], orig.checkpoints[2][2])  # bit-identical
    for shard, first in ((0, 1), (1, 0)):  # restart from the checkpoint before the earliest affected slice
        ref = method.group_model(spec, data, orig.seed, shard)
        ref.load_state_dict(orig.checkpoints[shard][first])
        train_blocks(ref, data, orig.group_blocks(shard, deleted), orig.cfg, start=first,
                     seeds=block_seeds(3, "sisa-unlearn", shard, 2))
        assert_same_state(unlearned.members[shard], ref)
        assert differs(unlearned.members[shard], orig.checkpoints[shard][2])
    rep = method.last_report
    assert set(sisa_mod.Sisa.report_keys) == set(rep)
    assert rep["original_train_seconds"] == orig.train_seconds > 0
    assert rep["retrained_groups"] == 2 and 0 < rep["retrained_fraction"] < 1


def test_sisa_original_is_cached_and_reused(env, monkeypatch):
    data, spec, _ = env
    method = make_method("sisa", SISA).resolved(spec.train.batch_size)
    first = method.partitioned_original(data, spec)
    assert partitioned_mod.ModelCache().path(first.key).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached SISA original was retrained")

    monkeypatch.setattr(partitioned_mod, "fit", no_training)
    again = method.partitioned_original(data, spec)
    assert again.key == first.key and again.train_seconds == first.train_seconds
    for s in range(first.groups):
        for r in range(first.blocks + 1):
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
    with pytest.raises(ConfigError, match="aggregation"):
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
        assert_same_state(unlearned.members[c], orig.checkpoints[c][orig.blocks])
    ref = method.group_model(spec, data, orig.seed, 0)
    ref.load_state_dict(orig.checkpoints[0][orig.blocks - 1])
    train_blocks(ref, binary_view(data, 0), orig.group_blocks(0, w >= 0.5), orig.cfg, start=orig.blocks - 1,
                 seeds=block_seeds(2, "arcane-unlearn", 0, orig.blocks))
    assert_same_state(unlearned.members[0], ref)
    assert differs(unlearned.members[0], orig.checkpoints[0][orig.blocks])
    assert method.last_report["retrained_groups"] == 1
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
    assert_same_state(unlearned, orig.model.state_dict())
    assert method.last_report["retrained_fraction"] == 0
    w = weights(data, torch.arange(0, 60, 3))
    a = method.apply(original, data, w, seed=4, spec=spec)
    b = method.apply(original, data, w, seed=4, spec=spec)
    assert_same_state(a, b.state_dict())


# ------------------------------------------------- the deletion logic SISA and ARCANE share (partitioned.py)


@pytest.mark.parametrize("name,params", [("sisa", SISA), ("arcane", ARCANE)])
def test_one_deletion_retrains_only_its_group_from_the_right_checkpoint(env, name, params, monkeypatch):
    data, spec, original = env
    method = make_method(name, params).resolved(spec.train.batch_size)
    for hook in ("apply", "partitioned_original", "group_model"):  # both run the one shared implementation
        assert getattr(type(method), hook) is getattr(PartitionedMethod, hook)
    orig = method.partitioned_original(data, spec)
    last = orig.blocks
    # the grid holds the state after each block, trained on blocks ≤ b from the initialisation
    g = 1
    rebuilt = method.group_model(spec, data, orig.seed, g)
    assert_same_state(rebuilt, orig.checkpoints[g][0])
    states = train_blocks(rebuilt, method.group_data(data, g), orig.block_of[g], orig.cfg, start=0,
                          seeds=block_seeds(orig.seed, f"{name}-train", g, last))
    for b, state in enumerate(states, start=1):
        assert all(torch.equal(v, orig.checkpoints[g][b][k]) for k, v in state.items()), b
    # one sample that only group 1 uses, in its middle block
    only_g = (orig.block_of >= 0).sum(0) == 1
    victim = torch.nonzero((orig.block_of[g] == 1) & only_g).flatten()[:1]
    assert len(victim) == 1

    def no_single_model(*args, **kwargs):
        raise AssertionError("apply trained a single model (only to time it)")

    monkeypatch.setattr("worstforget.training.original.fit", no_single_model)
    unlearned = method.apply(original, data, weights(data, victim), seed=9, spec=spec)
    for other in range(orig.groups):
        if other != g:
            assert_same_state(unlearned.members[other], orig.checkpoints[other][last])
    ref = method.group_model(spec, data, orig.seed, g)
    ref.load_state_dict(orig.checkpoints[g][1])  # before block 1: the deleted sample was never seen
    remaining = orig.group_blocks(g, weights(data, victim) >= 0.5)
    train_blocks(ref, method.group_data(data, g), remaining, orig.cfg, start=1,
                 seeds=block_seeds(9, f"{name}-unlearn", g, last))
    assert_same_state(unlearned.members[g], ref)
    assert bool(unlearned.active.all())
    rep = method.last_report
    assert set(rep) == set(type(method).report_keys)
    assert rep["retrained_groups"] == 1 and rep["original_train_seconds"] == orig.train_seconds
    assert rep["retrained_fraction"] == block_work(remaining, last, 1) / orig.total_work()


def test_train_blocks_trains_block_b_on_every_block_up_to_b(monkeypatch):
    calls = []

    def recording_fit(model, data, cfg, *, seed, sample_weights, **kwargs):
        calls.append((seed, torch.nonzero(sample_weights).flatten().tolist()))
        with torch.no_grad():
            model.bias.add_(1.0)  # a visible step, so each returned state is that block's
        return model

    monkeypatch.setattr(partitioned_mod, "fit", recording_fit)
    model = torch.nn.Linear(2, 2)
    model.bias.data.zero_()
    block_of = torch.tensor([2, -1, 0, 1, 2, -1, 3, 1])  # samples 1, 5 unused (other group or deleted)
    states = train_blocks(model, None, block_of, TrainConfig(), start=1, seeds=[10, 11, 12, 13])
    assert calls == [(11, [2, 3, 7]), (12, [0, 2, 3, 4, 7]), (13, [0, 2, 3, 4, 6, 7])]
    assert [float(st["bias"][0]) for st in states] == [1.0, 2.0, 3.0]
    calls.clear()
    nothing_early = torch.tensor([-1, 1, -1])  # blocks ≤ 0 are empty: block 0 keeps the state, no training
    states = train_blocks(model, None, nothing_early, TrainConfig(), start=0, seeds=[20, 21])
    assert calls == [(21, [1])] and [float(st["bias"][0]) for st in states] == [3.0, 4.0]


class HandPartition(PartitionedMethod):
    """Two groups of six samples each over three blocks; every other sample is unused."""

    name = "hand"

    def partition(self, data, seed):
        block_of = torch.full((2, data.num_train), -1, dtype=torch.long)
        block_of[0, :6] = torch.tensor([0, 0, 1, 1, 2, 2])
        block_of[1, 6:12] = torch.tensor([0, 1, 1, 2, 2, 2])
        return Partition(block_of=block_of, blocks=3)

    def block_recipe(self, spec):
        return recipe(spec, epochs=None, lr=None, batch_size=4, blocks=3, epochs_per_block=1)

    def aggregate(self, members, active):
        return Ensemble(members, "mean_softmax", active)


def test_retrained_fraction_is_the_hand_computed_block_work_ratio(env):
    data, spec, original = env
    method = HandPartition()
    orig = method.partitioned_original(data, spec)
    # per-epoch work Σ_b |blocks ≤ b|: group 0 has 2+2+2 per block → 2+4+6 = 12; group 1 has 1+2+3 → 1+3+6 = 10
    assert orig.total_work() == 22
    w = weights(data, [2, 100])  # sample 2: group 0, block 1; sample 100 is unused and costs nothing
    w[11] = 0.5  # group 1, block 2: w = 0.5 deletes
    w[6] = 0.49  # group 1, block 0: kept
    unlearned = method.apply(original, data, w, seed=1, spec=spec)
    # group 0 redoes blocks 1, 2 on {0,1,3} and {0,1,3,4,5}: 3 + 5; group 1 redoes block 2 on 5 samples
    assert method.last_report["retrained_fraction"] == (3 + 5 + 5) / 22
    assert method.last_report["retrained_groups"] == 2
    assert differs(unlearned.members[0], orig.checkpoints[0][3]) and differs(unlearned.members[1],
                                                                              orig.checkpoints[1][3])
    method.apply(original, data, weights(data, [100, 150]), seed=1, spec=spec)
    assert method.last_report["retrained_fraction"] == 0 and method.last_report["retrained_groups"] == 0
    # deleting all of group 1 silences it: its model keeps the initialisation and has no say
    emptied = method.apply(original, data, weights(data, range(6, 12)), seed=1, spec=spec)
    assert emptied.active.tolist() == [True, False]
    assert_same_state(emptied.members[1], orig.checkpoints[1][0])
    assert method.last_report["retrained_fraction"] == 0 and method.last_report["retrained_groups"] == 1
    assert torch.equal(emptied(data.x_test), torch.log_softmax(emptied.members[0](data.x_test), dim=-1))
    with pytest.raises(ConfigError, match="nothing would remain"):
        method.apply(original, data, weights(data, range(12)), seed=1, spec=spec)


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


# ------------------------------------------------------------------------------------------------- caches


def test_the_settings_cache_folder_reaches_sisa_and_rum_without_the_environment(tmp_path, monkeypatch):
    import os

    from worstforget.methods import make_method
    from worstforget.setting import prepare_setting

    default, mine = tmp_path / "default", tmp_path / "mine"
    monkeypatch.setenv("WORSTFORGET_CACHE", str(default))
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(mine),
                              train_overrides={"epochs": 2})
    assert os.environ["WORSTFORGET_CACHE"] == str(default)  # the setting leaves the environment alone
    w = weights(setting.data, range(10))
    make_method("sisa", SISA).apply(setting.original, setting.data, w, seed=0, spec=setting.spec)
    make_method("rum", {"memorization_models": 2}).apply(setting.original, setting.data, w, seed=0,
                                                         spec=setting.spec)
    assert not default.exists()  # every artefact went to the setting's folder
    assert len(list((mine / "models").glob("*"))) >= 2 and any((mine / "arrays").glob("*"))
