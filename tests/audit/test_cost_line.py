"""The search's cost line counts what the command ran: the search, its stability twin and the reference models
(timed when trained, marked as shared when they come from the cache); selection when it ran."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from worstforget.audit.cost import cost_phrase
from worstforget.cli import cli
from worstforget.core.cache import ArrayCache
from worstforget.setting import prepare_setting
from worstforget.training import reference


def test_reference_models_are_timed_when_trained_and_marked_when_read_from_the_cache(tmp_path):
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path), train_overrides={"epochs": 3})
    cache = ArrayCache(str(tmp_path))
    fresh = reference.reference_statistics(setting.spec, setting.data, num_models=4, cache=cache)
    assert fresh.source == "trained" and fresh.seconds > 0
    again = reference.reference_statistics(setting.spec, setting.data, num_models=4, cache=cache)
    assert again.source == "cache" and again.seconds == pytest.approx(fresh.seconds)


def _search(tmp_path, out):
    args = ["--quiet", "search", "--method", "ft", "--dataset", "synthetic", "--epochs", "3", "--outer-steps", "2",
            "--num-random", "2", "--seeds", "2", "--mia-resamples", "1", "--reference-models", "4",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / out / "summary.json").read_text())["search"], " ".join(result.output.split())


def test_the_cost_line_adds_up_what_the_command_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "TRAINED_HERE", {})
    trace, output = _search(tmp_path, "a")
    refs = trace["reference_models"]
    assert refs["source"] == "trained" and refs["num_models"] == 4 and refs["seconds"] > 0
    total = trace["seconds"] + trace["stability_seconds"] + refs["seconds"]
    assert trace["total_seconds"] == pytest.approx(total)
    assert trace["total_cost_ratio"] == pytest.approx(total / trace["train_seconds"])
    assert "4 reference models" in output and "(trained now; shared, once per setting)" in output
    monkeypatch.setattr(reference, "TRAINED_HERE", {})  # a later command: the models come from the cache
    trace, output = _search(tmp_path, "b")
    assert trace["reference_models"]["source"] == "cache"
    assert trace["total_seconds"] == pytest.approx(trace["seconds"] + trace["stability_seconds"])
    assert "4 reference models from the cache (shared, once per setting" in output


def test_cost_phrase_names_every_part():
    trace = {"seconds": 1.0, "cost_ratio": 0.1, "stability_seconds": 2.0, "selection_seconds": 3.0,
             "selection": {"scores": {"a": {}, "b": {}}, "num_models": 8},
             "reference_models": {"num_models": 16, "seconds": 4.0, "source": "trained"},
             "total_seconds": 10.0, "total_cost_ratio": 1.0, "cost_reference": "training the original"}
    text = cost_phrase(trace)
    assert text == ("search: 1.0s (0.10×) + stability search 2.0s + attack-validated selection 3.0s (2 candidates, "
                    "8+8 models) + 16 reference models 4.0s (trained now; shared, once per setting) = 10.0s (1.00× "
                    "training the original)")
