"""The audit's verdict: which forget set is hardest for the method by which measure, by how much over random
sets — judged with both sides' spread (an interval of the difference) and never on a flagged metric: a set kind whose
MIA column is flagged is left out of that measure (and named); a flagged random baseline leaves no verdict.

A measure is "higher = harder for the method": its Avg. Gap to Retrain (with either MIA column), or the
exposure a per-example attack finds (U-LiRA, RMIA) when attacks ran. If a baseline set beats the searched
worst-case set, the verdict says so: an auditor must never be handed a "worst case" a heuristic beats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.stats import difference_interval, fmt_agg
from ..forget_sets.kinds import KIND_NAMES
from ..scoring.attacks import attack_measures


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    source: str  # "sets" (summary.json) or "evaluation" (evaluation.json)
    flagged_by: str | None = None  # the MIA column whose flags disqualify this measure
    digits: int = 2


MEASURES = (
    Measure("acc_gap", "Accuracy gap to Retrain (UA, RA, TA)", "sets"),
    Measure("avg_gap", "Avg. Gap (MIA-Efficacy)", "sets", "MIA"),
    Measure("avg_gap_logit", "Avg. Gap (MIA_logit)", "sets", "MIA_logit"),
    # and what the attacks declare at registration (scoring/attacks.py), judged on evaluation.json
    *(Measure(m.key, m.label, "evaluation", digits=m.digits) for m in attack_measures()),
)


def verdict(summary: dict, evaluation: dict | None = None) -> list[dict]:
    """One entry per measure available: the hardest set kind, its difference to random with an interval,
    and the baseline kinds that beat the searched set (by an interval excluding zero)."""
    method = summary["method"]
    entries = []
    for m in MEASURES:
        source = summary if m.source == "sets" else evaluation
        if source is None:
            continue
        values = {kind: block["methods"][method][m.key] for kind, block in source["sets"].items()
                  if method in block["methods"] and m.key in block["methods"][method]
                  and block["methods"][method][m.key].get("mean") is not None}
        if "random" not in values or len(values) < 2:
            continue
        entry = {"measure": m.key, "label": m.label, "values": values}
        if m.flagged_by:  # a flagged set kind is left out of this measure; the others are still judged
            flags = {kind: summary["sets"][kind].get("flags", {}).get(m.flagged_by, []) for kind in values}
            left_out = {k: list(f) for k, f in flags.items() if f}
            if left_out:
                entry["left_out"] = left_out
                entry["flagged_by"] = m.flagged_by
                values = {k: v for k, v in values.items() if k not in left_out}
                entry["values"] = values
            if "random" in left_out or len(values) < 2:
                entry["skipped"] = "; ".join(f"{m.flagged_by} {'/'.join(f)} on the {KIND_NAMES.get(k, k)} sets"
                                             for k, f in left_out.items())
                entries.append(entry)
                continue
        candidates = {k: v for k, v in values.items() if k != "random"}
        hardest = max(candidates, key=lambda k: candidates[k]["mean"])
        entry.update(hardest=hardest, over_random=difference_interval(values[hardest], values["random"]))
        if "worst_case" in candidates:
            beaten = {}
            for kind, agg in candidates.items():
                diff = difference_interval(agg, candidates["worst_case"])
                # beaten: by an interval above zero, or — single runs, no interval — by its mean
                if kind != "worst_case" and diff is not None and (diff[1] > 0 or (math.isnan(diff[1]) and diff[0] > 0)):
                    beaten[kind] = diff
            entry["beats_search"] = beaten
        entries.append(entry)
    return entries


def _finite(triple) -> tuple[float, float, float]:
    """(difference, low, high) with a missing bound (None once read back from JSON) as NaN."""
    return tuple(math.nan if v is None else float(v) for v in triple)  # type: ignore[return-value]


def _interval(diff: float, lo: float, hi: float, digits: int) -> str:
    if math.isnan(lo):
        return f"{diff:+.{digits}f}, no interval"
    return f"{diff:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def verdict_lines(entries: list[dict], digits: dict[str, int] | None = None) -> list[str]:
    """Plain sentences, one per measure."""
    places = {m.key: m.digits for m in MEASURES} | (digits or {})
    lines = []
    for e in entries:
        d = places.get(e["measure"], 2)
        if "skipped" in e:
            why = ("the random baseline is flagged, so nothing can be compared with it"
                   if "random" in (e.get("left_out") or {}) else "too few unflagged set kinds")
            lines.append(f"{e['label']}: no verdict — {why} ({e['skipped']}).")
            continue
        best, rand = e["values"][e["hardest"]], e["values"]["random"]
        name = f"the {KIND_NAMES.get(e['hardest'], e['hardest'])} set"
        d0, lo, hi = _finite(e["over_random"] or (best["mean"] - rand["mean"], None, None))
        if math.isnan(lo):
            head = f"the highest is {name}, with no interval (single runs: use more seeds or sets)"
        elif lo > 0:
            head = f"hardest is {name}"
        elif hi < 0:
            head = f"every set is easier than random sets; the highest is {name}"
        else:
            head = f"no set is clearly harder than random sets; the highest is {name}"
        text = (f"{e['label']}: {head} ({fmt_agg(best, d, interval=False)} vs random "
                f"{fmt_agg(rand, d, interval=False)}; difference {_interval(d0, lo, hi, d)}).")
        beaten = e.get("beats_search") or {}
        if beaten:
            names = ", ".join(f"the {KIND_NAMES.get(k, k)} set by {_interval(*_finite(v), d)}"
                              for k, v in beaten.items())
            text += f" WARNING: the searched set is not the worst case by this measure — {names}."
        left = e.get("left_out") or {}
        if left:
            text += " Left out: " + "; ".join(f"the {KIND_NAMES.get(k, k)} sets ({e.get('flagged_by', 'MIA')} "
                                              f"{'/'.join(f)})" for k, f in left.items()) + "."
        lines.append(text)
    return lines
