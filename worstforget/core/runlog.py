"""The run log: one file per command invocation under `<cache>/logs/`, holding what the terminal does not
show — full tracebacks of failures (a plug-in's, an unexpected one) and one line per unit of work.

Library code logs through `logging.getLogger("worstforget")`; the CLI attaches the file at start-up.
Without the CLI nothing is written unless the caller calls `start_run_log`.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .runtime import cache_root

LOGGER = logging.getLogger("worstforget")
_handler: logging.FileHandler | None = None
_echo: logging.Handler | None = None


def start_run_log(command: str, root: str | Path | None = None, *, echo_warnings: bool = False) -> Path | None:
    """Open `<root or cache>/logs/<UTC time>-<command>-<pid>.log` as the run log; None if it cannot be made
    (an unwritable cache never stops a run: the log is a convenience). With `echo_warnings`, warnings (a
    damaged cache entry being recomputed...) are also printed on stderr."""
    global _handler, _echo
    stop_run_log()
    if echo_warnings:
        _echo = logging.StreamHandler()
        _echo.setLevel(logging.WARNING)
        _echo.setFormatter(logging.Formatter("warning: %(message)s"))
        LOGGER.addHandler(_echo)
        LOGGER.setLevel(logging.INFO)
    folder = Path(root) if root else cache_root() / "logs"
    path = folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{command}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _handler = logging.FileHandler(path, delay=True, encoding="utf-8")
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


def run_log_path() -> Path | None:
    """The current run log's path (None when no log is open)."""
    return Path(_handler.baseFilename) if _handler is not None else None


def where_logged() -> str:
    """' (full traceback in PATH)' for error messages, or '' when there is no log."""
    path = run_log_path()
    return f" (full traceback in {path})" if path is not None else ""
