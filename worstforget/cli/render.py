"""Terminal tables of the typed results (rich lives only in cli/). Tables fit an 80-column terminal:
compact `mean±std` cells, short column names, and a legend for every abbreviation."""
from __future__ import annotations

from ..core.stats import fmt_agg

KIND_LABELS = {"worst_case": "worst-case", "heuristic": "heuristic", "memorization": "memorization",
               "exposure": "exposure", "random": "random", "given": "given"}
COLUMNS = (("UA", "UA", 1), ("MIA", "MIA", 1), ("RA", "RA", 1), ("TA", "TA", 1), ("RTE", "RTE s", 2))
LEGEND = ("UA = 100 − forget acc., MIA = MIA-Efficacy, RA/TA = retain/test acc. (all %), RTE s = run time in "
          "seconds, Gap = Avg. Gap to Retrain (mean |Δ| over UA, MIA, RA, TA; lower = closer to Retrain). "
          "Cells: mean±std over {runs}.")


def cell(agg: dict | None, digits: int) -> str:
    return fmt_agg(agg, digits, sep="±")


def comparison_table(summary: dict, *, title: str):
    """Set kind × method rows, every method beside Retrain on the same sets."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), title_justify="left")
    kinds = list(summary["sets"])
    names = [w for block in summary["sets"].values() for w in block["methods"]]
    table.add_column("set", no_wrap=True)
    table.add_column("method", no_wrap=True, min_width=max(len(n) for n in names))
    for _, label, _ in COLUMNS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("Gap", justify="right", no_wrap=True)
    for kind in kinds:
        block = summary["sets"][kind]
        for i, (who, metrics) in enumerate(block["methods"].items()):
            label = KIND_LABELS.get(kind, kind) if i == 0 else ""
            table.add_row(label, who, *[cell(metrics.get(k), d) for k, _, d in COLUMNS],
                          "–" if who == "retrain" else cell(metrics.get("avg_gap"), 2))
        table.add_section()
    return table


def runs_phrase(summary: dict) -> str:
    seeds = len(summary.get("unlearn_seeds") or [0])
    parts = []
    for kind, block in summary["sets"].items():
        sets = block["num_sets"]
        parts.append(f"{KIND_LABELS.get(kind, kind)}: {sets} set{'s' if sets != 1 else ''} × {seeds} seed{'s' if seeds != 1 else ''}")
    return "; ".join(parts)


def print_comparison(console, summary: dict, *, title: str) -> None:
    console.print(comparison_table(summary, title=title))
    console.print(LEGEND.format(runs=runs_phrase(summary)), style="dim", soft_wrap=False)


def search_line(summary: dict) -> str:
    s, trace = summary, summary["search"]
    moved = 1 - trace["overlap_with_initial"][-1]
    ratio = trace.get("cost_ratio")
    line = (f"search: {trace['seconds']:.1f}s"
            + (f" ({ratio:.2f}× {trace['cost_reference']})" if ratio is not None else "")
            + f", {len(trace['objective'])} outer steps, set moved {moved:.0%} away from its start")
    if trace.get("train_seconds") is None:
        line += " (training time of the original unknown: cost against one Retrain)"
    if s.get("heuristic_overlap") is not None:
        line += f", overlap with lowest-{s['objective']} heuristic {s['heuristic_overlap']:.0%}"
    if s.get("stability"):
        line += f", Jaccard with seed {s['stability']['seed_b']}: {s['stability']['jaccard']:.2f}"
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
