"""The report's tables as plain rows of strings, built by pure functions from a search summary.

Nothing here reads files or draws: `summary` is the dict stored in `summary.json`. A `Table` has a title,
a header and rows; the renderers turn it into Markdown or HTML. Numbers are "mean ± std" over unlearning
seeds (and over random sets for the random baseline); a single run shows its value alone, since a spread
of one run means nothing. Every method's metric sits beside Retrain's on the same sets, because the
audit question is the distance to Retrain, not the raw accuracy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..audit.cost import cost_phrase
from ..core.errors import WorstforgetError
from ..core.stats import fmt_agg
from ..forget_sets.kinds import KIND_LABELS, SET_KINDS

METRIC_COLUMNS = (("UA", "UA"), ("MIA", "MIA"), ("RA", "RA"), ("TA", "TA"), ("RTE", "RTE (s)"))


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    numeric: bool = True  # right-align every column but the first (False: a list of descriptions)


# --- numbers -------------------------------------------------------------------------------------------------

def fmt_stat(mean: float | None, std: float | None = None, n: int = 1, digits: int = 2) -> str:
    """'2.92 ± 0.71' for several runs, '2.92' for one (or an unknown spread), '–' for a missing or NaN mean."""
    if std is not None and not math.isfinite(std):
        std, n = None, 1  # never "± nan"
    return fmt_agg({"mean": mean, "std": std, "n": n}, digits)


def fmt_pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def set_kinds(summary: dict) -> list[str]:
    return list(summary["sets"])


def evaluated_methods(summary: dict) -> list[str]:
    """The searched method first, then any further methods evaluated on the same sets."""
    first = summary["method"]
    others = next(iter(summary["sets"].values()))["methods"]
    return [first, *[m for m in others if m not in ("retrain", first)]]


def _runs(summary: dict, kind: str) -> int:
    """Runs behind one set kind's aggregates: sets × unlearning seeds."""
    return summary["sets"][kind]["num_sets"] * max(1, len(summary.get("unlearn_seeds") or [0]))


def stat(summary: dict, kind: str, who: str, metric: str) -> tuple[float, float, int]:
    """(mean, std, n) of one metric of `who` (a method or 'retrain') on the sets of one kind."""
    agg = summary["sets"].get(kind, {}).get("methods", {}).get(who, {}).get(metric)
    if not agg or agg.get("mean") is None:
        return float("nan"), float("nan"), 0
    std = agg.get("std")
    return float(agg["mean"]), float("nan") if std is None else float(std), int(agg["n"])


def gap_stat(summary: dict, kind: str, method: str) -> tuple[float, float, int]:
    """(mean, std, n) of the Avg. Gap to Retrain of `method` on the sets of one kind."""
    return stat(summary, kind, method, "avg_gap")


# --- tables --------------------------------------------------------------------------------------------------

def comparison_table(summary: dict, method: str) -> Table:
    """Worst-case vs random (vs heuristic) sets for one method, each number beside Retrain's on the same sets."""
    header = ["Forget set", *[label for _, label in METRIC_COLUMNS], "Avg. Gap"]
    rows = []
    for kind in set_kinds(summary):
        row = [KIND_LABELS.get(kind, kind)]
        for metric, _ in METRIC_COLUMNS:
            mine, ref = stat(summary, kind, method, metric), stat(summary, kind, "retrain", metric)
            row.append(f"{fmt_stat(*mine)} (Retrain {fmt_stat(*ref)})")
        row.append(fmt_stat(*gap_stat(summary, kind, method)))
        rows.append(row)
    s = summary
    title = (f"{method}: worst-case vs random forget sets ({s['forget_size']} of {s['num_train']} training "
             f"samples, {s['solver']} solver, {s['objective']} objective)")
    note = ("UA = 100 − forget accuracy, MIA = MIA-Efficacy, RA/TA = retain/test accuracy (%), RTE = run time; "
            "Avg. Gap = mean |Δ| to Retrain over UA, MIA, RA, TA (lower = closer to Retrain). "
            "Each cell pools sets × seeds: "
            + ", ".join(f"{KIND_LABELS.get(k, k)} {_runs(s, k)} runs" for k in set_kinds(s)) + ".")
    return Table(title, header, rows, note)


