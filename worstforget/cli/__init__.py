"""Command-line interface: a thin click layer over the library."""
from . import basic, evaluate_cmd, report_cmd, run_cmd, search_cmd  # noqa: F401  (registers commands on the group)
from .app import cli, main

__all__ = ["cli", "main"]
