"""Attack-validated selection: the split-averaged U-LiRA against a transcription of one evaluation per halving,
the choice of the most exposed candidate, and the audit's use of it (fresh models for the report, the chosen
run's set reported as the worst case, its cost in the search line)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from worstforget.audit import selection as selection_module
from worstforget.cli import cli
from worstforget.scoring.privacy import (
    lira_attack_metrics,
    lira_online,
    member_threshold,
    tpr_at_fpr,
    u_lira_halvings,
    u_lira_per_example,
    u_lira_split_average,
)


def _one_halving(u, r, pu, pr):
    hu, hr = len(u) // 2, len(r) // 2
    pos = np.concatenate([lira_online(u[pu[hu:]], u[pu[:hu]], r[pr[:hr]]).ravel(),
                          lira_online(u[pu[:hu]], u[pu[hu:]], r[pr[hr:]]).ravel()])
    neg = np.concatenate([lira_online(r[pr[hr:]], u[pu[:hu]], r[pr[:hr]]).ravel(),
                          lira_online(r[pr[:hr]], u[pu[hu:]], r[pr[hr:]]).ravel()])
    return lira_attack_metrics(pos, neg)


def test_split_average_is_the_mean_of_one_u_lira_per_halving():
    rng = np.random.default_rng(3)
    u = rng.normal(0.8, 1.0, (8, 40)) + rng.normal(0, 1, 40)
    r = rng.normal(0.0, 1.3, (6, 40))
    perm = np.random.default_rng(11)
    halvings = [(np.arange(8), np.arange(6))] + [(perm.permutation(8), perm.permutation(6)) for _ in range(3)]
    expected = [_one_halving(u, r, pu, pr) for pu, pr in halvings]
    got = u_lira_split_average(u, r, splits=4, seed=11)
    for key in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "auc"):
        assert got[key] == pytest.approx(np.mean([e[key] for e in expected]), abs=1e-12)
    assert u_lira_split_average(u, r, splits=1)["auc"] == pytest.approx(expected[0]["auc"], abs=1e-12)
    with pytest.raises(Exception, match="at least 4 models"):
        u_lira_split_average(u[:3], r)


def test_selection_keeps_the_most_exposed_candidate_and_attacks_duplicates_once(monkeypatch):
    """Candidates are judged by the attack alone: a stub gives each set a known shift of its unlearned models
    over its retrained ones, and the choice follows it; two candidates holding one set share one attack."""
    shift = {(0, 1, 2): 0.5, (3, 4, 5): 4.0, (6, 7, 8): 1.5}
    trained = []

    def fake_calls(method, params, forget, seeds):
        trained.append((method, tuple(forget.tolist()), tuple(seeds)))
        gap = shift[tuple(sorted(forget.tolist()))] if method != "retrain" else 0.0
        return [lambda gap=gap, s=s: [{"lsc": np.random.default_rng(s).normal(gap, 1.0, 3)}] for s in seeds]

    class Serial:
        def map(self, setting, calls, **_):
            return [c() for c in calls]

    monkeypatch.setattr(selection_module, "statistics_calls", fake_calls)
    cands = {"search": torch.tensor([0, 1, 2]), "stability": torch.tensor([2, 1, 0]),
             "memorization": torch.tensor([3, 4, 5]), "objective_loss": torch.tensor([6, 7, 8])}
    out = selection_module.select_by_attack(None, "finetune", {}, cands, num_models=8, executor=Serial())
    assert out["chosen"] == "memorization"
    assert out["scores"]["search"] == out["scores"]["stability"]  # one set, attacked once
    assert len([t for t in trained if t[0] == "finetune"]) == 3
    assert (out["scores"]["search"]["auc"] < out["scores"]["objective_loss"]["auc"]
            < out["scores"]["memorization"]["auc"])
    # the selection's models never share seeds with the reported attack (0…N−1, 100000+)
    seeds = {s for t in trained for s in t[2]}
    assert min(seeds) >= selection_module.SELECT_SEED and not seeds & (set(range(16)) | set(range(100_000, 100_016)))


def test_search_with_selection_reports_the_chosen_set_with_fresh_models(tmp_path):
    out = tmp_path / "out"
    args = ["--quiet", "search", "--method", "ft", "--dataset", "synthetic", "--epochs", "4", "--outer-steps", "3",
            "--num-random", "1", "--seeds", "1", "--mia-resamples", "1", "--select-models", "4",
            "--attacks", "lira", "--num-models", "4", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    sel = summary["search"]["selection"]
    baselines = {"lowest_loss", "memorization", "exposure"}
    assert set(sel["scores"]) == {"search", "stability", "objective_exposure", "objective_loss", "composed"} | baselines
    assert len(sel["composed"]) == summary["forget_size"]
    best = max(sel["scores"],
               key=lambda k: (sel["scores"][k]["tpr_at_0.1pct_fpr"], sel["scores"][k]["tpr_at_1pct_fpr"]))
    assert sel["scores"][sel["chosen"]] == sel["scores"][best] and sel["num_models"] == 4
    chosen = np.load(out / "worst_case_indices.npy")
    assert len(chosen) == summary["forget_size"]
    with h5py.File(out / "result.h5") as res:
        np.testing.assert_array_equal(res["forget_sets/worst_case"][()], chosen)
        if sel["chosen"] in baselines:  # a baseline set can be the worst case found; then it is that set
            np.testing.assert_array_equal(np.sort(res[f"forget_sets/{sel['chosen']}"][()]), np.sort(chosen))
        if sel["chosen"] == "composed":
            np.testing.assert_array_equal(np.sort(chosen), sel["composed"])
    ev = json.loads((out / "evaluation.json").read_text())
    assert "worst_case" in ev["sets"]  # scored by the report's own (fresh) models
    assert summary["search"]["selection_seconds"] > 0
    assert summary["search"]["total_seconds"] >= summary["search"]["seconds"] + summary["search"]["selection_seconds"]
    assert "attack-validated selection kept the" in " ".join(result.output.split())


def test_select_models_below_four_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["--quiet", "search", "--dataset", "synthetic", "--select-models", "3",
                                      "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--select-models must be 0" in result.output
    assert not (tmp_path / "o").exists()


def test_select_models_that_would_reach_the_composed_sets_seeds_are_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["--quiet", "search", "--dataset", "synthetic", "--attacks", "lira",
                                      "--select-models", "10001", "--cache-dir", str(tmp_path),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--select-models must be at most 10000" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_selection_is_on_by_default_exactly_when_a_per_example_attack_judges():
    from worstforget.audit.worst_case import AuditOptions

    assert AuditOptions().validate().select_models == 0
    assert AuditOptions(attacks=["loss", "ks"]).validate().select_models == 0
    # as many models as the attack that judges the sets (at least U-LiRA's 2 + 2 a side)
    assert AuditOptions(attacks=["lira"]).validate().select_models == 16
    assert AuditOptions(attacks=["lira"], num_models=64).validate().select_models == 64
    assert AuditOptions(attacks=["rmia"], num_models=2).validate().select_models == 4
    assert AuditOptions(attacks=["lira"], num_models=64, select_models=8).validate().select_models == 8
    assert AuditOptions(attacks=["rmia"], select_models=0).validate().select_models == 0


def test_u_lira_reports_the_mean_over_halvings_with_the_first_halvings_roc():
    """The attack's AUC and TPRs are the split-average of U-LiRA over HALVINGS halvings (the first the fixed one:
    first half shadows, then swapped), its interval brackets them, and its ROC is the fixed halving's."""
    from worstforget.scoring.attacks import ATTACKS, HALVINGS, Stats

    rng = np.random.default_rng(5)
    u = rng.normal(0.7, 1.0, (8, 60)) + rng.normal(0, 2, 60)
    r = rng.normal(0.0, 1.2, (8, 60))
    stats = Stats(lsc_u=u, lsc_r=r, loss_u=u, loss_r=r, test_loss_u=u, test_loss_r=r, acc_u={}, acc_r={},
                  seconds_u=np.ones(8), seconds_r=np.ones(8), seed=3)
    out = ATTACKS.get("lira")(stats)
    expected = u_lira_split_average(u, r, splits=HALVINGS, seed=3)
    for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
        agg = out[f"lira_{key}"]
        assert agg["value"] == pytest.approx(expected[key], abs=1e-12)
        assert agg["low"] <= agg["value"] <= agg["high"]
    fixed = _one_halving(u, r, np.arange(8), np.arange(8))
    assert out["lira_roc"]["roc_fpr"] == fixed["roc_fpr"] and out["lira_roc"]["roc_tpr"] == fixed["roc_tpr"]


