"""Offline RMIA: agreement with a loop-by-loop transcription of the paper's definition, its properties,
the unlearning attack on synthetic per-model statistics, RMIA on the trained model, and the
RMIA-vs-LiRA experiment script on the tiny synthetic setting."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import load_script

from worstforget.core.errors import ConfigError
from worstforget.scoring.attacks import ATTACKS, Stats
from worstforget.scoring.privacy import (
    RMIA_GAMMA,
    RMIA_OFFLINE_A,
    PrivacyInputError,
    auc,
    lira_attack_metrics,
    offline_marginal,
    relative_scores,
    rmia_attack_metrics,
    rmia_scores,
    true_label_probability,
)


def brute_force_rmia(p_target_x, p_ref_x, p_target_z, p_ref_z, a, gamma, out_x=None, out_z=None):
    """The paper's definitions written out with explicit loops, for one target model:
    Pr(x) = ½[(1 + a)·Pr_OUT(x) + (1 − a)], LR(x, z) = (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)),
    Score(x) = (1/|Z|) · #{z : LR(x, z) ≥ γ}."""
    m, n_x = p_ref_x.shape
    n_z = p_ref_z.shape[1]

    def marginal(refs, j, out):
        values = [refs[k][j] for k in range(m) if out is None or out[k][j]]
        p_out = sum(values) / len(values)
        return 0.5 * ((1 + a) * p_out + (1 - a))

    scores = []
    with np.errstate(divide="ignore", invalid="ignore"):  # x/0 = inf counts, 0/0 = NaN does not
        for i in range(n_x):
            lr_x = p_target_x[i] / marginal(p_ref_x, i, out_x)
            count = 0
            for j in range(n_z):
                lr_z = p_target_z[j] / marginal(p_ref_z, j, out_z)
                if lr_x / lr_z >= gamma:
                    count += 1
            scores.append(count / n_z)
    return np.array(scores)


@pytest.mark.parametrize("a", [0.0, 0.33, 0.7, 1.0])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 4.0])
def test_matches_loop_transcription_of_the_paper(a, gamma):
    rng = np.random.default_rng(int(10 * a + gamma))
    m, n_x, n_z, t = 5, 11, 17, 3
    p_ref_x, p_ref_z = rng.uniform(0.05, 1, (m, n_x)), rng.uniform(0.05, 1, (m, n_z))
    p_x, p_z = rng.uniform(0, 1, (t, n_x)), rng.uniform(0, 1, (t, n_z))
    got = rmia_scores(p_x, p_ref_x, p_z, p_ref_z, a=a, gamma=gamma)
    want = np.stack([brute_force_rmia(p_x[k], p_ref_x, p_z[k], p_ref_z, a, gamma) for k in range(t)])
    np.testing.assert_allclose(got, want, atol=1e-15)
    assert 0 < got.mean() < 1  # the inputs exercise both outcomes of the comparison


def test_matches_transcription_with_out_masks_and_ties():
    rng = np.random.default_rng(7)
    m, n_x, n_z = 6, 9, 12
    p_ref_x, p_ref_z = rng.uniform(0.1, 1, (m, n_x)), rng.uniform(0.1, 1, (m, n_z))
    out_x, out_z = rng.random((m, n_x)) < 0.5, rng.random((m, n_z)) < 0.5
    out_x[0], out_z[0] = True, True  # every example keeps at least one OUT reference
    p_x, p_z = rng.uniform(0, 1, n_x), rng.uniform(0, 1, n_z)
    # planted ties: z copies of some x (LR(x)/LR(z) = 1 exactly) and a zero probability
    p_z[:3], p_ref_z[:, :3], out_z[:, :3] = p_x[:3], p_ref_x[:, :3], out_x[:, :3]
    p_x[5], p_z[4] = 0.0, 0.0
    for gamma in (1.0, 2.0):
        got = rmia_scores(p_x, p_ref_x, p_z, p_ref_z, a=0.4, gamma=gamma, out_mask_x=out_x, out_mask_z=out_z)
        np.testing.assert_allclose(got, brute_force_rmia(p_x, p_ref_x, p_z, p_ref_z, 0.4, gamma, out_x, out_z),
                                   atol=1e-15)
        assert got[5] == 0.0


def test_defaults_are_the_reproduction_config_values():
    assert (RMIA_GAMMA, RMIA_OFFLINE_A) == (2.0, 0.33)
    rng = np.random.default_rng(0)
    p_ref_x, p_ref_z, p_x, p_z = rng.uniform(0.1, 1, (3, 4)), rng.uniform(0.1, 1, (3, 6)), rng.random(4), rng.random(6)
    np.testing.assert_array_equal(rmia_scores(p_x, p_ref_x, p_z, p_ref_z),
                                  brute_force_rmia(p_x, p_ref_x, p_z, p_ref_z, 0.33, 2.0))


