"""Print the compact Markdown tables of results/README.md from the committed result folders.

    python experiments/tables.py > /tmp/tables.md

Every number comes from a summary.json / evaluation.json written by the commands in
results/*/commands.txt; nothing here is typed by hand.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "results"


def ms(v, std=None, digits=2) -> str:
    if isinstance(v, dict):
        if "mean" in v:
            return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if v.get("n", 2) > 1 else f"{v['mean']:.{digits}f}"
        if "value" in v:
            return f"{v['value']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"
    if v is None:
        return "–"
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def methods_table(path: Path) -> None:
    s = json.loads((path / "summary.json").read_text())
    t = s["table"]
    print(f"| method | params | UA | MIA | RA | TA | RTE / Retrain | Avg. Gap |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for who, row in t.items():
        params = " ".join(f"{k}={v}" for k, v in s["params"].get(who, {}).items())
        print(f"| {who} | {params} | {ms(row['UA'])} | {ms(row['MIA'])} | {ms(row['RA'])} | {ms(row['TA'])} | "
              f"{ms(row.get('RTE_fraction'), digits=3) if 'RTE_fraction' in row else '1'} | "
              f"{ms(row['avg_gap']) if 'avg_gap' in row else '–'} |")


def worst_case_table(path: Path) -> None:
    s = json.loads((path / "summary.json").read_text())
    methods = [m for m in s["worst_case"] if m not in ("avg_gap", "std")]
    print(f"**{path.name}** — search {s['search']['seconds']:.1f} s, set moved "
          f"{1 - s['search']['overlap_with_initial'][-1]:.0%} from its start, overlap with the lowest-"
          f"{s['objective']} heuristic {s['heuristic_overlap']:.0%}, stability Jaccard (seed 0 vs 1) "
          f"{s['stability']['jaccard']:.2f}\n")
    print("| set | method | UA | MIA | RA | TA | Avg. Gap |\n|---|---|---:|---:|---:|---:|---:|")
    for kind in ("worst_case", "heuristic", "random"):
        block = s[kind]
        for who in methods:
            row, std = block[who], block["std"][who]
            cell = lambda k: ms(row[k]) if isinstance(row[k], dict) else ms(row[k], std[k])  # noqa: E731
            gap = block["avg_gap"].get(who)
            gap_s = "–" if gap is None else (ms(gap) if isinstance(gap, dict) else ms(gap, block["std"]["avg_gap"][who]))
            print(f"| {kind} | {who} | {cell('UA')} | {cell('MIA')} | {cell('RA')} | {cell('TA')} | {gap_s} |")
    print()


def attacks_table(folder: Path) -> None:
    keys = ("forget_quality", "forget_quality_bounded", "epsilon_score", "epsilon_score_bounded", "lira_auc",
            "lira_tpr_at_1pct_fpr", "lira_tpr_at_0.1pct_fpr", "ks_pvalue", "tow", "rte_fraction")
    print("| run | set | " + " | ".join(keys) + " |\n|---|---|" + "---:|" * len(keys))
    for path in sorted(folder.glob("*/evaluation.json")):
        scores = json.loads(path.read_text())["scores"]
        for kind, per in scores.items():
            if kind == "lira_original":
                continue
            for method, row in per.items():
                cells = [ms(row.get(k), digits=3) for k in keys]
                print(f"| {path.parent.name} ({method}) | {kind} | " + " | ".join(cells) + " |")
    for path in sorted(folder.glob("*/evaluation.json")):
        lo = json.loads(path.read_text())["scores"].get("lira_original")
        if lo:
            a, b = lo["leave_one_out"]["lira"], lo["leave_one_out"]["loss_threshold"]
            print(f"\nLiRA on the trained model ({lo['num_shadows']} shadows, leave-one-out, {lo['pairs_negative']} "
                  f"non-member pairs): AUC {a['auc']:.3f}, TPR@1%FPR {a['tpr_at_1pct_fpr']:.2%}, TPR@0.1%FPR "
                  f"{a['tpr_at_0.1pct_fpr']:.2%}; loss-threshold attack on the same pairs: AUC {b['auc']:.3f}, "
                  f"TPR@1%FPR {b['tpr_at_1pct_fpr']:.2%}, TPR@0.1%FPR {b['tpr_at_0.1pct_fpr']:.2%}.")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "methods") and (ROOT / "digits_methods/methods/summary.json").is_file():
        print("### digits_methods\n")
        methods_table(ROOT / "digits_methods/methods")
        print()
    if which in ("all", "worst"):
        for folder in ("digits_worst_case", "digits_exact_systems", "digits_forget_ratios", "digits_classwise",
                       "fashion_mnist_worst_case"):
            for path in sorted((ROOT / folder).glob("*/summary.json")):
                print(f"### {folder}\n")
                worst_case_table(path.parent)
    if which in ("all", "attacks") and (ROOT / "digits_attacks").is_dir():
        print("### digits_attacks\n")
        attacks_table(ROOT / "digits_attacks")
