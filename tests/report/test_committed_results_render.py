"""Every result folder committed under results/ still reads and renders: the tables script over all of them,
and the report of a class-wise search (whose final weights hold one entry per class, not per sample)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from worstforget.audit.result import SearchAudit
from worstforget.report import load_result, render_markdown

REPO = Path(__file__).resolve().parents[2]


def test_the_tables_script_reads_every_committed_result():
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "tables.py"), "all"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "worst_case_matrix" in done.stdout and "| finetune | 0 |" in done.stdout


def test_a_class_wise_search_result_reads_and_renders():
    folder = REPO / "results" / "digits_classwise" / "classwise"
    audit = SearchAudit.read(folder)
    assert audit.summary()["granularity"] == "class"
    assert len(audit.search["final_weights"]) == 10  # one weight per class
    text = render_markdown([load_result(folder)])
    assert "class" in text and "Search" in text
