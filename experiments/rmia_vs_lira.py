"""RMIA (offline) next to LiRA with 4, 8 and 16 models: on the trained model, and on finetune unlearning.

    python experiments/rmia_vs_lira.py [--models 4,8,16] [--seed 0] [--out results/rmia_vs_lira.md]
    python experiments/rmia_vs_lira.py --tiny    # synthetic data and short training: a smoke run

(a) The trained original on digits: `lira_on_original` (online LiRA) and `rmia_on_original` (offline RMIA,
a = 0.33, γ = 2) on the same N shadow models trained on random halves of train ∪ test, scored
leave-one-out (each shadow in turn is the target, the other N − 1 its shadows/references).
(b) finetune (the lr in --params-file, digits' tuned value) on one random 10 % forget set:
`evaluate_unlearning` with N unlearned and N retrained models and attacks lira, rmia: N/2 models per kind
are shadows (LiRA) or retrained references (RMIA), the other half targets, then the halves swap.

Prints a Markdown table (AUC, TPR at 1 % and 0.1 % FPR) and writes it, with the command line on top, to
--out. Units of work are cached under --cache-dir (default: the usual cache), so a rerun is quick.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

FORGET_RATIO = 0.1


def _row(setting: str, models: int, attack: str, auc: float, tpr1: float, tpr01: float) -> str:
    return f"| {setting} | {models} | {attack} | {auc:.3f} | {tpr1:.3f} | {tpr01:.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="4,8,16", help="comma-separated model counts N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the forget set, shadow split and models")
    parser.add_argument("--params-file", default=str(ROOT / "results" / "digits_methods" / "tuned_params.json"),
                        help="JSON {method: {param: value}}; finetune's entry is used if present")
    parser.add_argument("--tiny", action="store_true", help="synthetic data, 10 training epochs, 3 finetune epochs")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "rmia_vs_lira.md"))
    args = parser.parse_args()

    from worstforget.audit.attack_eval import evaluate_unlearning
    from worstforget.audit.membership import lira_on_original, rmia_on_original
    from worstforget.forget_sets import forget_size, random_forget_set
    from worstforget.scoring.privacy import RMIA_GAMMA, RMIA_OFFLINE_A
    from worstforget.setting import prepare_setting

    counts = [int(c) for c in args.models.split(",")]
    dataset = "synthetic" if args.tiny else "digits"
    setting = prepare_setting(dataset=dataset, device="cpu" if args.tiny else "auto", cache_dir=args.cache_dir,
                              train_overrides={"epochs": 10} if args.tiny else None)
    params_path = Path(args.params_file)
    params = json.loads(params_path.read_text()).get("finetune", {}) if params_path.is_file() and not args.tiny else {}
    if args.tiny:
        params = {"epochs": 3}
    n = setting.data.num_train
    forget = random_forget_set(n, forget_size(n, FORGET_RATIO), args.seed)

    rows = []
    for models in counts:
        lira = lira_on_original(setting, num_shadows=models, seed=args.seed)["leave_one_out"]["lira"]
        rmia = rmia_on_original(setting, num_references=models, seed=args.seed)["leave_one_out"]["rmia"]
        for name, m in (("LiRA", lira), ("RMIA", rmia)):
            rows.append(_row("original (leave-one-out)", models, name, m["auc"], m["tpr_at_1pct_fpr"],
                             m["tpr_at_0.1pct_fpr"]))
    for models in counts:
        scores = evaluate_unlearning(setting, "finetune", params, forget, num_models=models, attacks=["lira", "rmia"],
                                     seed=args.seed)["scores"]
        for name, prefix in (("LiRA", "lira"), ("RMIA", "rmia")):
            if f"{prefix}_auc" not in scores:  # too few models for this attack
                continue
            rows.append(_row(f"finetune, random {FORGET_RATIO:.0%}", models, name, scores[f"{prefix}_auc"]["value"],
                             scores[f"{prefix}_tpr_at_1pct_fpr"]["value"],
                             scores[f"{prefix}_tpr_at_0.1pct_fpr"]["value"]))

    command = "python experiments/rmia_vs_lira.py " + " ".join(sys.argv[1:])
    legend = (f"N = models per attack. Original: N shadow models on random halves of train ∪ test, leave-one-out "
              f"(LiRA online with fixed variance; RMIA offline, a = {RMIA_OFFLINE_A}, γ = {RMIA_GAMMA}, population = "
              f"the target's non-members). Finetune ({json.dumps(params)}): N unlearned vs N retrained models on one "
              f"random {FORGET_RATIO:.0%} forget set (seed {args.seed}); N/2 per kind are LiRA shadows / RMIA "
              "references "
              "(retrained), the rest targets, halves swapped (U-LiRA online); RMIA population = the test split.")
    lines = [f"# RMIA vs LiRA on {dataset}", "", f"`{command.strip()}`", "", legend, "",
             "| setting | N | attack | AUC | TPR@1%FPR | TPR@0.1%FPR |", "|---|---:|---|---:|---:|---:|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
