"""How much a set's U-LiRA score moves between independent blocks of models, and with the model count.

    python experiments/lira_model_blocks.py results/worst_case_matrix/digits/finetune/seed0 \
        [--blocks 0,60000,70000,80000,90000] [--models 16] [--variance]

For one digits matrix cell (a `search` folder): its worst-case set, its heuristic sets, the first random set and,
when selection composed one, the composed set, each scored by U-LiRA (mean over 20 halvings) on `--models`
unlearned vs as many retrained models per block; block b uses unlearned seeds b… and retrained seeds 100000 + b…
(block 0 is the report's, 60000 the composed set's own, 50000 the selection's). Prints TPR at 0.1% / 1% FPR per
block, then the mean over blocks. With `--variance`: on block 0, per-example against fixed (global) variance at
16 and 64 models. Models are cached like the audit's, so blocks already trained are read, not retrained.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SPLITS = 20


def main() -> None:
    from worstforget.audit.attack_eval import RETRAIN_SEED_OFFSET, model_statistics, stack
    from worstforget.audit.result import SearchAudit
    from worstforget.scoring.privacy import u_lira_halvings, u_lira_split_average
    from worstforget.setting import prepare_setting

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", type=Path, help="a digits matrix cell: results/worst_case_matrix/digits/CELL/seedK")
    parser.add_argument("--blocks", default="0,60000,70000,80000,90000", help="first unlearned seed of each block")
    parser.add_argument("--models", type=int, default=16, help="unlearned and retrained models per block")
    parser.add_argument("--variance", action="store_true", help="per-example vs fixed variance, 16 and 64 models")
    args = parser.parse_args()
    if not (args.cell / "summary.json").is_file():
        sys.exit(f"{args.cell} holds no summary.json: pass a `search` output folder")
    summary = json.loads((args.cell / "summary.json").read_text())
    if summary["dataset"] != "digits":
        sys.exit(f"{args.cell} is a {summary['dataset']} cell: this script rebuilds the digits setting only")
    blocks = [int(b) for b in args.blocks.split(",")]
    audit = SearchAudit.read(args.cell)
    sets = {kind: torch.as_tensor(block.sets[0]).sort().values for kind, block in audit.kinds.items()}
    composed = (summary["search"].get("selection") or {}).get("composed")
    if composed is not None:
        sets["composed"] = torch.tensor(composed)
    method, params = summary["method"], summary["params"]
    setting = prepare_setting(dataset="digits", model=summary["model"])

    def stats(forget, first: int, count: int):
        seeds = list(range(first, first + count))
        u = stack(model_statistics(setting, method, params, forget, seeds), "lsc")
        r = stack(model_statistics(setting, "retrain", {}, forget, [RETRAIN_SEED_OFFSET + s for s in seeds]), "lsc")
        return u, r

    print(f"{args.cell}: {method} {params}, U-LiRA TPR@0.1% / TPR@1% on {args.models} + {args.models} models\n")
    print("| set | " + " | ".join(f"block {b}" for b in blocks) + " | mean |\n|---|" + "---:|" * (len(blocks) + 1))
    for name, forget in sets.items():
        scores = [u_lira_split_average(*stats(forget, b, args.models), splits=SPLITS) for b in blocks]
        low, one = ([s[k] for s in scores] for k in ("tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"))
        print(f"| {name} | " + " | ".join(f"{a:.2f} / {c:.2f}" for a, c in zip(low, one))
              + f" | {np.mean(low):.2f} / {np.mean(one):.2f} |")
    if args.variance:
        print("\nBlock 0, per-example (p) vs fixed (f) variance, TPR@0.1% / TPR@1%:\n")
        print("| set | 16 p | 16 f | 64 p | 64 f |\n|---|---:|---:|---:|---:|")
        for name, forget in sets.items():
            u, r = stats(forget, 0, 64)
            cells = []
            for k in (16, 64):
                for fixed in (False, True):
                    halved = u_lira_halvings(u[:k], r[:k], halvings=SPLITS, fix_variance=fixed)
                    s = u_lira_split_average(u[:k], r[:k], halvings=halved)
                    cells.append(f"{s['tpr_at_0.1pct_fpr']:.2f} / {s['tpr_at_1pct_fpr']:.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
