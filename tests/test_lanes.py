"""The fast lane's list of slow tests (conftest.SLOW) names tests that exist, so none turns fast by a rename."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import SLOW

ROOT = Path(__file__).parent


def test_every_slow_test_named_in_conftest_exists():
    for module, names in SLOW.items():
        path = ROOT / module
        assert path.is_file(), module
        if names == "*":
            continue
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert set(names) <= defined, (module, set(names) - defined)
