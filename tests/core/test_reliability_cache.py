"""Soak round two, the cache folder and the run log: a cache that cannot be written is refused in one line
before any training, --cache-dir also holds the run log, a run log that cannot be written never turns into
a traceback, and an unexpected error shows one `Error:` line while its traceback goes to the run log only."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_clean_error

from worstforget.cli import cli
from worstforget.core import runlog

FAST = ["--dataset", "synthetic", "--epochs", "2"]
REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def _unwritable(monkeypatch, folder: Path) -> None:
    """Make `folder` refuse new entries for this process, as a read-only mount or `chattr +i` does (chmod
    alone does not stop root)."""
    import tempfile

    real_mkstemp, real_open = tempfile.mkstemp, os.open
    folder = folder.resolve()

    def inside(path) -> bool:
        return folder == Path(path).resolve() or folder in Path(path).resolve().parents

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            raise PermissionError(1, "Operation not permitted")
        return real_mkstemp(*args, dir=dir, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise PermissionError(1, "Operation not permitted")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "open", os_open)


# --- defect 15: cache settings checked late ---------------------------------------------------------------

def test_a_cache_folder_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WORSTFORGET_CACHE", str(blocker))
    result = invoke("unlearn", "--method", "finetune", *FAST, "--out", tmp_path / "o")
    assert_clean_error(result, 1)
    assert f"WORSTFORGET_CACHE {blocker} is a file, not a folder" in result.output
    assert "--no-cache" in result.output and not (tmp_path / "o").exists()


def test_a_cache_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch, isolated_cache):
    isolated_cache.mkdir(parents=True)
    _unwritable(monkeypatch, isolated_cache)
    result = invoke("unlearn", "--method", "finetune", *FAST, "--out", tmp_path / "o")
    assert_clean_error(result, 1)
    assert f"WORSTFORGET_CACHE {isolated_cache} cannot be written" in result.output
    assert not list(isolated_cache.rglob("*.pt")) and not (tmp_path / "o").exists()


def test_an_unwritable_entry_folder_of_the_cache_is_refused(tmp_path, monkeypatch, isolated_cache):
    (isolated_cache / "records" / "unit").mkdir(parents=True)
    _unwritable(monkeypatch, isolated_cache / "records" / "unit")
    result = invoke("unlearn", "--method", "finetune", *FAST, "--cache-dir", isolated_cache)
    assert_clean_error(result, 1)
    assert f"--cache-dir {isolated_cache} cannot be written" in result.output
    assert str(isolated_cache / "records" / "unit") in result.output


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/chattr").exists(), reason="needs chattr (root)")
def test_an_immutable_cache_holding_the_model_gives_one_line_not_tracebacks(tmp_path, isolated_cache):
    """The soak's case: the model is cached, then the folder becomes read-only; `unlearn` printed three raw
    tracebacks (the run log could not be opened, then the error handler failed too)."""
    assert invoke("train", *FAST).exit_code == 0
    folders = [isolated_cache, *[p for p in isolated_cache.iterdir() if p.is_dir()]]
    if subprocess.run(["chattr", "+i", *map(str, folders)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "worstforget", "--quiet", "unlearn", "--method", "finetune",
                               *FAST, "--json"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["chattr", "-i", *map(str, folders)])
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: WORSTFORGET_CACHE {isolated_cache} cannot be written")


def test_cache_dir_also_holds_the_run_log(tmp_path, isolated_cache):
    chosen = tmp_path / "chosen"
    result = invoke("unlearn", "--method", "finetune", *FAST, "--cache-dir", chosen, "--json")
    assert result.exit_code == 0, result.output
    assert list((chosen / "logs").glob("*-unlearn-*.log"))
    assert not (isolated_cache / "logs").exists() or not list((isolated_cache / "logs").glob("*-unlearn-*.log"))


def test_moving_the_run_log_keeps_what_was_logged(tmp_path):
    path = runlog.start_run_log("move", tmp_path / "a" / "logs")
    try:
        runlog.LOGGER.info("before the move")
        runlog.move_run_log(tmp_path / "b")
        runlog.LOGGER.info("after the move")
        moved = runlog.run_log_path()
    finally:
        runlog.stop_run_log()
    assert moved == tmp_path / "b" / "logs" / path.name and not path.exists()
    text = moved.read_text()
    assert "before the move" in text and "after the move" in text


# --- defect 3: a run log that cannot be written -----------------------------------------------------------

def test_a_run_log_that_cannot_be_opened_is_dropped_silently(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    runlog.start_run_log("ro", logs)
    try:
        os.chmod(logs, 0o500)
        (logs / Path(runlog._handler.baseFilename).name).mkdir()  # a folder in its place: open fails as root too
        runlog.LOGGER.info("a unit was computed")
        runlog.LOGGER.exception("unexpected error")
        assert runlog.run_log_path() is None and runlog.where_logged() == ""
    finally:
        runlog.stop_run_log()
        os.chmod(logs, 0o700)
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err and "Traceback" not in captured.err


# --- defect 5: unexpected errors print their traceback to the terminal ---------------------------------------

def test_an_unexpected_error_shows_one_line_and_logs_its_traceback(tmp_path, isolated_cache):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    script = ("import sys; from worstforget.audit import units\n"
              "def broken(*a, **k): raise ZeroDivisionError('a bug deep inside')\n"
              "units.evaluate = broken\n"  # every unit, stacked or not, is evaluated
              "from worstforget.cli import main; sys.argv = ['worstforget'] + sys.argv[1:]; main()\n")
    # no --quiet: warnings are echoed, and the ERROR record with its traceback must not be
    proc = subprocess.run([sys.executable, "-c", script, "unlearn", "--method", "finetune", *FAST, "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("progress:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: unexpected ZeroDivisionError: a bug deep inside (full traceback in ")
    log = Path(lines[0].split("(full traceback in ")[1].split(")")[0])
    assert "Traceback" in log.read_text() and "a bug deep inside" in log.read_text()


def test_warnings_are_still_echoed_in_one_line(capsys, tmp_path):
    runlog.start_run_log("echo", tmp_path / "logs", echo_warnings=True)
    try:
        runlog.LOGGER.warning("cache entry X fails its checksum (damaged); recomputing it\nsecond line")
        try:
            raise ValueError("boom")
        except ValueError:
            runlog.LOGGER.exception("unexpected error")
    finally:
        runlog.stop_run_log()
    err = capsys.readouterr().err
    assert err == "warning: cache entry X fails its checksum (damaged); recomputing it\n"
