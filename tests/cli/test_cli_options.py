"""The CLI's shared options: declared once (options.py), typed, with the old spellings as hidden aliases."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from worstforget.cli import cli
from worstforget.cli.options import AttackList

CLI = Path(__file__).resolve().parents[2] / "worstforget" / "cli"
FAST = ["--dataset", "synthetic", "--epochs", "3", "--mia-resamples", "1"]


def _params(name: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[name].params}


def test_shared_options_are_declared_once():
    text = {p.name: p.read_text() for p in CLI.glob("*.py")}
    # run forwards its own results folder to its steps (run_cmd.py); every other --out comes from options.py
    assert {n for n, t in text.items() if '"--out"' in t} == {"options.py", "run_cmd.py"}
    for flag in ('"--forget-ratio"', '"--attacks"', '"--num-seeds"', '"--forget-seed"'):
        assert [n for n, t in text.items() if flag in t] == ["options.py"], flag


@pytest.mark.parametrize("command", ["search", "unlearn", "compare", "tune", "evaluate"])
def test_forget_ratio_is_an_open_interval_everywhere(command):
    ratio = _params(command)["forget_ratio"]
    assert isinstance(ratio.type, click.FloatRange) and ratio.type.min == 0 and ratio.type.max == 1
    assert ratio.type.min_open and ratio.type.max_open and ratio.help
    for bad in ("0", "1", "-0.5"):
        result = CliRunner().invoke(cli, [command, "--method", "ft", "--forget-ratio", bad, "--grid", "lr=0.1"]
                                    if command == "tune" else [command, "--forget-ratio", bad])
        assert result.exit_code == 2 and "--forget-ratio" in result.output and len(result.output.splitlines()) == 1


def test_attacks_are_parsed_by_the_registry():
    for command in ("search", "evaluate"):
        assert isinstance(_params(command)["attacks"].type, AttackList)
    result = CliRunner().invoke(cli, ["evaluate", *FAST, "--attacks", "lira,lirra"])
    assert result.exit_code == 2 and "unknown attack 'lirra'" in result.output and "Did you mean: lira" in result.output
    assert "rmia" in CliRunner().invoke(cli, ["search", "--help"]).output  # help lists every registered attack


def test_old_seed_spellings_are_hidden_aliases(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["compare", "--help"]).output
    assert "--num-seeds" in help_text and "--forget-seed" in help_text
    assert not re.search(r"--seeds\b", help_text) and "--set-seed" not in help_text
    assert "--search-seed" in runner.invoke(cli, ["search", "--help"]).output
    summaries = []
    for flags in (["--num-seeds", "2", "--forget-seed", "3"], ["--seeds", "2", "--set-seed", "3"]):
        out = tmp_path / str(len(summaries))
        result = runner.invoke(cli, ["compare", "--methods", "ft", "--num-sets", "1", *FAST, *flags, "--out", str(out),
                                     "--cache-dir", str(tmp_path / "c")])
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        summaries.append((summary["unlearn_seeds"], summary["config"] if "config" in summary else None,
                          summary["sets"]["random"]["methods"]["finetune"]["UA"]))
    assert summaries[0] == summaries[1] and summaries[0][0] == [0, 1]


def test_core_errors_name_parameters_and_the_cli_words_them_as_flags(monkeypatch):
    import torch

    from worstforget.core.errors import OptionError
    from worstforget.core.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match=r"^device cuda was asked for .* use device cpu or auto$"):
        resolve_device("cuda")
    result = CliRunner().invoke(cli, ["train", *FAST, "--device", "cuda"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: --device cuda was asked for but no CUDA device is visible; use --device "
                                     "cpu or auto")


def test_no_core_module_names_a_cli_flag():
    core = Path(__file__).resolve().parents[2] / "worstforget" / "core"
    # io.py's `what="--out"` defaults are its callers' words; other tools' flags (git, `ray start --head`) are
    # theirs; everything else speaks in parameter names
    flagged = [f"{p.name}:{i}" for p in core.rglob("*.py") if p.name != "io.py"
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"""["'][^"']*--[a-z][a-z-]+""", line) and "git" not in line and "ray start" not in line]
    assert not flagged
