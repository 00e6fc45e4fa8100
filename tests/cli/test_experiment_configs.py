"""Every committed experiment config parses: each step is a valid worstforget command line."""
from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from worstforget.cli import cli

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_steps_parse(path, monkeypatch):
    monkeypatch.chdir(path.parent.parent.parent)  # configs name committed results relative to the repo root
    spec = json.loads(path.read_text())
    assert spec["name"] == path.stem and spec["steps"] and spec["description"]
    # a step may read what an earlier one wrote (`evaluate --result`): the committed results folder has it
    out = spec.get("out", f"results/{spec['name']}")
    out = out if Path(out).is_dir() else "/tmp/out"
    for step in spec["steps"]:
        args = [str(a).replace("{out}", out) for a in step]
        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, args[0]
        command.make_context(args[0], args[1:])  # raises on unknown options or bad values


def test_there_are_configs():
    assert len(CONFIGS) >= 6
