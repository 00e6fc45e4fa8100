"""Progress that reaches logs and CI: with stderr not a terminal, a lasting task prints plain lines — at every
tenth of its total or every `interval` seconds — with the elapsed time and an estimate of what remains, and
a last line; short tasks print nothing."""
from __future__ import annotations

from click.testing import CliRunner

from worstforget.cli import cli
from worstforget.core.progress import LineProgress, format_seconds


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lasting_task_prints_a_line_per_tenth_with_elapsed_and_remaining_time():
    lines, clock = [], Clock()
    task = LineProgress(lines.append, interval=1000, min_seconds=2, clock=clock).task("units", 20)
    for _ in range(20):
        clock.now += 3  # 3 s per unit: 60 s in all
        task.advance(1, failed=0)
    task.close()
    assert lines[0] == "units: 1/20 (5%), 3s elapsed, about 57s left, failed=0"
    assert lines[1] == "units: 2/20 (10%), 6s elapsed, about 54s left, failed=0"
    assert lines[-2] == "units: 18/20 (90%), 54s elapsed, about 6s left, failed=0"
    assert lines[-1] == "units: done, 20/20 in 1m00s"
    assert len(lines) == 11  # the first line, one per further tenth up to 90%, and the end


def test_a_slow_task_prints_at_least_every_interval():
    lines, clock = [], Clock()
    task = LineProgress(lines.append, interval=30, min_seconds=0, clock=clock).task("search", 1000)
    for _ in range(10):
        clock.now += 20
        task.advance(1)
    # 200 s, 1% done: lines at 20 s (first), then whenever 30 s passed since the last one
    assert [line.split(",")[1].strip() for line in lines] == ["20s elapsed", "1m00s elapsed", "1m40s elapsed",
                                                              "2m20s elapsed", "3m00s elapsed"]
    assert lines[-1].endswith("about 5h30m left")  # 20 s per unit, 991 to go: 19,820 s


def test_short_tasks_print_nothing():
    lines, clock = [], Clock()
    progress = LineProgress(lines.append, min_seconds=2, clock=clock)
    for _ in range(100):  # one unit's epochs, a cached model: many tasks of well under 2 s
        task = progress.task("unlearn finetune", 5)
        for _ in range(5):
            clock.now += 0.1
            task.advance(1)
        task.close()
    assert lines == []


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 61, 3599, 3600, 7620)] == ["0s", "59s", "1m01s", "59m59s",
                                                                             "1h00m", "2h07m"]


def test_without_a_terminal_the_cli_prints_progress_lines(monkeypatch):
    from worstforget.core import progress as progress_module

    # every task counts as lasting: the synthetic data trains in well under a second
    monkeypatch.setattr(progress_module.LineProgress.__init__, "__kwdefaults__",
                        {"interval": 30.0, "min_seconds": 0.0, "clock": progress_module.time.monotonic})
    result = CliRunner().invoke(cli, ["train", "--dataset", "synthetic", "--epochs", "4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("progress: ")]
    assert any(" elapsed" in line for line in lines), result.output
    assert any(": done, 4/4 in " in line for line in lines), result.output


def test_quiet_prints_no_progress_lines(monkeypatch):
    from worstforget.core import progress as progress_module

    monkeypatch.setattr(progress_module.LineProgress.__init__, "__kwdefaults__",
                        {"interval": 30.0, "min_seconds": 0.0, "clock": progress_module.time.monotonic})
    result = CliRunner().invoke(cli, ["--quiet", "train", "--dataset", "synthetic", "--epochs", "4"])
    assert result.exit_code == 0 and "progress:" not in result.output
