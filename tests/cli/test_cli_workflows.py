"""The tuning protocol, the method comparison and experiment configs, through the CLI."""
from __future__ import annotations

import json

from click.testing import CliRunner

from worstforget.audit.tune import parse_grid
from worstforget.cli import cli

FAST = ["--dataset", "synthetic", "--epochs", "4"]


def invoke(args, tmp_path):
    return CliRunner().invoke(cli, [*args[:1], *args[1:], "--cache-dir", str(tmp_path / "cache")]
                              if args[0] != "run" else args)


def test_parse_grid_types_values_by_the_method():
    assert parse_grid("finetune", ["lr=1e-3,0.01", "epochs=2,3"]) == {"lr": [0.001, 0.01], "epochs": [2, 3]}


def test_tune_picks_the_minimum_gap_and_merges_params(tmp_path):
    params = tmp_path / "tuned.json"
    record = tmp_path / "tune.json"
    result = invoke(["tune", "--method", "ft", *FAST, "--grid", "lr=0.0001,0.05", "--param", "epochs=2",
                     "--num-sets", "2", "--out", str(record), "--update-params", str(params)], tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads(record.read_text())
    best = min(data["rows"], key=lambda r: r["avg_gap"]["mean"])
    assert data["best"] == best["params"] and len(data["rows"]) == 2
    assert all(r["avg_gap"]["n"] == 2 for r in data["rows"])  # one run per random set
    assert json.loads(params.read_text()) == {"finetune": best["params"]}


def test_compare_uses_params_file_and_writes_table(tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"ft": {"lr": 0.02, "epochs": 2}}))
    out = tmp_path / "cmp"
    result = invoke(["compare", "--methods", "ft,noop", *FAST, "--params-file", str(params), "--num-sets", "2",
                     "--out", str(out)], tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["finetune"] == {"lr": 0.02, "epochs": 2}
    block = summary["sets"]["random"]
    assert block["num_sets"] == 2 and block["methods"]["finetune"]["avg_gap"]["n"] == 2
    assert list(block["methods"]) == ["retrain", "finetune", "noop"]


def test_compare_rejects_a_bad_params_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = invoke(["compare", "--methods", "ft", *FAST, "--params-file", str(bad)], tmp_path)
    assert result.exit_code != 0 and "must map method names" in result.output and "Traceback" not in result.output


def test_run_executes_steps_and_records_commands(tmp_path):
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"name": "t", "steps": [
        ["unlearn", "--method", "ga", *FAST, "--cache-dir", str(tmp_path / "c"), "--out", "{out}/ga"]]}))
    out = tmp_path / "res"
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "ga" / "summary.json").is_file()
    assert "worstforget unlearn --method ga" in (out / "commands.txt").read_text()
    assert json.loads((out / "run.json").read_text())["commands"][0].endswith(f"{out}/ga")


def test_run_rejects_a_config_without_steps(tmp_path):
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"name": "t"}))
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "not an experiment config" in result.output
    assert not (tmp_path / "o").exists()


def test_search_cli_writes_all_outputs_and_resumes(tmp_path):
    import h5py
    import numpy as np

    out = tmp_path / "s"
    args = ["search", "--method", "ft", *FAST, "--outer-steps", "3", "--inner-steps", "4", "--num-random", "2",
            "--seeds", "1", "--mia-resamples", "1", "--no-stability", "--out", str(out)]
    result = invoke(args, tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("dataset", "model", "method", "solver", "num_train", "forget_size", "seed"):
        assert key in summary
    assert set(summary["search"]) >= {"seconds", "objective", "overlap_with_initial"}
    assert set(summary["sets"]["worst_case"]["methods"]["finetune"]) >= {"UA", "MIA", "RA", "TA", "RTE", "avg_gap"}
    assert set(summary["sets"]["random"]["methods"]["retrain"]["UA"]) == {"mean", "std", "n"}
    assert summary["sets"]["worst_case"]["methods"]["retrain"]["UA"]["n"] == 1
    indices = np.load(out / "worst_case_indices.npy")
    with h5py.File(out / "result.h5") as f:
        assert f.attrs["schema_version"] == 2 and "config_json" in f.attrs
        assert f["search/weights"].shape == (4, summary["num_train"])
        np.testing.assert_array_equal(f["forget_sets/worst_case"][()], indices)
        assert f["metrics/random/finetune/UA"].shape == (2, 1)
    again = invoke([*args, "--resume"], tmp_path)
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(np.load(out / "worst_case_indices.npy"), indices)


def test_search_cli_refuses_unrolled_for_retrain(tmp_path):
    result = invoke(["search", "--method", "retrain", "--solver", "unrolled", *FAST, "--out", str(tmp_path / "x")],
                    tmp_path)
    assert result.exit_code == 2 and "first-order" in result.output
    assert not (tmp_path / "x").exists()
