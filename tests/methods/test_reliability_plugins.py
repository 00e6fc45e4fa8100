"""Soak round two, plug-ins: a submission that changes torch's process-wide settings, leaves a thread
running, or returns a model on the meta device is contained and named — never blamed on worstforget, never
a hung process."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_clean_error

from worstforget.cli import cli

FAST = ["--dataset", "synthetic", "--epochs", "2"]
REPO = Path(__file__).resolve().parents[2]

PLUGINS = textwrap.dedent('''
    import threading
    import time

    import torch


    def float64_default(net, retain, forget, val):
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(3)
        return net


    def lingering_thread(net, retain, forget, val):
        threading.Thread(target=time.sleep, args=(3600,), name="submission-worker").start()
        return net


    def meta_model(net, retain, forget, val):
        return net.to("meta")
''')


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module of misbehaving plug-ins, importable as `soak_plugins` from the working folder."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "soak_plugins.py").write_text(PLUGINS)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("soak_plugins", None)


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def test_a_plugin_changing_torch_globals_leaks_nothing_into_later_units(plugin_module, isolated_registry):
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    # two seeds: the second unit's Retrain trains after the plug-in ran; a leaked float64 default breaks it
    result = invoke("--plugin", "soak_plugins:float64_default", "unlearn", "--method", "float64_default", *FAST,
                    "--seeds", "2", "--json")
    assert result.exit_code == 0, result.output
    assert torch.get_default_dtype() == dtype and torch.get_num_threads() == threads


def test_torch_globals_are_restored_even_when_the_plugin_raises():
    from worstforget.methods.plugin import restored_torch_globals

    dtype = torch.get_default_dtype()
    with pytest.raises(RuntimeError), restored_torch_globals():
        torch.set_default_dtype(torch.float64)
        raise RuntimeError("boom")
    assert torch.get_default_dtype() == dtype


def test_a_plugin_leaving_a_non_daemon_thread_does_not_hang_the_cli(plugin_module, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{plugin_module}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "worstforget", "--quiet", "--plugin", "soak_plugins:lingering_thread",
                           "unlearn", "--method", "lingering_thread", *FAST, "--out", str(out)],
                          cwd=plugin_module, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert (out / "summary.json").is_file()
    assert "1 thread(s) a plug-in left running" in proc.stderr


def test_a_plugin_returning_a_meta_model_is_named_in_one_line(plugin_module, isolated_registry, isolated_cache):
    result = invoke("--plugin", "soak_plugins:meta_model", "unlearn", "--method", "meta_model", *FAST, "--json")
    assert_clean_error(result, 1)
    assert "plugin meta_model (soak_plugins:meta_model)" in result.output
    assert "meta device" in result.output
    assert "unexpected" not in result.output
