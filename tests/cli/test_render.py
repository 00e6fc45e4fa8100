"""What the terminal prints beside the tables: one flag line per MIA column, naming every flagged set kind."""
from __future__ import annotations

from worstforget.cli.render import flag_lines

TAIL = " (its Avg. Gap is not trustworthy there; read the other MIA column and the attacks)"


def test_flag_lines_group_the_set_kinds_of_each_column_and_flag():
    summary = {"sets": {
        "worst_case": {"flags": {"MIA_logit": ["unstable"]}},
        "lowest_loss": {"flags": {"MIA": ["saturated", "unstable"], "MIA_logit": ["unstable"]}},
        "memorization": {"flags": {"MIA": ["unstable"], "MIA_logit": []}},
        "exposure": {"flags": {}},
        "random": {"flags": {"MIA": ["unstable"], "MIA_logit": ["unstable"]}},
    }}
    assert flag_lines(summary) == [
        "flag: MIA_logit is unstable on the worst-case, lowest-loss and random sets" + TAIL,
        "flag: MIA is saturated and unstable on the lowest-loss sets; unstable on the memorization and random sets"
        + TAIL,
    ]


def test_no_flags_print_nothing():
    assert flag_lines({"sets": {"random": {"flags": {"MIA": []}}, "exposure": {}}}) == []
