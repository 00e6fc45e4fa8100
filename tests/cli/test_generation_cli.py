"""`search --task generation`: a tiny end-to-end run writes its result folder; bad input gives one `Error:` line
before any work; a missing diffusers names the extra to install."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest

pytest.importorskip("diffusers")

from concept_cases import TINY_GENERATION, TINY_RECIPE  # noqa: E402
from conftest import assert_clean_error, invoke  # noqa: E402


@pytest.fixture
def tiny_defaults(monkeypatch):
    from worstforget.setting import generative
    from worstforget.training.concept_classifier import ClassifierConfig

    tiny = TINY_GENERATION()  # built before the patch (it reads the module's class)
    monkeypatch.setattr(generative, "DiffusionConfig", TINY_RECIPE)
    monkeypatch.setattr(generative, "ClassifierConfig", lambda: ClassifierConfig(epochs=1))
    monkeypatch.setattr(generative, "GenerationConfig", lambda **given: dataclasses.replace(tiny, **given))


def test_a_tiny_generative_audit_writes_its_result_and_verdict(tiny_defaults, tmp_path):
    out = tmp_path / "gen"
    result = invoke("search", "--task", "generation", "--outer-steps", "2", "--param", "steps=2",
                    "--param", "per_concept=1", "--num-random", "1", "--num-seeds", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "verdict — esd: UA on the searched concepts" in result.output and "cost:" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "generation" and summary["method"] == "esd" and summary["forget_size"] == 4
    esd = summary["sets"]["worst_case"]["methods"]["esd"]
    assert esd["UA"]["n"] == 2 and set(summary["sets"]["random"]["methods"]) == {"esd", "retrain", "original"}
    assert len(summary["sets"]["worst_case"]["prompts"][0]) == 4
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "set_kind,set_index,method,seed,metric,value" and len(rows) > 20
    assert {"generations.npz", "concept_weights.npy"} <= {p.name for p in out.iterdir()}
    report = invoke("report", str(out), "--format", "md")
    assert report.exit_code == 0, report.output
    text = (out / "report.md").read_text()
    assert "| worst_case | esd |" in text and "## Verdict" in text
    assert (out / "report_files" / "generations-worst_case.png").stat().st_size > 1000


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "digits"], "not a concept dataset"),
    (["--attacks", "lira"], "--attacks does not apply to --task generation"),
    (["--objective", "confidence"], "--objective must be one of"),
    (["--solver", "unrolled"], "--solver must be warm or first-order"),
    (["--method", "finetune"], "unknown concept unlearning method"),
    (["--param", "nope=1"], "no hyper-parameter"),
    (["--resume", "--no-cache"], "--resume needs the cache"),
])
def test_bad_generative_input_is_one_error_line(args, needle, tmp_path):
    result = invoke("search", "--task", "generation", *args, "--out", str(tmp_path / "x"))
    assert_clean_error(result)
    assert needle in result.output and result.output.count("Error") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag", ["--retrain-seeds", "--sample-steps", "--images-per-concept"])
def test_a_generation_only_flag_is_refused_for_classification(flag, tmp_path):
    result = invoke("search", flag, "3", "--out", str(tmp_path / "x"))
    assert_clean_error(result)
    assert f"{flag} applies to --task generation only" in result.output and not (tmp_path / "x").exists()


def test_a_missing_diffusers_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    result = invoke("search", "--task", "generation", "--out", str(tmp_path / "x"))
    assert_clean_error(result, 1)
    assert "pip install 'worstforget[generative]'" in result.output


def test_the_concept_registries_are_listed_without_diffusers(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    for kind, name in (("concept-methods", "esd"), ("concept-datasets", "concepts_digits"),
                       ("concept-objectives", "recognition")):
        result = invoke("list", kind)
        assert result.exit_code == 0 and name in result.output, result.output


def test_a_generative_result_is_reported_alone(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"task": "generation"}))
    other = tmp_path / "other"
    other.mkdir()
    result = invoke("report", str(folder), str(other))
    assert_clean_error(result)
    assert "reported alone" in result.output
