"""`worstforget report`: Markdown, HTML and JSON reports rendered from a stored search result.

One small digits search (2 outer steps, 2 random sets, 1 seed) is run once per module through the library
and written with `SearchAudit.write`; every test reads that folder back, as an auditor would. HTML figures are
checked by parsing the PNG bytes (signature, IHDR size, inflated IDAT), so PIL is not needed.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from worstforget.cli import cli
from worstforget.report import load_result, render_markdown
from worstforget.report.plots import PIXELS
from worstforget.report.tables import (
    class_composition,
    comparison_table,
    hardest_examples,
    roc_auc,
)


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory) -> Path:
    """A real search result folder (digits, finetune), built once: ~10 s on one CPU thread."""
    from worstforget.audit.worst_case import AuditOptions, audit_worst_case
    from worstforget.search import SearchConfig
    from worstforget.setting import prepare_setting

    root = tmp_path_factory.mktemp("report-result")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORSTFORGET_CACHE", str(root / "cache"))
        setting = prepare_setting(dataset="digits", device="cpu", cache_dir=str(root / "cache"),
                                  train_overrides={"epochs": 3})
        audit = audit_worst_case(setting, "finetune", {}, SearchConfig(outer_steps=2, inner_steps=3),
                                 options=AuditOptions(num_random=2, seeds=1, stability=False),
                                 state_dir=root / "state")
        audit.write(root / "res")
    return root / "res"


def report(runner, *args):
    return runner.invoke(cli, ["--quiet", "report", *map(str, args)])


def assert_clean_error(result):
    """Non-zero exit through click with exactly one 'Error:' line and no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def png_info(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, inflated IDAT bytes) of a PNG, parsed with struct and zlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, width, height, idat = 8, None, None, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert width is not None and idat, "PNG without IHDR or IDAT"
    return width, height, zlib.decompress(idat)


# --- formats ---------------------------------------------------------------------------------------------------

def test_markdown_report_has_method_and_retrain_side_by_side(cli_runner, result_dir, tmp_path):
    folder = tmp_path / "res"
    shutil.copytree(result_dir, folder)
    # an attack result in the folder adds a ROC figure
    (folder / "evaluation.json").write_text(json.dumps({"finetune": {"roc_fpr": [0, 0.2, 1], "roc_tpr": [0, 0.6, 1]}}))
    out = tmp_path / "audit.md"
    result = report(cli_runner, folder, "--format", "md", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(out)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| worst-case |") or line.startswith("| random |")]
    assert len(rows) == 2, text
    for row in rows:
        # every metric cell carries Retrain's number on the same sets
        assert row.count("(Retrain ") == 5, row
    assert "Avg. Gap to Retrain per method" in text and "Search trace" in text
    assert "Class composition of the worst-case set" in text
    assert "Provenance" in text and "<details>" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(p).stem for p in links} >= {"objective", "weights", "classes", "gaps", "overlaps", "hardest", "roc"}
    for link in links:
        assert (out.parent / link).is_file(), link


def test_json_report_follows_openunlearning_convention(cli_runner, result_dir):
    result = report(cli_runner, result_dir, "--format", "json")  # default --out: DIR/report.json
    assert result.exit_code == 0, result.output
    path = result_dir / "report.json"
    assert result.stdout.splitlines()[-1] == str(path)
    doc = json.loads(path.read_text())
    summary = json.loads((result_dir / "summary.json").read_text())
    (entry,) = doc["results"]
    metrics = entry["metrics"]
    for name, metric in metrics.items():
        assert "agg_value" in metric and isinstance(metric["value_by_index"], dict), name
    gap = metrics["worst_case/finetune/avg_gap"]
    assert gap["agg_value"] == pytest.approx(summary["sets"]["worst_case"]["methods"]["finetune"]["avg_gap"]["mean"])
    assert gap["value_by_index"]["0/0"] == {"score": pytest.approx(gap["agg_value"]), "set": 0, "seed": 0}
    assert metrics["random/retrain/UA"]["n"] == 2  # two random sets × one seed
    weights = metrics["search/final_weights"]["value_by_index"]
    assert len(weights) == summary["num_train"]
    assert sum(v["in_worst_case"] for v in weights.values()) == summary["forget_size"]
    assert set(metrics["class_composition"]["value_by_index"]) == {str(c) for c in range(10)}
    assert doc["comparison"][0]["method"] == "finetune"


