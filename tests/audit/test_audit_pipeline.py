"""The orchestration layer against hand-computed references: the audit's sets, gaps, stability, transfer
methods, class granularity, attacks stored with the search, and a resume after a real kill.

One CLI search (synthetic data, a further method, stability on) is run once per module; every test reads
its folder back and recomputes what it claims from the stored per-run values or from the library.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from worstforget.cli import cli
from worstforget.search import SearchConfig, jaccard, search_worst_case
from worstforget.setting import prepare_setting
from worstforget.training.loop import per_sample_loss

FAST = ["--dataset", "synthetic", "--epochs", "4"]
SEARCH = ["--method", "ft", "--outer-steps", "3", "--inner-steps", "4", "--num-random", "3", "--seeds", "2",
          "--mia-resamples", "1"]
REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    result = CliRunner().invoke(cli, ["--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    invoke("search", *SEARCH, *FAST, "--eval-methods", "ga", "--cache-dir", root / "cache", "--out", root / "out")
    return root


def rows(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_avg_gap_is_measured_against_retrain_on_the_same_set_and_seed(audit_dir):
    out = audit_dir / "out"
    summary = json.loads((out / "summary.json").read_text())
    with h5py.File(out / "result.h5") as f:
        for kind in ("worst_case", "lowest_loss", "memorization", "exposure", "random"):
            for method in ("finetune", "gradient_ascent"):
                mine = {k: f[f"metrics/{kind}/{method}/{k}"][()] for k in ("UA", "MIA", "RA", "TA", "avg_gap")}
                ref = {k: f[f"metrics/{kind}/retrain/{k}"][()] for k in ("UA", "MIA", "RA", "TA")}
                by_hand = np.mean([np.abs(mine[k] - ref[k]) for k in ref], axis=0)  # (sets, seeds)
                np.testing.assert_allclose(mine["avg_gap"], by_hand)
                agg = summary["sets"][kind]["methods"][method]["avg_gap"]
                assert agg["n"] == by_hand.size and agg["mean"] == pytest.approx(by_hand.mean())
                assert agg["std"] == pytest.approx(by_hand.std(ddof=1))


def test_heuristic_set_is_the_lowest_loss_samples_of_the_original(audit_dir):
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(audit_dir / "cache"),
                              train_overrides={"epochs": 4})
    summary = json.loads((audit_dir / "out" / "summary.json").read_text())
    loss = per_sample_loss(setting.original, setting.data.x_train, setting.data.y_train).double().cpu().numpy()
    with h5py.File(audit_dir / "out" / "result.h5") as f:
        heuristic = f["forget_sets/lowest_loss"][()]
    m = summary["forget_size"]
    assert len(heuristic) == m
    assert loss[heuristic].max() <= np.sort(loss)[m - 1] + 1e-12  # no sample outside is easier
    assert loss[heuristic].mean() < loss.mean()


def test_memorization_baseline_is_the_most_memorised_samples(audit_dir):
    from worstforget.forget_sets import memorization_scores

    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(audit_dir / "cache"),
                              train_overrides={"epochs": 4})
    summary = json.loads((audit_dir / "out" / "summary.json").read_text())
    scores = memorization_scores(setting, num_models=16)  # the audit shares the 16 reference models
    with h5py.File(audit_dir / "out" / "result.h5") as f:
        chosen = f["forget_sets/memorization"][()]
    m = summary["forget_size"]
    assert len(chosen) == m and scores[chosen].min() >= np.sort(scores)[-m] - 1e-12
    assert summary["baseline_overlap"]["memorization"] == pytest.approx(
        np.isin(f_units(audit_dir), chosen).mean())


def test_exposure_baseline_is_the_most_exposed_samples_of_the_original(audit_dir):
    from worstforget.forget_sets import exposure_scores

    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(audit_dir / "cache"),
                              train_overrides={"epochs": 4})
    scores = exposure_scores(setting, 16)
    with h5py.File(audit_dir / "out" / "result.h5") as f:
        chosen = f["forget_sets/exposure"][()]
    assert scores[chosen].min() >= np.sort(scores)[-len(chosen)] - 1e-12


def test_init_heuristic_starts_from_the_baseline_with_the_lowest_objective(tmp_path):
    out = tmp_path / "out"
    invoke("search", *SEARCH, *FAST, "--init", "heuristic", "--no-stability", "--num-random", "1",
           "--cache-dir", tmp_path / "cache", "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    start = summary["search"]["init"]
    assert set(start["objective"]) == {"lowest_loss", "memorization", "exposure"}
    assert start["baseline"] == min(start["objective"], key=start["objective"].get)
    with h5py.File(out / "result.h5") as f:
        np.testing.assert_array_equal(f["forget_sets/initial_units"][()],
                                      f[f"forget_sets/{start['baseline']}_units"][()])
        assert f["search/weights"][0].sum() == pytest.approx(summary["forget_units"])  # a binary start of m units


def f_units(audit_dir: Path) -> np.ndarray:
    with h5py.File(audit_dir / "out" / "result.h5") as f:
        return f["forget_sets/worst_case_units"][()]


def test_random_sets_are_distinct_sets_of_the_right_size(audit_dir):
    summary = json.loads((audit_dir / "out" / "summary.json").read_text())
    with h5py.File(audit_dir / "out" / "result.h5") as f:
        sets = [f[f"forget_sets/random/{i}"][()] for i in range(3)]
    for s in sets:
        assert len(s) == summary["forget_size"] == len(np.unique(s))
    for i in range(3):
        for j in range(i + 1, 3):
            assert jaccard(torch.as_tensor(sets[i]), torch.as_tensor(sets[j])) < 0.5
    assert summary["sets"]["random"]["num_sets"] == 3
    assert summary["sets"]["random"]["methods"]["retrain"]["UA"]["n"] == 3 * 2  # sets × seeds


def test_stability_is_the_jaccard_with_a_second_search_seed(audit_dir):
    summary = json.loads((audit_dir / "out" / "summary.json").read_text())
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(audit_dir / "cache"),
                              train_overrides={"epochs": 4})
    again = search_worst_case(setting, "finetune", {}, SearchConfig(outer_steps=3, inner_steps=4), seed=1)
    with h5py.File(audit_dir / "out" / "result.h5") as f:
        units_a, units_b = f["forget_sets/worst_case_units"][()], f["forget_sets/stability_units"][()]
    np.testing.assert_array_equal(units_b, again.units.numpy())
    assert summary["stability"]["jaccard"] == pytest.approx(jaccard(torch.as_tensor(units_a), again.units))


def test_eval_methods_run_on_every_set_and_reach_every_file(audit_dir):
    out = audit_dir / "out"
    summary = json.loads((out / "summary.json").read_text())
    for kind, block in summary["sets"].items():
        assert list(block["methods"]) == ["retrain", "finetune", "gradient_ascent"], kind
    methods = {r["method"] for r in rows(out)}
    assert methods == {"retrain", "finetune", "gradient_ascent"}
    table = CliRunner().invoke(cli, ["report", str(out), "--format", "md", "--out", str(out / "r.md")])
    assert table.exit_code == 0, table.output
    assert "gradient_ascent" in (out / "r.md").read_text()


def test_results_csv_holds_one_row_per_run_and_metric(audit_dir):
    out = audit_dir / "out"
    table = rows(out)
    with h5py.File(out / "result.h5") as f:
        for r in table[:: max(1, len(table) // 50)]:  # a spread of rows, each equal to the HDF5 value
            arr = f[f"metrics/{r['set_kind']}/{r['method']}/{r['metric']}"][()]
            assert float(r["value"]) == pytest.approx(arr[int(r["set_index"]), int(r["seed"])])
    keys = {(r["set_kind"], r["set_index"], r["method"], r["seed"], r["metric"]) for r in table}
    assert len(keys) == len(table)  # tidy: one row per set kind × set × method × seed × metric


def test_library_and_cli_use_the_same_mia_resamples():
    from worstforget.cli.app import MIA_RESAMPLES
    from worstforget.setting import MIA_RESAMPLES as LIBRARY

    assert MIA_RESAMPLES == LIBRARY


def test_class_granularity_forgets_whole_classes(tmp_path):
    out = tmp_path / "out"
    invoke("search", *SEARCH, *FAST, "--granularity", "class", "--forget-ratio", "0.34", "--no-stability",
           "--num-random", "2", "--cache-dir", tmp_path / "cache", "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path / "cache"),
                              train_overrides={"epochs": 4})
    y = setting.data.y_train.cpu().numpy()
    with h5py.File(out / "result.h5") as f:
        units = f["forget_sets/worst_case_units"][()]
        members = f["forget_sets/worst_case"][()]
        randoms = [f[f"forget_sets/random/{i}"][()] for i in range(2)]
    assert len(units) == summary["forget_units"] == 1 and units.max() < setting.data.num_classes
    np.testing.assert_array_equal(np.sort(members), np.flatnonzero(np.isin(y, units)))
    assert summary["forget_size"] == len(members)
    for s in randoms:  # baselines are whole classes too
        assert len(np.unique(y[s])) == 1 and len(s) == np.sum(y == y[s[0]])


def test_search_with_attacks_stores_the_evaluation_in_every_file(tmp_path):
    out = tmp_path / "out"
    # selection stays on (lira judges) with its smallest size: what is checked here is where the evaluation goes
    invoke("search", *SEARCH, *FAST, "--no-stability", "--num-random", "2", "--attacks", "loss,lira",
           "--num-models", "4", "--select-models", "4", "--cache-dir", tmp_path / "cache", "--out", out)
    doc = json.loads((out / "evaluation.json").read_text())
    assert set(doc["sets"]) == {"worst_case", "lowest_loss", "memorization", "exposure", "random"}
    rand = doc["sets"]["random"]["methods"]["finetune"]["lira_auc"]
    per_set = [s["lira_auc"]["value"] for s in doc["per_set"]["random"]["finetune"]]
    assert rand["n"] == 2 and rand["mean"] == pytest.approx(np.mean(per_set))
    with h5py.File(out / "evaluation.h5") as ev, h5py.File(out / "result.h5") as res:
        key = "worst_case/0/finetune/lira_per_example"
        np.testing.assert_array_equal(ev[key][()], res[f"evaluation/{key}"][()])
        np.testing.assert_array_equal(ev["worst_case/0/forget_set"][()], res["forget_sets/worst_case"][()])
    assert any(r["metric"] == "lira_auc" for r in rows(out))


def test_a_search_killed_midway_resumes_to_the_uninterrupted_set(tmp_path):
    """A real interruption: the search runs in a subprocess that is killed (SIGKILL) after its first
    checkpoints; `--resume` then finishes it, and the set equals an uninterrupted run's."""
    args = ["search", "--method", "ft", "--dataset", "digits", "--epochs", "2", "--outer-steps", "12",
            "--inner-steps", "15", "--num-random", "1", "--seeds", "1", "--mia-resamples", "1", "--no-stability"]
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "worstforget", "--quiet", *args, "--cache-dir", str(cache),
                             "--out", str(tmp_path / "a")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_dir = cache / "search"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        for path in state_dir.glob("search-*.pt"):
            try:
                step = int(torch.load(path, weights_only=True)["step"])
            except Exception:  # being replaced at this instant
                continue
        if step >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(next(state_dir.glob("search-*.pt")), weights_only=True)
    assert 0 < state["step"] < 12 and not state["done"], "the kill must land mid-search"
    assert not (tmp_path / "a" / "summary.json").exists()
    # the uninterrupted run starts from the same original and reference models, without the search's checkpoint
    shutil.copytree(cache, tmp_path / "fresh", ignore=lambda folder, names: ["search"] if folder == str(cache) else [])
    invoke(*args, "--resume", "--cache-dir", cache, "--out", tmp_path / "a")
    invoke(*args, "--cache-dir", tmp_path / "fresh", "--out", tmp_path / "b")
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "worst_case_indices.npy"),
                                  np.load(tmp_path / "b" / "worst_case_indices.npy"))


def test_the_terminal_tables_fit_80_columns_without_cutting_anything(audit_dir):
    from rich.console import Console

    from worstforget.cli.render import print_comparison, print_verdict, search_line

    summary = json.loads((audit_dir / "out" / "summary.json").read_text())
    summary["sets"]["worst_case"]["methods"]["neggrad_plus"] = summary["sets"]["worst_case"]["methods"]["finetune"]
    console = Console(width=80, record=True, color_system=None)
    print_comparison(console, summary, title="a title")
    console.print(search_line(summary))
    print_verdict(console, summary)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for name in ("retrain", "finetune", "gradient_ascent", "neggrad_plus", "memorization sets", "Verdict"):
        assert name in text
    assert "MIA-l" in text and "Gap-l" in text  # MIA_logit and its Avg. Gap in the default output
