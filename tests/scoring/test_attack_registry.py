"""Attacks declare their statistics, score keys, table columns and verdict measures once, at registration; the
evaluation, the verdict and the tables read them from there."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worstforget.audit.attack_eval import attack_scores
from worstforget.audit.verdict import MEASURES
from worstforget.scoring.attacks import ATTACKS, STATISTICS, Measure, Stats, attack_measures, register_attack


def _per_model(rng, n_ex=12, n_test=20, shift=0.0) -> dict:
    return {"lsc": rng.normal(shift, 1, n_ex), "loss": rng.exponential(1, n_ex),
            "test_loss": rng.exponential(1, n_test), "acc": np.array([90.0, 95.0, 93.0]), "seconds": np.array(1.0)}


@pytest.fixture
def models():
    rng = np.random.default_rng(0)
    return [_per_model(rng, shift=0.5) for _ in range(8)], [_per_model(rng) for _ in range(8)]


def _stats(per_u, per_r) -> Stats:
    stack = lambda per, k: np.stack([p[k] for p in per])  # noqa: E731
    acc = lambda per: {k: stack(per, "acc")[:, i] for i, k in enumerate(("forget", "retain", "test"))}  # noqa: E731
    return Stats(lsc_u=stack(per_u, "lsc"), lsc_r=stack(per_r, "lsc"), loss_u=stack(per_u, "loss"),
                 loss_r=stack(per_r, "loss"), test_loss_u=stack(per_u, "test_loss"),
                 test_loss_r=stack(per_r, "test_loss"), acc_u=acc(per_u), acc_r=acc(per_r),
                 seconds_u=stack(per_u, "seconds"), seconds_r=stack(per_r, "seconds"))


def test_every_attack_returns_exactly_keys_it_declared(models):
    stats = _stats(*models)
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        returned = set(attack(stats))
        assert returned <= set(attack.keys), (name, returned - set(attack.keys))
        assert set(attack.columns) | set(attack.summary) | {m.key for m in attack.measures} <= set(attack.keys), name
        assert set(attack.statistics) <= set(STATISTICS) and attack.help


def test_variants_keep_their_own_keys_in_an_evaluation(models):
    scores = attack_scores(*models, torch.arange(12), attacks=["lira", "lira_fixed", "lira_offline"], seed=0,
                           num_models=8, retrain_seconds=1.0)["scores"]
    for name in ("lira", "lira_fixed", "lira_offline"):
        assert f"{name}_auc" in scores and f"{name}_mode" in scores
    assert scores["lira_mode"] == "online" and scores["lira_fixed_mode"] == "online, fixed variance"


def test_the_verdict_judges_what_the_attacks_declare():
    from_attacks = [m.key for m in MEASURES if m.source == "evaluation"]
    assert from_attacks == [m.key for m in attack_measures()]
    assert from_attacks == ["lira_tpr_at_0.1pct_fpr", "lira_auc", "rmia_tpr_at_0.1pct_fpr"]


def test_a_new_attack_is_its_function_and_its_registration(models):
    state = ATTACKS.snapshot()
    try:
        @register_attack("mean_gap", statistics=("lsc_u", "lsc_r"), keys=("mean_gap",),
                         measures=(Measure("mean_gap", "mean φ gap"),))
        def mean_gap(stats: Stats) -> dict:
            """Mean logit-scaled confidence, unlearned minus retrained."""
            return {"mean_gap": float(stats.lsc_u.mean() - stats.lsc_r.mean())}

        scores = attack_scores(*models, torch.arange(12), attacks=["mean_gap"], seed=0, num_models=8,
                               retrain_seconds=1.0)["scores"]
        expected = np.mean([m["lsc"] for m in models[0]]) - np.mean([m["lsc"] for m in models[1]])
        assert scores["mean_gap"] == pytest.approx(expected)
        assert [m.key for m in attack_measures()][-1] == "mean_gap"
        with pytest.raises(ValueError, match="unknown statistics"):
            register_attack("bad", statistics=("lsc_x",), keys=())(mean_gap)
    finally:
        ATTACKS.restore(state)