def avg_gap_table(summary: dict) -> Table:
    """Avg. Gap per method on the worst-case set against random sets, and how much larger it is."""
    header = ["Method", "Worst-case", "Random", "Worst − random", "Worst / random"]
    rows = []
    for method in evaluated_methods(summary):
        worst, rand = gap_stat(summary, "worst_case", method), gap_stat(summary, "random", method)
        diff = worst[0] - rand[0]
        ratio = worst[0] / rand[0] if rand[0] and not math.isnan(rand[0]) else float("nan")
        rows.append([method, fmt_stat(*worst), fmt_stat(*rand), fmt_stat(diff), fmt_stat(ratio) + "×"
                     if not math.isnan(ratio) else "–"])
    return Table("Avg. Gap to Retrain per method", header, rows,
                 "A worst-case set is doing its job when its gap exceeds the random sets' gap.")


def transfer_table(summary: dict) -> Table | None:
    """Methods × {worst-case, heuristic, random} Avg. Gap, when several methods ran on the same sets."""
    methods = evaluated_methods(summary)
    if len(methods) < 2:
        return None
    kinds = set_kinds(summary)
    rows = []
    for method in methods:
        name = f"{method} (searched)" if method == summary["method"] else method
        rows.append([name, *[fmt_stat(*gap_stat(summary, kind, method)) for kind in kinds]])
    return Table(f"Transfer: Avg. Gap of every method on the sets searched for {summary['method']}",
                 ["Method", *[KIND_LABELS[k] for k in kinds]], rows)


def trace_table(summary: dict) -> Table:
    """The search at a glance: time, steps, how far the set moved, overlaps and stability."""
    s = summary
    trace = s["search"]
    objective = trace.get("objective") or []
    initial = trace.get("overlap_with_initial") or []
    randoms = [r[-1] for r in (trace.get("overlap_with_random") or []) if r]
    chance = (s["forget_size"] / s["num_train"] if s.get("granularity", "sample") == "sample" and s.get("num_train")
              else None)
    stability = s.get("stability")
    rows = [
        ["Forget set", f"{s['forget_size']} of {s['num_train']} training samples "
                       f"({s['forget_size'] / s['num_train']:.1%})"
         + (f", {s['forget_units']} class{'es' if s['forget_units'] != 1 else ''}"
            if s.get("granularity") == "class" else "")],
        ["Search cost", "–" if trace.get("seconds") is None else cost_phrase(trace)[len("search: "):]],
        ["Outer steps", str(len(objective))],
        ["Inner steps", str(trace.get("inner_steps", "–"))],
        ["Upper objective (first → last)", f"{objective[0]:.4g} → {objective[-1]:.4g}" if objective else "–"],
        ["Moved away from the initial set", fmt_pct(1 - initial[-1]) if initial else "–"],
        ["Overlap with random sets (final, mean)",
         (fmt_pct(float(np.mean(randoms))) + (f" (chance {fmt_pct(chance)})" if chance else "")) if randoms else "–"],
        *[[f"Overlap with the {KIND_LABELS.get(b, b)} baseline", fmt_pct(v)]
          for b, v in (s.get("baseline_overlap") or {"heuristic": s.get("heuristic_overlap")}).items()],
        ["Stability (Jaccard with a second search)",
         f"{stability['jaccard']:.2f} (seeds {stability['seed_a']} and {stability['seed_b']})" if stability
         else "not run (--no-stability)"],
    ]
    return Table("Search trace", ["Quantity", "Value"], rows,
                 "Overlap = share of the worst-case set that is also in the other set.", numeric=False)


def combined_table(entries: Sequence[tuple[str, dict]]) -> Table:
    """Method × set-kind Avg. Gap across result folders: `entries` are (folder label, summary)."""
    kinds = [k for k in SET_KINDS if any(k in s["sets"] for _, s in entries)]
    header = ["Result", "Setting", "Method", *[KIND_LABELS[k] for k in kinds]]
    rows = []
    for label, s in entries:
        for method in evaluated_methods(s):
            name = f"{method} (searched)" if method == s["method"] else method
            rows.append([label, f"{s['dataset']}/{s['model']}, {s['solver']}, {s['objective']}", name,
                         *[fmt_stat(*gap_stat(s, k, method)) if k in s["sets"] else "–" for k in kinds]])
    return Table("Comparison across results: Avg. Gap to Retrain", header, rows)