def test_a_one_is_the_out_mean_and_a_zero_halfway_to_one():
    rng = np.random.default_rng(1)
    p = rng.random((5, 8))
    mask = rng.random((5, 8)) < 0.6
    mask[0] = True
    out_mean = np.array([p[mask[:, j], j].mean() for j in range(8)])
    np.testing.assert_allclose(offline_marginal(p, a=1.0, out_mask=mask), out_mean, rtol=1e-15)
    np.testing.assert_allclose(offline_marginal(p, a=0.0, out_mask=mask), (out_mean + 1) / 2, rtol=1e-15)
    np.testing.assert_allclose(offline_marginal(p, a=1.0), p.mean(0), rtol=1e-15)


def test_example_without_out_reference_scores_nan_and_leaves_the_population():
    p = np.full((2, 3), 0.5)
    mask = np.array([[True, False, True], [True, False, False]])
    assert np.isnan(offline_marginal(p, out_mask=mask)).tolist() == [False, True, False]
    scores = rmia_scores(np.array([0.9, 0.9, 0.9]), p, np.array([0.5, 0.2]), np.full((2, 2), 0.5), out_mask_x=mask)
    assert np.isnan(scores).tolist() == [False, True, False]
    # a population sample without OUT reference is dropped: the score is over the other two
    p_z, ref_z = np.array([0.1, 0.3, 0.9]), np.full((2, 3), 0.5)
    dropped = rmia_scores(np.array([0.6]), p[:, :1], p_z, ref_z, out_mask_z=mask, gamma=1.0)
    kept = rmia_scores(np.array([0.6]), p[:, :1], p_z[[0, 2]], ref_z[:, [0, 2]], gamma=1.0)
    assert dropped[0] == kept[0] == 0.5


def test_scores_fall_as_gamma_rises():
    rng = np.random.default_rng(2)
    lr_x, lr_z = rng.lognormal(size=(2, 50)), rng.lognormal(size=(2, 80))
    previous = np.ones((2, 50))
    for gamma in (0.1, 0.5, 1.0, 1.5, 2.0, 5.0, 50.0):
        scores = relative_scores(lr_x, lr_z, gamma=gamma)
        assert np.all(scores <= previous)
        previous = scores
    assert relative_scores(lr_x, lr_z, gamma=1e-9).min() == 1.0 and relative_scores(lr_x, lr_z, gamma=1e9).max() == 0.0


def test_shared_population_broadcasts_over_targets():
    rng = np.random.default_rng(3)
    lr_x, lr_z = rng.lognormal(size=(3, 10)), rng.lognormal(size=20)
    np.testing.assert_array_equal(relative_scores(lr_x, lr_z), relative_scores(lr_x, np.tile(lr_z, (3, 1))))


def test_separated_distributions_give_auc_one_and_identical_ones_one_half():
    rng = np.random.default_rng(4)
    m, n = 8, 2000
    p_ref = rng.uniform(0.2, 0.6, (m, n))
    p_ref_z = rng.uniform(0.2, 0.6, (m, n))
    p_z = rng.uniform(0.2, 0.6, n)
    member = rng.random(n) < 0.5
    separated = np.where(member, rng.uniform(0.9, 1.0, n), rng.uniform(0.2, 0.6, n))
    scores = rmia_scores(separated, p_ref, p_z, p_ref_z, gamma=1.0)
    assert auc(scores[member], scores[~member]) > 0.99
    same = rng.uniform(0.2, 0.6, n)
    scores = rmia_scores(same, p_ref, p_z, p_ref_z, gamma=1.0)
    assert abs(auc(scores[member], scores[~member]) - 0.5) < 0.04


def test_attack_metrics_are_the_shared_summary():
    rng = np.random.default_rng(5)
    pos, neg = rng.random(300), rng.random(400) * 0.8
    assert rmia_attack_metrics(pos, neg) == lira_attack_metrics(pos, neg)


def test_bad_inputs_are_rejected():
    p = np.full((2, 3), 0.5)
    with pytest.raises(PrivacyInputError, match="gamma"):
        relative_scores(np.ones(3), np.ones(4), gamma=0.0)
    with pytest.raises(PrivacyInputError, match=r"\[0, 1\]"):
        offline_marginal(p, a=1.5)
    with pytest.raises(PrivacyInputError, match="probabilities"):
        rmia_scores(np.array([1.2, 0.5, 0.5]), p, np.ones(2) / 2, np.full((2, 2), 0.5))
    with pytest.raises(PrivacyInputError, match="p_target_z"):
        rmia_scores(np.full((2, 3), 0.5), p, np.ones(2) / 2, np.full((2, 2), 0.5))
    with pytest.raises(PrivacyInputError, match="a < 1"):
        rmia_scores(np.ones(3) / 2, np.zeros((2, 3)), np.ones(2) / 2, np.full((2, 2), 0.5), a=1.0)
    with pytest.raises(PrivacyInputError, match="non-negative"):
        true_label_probability(np.array([0.1, -0.2]))
    np.testing.assert_array_equal(true_label_probability(np.array([0.0, np.inf])), [1.0, 0.0])


