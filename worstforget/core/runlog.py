"""The run log: one file per command invocation under `<cache>/logs/`, holding what the terminal does not
show — full tracebacks of failures (a plug-in's, an unexpected one) and one line per unit of work.

Library code logs through `logging.getLogger("worstforget")`; the CLI attaches the file at start-up.
Without the CLI nothing is written unless the caller calls `start_run_log`.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from .runtime import cache_root

LOGGER = logging.getLogger("worstforget")


class _RunLogHandler(logging.FileHandler):
    """The run log file, opened at its first record (commands that log nothing leave no file). A log that
    cannot be opened or written (a read-only or full cache folder) is dropped silently: the log is a
    convenience and must never turn a run, or the report of its error, into a traceback."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:
            if self.stream is None:
                self.stream = self._open()
            logging.StreamHandler.emit(self, record)
        except Exception:  # OSError opening or writing; anything logging itself raises
            self.failed = True

    def handleError(self, record: logging.LogRecord) -> None:  # never print "--- Logging error ---"
        self.failed = True

    @property
    def written(self) -> bool:
        return not self.failed and self.stream is not None


class _EchoHandler(logging.StreamHandler):
    """Warnings on stderr, one line each. Errors are not echoed: the CLI prints them as its one `Error:` line
    and their traceback belongs to the run log only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and super().filter(record)

    def format(self, record: logging.LogRecord) -> str:
        return "warning: " + record.getMessage().splitlines()[0] if record.getMessage() else "warning"


_handler: _RunLogHandler | None = None
_echo: logging.Handler | None = None


def start_run_log(command: str, root: str | Path | None = None, *, echo_warnings: bool = False) -> Path | None:
    """Open `<root or cache>/logs/<UTC time>-<command>-<pid>.log` as the run log; None if it cannot be made
    (an unwritable cache never stops a run: the log is a convenience). With `echo_warnings`, warnings (a
    damaged cache entry being recomputed...) are also printed on stderr."""
    global _handler, _echo
    stop_run_log()
    if echo_warnings:
        _echo = _EchoHandler()
        _echo.setLevel(logging.WARNING)
        LOGGER.addHandler(_echo)
        LOGGER.setLevel(logging.INFO)
    folder = Path(root) if root else cache_root() / "logs"
    path = folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{command}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _handler = _RunLogHandler(path, delay=True, encoding="utf-8")
    except OSError:
        return None
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    return path


def stop_run_log() -> None:
    global _handler, _echo
    if _echo is not None:
        LOGGER.removeHandler(_echo)
        _echo = None
    if _handler is not None:
        LOGGER.removeHandler(_handler)
        _handler.close()
        _handler = None


def move_run_log(root: str | Path) -> None:
    """Keep the run log under `<root>/logs/` from now on (the cache folder a command names, known only once its options
    are read): what was logged so far moves with it. Left where it is when the new folder cannot be made."""
    global _handler
    if _handler is None:
        return
    old = Path(_handler.baseFilename)
    folder = Path(root).expanduser().absolute() / "logs"
    if folder == old.parent:
        return
    new = folder / old.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if _handler.stream is not None:
            _handler.acquire()
            try:
                _handler.stream.close()
                _handler.stream = None
                shutil.move(old, new)
            finally:
                _handler.release()
        _handler.baseFilename = str(new)
    except OSError:
        return


def run_log_path() -> Path | None:
    """The current run log's path (None when no log is open or it could not be written)."""
    return Path(_handler.baseFilename) if _handler is not None and not _handler.failed else None


def where_logged() -> str:
    """' (full traceback in PATH)' for error messages, or '' when there is no log."""
    path = run_log_path()
    return f" (full traceback in {path})" if path is not None else ""