def test_member_threshold_gives_tpr_at_fpr_exactly_ties_included():
    rng = np.random.default_rng(8)
    for _ in range(300):
        neg = np.round(rng.normal(size=rng.integers(1, 3000)), 1)  # rounding makes ties on both sides
        pos = np.round(rng.normal(1.0, 1.0, size=rng.integers(1, 60)), 1)
        for fpr in (0.001, 0.01, 0.2):
            assert np.mean(pos > member_threshold(neg, fpr)) == pytest.approx(tpr_at_fpr(pos, neg, fpr), abs=1e-12)
    assert member_threshold([1.0, 2.0], 0.0) == np.inf and member_threshold([1.0, 2.0], 1.5) == -np.inf


def test_per_example_shares_average_to_the_sets_tpr():
    """Exactness: with no NaN, the examples' shares average to the split-averaged TPRs of the whole set."""
    rng = np.random.default_rng(4)
    u = rng.normal(0.5, 1.0, (10, 70)) + rng.normal(0, 1.5, 70)
    r = rng.normal(0.0, 1.2, (10, 70))
    shares = u_lira_per_example(u, r, splits=6, seed=9)
    whole = u_lira_split_average(u, r, splits=6, seed=9)
    for key in ("tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"):
        assert shares[key].shape == (70,) and shares[key].mean() == pytest.approx(whole[key], abs=1e-12)
    # halvings computed once and handed to both give the same numbers
    halved = u_lira_halvings(u, r, halvings=6, seed=9)
    assert u_lira_split_average(u, r, halvings=halved) == whole
    again = u_lira_per_example(u, r, halvings=halved)
    assert all(np.array_equal(again[k], shares[k]) for k in shares)
    # an example whose unlearned models sit far from its retrained ones owns the largest share
    u[:, 5] += 50.0
    assert int(np.argmax(u_lira_per_example(u, r, splits=6, seed=9)["tpr_at_1pct_fpr"])) == 5


