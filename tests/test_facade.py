"""The package façade: every exported name resolves, and the README's library example and the package
docstring's example run as written."""
from __future__ import annotations

import doctest
import re
from pathlib import Path

import worstforget

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exported_name_resolves():
    missing = [n for n in worstforget.__all__ if getattr(worstforget, n, None) is None]
    assert not missing


def test_the_readme_names_every_call_of_the_facade():
    text = README.read_text()
    for name in ("prepare_setting", "audit_worst_case", "evaluate_sets", "unlearn_on_set", "compare_methods",
                 "tune", "load_result", "SearchConfig", "AuditOptions"):
        assert name in worstforget.__all__ and (f"{name}(" in text or f"`{name}`" in text), name


def _library_example() -> str:
    section = README.read_text().split("### Library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_library_example(), "README.md#library", "exec"), scope)
    audit, runs = scope["audit"], scope["runs"]
    assert len(audit.summary()["sets"]["worst_case"]) and audit.summary()["forget_size"] == 30
    assert set(runs.summary()["sets"]) == {"random"}
    assert "hardest set:" in capsys.readouterr().out and "worst-case" in scope["report"]


def test_the_package_docstring_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failures, tried = doctest.testmod(worstforget, verbose=False, report=True)
    assert tried >= 3 and failures == 0
