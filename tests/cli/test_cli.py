"""The click CLI end to end on the synthetic dataset: `list`, a full `unlearn` run writing summary.json,
one-line errors with the right exit codes for bad methods, ratios, forget sets, checkpoints and
hyper-parameters (`--plugin` methods: tests/test_plugins.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error

from worstforget.cli import cli
from worstforget.training.models import build_model

FAST = ["--dataset", "synthetic", "--epochs", "3"]


def run(runner, *args):
    return runner.invoke(cli, ["--quiet", *args])


def test_list_methods_shows_finetune(cli_runner):
    result = run(cli_runner, "list", "methods")
    assert result.exit_code == 0, result.output
    assert "finetune" in result.output
    assert "retrain" in result.output
    # the columns unrolled and stacked: finetune both, Retrain stacked only, bad teaching (Adam) unrolled only
    cells = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert cells["finetune"][2:4] == ["yes", "yes"]
    assert cells["retrain"][1:3] == ["no", "yes"]
    assert cells["bad_teacher"][2:4] == ["yes", "no"]


def test_list_datasets_shows_digits(cli_runner):
    result = run(cli_runner, "list", "datasets")
    assert result.exit_code == 0, result.output
    assert "digits" in result.output
    assert "synthetic" in result.output


def read_rows(folder: Path) -> list[dict]:
    import csv

    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_unlearn_writes_summary_and_tidy_rows_with_gap_to_retrain(cli_runner, tmp_path):
    out = tmp_path / "run"
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--seeds", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "finetune" and summary["schema_version"] == 2
    block = summary["sets"]["random"]
    assert block["num_sets"] == 1 and list(block["methods"]) == ["retrain", "finetune"]
    rows = read_rows(out)
    value = {(r["method"], int(r["seed"]), r["metric"]): float(r["value"]) for r in rows if r["value"]}
    for who in ("finetune", "retrain"):
        for metric in ("UA", "MIA", "RA", "TA", "RTE"):
            agg = block["methods"][who][metric]
            runs = [value[(who, s, metric)] for s in (0, 1)]
            assert agg["n"] == 2 and agg["mean"] == pytest.approx(np.mean(runs))
            assert agg["std"] == pytest.approx(np.std(runs, ddof=1))
        for metric in ("UA", "RA", "TA"):
            assert 0 <= block["methods"][who][metric]["mean"] <= 100
    for s in (0, 1):  # Avg. Gap = mean |method − Retrain| over UA, MIA, RA, TA on the same set and seed
        by_hand = np.mean([abs(value[("finetune", s, k)] - value[("retrain", s, k)])
                           for k in ("UA", "MIA", "RA", "TA")])
        assert value[("finetune", s, "avg_gap")] == pytest.approx(by_hand)
        assert value[("finetune", s, "RTE_fraction")] == pytest.approx(value[("finetune", s, "RTE")]
                                                                       / value[("retrain", s, "RTE")])
    assert summary["forget_size"] == round(0.1 * summary["num_train"])


def test_unlearn_unknown_method_exits_2_with_suggestion(cli_runner, tmp_path):
    result = run(cli_runner, "unlearn", "--method", "finetun", *FAST, "--out", str(tmp_path / "run"))
    assert_clean_error(result, 2)
    assert "Did you mean" in result.output and "finetune" in result.output
    assert not (tmp_path / "run").exists()


def test_unlearn_forget_ratio_above_one_exits_2_without_output(cli_runner, tmp_path):
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--forget-ratio", "1.5",
                 "--out", str(tmp_path / "run"))
    assert_clean_error(result, 2)
    assert "forget-ratio" in result.output
    assert not (tmp_path / "run" / "summary.json").exists()


def test_unlearn_two_dimensional_forget_set_fails_with_one_line_error(cli_runner, tmp_path):
    path = tmp_path / "forget.npy"
    np.save(path, np.array([[1, 2], [3, 4]]))
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--forget-set", str(path),
                 "--out", str(tmp_path / "run"))
    assert_clean_error(result)
    assert "1-D" in result.output
    assert not (tmp_path / "run" / "summary.json").exists()


def test_unlearn_out_of_range_forget_indices_fail(cli_runner, tmp_path):
    path = tmp_path / "forget.npy"
    np.save(path, np.array([0, 5, 100_000]))
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--forget-set", str(path),
                 "--out", str(tmp_path / "run"))
    assert_clean_error(result)
    assert "outside" in result.output
    assert not (tmp_path / "run" / "summary.json").exists()


def test_unlearn_checkpoint_of_another_architecture_fails(cli_runner, tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_model("mlp", 3, (8,), hidden=(16,)).state_dict(), path)  # synthetic's default is 2×256
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--checkpoint", str(path))
    assert_clean_error(result)
    assert "does not match" in result.output


def test_unlearn_checkpoint_that_is_not_a_torch_file_fails(cli_runner, tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--checkpoint", str(path))
    assert_clean_error(result)
    assert "cannot read checkpoint" in result.output


def test_unlearn_unknown_param_exits_2(cli_runner, tmp_path):
    result = run(cli_runner, "unlearn", "--method", "ft", *FAST, "--param", "nosuch=1", "--out", str(tmp_path / "run"))
    assert_clean_error(result, 2)
    assert "nosuch" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["methods", "datasets", "models", "solvers", "attacks", "selectors", "objectives",
                                  "baselines", "optimizers", "schedules", "recipes"])
def test_list_shows_every_entry_of_each_registry(cli_runner, kind):
    from worstforget.cli.basic import registries

    result = run(cli_runner, "list", kind)
    assert result.exit_code == 0, result.output
    for name in registries()[kind].names():
        assert name in result.output, (kind, name)


def test_schedule_choices_come_from_the_registry(cli_runner, tmp_path):
    result = run(cli_runner, "train", *FAST, "--schedule", "onecycle", "--cache-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    bad = run(cli_runner, "train", *FAST, "--schedule", "linear", "--cache-dir", str(tmp_path))
    assert bad.exit_code == 2 and "onecycle" in bad.output


def test_recipe_replaces_the_defaults_and_explicit_options_win(tmp_path):
    from worstforget.setting import prepare_setting

    setting = prepare_setting(dataset="synthetic", recipe="fast", train_overrides={"epochs": 1},
                              cache_dir=str(tmp_path))
    cfg = setting.spec.train
    assert (cfg.epochs, cfg.lr, cfg.schedule, cfg.nesterov, cfg.label_smoothing) == (1, 0.4, "onecycle", True, 0.1)