# ----------------------------------------------------------------------------- the unlearning attack


def _stats(remember: float, n: int = 8, ex: int = 40, n_test: int = 60, seed: int = 0) -> Stats:
    """Retrained models give forget examples test-like losses; unlearned models lower them by `remember`."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.2, 2.0, ex)  # per-example loss level under models that never saw it
    loss_r = difficulty * rng.lognormal(0, 0.3, (n, ex))
    loss_u = difficulty * np.exp(-remember) * rng.lognormal(0, 0.3, (n, ex))
    test = rng.uniform(0.2, 2.0, n_test)
    acc = {k: np.full(n, 90.0) for k in ("forget", "retain", "test")}
    return Stats(lsc_u=-loss_u, lsc_r=-loss_r, loss_u=loss_u, loss_r=loss_r,
                 test_loss_u=test * rng.lognormal(0, 0.3, (n, n_test)),
                 test_loss_r=test * rng.lognormal(0, 0.3, (n, n_test)),
                 acc_u=acc, acc_r=acc, seconds_u=np.ones(n), seconds_r=np.ones(n), seed=seed)


def test_rmia_attack_exposes_models_that_keep_members_confident():
    remembers = ATTACKS.get("rmia")(_stats(remember=2.0))
    forgets = ATTACKS.get("rmia")(_stats(remember=0.0))
    assert remembers["rmia_auc"]["value"] > 0.9
    assert abs(forgets["rmia_auc"]["value"] - 0.5) < 0.1
    assert remembers["rmia_auc"]["low"] > forgets["rmia_auc"]["high"]
    low, value, high = (remembers["rmia_auc"][k] for k in ("low", "value", "high"))
    assert 0 <= low <= value <= high <= 1
    assert remembers["rmia_per_example"].shape == (40,) and remembers["rmia_per_example"].mean() > 0
    assert 0 <= remembers["rmia_tpr_at_0.1pct_fpr"]["value"] <= remembers["rmia_tpr_at_1pct_fpr"]["value"] <= 1
    for key in ("rmia_tpr_at_0.1pct_fpr", "rmia_tpr_at_1pct_fpr"):
        assert remembers[key]["low"] <= remembers[key]["value"] <= remembers[key]["high"]
    assert remembers["rmia_roc"]["roc_fpr"][0] == 0 and remembers["rmia_roc"]["roc_tpr"][-1] == 1
    assert remembers["rmia_params"] == {"offline_a": RMIA_OFFLINE_A, "gamma": RMIA_GAMMA, "references": 4}


def test_rmia_attack_scores_targets_against_the_other_half():
    """The attack's pooled AUC equals RMIA computed by hand on both shadow/target splits."""
    stats = _stats(remember=0.5, n=4, ex=10, n_test=15, seed=3)
    p = true_label_probability
    pos, neg = [], []
    for refs, target in ((slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2))):
        for k in range(target.start, target.stop):
            pos.append(brute_force_rmia(p(stats.loss_u[k]), p(stats.loss_r[refs]), p(stats.test_loss_u[k]),
                                        p(stats.test_loss_r[refs]), RMIA_OFFLINE_A, RMIA_GAMMA))
            neg.append(brute_force_rmia(p(stats.loss_r[k]), p(stats.loss_r[refs]), p(stats.test_loss_r[k]),
                                        p(stats.test_loss_r[refs]), RMIA_OFFLINE_A, RMIA_GAMMA))
    out = ATTACKS.get("rmia")(stats)
    assert out["rmia_auc"]["value"] == pytest.approx(auc(np.ravel(pos), np.ravel(neg)), abs=1e-12)
    np.testing.assert_allclose(out["rmia_per_example"], np.mean(pos, 0) - np.mean(neg, 0), atol=1e-12)


def test_rmia_attack_needs_two_models_per_kind():
    assert "rmia_note" in ATTACKS.get("rmia")(_stats(remember=1.0, n=1))


# ----------------------------------------------------------------------------- the trained model


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from worstforget.setting import prepare_setting

    return prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path_factory.mktemp("cache")),
                           train_overrides={"epochs": 40, "select_best": False})


