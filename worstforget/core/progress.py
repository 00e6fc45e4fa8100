"""Progress reporting without printing: library code calls a sink, the CLI renders it with rich."""
from __future__ import annotations

from typing import Protocol


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