def test_compose_keeps_the_most_exposed_examples_of_the_union():
    sets = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([2, 3, 4, 5])}
    z = np.zeros(4)
    shares = {"a": {"tpr_at_0.1pct_fpr": np.array([0.9, 0.0, 0.5, 0.1]), "tpr_at_1pct_fpr": z, "score": z},
              "b": {"tpr_at_0.1pct_fpr": np.array([0.3, 0.1, 0.0, 0.7]), "tpr_at_1pct_fpr": z, "score": z}}
    # 0: .9, 1: 0, 2: mean(.5, .3) = .4, 3: mean(.1, .1) = .1, 4: 0, 5: .7  → top four {0, 5, 2, 3}
    assert selection_module.compose(sets, shares, 4).tolist() == [0, 2, 3, 5]
    # ties at the 0.1% share fall to the 1% share, then to the lower index
    shares["a"]["tpr_at_1pct_fpr"] = np.array([0.0, 0.6, 0.0, 0.0])
    assert selection_module.compose(sets, shares, 5).tolist() == [0, 1, 2, 3, 5]


def test_the_composed_set_competes_on_its_own_models(monkeypatch):
    """Each candidate holds one strongly and one weakly exposed example; the composition of the strong ones is
    attacked by models of its own and wins."""
    strong = {1: 6.0, 3: 6.0}
    attacked = []

    def fake_calls(method, params, forget, seeds):
        attacked.append((method, tuple(forget.tolist())))
        gaps = np.array([strong.get(i, 0.2) for i in forget.tolist()]) if method != "retrain" else 0.0
        return [lambda s=s, gaps=gaps: [{"lsc": np.random.default_rng(s).normal(gaps, 1.0, len(forget))}]
                for s in seeds]

    class Serial:
        def map(self, setting, calls, **_):
            return [c() for c in calls]

    monkeypatch.setattr(selection_module, "statistics_calls", fake_calls)
    cands = {"search": torch.tensor([0, 1]), "memorization": torch.tensor([2, 3])}
    out = selection_module.select_by_attack(None, "finetune", {}, cands, num_models=8, compose_sets=True,
                                            executor=Serial())
    assert out["composed"] == [1, 3] and out["chosen"] == "composed"
    assert out["composed_from"] == {"search": 1, "memorization": 1}
    assert ("finetune", (1, 3)) in attacked and ("retrain", (1, 3)) in attacked
    assert out["scores"]["composed"]["tpr_at_0.1pct_fpr"] > max(out["scores"][n]["tpr_at_0.1pct_fpr"] for n in cands)
    # off (or class-wise units): no composition, no further models
    attacked.clear()
    plain = selection_module.select_by_attack(None, "finetune", {}, cands, num_models=8, executor=Serial())
    assert "composed" not in plain["scores"] and all(t[1] != (1, 3) for t in attacked)


def test_the_composed_set_is_scored_on_seeds_that_did_not_choose_it(monkeypatch):
    """Every example is equally exposed; a model's score for an example is noise fixed by (seed, example), as
    models of one seed on nearly the same forget set are nearly the same model. The composition picks the
    examples that looked exposed in the selection's draw; scored on those seeds again it would look the most
    exposed set by chance alone, so it must be scored on seeds of its own."""
    seeds_of = {}

    def fake_calls(method, params, forget, seeds):
        seeds_of.setdefault(tuple(forget.tolist()), []).append(list(seeds))
        shift = 0.0 if method == "retrain" else 1.0
        return [lambda s=s, idx=forget.tolist(): [{"lsc": np.array(
            [shift + np.random.default_rng([s, i]).normal() for i in idx])}] for s in seeds]

    class Serial:
        def map(self, setting, calls, **_):
            return [c() for c in calls]

    monkeypatch.setattr(selection_module, "statistics_calls", fake_calls)
    cands = {f"c{k}": torch.arange(10 * k, 10 * k + 10) for k in range(4)}
    out = selection_module.select_by_attack(None, "finetune", {}, cands, num_models=8, compose_sets=True,
                                            executor=Serial())
    composed = tuple(out["composed"])
    assert composed not in [tuple(c.tolist()) for c in cands.values()]
    shares_seeds = {s for k, c in cands.items() for block in seeds_of[tuple(c.tolist())] for s in block}
    assert not shares_seeds & {s for block in seeds_of[composed] for s in block}
    best = max(out["scores"][n]["tpr_at_1pct_fpr"] for n in cands)
    assert out["scores"]["composed"]["tpr_at_1pct_fpr"] <= best and out["chosen"] != "composed"