def test_rmia_on_original_runs_beside_lira(setting):
    from worstforget.audit.membership import (
        lira_on_original,
        rmia_on_original,
        shadow_outputs,
    )

    rmia = rmia_on_original(setting, num_references=4)
    n = setting.data.num_train + len(setting.data.y_test)
    assert rmia["pairs_positive"] == rmia["pairs_negative"] == 4 * n // 2
    for part in ("leave_one_out", "target"):
        assert 0 <= rmia[part]["rmia"]["auc"] <= 1
        assert set(rmia[part]["rmia"]) == set(lira_attack_metrics([1.0], [0.0]))
    # the likelihood ratios of these small models span ~0.5–1, so beating z by a factor 2 is rare and γ = 2
    # carries little signal; γ = 1 compares with the bulk of the population
    assert rmia_on_original(setting, num_references=4, gamma=1.0)["leave_one_out"]["rmia"]["auc"] > 0.55
    lira = lira_on_original(setting, num_shadows=4)  # the same shadow models, read back from the cache
    assert lira["leave_one_out"]["loss_threshold"] == rmia["leave_one_out"]["loss_threshold"]
    shadows = shadow_outputs(setting, 4)
    assert (shadows["in_mask"].sum(0) == 2).all()
    with pytest.raises(ConfigError, match="at least 4"):
        rmia_on_original(setting, num_references=2)


def test_rmia_on_original_matches_hand_computation(setting):
    from worstforget.audit.membership import rmia_on_original, shadow_outputs

    result = rmia_on_original(setting, num_references=4)
    shadows = shadow_outputs(setting, 4)
    p, inside = true_label_probability(shadows["loss"]), shadows["in_mask"]
    pos, neg = [], []
    for i in range(4):  # leave-one-out: OUT references among the other three, the target's non-members as z
        rest, out = np.delete(p, i, 0), ~np.delete(inside, i, 0)
        scores = rmia_scores(p[i], rest, p[i][~inside[i]], rest[:, ~inside[i]], out_mask_x=out,
                             out_mask_z=out[:, ~inside[i]])
        pos.append(scores[inside[i]])
        neg.append(scores[~inside[i]])
    assert result["leave_one_out"]["rmia"]["auc"] == pytest.approx(auc(np.concatenate(pos), np.concatenate(neg)),
                                                                   abs=1e-12)
    member = np.arange(p.shape[1]) < setting.data.num_train
    t = true_label_probability(shadows["target_loss"])
    scores = rmia_scores(t, p, t[~member], p[:, ~member], out_mask_x=~inside, out_mask_z=~inside[:, ~member])
    assert result["target"]["rmia"]["auc"] == pytest.approx(auc(scores[member], scores[~member]), abs=1e-12)


# ----------------------------------------------------------------------------- the experiment script


def test_rmia_vs_lira_script_on_tiny_setting(tmp_path, monkeypatch):
    module = load_script("experiments/rmia_vs_lira.py")
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", ["rmia_vs_lira.py", "--tiny", "--models", "4,6", "--out", str(out),
                                      "--cache-dir", str(tmp_path / "cache")])
    module.main()
    text = out.read_text()
    assert "python experiments/rmia_vs_lira.py --tiny --models 4,6" in text.splitlines()[2]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert len(rows) == 2 * 2 * 2  # {original, finetune} × {4, 6} models × {LiRA, RMIA}
    assert {row.split("|")[3].strip() for row in rows} == {"LiRA", "RMIA"}


def test_exposure_anatomy_script_reads_an_audit_and_its_scores(tmp_path, monkeypatch, capsys):
    """The per-set φ medians of experiments/exposure_anatomy.py against the stored arrays of a real (tiny) audit."""
    import h5py
    import numpy as np
    from click.testing import CliRunner

    from worstforget.cli import cli

    cache, out = tmp_path / "cache", tmp_path / "audit"
    result = CliRunner().invoke(cli, ["--quiet", "search", "--method", "ft", "--dataset", "synthetic", "--epochs", "4",
                                      "--outer-steps", "2", "--num-random", "1", "--no-stability", "--baselines",
                                      "lowest_loss", "--attacks", "loss", "--num-models", "2", "--mia-resamples", "1",
                                      "--cache-dir", str(cache), "--out", str(out)])
    assert result.exit_code == 0, result.output
    module = load_script("experiments/exposure_anatomy.py")
    monkeypatch.setattr(sys, "argv", ["exposure_anatomy.py", str(out), "--cache-dir", str(cache)])
    module.main()
    rows = {line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| set")}
    assert set(rows) == {"worst_case", "lowest_loss", "random"}
    with h5py.File(out / "evaluation.h5", "r") as h5:
        group = h5["lowest_loss/0/finetune"]
        unlearned, retrained = group["lsc_unlearned"][:].mean(0), group["lsc_retrained"][:].mean(0)
    assert rows["lowest_loss"][3] == pytest.approx(np.median(retrained), abs=0.006)
    assert rows["lowest_loss"][4] == pytest.approx(np.median(unlearned), abs=0.006)
    assert rows["lowest_loss"][6] == pytest.approx(np.median(np.abs(unlearned - retrained)), abs=0.006)
