"""Attack-based evaluation end to end on tiny data: calibration (retrain vs retrain) against a model that
forgot nothing, LiRA on the original against the population attack, selectors and the evaluate CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worstforget.audit.attack_eval import evaluate_unlearning
from worstforget.audit.membership import lira_on_original
from worstforget.cli import cli
from worstforget.forget_sets import SELECTORS, memorization_scores, random_forget_set
from worstforget.setting import prepare_setting


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(root), train_overrides={"epochs": 15})


def test_noop_is_exposed_and_retrain_is_not(setting):
    forget = random_forget_set(setting.data.num_train, 24, 0)
    calib = evaluate_unlearning(setting, "retrain", {}, forget, num_models=6, attacks=["epsilon", "lira", "tow"])
    noop = evaluate_unlearning(setting, "noop", {}, forget, num_models=6, attacks=["epsilon", "lira", "tow"])
    c, n = calib["scores"], noop["scores"]
    assert n["forget_quality"]["value"] < c["forget_quality"]["value"]
    assert n["lira_auc"]["value"] > c["lira_auc"]["value"]
    assert c["tow"]["value"] > 0.9
    assert calib["per_example"]["epsilon_per_example"].shape == (24,)
    assert 0 <= c["forget_quality"]["low"] <= c["forget_quality"]["value"] <= c["forget_quality"]["high"] <= 1


def test_bounded_quality_calls_retrain_a_perfect_unlearner(setting):
    # 16 models per side resolve ε up to 1.35 with bounded rates; the released rules' finite-sample floor
    # leaves Retrain-vs-Retrain far below 1, the bounded score does not
    forget = random_forget_set(setting.data.num_train, 24, 2)
    calib = evaluate_unlearning(setting, "retrain", {}, forget, num_models=16, attacks=["epsilon"])["scores"]
    noop = evaluate_unlearning(setting, "noop", {}, forget, num_models=16, attacks=["epsilon"])["scores"]
    assert calib["forget_quality_bounded"]["value"] >= 0.9
    assert calib["forget_quality"]["value"] < 0.5
    assert noop["forget_quality_bounded"]["value"] == 0.0  # identical outputs: the peaky guard
    assert calib["epsilon_score_bounded"] > 0.8


def test_model_statistics_are_cached(setting, monkeypatch):
    forget = random_forget_set(setting.data.num_train, 24, 1)
    first = evaluate_unlearning(setting, "finetune", {"epochs": 2}, forget, num_models=4, attacks=["ks"])
    import worstforget.methods.finetune as ft

    monkeypatch.setattr(ft.Finetune, "apply", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = evaluate_unlearning(setting, "finetune", {"epochs": 2}, forget, num_models=4, attacks=["ks"])
    assert again["scores"]["ks_pvalue"] == first["scores"]["ks_pvalue"]


def test_lira_on_original_beats_population_attack_at_low_fpr(tmp_path):
    # LiRA needs enough shadow models per side (with 4 per side its Gaussian fits are too noisy)
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path),
                              train_overrides={"epochs": 40, "select_best": False})
    result = lira_on_original(setting, num_shadows=16)
    loo = result["leave_one_out"]
    assert result["pairs_positive"] == 16 * (setting.data.num_train + len(setting.data.y_test)) // 2
    assert loo["lira"]["auc"] > 0.5
    assert loo["lira"]["tpr_at_1pct_fpr"] >= loo["loss_threshold"]["tpr_at_1pct_fpr"]


def test_selectors_return_sets_of_the_requested_size(setting):
    n = setting.data.num_train
    for name in ("random", "loss_quantile", "memorization_proxy"):
        chosen = SELECTORS.get(name).choose(setting, ratio=0.1, seed=0)
        assert len(chosen) == round(0.1 * n) == len(torch.unique(chosen))
        assert int(chosen.max()) < n
    whole = SELECTORS.get("class").choose(setting, ratio=0.34, seed=0)
    assert len(torch.unique(setting.data.y_train[whole])) == 1


def test_memorization_proxy_ranks_mislabelled_points_high(tmp_path):
    """A flipped label can only be fitted by memorising it: the proxy must rank such points near the top."""
    from dataclasses import replace

    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path),
                              train_overrides={"epochs": 60, "select_best": False})
    data = setting.data
    y = data.y_train.clone()
    flipped = torch.arange(10)
    y[flipped] = (y[flipped] + 1) % data.num_classes
    noisy = replace(setting, data=replace(data, y_train=y, fingerprint=data.fingerprint + "-flip"))
    scores = memorization_scores(noisy, num_models=8)
    rank = np.argsort(np.argsort(-scores))
    assert np.median(rank[:10]) < 0.25 * len(scores)


def test_evaluate_cli_writes_scores_and_per_example_arrays(tmp_path):
    import h5py

    out = tmp_path / "ev"
    result = __import__("click.testing").testing.CliRunner().invoke(
        cli, ["evaluate", "--method", "finetune", "--dataset", "synthetic", "--epochs", "5", "--num-models", "4",
              "--selector", "loss_quantile", "--attacks", "loss,epsilon,ks,tow", "--out", str(out),
              "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text())
    scores = doc["sets"]["lowest_loss"]["methods"]["finetune"]
    for key in ("forget_quality", "epsilon_score", "ks_pvalue", "tow", "rte_fraction"):
        assert set(scores[key]) >= {"mean", "std", "n"} and scores[key]["n"] == 1, key
    per_set = doc["per_set"]["lowest_loss"]["finetune"][0]
    assert scores["forget_quality"]["mean"] == per_set["forget_quality"]["value"]
    assert (scores["forget_quality"]["low"], scores["forget_quality"]["high"]) == \
        (per_set["forget_quality"]["low"], per_set["forget_quality"]["high"])
    assert isinstance(per_set["exceeds_challenge_time"], bool)
    with h5py.File(out / "evaluation.h5") as f:
        assert f["lowest_loss/0/finetune/epsilon_per_example"].shape == (round(0.1 * 240 * 0.9),)


def test_evaluate_cli_rejects_unknown_attack(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["evaluate", "--dataset", "synthetic", "--attacks", "lirra",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Did you mean" in result.output
    assert not (tmp_path / "evaluation.json").exists()


def test_evaluate_cli_runs_lira_and_rmia_on_the_original_and_stores_them(tmp_path):
    from click.testing import CliRunner

    from worstforget.audit.membership import lira_on_original, rmia_on_original
    from worstforget.setting import prepare_setting

    out = tmp_path / "ev"
    cache = tmp_path / "c"
    result = CliRunner().invoke(cli, ["evaluate", "--method", "finetune", "--dataset", "synthetic", "--epochs", "5",
                                      "--num-models", "4", "--attacks", "loss", "--lira-original", "--rmia-original",
                                      "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert "LiRA on the trained model" in result.output and "RMIA on the trained model" in result.output
    doc = json.loads((out / "evaluation.json").read_text())
    setting = prepare_setting(dataset="synthetic", cache_dir=str(cache), train_overrides={"epochs": 5})
    direct = rmia_on_original(setting, num_references=4)  # the same cached shadow models: the same numbers
    assert doc["rmia_original"]["leave_one_out"]["rmia"]["auc"] == pytest.approx(direct["leave_one_out"]["rmia"]["auc"])
    assert doc["lira_original"]["leave_one_out"]["lira"]["auc"] == pytest.approx(
        lira_on_original(setting, num_shadows=4)["leave_one_out"]["lira"]["auc"])
