"""Print the compact Markdown tables of results/README.md from the committed result folders.

    python experiments/tables.py [methods|worst|attacks|hardest|matrix|all] > /tmp/tables.md

Every number comes from a summary.json / evaluation.json written by the commands in
results/*/commands.txt, read through worstforget's own result readers (older schemas are upgraded
there); nothing here is typed by hand.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from worstforget.audit.result import AttackEvaluation, SearchAudit, read_attack_evaluation
from worstforget.audit.verdict import verdict_lines
from worstforget.core.stats import fmt_agg
from worstforget.scoring.attacks import ATTACKS

ROOT = Path(__file__).resolve().parent.parent / "results"
GAP_COLUMNS = ("UA", "MIA", "MIA_logit", "RA", "TA", "acc_gap", "avg_gap", "avg_gap_logit")
# what each attack declares at registration (scoring/attacks.py): its columns in the worst-case tables and in
# the attacks table
ATTACK_COLUMNS = tuple(k for name in ATTACKS.in_order() for k in ATTACKS.get(name).columns)
ATTACK_KEYS = (*(k for name in ATTACKS.in_order() for k in ATTACKS.get(name).summary), "rte_fraction")


@functools.lru_cache(maxsize=None)
def read_audit(path: Path) -> SearchAudit:
    """A result folder, read once however many tables show it (`all` shows most folders twice)."""
    return SearchAudit.read(path)


def comparison_sets(summary: dict) -> dict:
    """`sets` of a comparison summary (schema 2), or a schema-1 `compare` table as one random kind."""
    if "sets" in summary:
        return summary["sets"]
    return {"random": {"num_sets": len(summary.get("set_seeds", [])), "methods": summary["table"]}}


def methods_table(path: Path) -> None:
    s = json.loads((path / "summary.json").read_text())
    methods = comparison_sets(s)["random"]["methods"]
    columns = [c for c in ("UA", "MIA", "MIA_logit", "RA", "TA", "RTE_fraction", "avg_gap", "avg_gap_logit")
               if any(c in row for row in methods.values())]
    print("| method | params | " + " | ".join(columns) + " |\n|---|---|" + "---:|" * len(columns))
    for who, row in methods.items():
        params = " ".join(f"{k}={v}" for k, v in s.get("params", {}).get(who, {}).items())
        cells = [fmt_agg(row.get(c), 3 if c == "RTE_fraction" else 2) if c in row
                 else ("1" if c == "RTE_fraction" else "–")
                 for c in columns]
        print(f"| {who} | {params} | " + " | ".join(cells) + " |")


def worst_case_table(path: Path) -> None:
    audit = read_audit(path)
    s = audit.summary()
    trace = s["search"]
    overlaps = ", ".join(f"{k} {v:.0%}" for k, v in (s.get("baseline_overlap") or {}).items())
    stability = f", stability Jaccard (seed 0 vs 1) {s['stability']['jaccard']:.2f}" if s.get("stability") else ""
    ratio = (f" ({trace['cost_ratio']:.2f}× {trace.get('cost_reference', 'training')})"
             if trace.get("cost_ratio") else "")
    print(f"**{path.name}** — {s['solver']} search {trace['seconds']:.1f} s{ratio}, set moved "
          f"{1 - trace['overlap_with_initial'][-1]:.0%} from its start, overlap with {overlaps or '–'}{stability}\n")
    columns = [c for c in GAP_COLUMNS if any(c in m for b in s["sets"].values() for m in b["methods"].values())]
    evaluation = audit.evaluation.summary() if audit.evaluation is not None else None
    attack_columns = [k for k in ATTACK_COLUMNS if evaluation and any(
        k in m for b in evaluation["sets"].values() for m in b["methods"].values())]
    print("| set | method | " + " | ".join(columns + attack_columns) + " |\n|---|---|"
          + "---:|" * (len(columns) + len(attack_columns)))
    for kind, block in s["sets"].items():
        for who, row in block["methods"].items():
            attacks = evaluation["sets"].get(kind, {}).get("methods", {}).get(who, {}) if evaluation else {}
            cells = [fmt_agg(row.get(c)) for c in columns] + [fmt_agg(attacks.get(k), 3) if who != "retrain" else "–"
                                                              for k in attack_columns]
            print(f"| {kind} | {who} | " + " | ".join(cells) + " |")
        flags = {c: f for c, f in (block.get("flags") or {}).items() if f}
        if flags:
            print(f"| {kind} | *flags* | " + "; ".join(f"{c}: {', '.join(f)}" for c, f in flags.items())
                  + " |" + " |" * (len(columns) + len(attack_columns) - 1))
    lines = verdict_lines(s.get("verdict") or [])
    if lines:
        print("\nVerdict: " + " ".join(lines))
    print()


def attacks_table(folder: Path) -> None:
    print("| run | set | " + " | ".join(ATTACK_KEYS) + " |\n|---|---|" + "---:|" * len(ATTACK_KEYS))
    for path in sorted(folder.glob("*/evaluation.json")):
        doc = read_attack_evaluation(path.parent).summary()
        for kind, block in doc["sets"].items():
            for method, row in block["methods"].items():
                cells = [fmt_agg(row.get(k), 3) for k in ATTACK_KEYS]
                print(f"| {path.parent.name} ({method}) | {kind} | " + " | ".join(cells) + " |")
    for path in sorted(folder.glob("*/evaluation.json")):
        lo = read_attack_evaluation(path.parent).extra.get("lira_original")
        if lo:
            a, b = lo["leave_one_out"]["lira"], lo["leave_one_out"]["loss_threshold"]
            print(f"\nLiRA on the trained model ({lo['num_shadows']} shadows, leave-one-out): AUC {a['auc']:.3f}, "
                  f"TPR@1%FPR {a['tpr_at_1pct_fpr']:.2%}, TPR@0.1%FPR {a['tpr_at_0.1pct_fpr']:.2%}; loss-threshold "
                  f"attack on the same pairs: AUC {b['auc']:.3f}, TPR@1%FPR {b['tpr_at_1pct_fpr']:.2%}, "
                  f"TPR@0.1%FPR {b['tpr_at_0.1pct_fpr']:.2%}.")


def hardest_table(folder: Path, key: str = "lira_tpr_at_0.1pct_fpr") -> None:
    """One row per searched method: its searched set against the best baseline and the random sets on `key`."""
    print("| run | searched set | best baseline | random sets | searched / random | search ≥ best baseline |\n"
          "|---|---:|---:|---:|---:|---|")
    for path in sorted(p.parent for p in folder.glob("*/result.h5")):
        audit = read_audit(path)
        if audit.evaluation is None:
            continue
        sets = audit.evaluation.summary()["sets"]
        score = {kind: block["methods"][audit.method].get(key) for kind, block in sets.items()}
        if any(v is None for v in score.values()):
            continue
        baselines = {k: v for k, v in score.items() if k not in ("worst_case", "random")}
        best = max(baselines, key=lambda k: baselines[k]["mean"])
        searched, random_sets = score["worst_case"], score["random"]
        ratio = f"{searched['mean'] / random_sets['mean']:.1f}×" if random_sets["mean"] > 0 else "–"
        label = audit.method if path.name == audit.method else f"{path.name} ({audit.method})"
        print(f"| {label} | {fmt_agg(searched, 2)} | {best}: {fmt_agg(baselines[best], 2)} | "
              f"{fmt_agg(random_sets, 2)} | {ratio} | "
              f"{'yes' if searched['mean'] >= baselines[best]['mean'] else 'no'} |")
    print()


def _criterion(sets: dict, method: str, key: str = "lira_tpr_at_0.1pct_fpr") -> dict:
    """A matrix cell's comparison on `key` from an evaluation summary's sets: the searched set, the best baseline,
    the random sets and the issue's criterion (where any set reaches ≥ 3× random: searched ≥ best baseline and
    ≥ 3× random)."""
    score = {kind: block["methods"][method].get(key) for kind, block in sets.items()}
    base = {k: v for k, v in score.items() if k not in ("worst_case", "random")}
    best = max(base, key=lambda k: base[k]["mean"]) if base else None
    w, r = score["worst_case"], score["random"]
    top = max([w["mean"], r["mean"]] + [v["mean"] for v in base.values()])
    ok = w["mean"] >= (base[best]["mean"] if best else 0) and w["mean"] >= 3 * r["mean"]
    verdict = ("pass" if ok else "FAIL") if top >= 3 * r["mean"] else "n/a (no set ≥ 3× random)"
    return {"searched": w, "best": best, "baseline": base.get(best), "random": r, "verdict": verdict}


def matrix_table(folder: Path) -> None:
    """The worst-case matrix (results/worst_case_matrix/<dataset>/<cell>/seed<k>): per cell and search seed, U-LiRA
    TPR at 0.1% and 1% FPR and AUC (bootstrap intervals) of the searched set, the best baseline and the random
    sets; the candidate selection kept; the stability Jaccard; the search's cost; and the issue's criterion.
    Cells re-scored by more models (`lira64/`: `worstforget evaluate --result CELL --attacks lira --num-models 64
    --out CELL/lira64`) get a second table on those models."""
    for data in sorted(p for p in folder.iterdir() if p.is_dir()):
        print(f"#### {data.name}\n")
        print("| cell | seed | searched TPR@0.1% | TPR@1% | AUC | best baseline TPR@0.1% | random TPR@0.1% | kept "
              "| Jaccard | search + selection (× training) | criterion |\n"
              "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
        rescored = []
        for path in sorted(p.parent for p in data.glob("*/seed*/result.h5")):
            audit = read_audit(path)
            if audit.evaluation is None:
                continue
            s, sets = audit.summary(), audit.evaluation.summary()["sets"]
            m = audit.method
            c = _criterion(sets, m)
            trace = s["search"]
            sel = (trace.get("selection") or {}).get("chosen", "–")
            train = trace.get("train_seconds")
            own = trace["seconds"] + (trace.get("selection_seconds") or 0.0)
            refs = (trace.get("reference_models") or {}).get("cost_ratio")
            ratio = None if not train else f"{own / train:.2f} (+ refs {'–' if refs is None else f'{refs:.2f}'})"
            jac = f"{s['stability']['jaccard']:.2f}" if s.get("stability") else "–"
            worst = sets["worst_case"]["methods"][m]
            print(f"| {path.parent.name} | {path.name[4:]} | {fmt_agg(c['searched'], 2)} "
                  f"| {fmt_agg(worst['lira_tpr_at_1pct_fpr'], 2)} | {fmt_agg(worst['lira_auc'], 3)} "
                  f"| {c['best']}: {fmt_agg(c['baseline'], 2) if c['best'] else '–'} "
                  f"| {fmt_agg(c['random'], 2)} | {sel} | {jac} | {'–' if ratio is None else ratio} | {c['verdict']} |")
            more = AttackEvaluation.read(path / "lira64")
            if more is not None:
                rescored.append((path, m, more))
        print()
        if rescored:
            _rescored_table(rescored)


def _rescored_table(rows: list) -> None:
    """The cells re-scored by `lira64/`: the same comparison on the evaluation's own (larger) model count."""
    num = {more.config.get("num_models") for _, _, more in rows}
    print(f"U-LiRA on {'/'.join(str(n) for n in sorted(num, key=str))} unlearned vs as many retrained models per set "
          "(`lira64/`; the report's models among them, never the selection's):\n")
    print("| cell | seed | searched TPR@0.1% | TPR@1% | best baseline TPR@0.1% | its TPR@1% | random TPR@0.1% "
          "| criterion |\n|---|---|---:|---:|---:|---:|---:|---|")
    for path, m, more in rows:
        sets = more.summary()["sets"]
        c = _criterion(sets, m)
        at1 = {k: sets[k]["methods"][m]["lira_tpr_at_1pct_fpr"] for k in sets}
        print(f"| {path.parent.name} | {path.name[4:]} | {fmt_agg(c['searched'], 2)} | {fmt_agg(at1['worst_case'], 2)} "
              f"| {c['best']}: {fmt_agg(c['baseline'], 2)} | {fmt_agg(at1[c['best']], 2)} | {fmt_agg(c['random'], 2)} "
              f"| {c['verdict']} |")
    print()


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    for path in sorted(ROOT.glob("*/methods/summary.json")) if which in ("all", "methods") else []:
        print(f"### {path.parent.parent.name}\n")
        methods_table(path.parent)
        print()
    if which in ("all", "matrix") and (ROOT / "worst_case_matrix").is_dir():
        print("### worst_case_matrix\n")
        matrix_table(ROOT / "worst_case_matrix")
    if which in ("all", "worst"):
        heading = None
        for path in sorted(ROOT.glob("*/*/result.h5")):
            if path.parent.parent.name != heading:
                heading = path.parent.parent.name
                print(f"### {heading}\n")
            worst_case_table(path.parent)
    if which in ("all", "hardest"):
        for folder in sorted({p.parent.parent for p in ROOT.glob("*/*/result.h5")
                              if (p.parent / "evaluation.json").exists()}):
            print(f"### {folder.name}: U-LiRA TPR at 0.1% FPR, searched set vs baselines\n")
            hardest_table(folder)
    if which in ("all", "attacks"):
        for folder in sorted({p.parent.parent for p in ROOT.glob("*/*/evaluation.json")
                              if not (p.parent / "result.h5").exists()}):
            print(f"### {folder.name}\n")
            attacks_table(folder)