def test_html_report_is_self_contained_with_legible_pngs(cli_runner, result_dir, tmp_path):
    out = tmp_path / "audit.html"
    result = report(cli_runner, result_dir, "--format", "html", "--out", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert "<h3>Provenance</h3>" in html and "<details><summary>Full configuration (JSON)</summary>" in html
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 6  # objective, weights, classes, gaps, overlaps, hardest (digits are images)
    for uri in uris:
        width, height, raw = png_info(base64.b64decode(uri))
        assert (width, height) == PIXELS
        assert len(set(raw)) > 1, "blank image"
    assert "src=\"http" not in html and "<link" not in html  # nothing fetched from elsewhere


def test_several_folders_give_one_report_with_a_comparison(cli_runner, result_dir, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(result_dir, second)
    out = tmp_path / "both.json"
    result = report(cli_runner, result_dir, second, "--format", "json", "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 2 and len(doc["comparison"]) == 2
    text = render_markdown([load_result(result_dir), load_result(second)])
    assert "Comparison across results" in text and len(re.findall(r"^## ", text, re.M)) == 2


def test_markdown_and_json_work_without_matplotlib_but_html_explains(cli_runner, result_dir, tmp_path, monkeypatch):
    import worstforget.report.plots as plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    md = tmp_path / "r.md"
    result = report(cli_runner, result_dir, "--format", "md", "--out", md)
    assert result.exit_code == 0, result.output
    assert "matplotlib is not installed" in md.read_text() and not (tmp_path / "r_files").exists()
    html = tmp_path / "r.html"
    line = assert_clean_error(report(cli_runner, result_dir, "--format", "html", "--out", html))
    assert "worstforget[plots]" in line and not html.exists()


# --- bad input -------------------------------------------------------------------------------------------------

def test_unknown_schema_version_is_a_one_line_error_and_writes_nothing(cli_runner, result_dir, tmp_path):
    import h5py

    folder = tmp_path / "future"
    shutil.copytree(result_dir, folder)
    with h5py.File(folder / "result.h5", "a") as f:
        f.attrs["schema_version"] = 99
    out = tmp_path / "r.html"
    line = assert_clean_error(report(cli_runner, folder, "--format", "html", "--out", out))
    assert str(folder) in line and "schema_version 99" in line
    assert not out.exists() and not (tmp_path / "r_files").exists()


def test_folder_that_is_not_a_result_is_a_clear_error(cli_runner, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_clean_error(report(cli_runner, empty, "--format", "md", "--out", tmp_path / "r.md"))
    assert "not a worstforget search result" in line and "summary.json" in line
    (empty / "summary.json").write_text(json.dumps({"method": "finetune", "avg_gap": 1.0}))
    line = assert_clean_error(report(cli_runner, empty, "--format", "md", "--out", tmp_path / "r.md"))
    assert "worstforget unlearn" in line
    assert not (tmp_path / "r.md").exists()


# --- pure functions --------------------------------------------------------------------------------------------

def test_class_composition_counts_by_hand():
    labels = [0, 0, 1, 2, 2, 2]
    comp = class_composition(labels, [0, 3, 4], num_classes=4)
    assert comp["train_counts"].tolist() == [2, 1, 3, 0]
    assert comp["forget_counts"].tolist() == [1, 0, 2, 0]
    np.testing.assert_allclose(comp["forget_share"], [1 / 3, 0, 2 / 3, 0])
    np.testing.assert_allclose(comp["train_share"], [2 / 6, 1 / 6, 3 / 6, 0])
    np.testing.assert_allclose(comp["ratio"][:3], [1.0, 0.0, 4 / 3])
    assert np.isnan(comp["ratio"][3])


def test_hardest_examples_and_auc():
    weights = np.array([0.1, 0.9, 0.5, 0.9, 0.0])
    assert hardest_examples(weights, [0, 1, 2, 3], 3).tolist() == [1, 3, 2]  # ties by smaller index
    labels = np.array([0, 1, 1, 0, 1])
    assert hardest_examples([0.2, 0.8], [0, 1, 3], 2, granularity="class", labels=labels).tolist() == [1, 0]
    assert roc_auc([0, 1], [0, 1]) == pytest.approx(0.5)
    assert roc_auc([0, 0.2, 1], [0, 0.6, 1]) == pytest.approx(0.06 + 0.64)


def test_comparison_table_puts_retrain_beside_each_number():
    def agg(mean, std, n):
        return {"mean": mean, "std": std, "n": n}

    metrics = ("UA", "MIA", "RA", "TA", "RTE")
    summary = {
        "method": "ft", "forget_size": 10, "num_train": 100, "solver": "first_order", "objective": "loss",
        "unlearn_seeds": [0, 1],
        "sets": {
            "worst_case": {"num_sets": 1, "methods": {
                "retrain": {k: agg(v, 0.5, 2) for k, v in zip(metrics, (3.0, 5.0, 99.5, 97.5, 9.0))},
                "ft": {**{k: agg(v, 0.0, 2) for k, v in zip(metrics, (0.0, 1.0, 99.0, 97.0, 1.0))},
                       "avg_gap": agg(2.0, 0.1, 2)}}},
            "random": {"num_sets": 2, "methods": {
                "retrain": {k: agg(2.92, 0.71, 4) for k in metrics},
                "ft": {**{k: agg(1.0, 0.2, 4) for k in metrics}, "avg_gap": agg(1.5, 0.3, 4)}}},
        },
    }
    table = comparison_table(summary, "ft")
    assert [row[0] for row in table.rows] == ["worst-case", "random"]
    assert table.rows[0][1] == "0.00 ± 0.00 (Retrain 3.00 ± 0.50)"
    assert table.rows[1][1] == "1.00 ± 0.20 (Retrain 2.92 ± 0.71)"
    assert table.rows[0][-1] == "2.00 ± 0.10" and table.rows[1][-1] == "1.50 ± 0.30"


def test_roc_curves_are_read_from_every_set_of_a_schema_2_evaluation(tmp_path):
    from worstforget.report.load import _read_evaluation

    curve = {"roc_fpr": [0.0, 0.5, 1.0], "roc_tpr": [0.0, 0.9, 1.0]}
    doc = {"schema_version": 2, "per_set": {
        "worst_case": {"ft": [{"lira_roc": curve, "rmia_roc": curve}]},
        "random": {"ft": [{"lira_roc": curve}, {"lira_roc": curve}]}}}
    (tmp_path / "evaluation.json").write_text(json.dumps(doc))
    curves = _read_evaluation(tmp_path)
    assert set(curves) == {"worst_case / ft / lira_roc", "worst_case / ft / rmia_roc",
                           "random / ft / set 0 / lira_roc", "random / ft / set 1 / lira_roc"}
    fpr, tpr = curves["random / ft / set 1 / lira_roc"]
    assert roc_auc(fpr, tpr) == pytest.approx(0.5 * 0.5 * 0.9 + 0.5 * (0.9 + 1.0) / 2)
