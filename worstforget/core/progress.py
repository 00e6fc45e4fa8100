"""Progress reporting without printing: library code calls a sink, the CLI renders it with rich on a
terminal, or as plain lines (`LineProgress`) where stderr goes to a log or CI."""
from __future__ import annotations

import time
from typing import Callable, Protocol


class Task(Protocol):
    def advance(self, n: int = 1, **info: object) -> None: ...
    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> Task: ...


class _NullTask:
    def advance(self, n: int = 1, **info: object) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Discards progress; the default for library calls."""

    def task(self, description: str, total: int | None) -> Task:
        return _NullTask()


class LineProgress:
    """Progress as plain lines, for logs and CI (stderr not a terminal, where a live bar prints nothing until
    it ends): a task that lasts is announced, then gets a line at every tenth of its total (or every
    `interval` seconds, whichever comes first) with the elapsed time and an estimate of what remains, and a
    last line when it ends. Tasks shorter than `min_seconds` (one unit's epochs, a cached model) print
    nothing, so thousands of small tasks do not flood the log.

    `write` takes one line (no newline); `clock` is injectable for tests.
    """

    def __init__(self, write: Callable[[str], None], *, interval: float = 30.0, min_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.interval, self.min_seconds, self.clock = write, interval, min_seconds, clock

    def task(self, description: str, total: int | None) -> Task:
        return _LineTask(self, description, total)


class _LineTask:
    def __init__(self, owner: LineProgress, description: str, total: int | None):
        self.owner, self.description, self.total = owner, description, total
        self.done = 0
        self.info: dict[str, object] = {}
        self.started = self.last = owner.clock()
        self.shown = False  # printed any line yet
        self.tenth = 0  # last tenth of the total a line was printed at

    def advance(self, n: int = 1, **info: object) -> None:
        self.done += n
        self.info.update({k: v for k, v in info.items() if v is not None})
        now = self.owner.clock()
        if now - self.started < self.owner.min_seconds or (self.total and self.done >= self.total):
            return  # too early to be worth a line, or complete: `close` says so
        tenth = int(10 * self.done / self.total) if self.total else 0
        if tenth > self.tenth or now - self.last >= self.owner.interval or not self.shown:
            self.tenth = max(self.tenth, tenth)
            self._line(now)

    def close(self) -> None:
        now = self.owner.clock()
        if self.shown or now - self.started >= self.owner.min_seconds:
            total = f"{self.done}/{self.total}" if self.total else str(self.done)
            self.owner.write(f"{self.description}: done, {total} in {format_seconds(now - self.started)}")

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        if self.total:
            eta = elapsed / self.done * (self.total - self.done) if self.done else None
            where = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
            remains = f", about {format_seconds(eta)} left" if eta is not None and self.done < self.total else ""
        else:
            where, remains = str(self.done), ""
        info = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in self.info.items())
        self.owner.write(f"{self.description}: {where}, {format_seconds(elapsed)} elapsed{remains}{info}")
        self.shown, self.last = True, now


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