def provenance_rows(summary: dict, attrs: dict | None = None) -> list[tuple[str, str]]:
    """What produced the result: data, model, method, search, seeds, code and environment."""
    s, attrs = summary, attrs or {}
    setting = s.get("setting") or {}
    data = setting.get("dataset") or {}
    config = s.get("config") or {}
    model = config.get("model") or setting.get("model") or {}
    env = s.get("environment") or attrs.get("environment") or {}
    search_cfg = config.get("search") or {}
    audit = config.get("audit") or {}

    def kv(d: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items()) if d else "–"

    rows = [
        ("Dataset", f"{s['dataset']} ({data.get('num_train', s.get('num_train'))} train / "
                    f"{data.get('num_val', '?')} val / "
                    f"{data.get('num_test', '?')} test, {data.get('num_classes', '?')} classes, input "
                    f"{'×'.join(map(str, data.get('input_shape', []))) or '?'}, "
                    f"fingerprint {data.get('fingerprint', '?')})"),
        ("Model", f"{s['model']} (norm {model.get('norm') or 'default'}, seed {model.get('seed', '?')}; training "
                  f"{kv(model.get('train') or {})}; original model key {setting.get('original_key', '?')})"),
        ("Method", f"{s['method']} ({kv(config.get('method_params') or s.get('params') or {})})"),
        ("Solver", f"{s['solver']} ({kv(search_cfg)})"),
        ("Objective", f"{s['objective']}, granularity {s.get('granularity', 'sample')}"),
        ("Seeds", f"search {s.get('seed')}, unlearning {s.get('unlearn_seeds')}, random sets "
                  f"{audit.get('num_random', '?')}" + (f", further methods {', '.join(audit['eval_methods'])}"
                                                       if audit.get("eval_methods") else "")),
        ("Code version", f"{s.get('code_version', '?')} (result.h5 schema {attrs.get('schema_version', '?')}, "
                         f"written by {attrs.get('worstforget_version', '?')})"),
        ("Environment", kv(env)),
    ]
    return rows


# --- per-example quantities ----------------------------------------------------------------------------------

def class_composition(labels: Iterable[int], indices: Iterable[int],
                      num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Per-class counts and shares of a forget set (`indices` into `labels`) against the whole training split.

    Returns `train_counts`, `forget_counts` (int arrays of length num_classes), `train_share`,
    `forget_share` (fractions summing to 1) and `ratio` = forget_share / train_share (NaN for an absent
    class): above 1 the class is over-represented in the forget set.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if y.size and y.min() < 0:
        raise WorstforgetError("class labels must be non-negative integers")
    if idx.size and (idx.min() < 0 or idx.max() >= y.size):
        raise WorstforgetError(f"forget-set indices must lie in [0, {y.size}), the training split of these labels")
    k = max(int(num_classes or 0), int(y.max()) + 1 if y.size else 0)
    train = np.bincount(y, minlength=k)
    forget = np.bincount(y[idx], minlength=k)
    train_share = train / max(train.sum(), 1)
    forget_share = forget / max(forget.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(train > 0, forget_share / np.where(train_share > 0, train_share, 1), np.nan)
    return {"train_counts": train, "forget_counts": forget, "train_share": train_share,
            "forget_share": forget_share, "ratio": ratio}


def class_composition_table(labels: Iterable[int], indices: Iterable[int],
                            class_names: Sequence[str] | None = None) -> Table:
    comp = class_composition(labels, indices, len(class_names) if class_names else None)
    rows = []
    for c in range(len(comp["train_counts"])):
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ratio = comp["ratio"][c]
        rows.append([name, f"{comp['train_counts'][c]} ({fmt_pct(comp['train_share'][c])})",
                     f"{comp['forget_counts'][c]} ({fmt_pct(comp['forget_share'][c])})",
                     "–" if math.isnan(ratio) else f"{ratio:.2f}"])
    return Table("Class composition of the worst-case set", ["Class", "Training split", "Worst-case set",
                                                              "Over-representation"], rows,
                 "Over-representation = share in the worst-case set / share in the training split.")


def hardest_examples(weights: Any, worst_case: Any, k: int, *, granularity: str = "sample",
                     labels: Any = None) -> np.ndarray:
    """The k worst-case training indices with the largest final search weight (ties: smaller index first).

    With class granularity the weights are per class, so each example takes its class's weight.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    members = np.asarray(worst_case, dtype=np.int64).ravel()
    if granularity == "class":
        if labels is None:
            return members[:k]
        per_example = w[np.asarray(labels, dtype=np.int64)[members]]
    else:
        per_example = w[members]
    order = np.lexsort((members, -per_example))
    return members[order][:k]


def roc_auc(fpr: Any, tpr: Any) -> float:
    """Area under a ROC curve given as (fpr, tpr) points, by the trapezoid rule after sorting by fpr."""
    x = np.asarray(fpr, dtype=np.float64).ravel()
    y = np.asarray(tpr, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
