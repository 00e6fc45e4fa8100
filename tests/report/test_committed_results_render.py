"""Every result folder committed under results/ still reads and renders: the tables script over all of them,
and the report of a class-wise search (whose final weights hold one entry per class, not per sample)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from worstforget.audit.result import SearchAudit
from worstforget.report import load_result, render_markdown

REPO = Path(__file__).resolve().parents[2]


def test_the_tables_script_reads_every_committed_result(monkeypatch, capsys):
    # run as `python experiments/tables.py all` from the repository root, in this process (it needs no fresh
    # interpreter: it only reads the committed folders and prints); any exception or exit fails the test
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(REPO / "experiments" / "tables.py"), "all"])
    runpy.run_path(str(REPO / "experiments" / "tables.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "worst_case_matrix" in out and "| finetune | 0 |" in out


def test_a_class_wise_search_result_reads_and_renders():
    folder = REPO / "results" / "digits_classwise" / "classwise"
    audit = SearchAudit.read(folder)
    assert audit.summary()["granularity"] == "class"
    assert len(audit.search["final_weights"]) == 10  # one weight per class
    text = render_markdown([load_result(folder)])
    assert "class" in text and "Search" in text


def test_the_matrix_criterion_compares_the_searched_set_with_the_best_baseline_and_three_times_random():
    tables = runpy.run_path(str(REPO / "experiments" / "tables.py"))

    def sets(**means):
        return {k: {"methods": {"ft": {"lira_tpr_at_0.1pct_fpr": {"mean": v}}}} for k, v in means.items()}

    judge = tables["_criterion"]
    c = judge(sets(worst_case=0.5, random=0.1, memorization=0.49, exposure=0.2), "ft")
    assert (c["verdict"], c["best"], c["baseline"]["mean"]) == ("pass", "memorization", 0.49)
    assert judge(sets(worst_case=0.48, random=0.1, memorization=0.49), "ft")["verdict"] == "FAIL"
    # a kept baseline set scores exactly what it scores as a baseline: that passes
    assert judge(sets(worst_case=0.49, random=0.1, memorization=0.49), "ft")["verdict"] == "pass"
    assert judge(sets(worst_case=0.375, random=0.125, memorization=0.25), "ft")["verdict"] == "pass"  # 3× exactly
    assert judge(sets(worst_case=0.37, random=0.125, memorization=0.25), "ft")["verdict"].startswith("n/a")
    # no set reaches 3× random: the criterion does not apply, whatever the order
    assert judge(sets(worst_case=0.2, random=0.1, lowest_loss=0.25), "ft")["verdict"].startswith("n/a")
