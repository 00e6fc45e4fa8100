"""The aggregate shape, its formatter, the interval of a difference, the MIA flags and the audit's verdict,
against hand-computed values."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from worstforget.audit.verdict import verdict, verdict_lines
from worstforget.core.stats import aggregate, difference_interval, fmt_agg
from worstforget.scoring.metrics import mia_flags


def agg(mean, std=None, n=1, **extra):
    return {"mean": mean, "std": std, "n": n, **extra}


def test_aggregate_is_mean_sample_std_and_count_of_finite_values():
    a = aggregate([1.0, 2.0, 6.0, float("nan")])
    assert a == {"mean": 3.0, "std": pytest.approx(math.sqrt(7.0)), "n": 3}
    assert aggregate([5.0]) == {"mean": 5.0, "std": None, "n": 1}
    assert aggregate([]) == {"mean": None, "std": None, "n": 0}
    assert aggregate([0.5], low=0.4, high=0.7) == {"mean": 0.5, "std": None, "n": 1, "low": 0.4, "high": 0.7}


def test_formatter_shows_spread_only_when_there_is_one():
    assert fmt_agg(agg(2.9234, 0.7071, 4)) == "2.92 ± 0.71"
    assert fmt_agg(agg(2.9234, 0.7071, 4), 1, sep="±") == "2.9±0.7"
    assert fmt_agg(agg(2.9234)) == "2.92"
    assert fmt_agg(agg(0.98, low=0.97, high=0.99), 2) == "0.98 [0.97, 0.99]"
    assert fmt_agg(None) == fmt_agg(agg(None)) == fmt_agg(float("nan")) == "–"


def test_difference_interval_counts_both_sides_spread():
    a, b = agg(5.0, 2.0, 4), agg(3.0, 3.0, 9)  # Welch: se² = 4/4 + 9/9 = 2
    d, lo, hi = difference_interval(a, b)
    assert d == 2.0 and lo == pytest.approx(2 - 1.96 * math.sqrt(2)) and hi == pytest.approx(2 + 1.96 * math.sqrt(2))
    single = agg(0.6, low=0.5, high=0.7)  # its own 95% interval: se = 0.2 / 3.92
    d, lo, hi = difference_interval(single, agg(0.1, 0.0, 5))
    assert d == pytest.approx(0.5) and hi - lo == pytest.approx(0.2)
    assert difference_interval(agg(None), b) is None


def test_mia_flags_from_retrains_runs():
    steady = {"MIA": np.array([[4.0, 5.0], [6.0, 5.0]]), "MIA_std": np.zeros((2, 2)),
              "saturated": np.full((2, 2), 10.0),
              "MIA_logit": np.array([[40.0, 42.0]]), "MIA_logit_std": np.full((1, 2), 3.0)}
    assert mia_flags(steady) == {"MIA": [], "MIA_logit": []}
    flipping = {"MIA": np.array([[0.0, 33.3]]), "MIA_std": np.zeros((1, 2)), "saturated": np.full((1, 2), 80.0)}
    assert mia_flags(flipping) == {"MIA": ["saturated", "unstable"]}
    resample = {"MIA": np.array([[5.0, 5.0]]), "MIA_std": np.full((1, 2), 12.0), "saturated": np.zeros((1, 2))}
    assert mia_flags(resample) == {"MIA": ["unstable"]}


def test_a_methods_attacker_flipping_between_its_draws_flags_the_column():
    # Retrain steady at 100 on every draw; the method's three draws read 100, 0 and 0 (mean 33.3, std 57.7):
    # its Avg. Gap of ~67 points is the attacker's flip, not the method
    retrain = {"MIA": np.array([[100.0, 100.0]]), "MIA_std": np.zeros((1, 2)), "saturated": np.zeros((1, 2)),
               "MIA_logit": np.array([[95.0, 95.5]]), "MIA_logit_std": np.full((1, 2), 1.0)}
    flipping = {"MIA": np.full((1, 2), 100 / 3), "MIA_std": np.full((1, 2), float(np.std([100, 0, 0], ddof=1))),
                "MIA_logit": np.array([[97.0, 97.5]]), "MIA_logit_std": np.full((1, 2), 2.0)}
    assert mia_flags(retrain) == {"MIA": [], "MIA_logit": []}
    assert mia_flags(retrain, [flipping]) == {"MIA": ["unstable"], "MIA_logit": []}
    # one draw's spread of 10 is the line; a method without per-draw spreads (older records) adds nothing
    edge = {"MIA": np.full((1, 2), 50.0), "MIA_std": np.full((1, 2), 10.0)}
    assert mia_flags(retrain, [edge, {"MIA": np.full((1, 2), 0.0)}]) == {"MIA": [], "MIA_logit": []}
    assert mia_flags(retrain, [{"MIA_std": np.array([[0.0, 20.5]])}]) == {"MIA": ["unstable"], "MIA_logit": []}
    # a run whose spreads are all NaN (no forget sample to score) neither flags nor hides another run's flip,
    # and no 'mean of empty slice' warning reaches the user
    blank = {**retrain, "MIA_std": np.full((1, 2), np.nan)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mia_flags(blank) == {"MIA": [], "MIA_logit": []}
        assert mia_flags(blank, [flipping]) == {"MIA": ["unstable"], "MIA_logit": []}
        assert mia_flags(retrain, [{"MIA_std": np.array([[np.nan, 57.7]])}]) == {"MIA": ["unstable"], "MIA_logit": []}


def summary(worst, memo, rand, flags=None) -> dict:
    def kind(value, n_sets=1):
        return {"num_sets": n_sets, "flags": flags or {}, "methods": {"ft": {"avg_gap_logit": value}}}

    return {"method": "ft", "sets": {"worst_case": kind(worst), "memorization": kind(memo), "random": kind(rand, 5)}}


def test_verdict_names_the_hardest_set_and_its_interval_over_random():
    s = summary(agg(3.0, 0.2, 2), agg(1.0, 0.1, 2), agg(1.0, 0.5, 10))
    (entry,) = verdict(s)
    assert entry["hardest"] == "worst_case" and entry["beats_search"] == {}
    d, lo, hi = entry["over_random"]
    assert d == pytest.approx(2.0) and lo == pytest.approx(2 - 1.96 * math.sqrt(0.04 / 2 + 0.25 / 10))
    (line,) = verdict_lines([entry])
    assert "hardest is the searched worst-case set" in line and "WARNING" not in line


def test_verdict_warns_when_a_heuristic_beats_the_search():
    s = summary(agg(1.5, 0.1, 2), agg(4.0, 0.1, 2), agg(1.0, 0.5, 10))
    (entry,) = verdict(s)
    assert entry["hardest"] == "memorization" and set(entry["beats_search"]) == {"memorization"}
    assert entry["beats_search"]["memorization"][0] == pytest.approx(2.5)
    (line,) = verdict_lines([entry])
    assert "WARNING: the searched set is not the worst case" in line and "memorization heuristic" in line


def test_verdict_leaves_out_only_the_flagged_set_kinds():
    s = summary(agg(3.0, 0.2, 2), agg(4.0, 0.1, 2), agg(1.0, 0.5, 10))
    s["sets"]["memorization"]["flags"] = {"MIA_logit": ["saturated"]}
    (entry,) = verdict(s)
    # the memorization sets (mean 4.0, which would win) are left out; the search is judged against random
    assert entry["left_out"] == {"memorization": ["saturated"]} and set(entry["values"]) == {"worst_case", "random"}
    assert entry["hardest"] == "worst_case" and entry["beats_search"] == {}
    (line,) = verdict_lines([entry])
    assert "hardest is the searched worst-case set" in line and "Left out: the memorization heuristic sets" in line
    assert "saturated" in line and "WARNING" not in line


def test_a_flagged_searched_set_is_left_out_and_the_rest_still_judged():
    s = summary(agg(3.0, 0.2, 2), agg(2.0, 0.1, 2), agg(1.0, 0.1, 10))
    s["sets"]["worst_case"]["flags"] = {"MIA_logit": ["unstable"]}
    (entry,) = verdict(s)
    assert entry["hardest"] == "memorization" and "beats_search" not in entry
    assert "Left out: the searched worst-case sets (MIA_logit unstable)" in verdict_lines([entry])[0]


def test_a_flagged_random_baseline_gives_no_verdict_and_says_so():
    s = summary(agg(3.0, 0.2, 2), agg(1.0, 0.1, 2), agg(1.0, 0.5, 10))
    s["sets"]["random"]["flags"] = {"MIA_logit": ["unstable"]}
    (entry,) = verdict(s)
    assert "hardest" not in entry and "unstable" in entry["skipped"]
    line = verdict_lines([entry])[0]
    assert line.startswith("Avg. Gap (MIA_logit): no verdict — the random baseline is flagged")
    assert "unstable on the random sets" in line


def test_verdict_uses_attack_scores_with_their_own_intervals():
    s = summary(agg(1.0, 0.1, 2), agg(1.0, 0.1, 2), agg(1.0, 0.1, 10))
    evaluation = {"sets": {k: {"methods": {"ft": {"lira_tpr_at_0.1pct_fpr": v}}} for k, v in
                           (("worst_case", agg(0.49, low=0.30, high=0.68)),
                            ("memorization", agg(0.45, low=0.2, high=0.7)),
                            ("random", agg(0.05, 0.05, 5)))}}
    entries = {e["measure"]: e for e in verdict(s, evaluation)}
    tpr = entries["lira_tpr_at_0.1pct_fpr"]
    assert tpr["hardest"] == "worst_case" and tpr["over_random"][1] > 0 and tpr["beats_search"] == {}


def test_single_runs_give_no_interval_never_a_zero_width_one():
    d, lo, hi = difference_interval(agg(3.0), agg(1.0, 0.5, 4))
    assert d == 2.0 and math.isnan(lo) and math.isnan(hi)


def test_verdict_on_single_runs_says_there_is_no_interval_and_still_warns():
    s = summary(agg(1.5), agg(4.0), agg(1.0))
    (entry,) = verdict(s)
    assert entry["hardest"] == "memorization" and set(entry["beats_search"]) == {"memorization"}
    (line,) = verdict_lines([entry])
    assert "no interval" in line and "[" not in line
    assert "WARNING: the searched set is not the worst case" in line and "by +2.50, no interval" in line
    # as read back from summary.json, where NaN is stored as null
    entry = {**entry, "over_random": [entry["over_random"][0], None, None],
             "beats_search": {k: [v[0], None, None] for k, v in entry["beats_search"].items()}}
    assert verdict_lines([entry]) == [line]


def test_a_set_kinds_flags_read_every_run_on_it():
    from worstforget.audit.result import SetKind

    steady = {"MIA": np.full((1, 2), 100.0), "MIA_std": np.zeros((1, 2)), "saturated": np.zeros((1, 2))}
    flipping = {"MIA": np.full((1, 2), 100 / 3), "MIA_std": np.full((1, 2), 57.7)}
    assert SetKind([np.arange(3)], {"retrain": steady, "ft": dict(steady)}).summary()["flags"] == {"MIA": []}
    assert SetKind([np.arange(3)], {"retrain": steady, "ft": flipping}).summary()["flags"] == {"MIA": ["unstable"]}
