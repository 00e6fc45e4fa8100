"""Terminal tables of the typed results (rich lives only in cli/). Tables fit an 80-column terminal:
compact `mean±std` cells, short column names, and a legend for every abbreviation."""
from __future__ import annotations

from ..audit.cost import cost_phrase
from ..core.stats import fmt_agg
from ..forget_sets.kinds import KIND_LABELS

ACCURACY = (("UA", "UA", 1), ("RA", "RA", 1), ("TA", "TA", 1), ("acc_gap", "AccGap", 2), ("RTE_fraction", "×Retr", 2))
MEMBERSHIP = (("MIA", "MIA", 1), ("MIA_logit", "MIA-l", 1), ("avg_gap", "Gap", 2), ("avg_gap_logit", "Gap-l", 2))
LEGEND = ("UA = 100 − forget acc., RA/TA = retain/test acc. (%), AccGap = mean |Δ| to Retrain over UA, RA, TA, "
          "×Retr = run time as a fraction of "
          "Retrain's time; MIA = MIA-Efficacy (the paper's SVC on confidence), MIA-l = the same SVC on standardised "
          "logit-scaled confidence (does not saturate); Gap/Gap-l = Avg. Gap to Retrain over UA, MIA (MIA-l), RA, "
          "TA (lower = closer to Retrain). Cells: mean±std over {runs}.")


def cell(agg: dict | None, digits: int) -> str:
    return fmt_agg(agg, digits, sep="±")


def _table(summary: dict, columns, *, title: str, retrain_blank: tuple[str, ...] = ()):
    """Rows of every method beside Retrain, under a heading row per set kind (no set column: the table stays
    inside 80 columns with the longest method names)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), title_justify="left")
    labels = [f"  {w}" for block in summary["sets"].values() for w in block["methods"]]
    labels += [f"{KIND_LABELS.get(kind, kind)} sets" for kind in summary["sets"]]
    table.add_column("method", no_wrap=True, min_width=max(len(label) for label in labels))
    for _, label, _ in columns:
        table.add_column(label, justify="right", no_wrap=True)
    for kind, block in summary["sets"].items():
        table.add_row(f"[bold]{KIND_LABELS.get(kind, kind)} sets[/bold]", *[""] * len(columns))
        for who, metrics in block["methods"].items():
            table.add_row(f"  {who}", *["–" if who == "retrain" and k in retrain_blank else cell(metrics.get(k), d)
                                        for k, _, d in columns])
    return table


def comparison_tables(summary: dict, *, title: str) -> list:
    """Two tables that each fit 80 columns: accuracy and cost; membership inference and gaps."""
    return [_table(summary, ACCURACY, title=title, retrain_blank=("RTE_fraction", "acc_gap")),
            _table(summary, MEMBERSHIP, title="Membership inference and Avg. Gap to Retrain",
                   retrain_blank=("avg_gap", "avg_gap_logit"))]


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def flag_lines(summary: dict) -> list[str]:
    """One line per flagged MIA column, naming the set kinds of each flag combination, in the summary's order."""
    kinds: dict[str, dict[tuple[str, ...], list[str]]] = {}
    for kind, block in summary["sets"].items():
        for column, flags in (block.get("flags") or {}).items():
            if flags:
                kinds.setdefault(column, {}).setdefault(tuple(flags), []).append(KIND_LABELS.get(kind, kind))
    return [f"flag: {column} is " + "; ".join(f"{' and '.join(flags)} on the {_listed(labels)} sets"
                                              for flags, labels in groups.items())
            + " (its Avg. Gap is not trustworthy there; read the other MIA column and the attacks)"
            for column, groups in kinds.items()]


def runs_phrase(summary: dict) -> str:
    seeds = len(summary.get("unlearn_seeds") or [0])
    parts = []
    for kind, block in summary["sets"].items():
        sets = block["num_sets"]
        parts.append(f"{KIND_LABELS.get(kind, kind)}: {sets} set{'s' if sets != 1 else ''} × "
                     f"{seeds} seed{'s' if seeds != 1 else ''}")
    return "; ".join(parts)


def print_comparison(console, summary: dict, *, title: str) -> None:
    for table in comparison_tables(summary, title=title):
        console.print(table)
    console.print(LEGEND.format(runs=runs_phrase(summary)), style="dim")
    for line in flag_lines(summary):
        console.print(line, style="yellow")


def print_verdict(console, summary: dict) -> None:
    from ..audit.verdict import verdict_lines

    lines = verdict_lines(summary.get("verdict") or [])
    if lines:
        console.print("Verdict", style="bold")
        for line in lines:
            console.print("  " + line, style="red" if "WARNING" in line else None)


def search_line(summary: dict) -> str:
    s, trace = summary, summary["search"]
    moved = 1 - trace["overlap_with_initial"][-1]
    line = cost_phrase(trace) + f"; {len(trace['objective'])} outer steps, set moved {moved:.0%} away from its start"
    if trace.get("init"):
        line += f" (started from the {KIND_LABELS.get(trace['init']['baseline'], trace['init']['baseline'])} set)"
    if trace.get("train_seconds") is None:
        line += " (training time of the original unknown: cost against one Retrain)"
    overlaps = s.get("baseline_overlap") or {}
    if overlaps:
        line += ", overlap with " + ", ".join(f"{KIND_LABELS.get(b, b)} {v:.0%}" for b, v in overlaps.items())
    if s.get("stability"):
        line += f", Jaccard with seed {s['stability']['seed_b']}: {s['stability']['jaccard']:.2f}"
    sel = trace.get("selection")
    if sel:
        def tpr(name: str) -> str:
            return f"{sel['scores'][name]['tpr_at_0.1pct_fpr']:.2f}"
        line += (f"; attack-validated selection kept the {sel['chosen'].replace('_', ' ')} set (U-LiRA TPR@0.1%FPR "
                 f"{tpr(sel['chosen'])} on {sel['num_models']}+{sel['num_models']} selection models; "
                 + ", ".join(f"{k.replace('_', ' ')} {tpr(k)}" for k in sel["scores"] if k != sel["chosen"]) + ")")
    return line


def evaluation_table(summary: dict, method: str):
    """Attack scores per set kind for one method (intervals where one set gives them)."""
    from rich import box
    from rich.table import Table

    kinds = [k for k, block in summary["sets"].items() if method in block["methods"]]
    table = Table(title=f"{method}: attacks on N unlearned vs N retrained models", box=box.SIMPLE_HEAD,
                  pad_edge=False, title_justify="left")
    table.add_column("score", no_wrap=True)
    for kind in kinds:
        table.add_column(KIND_LABELS.get(kind, kind), justify="right", no_wrap=True)
    names: list[str] = []
    for kind in kinds:
        names += [k for k in summary["sets"][kind]["methods"][method] if k not in names]
    for name in names:
        table.add_row(name, *[fmt_agg(summary["sets"][kind]["methods"][method].get(name), 3, sep="±")
                              for kind in kinds])
    return table
