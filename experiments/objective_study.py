"""Search variants against the baselines and random sets, judged by U-LiRA averaged over halvings.

    python experiments/objective_study.py --method finetune --variants "confidence,exposure:warm_fraction=0.05"

Each variant is `objective[:field=value;field=value]` (SearchConfig fields). Every set (each baseline, random
sets, each variant's searched set) is attacked with `--models` unlearned vs `--models` retrained models (the
report's seeds: 0…, 100000…), and U-LiRA's TPR at 0.1% and 1% FPR and AUC are averaged over `--splits` random
halvings into shadows and targets (the first is the report's fixed halving, printed as "1st"); "faccgap" is
the method's forget accuracy minus Retrain's (percentage points, mean over the models; > 0: under-forgetting).
One draw of models per set: the spread printed is over halvings only."""
import argparse
import json
import sys
import time

from worstforget.audit.attack_eval import RETRAIN_SEED_OFFSET, model_statistics, stack
from worstforget.audit.worst_case import baseline_units, random_units
from worstforget.methods import make_method
from worstforget.scoring.privacy import u_lira_split_average
from worstforget.search import SearchConfig, search_worst_case
from worstforget.search.problem import Problem
from worstforget.setting import prepare_setting


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, fields = text.partition(":")
    changes = {}
    for item in filter(None, fields.split(";")):
        key, _, value = item.partition("=")
        changes[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    return name, changes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--method", default="finetune")
    p.add_argument("--params", default="{}", help="the method's hyper-parameters as JSON")
    p.add_argument("--variants", default="confidence", help="objective[:field=value;...],...")
    p.add_argument("--baselines", default="lowest_loss,memorization,exposure")
    p.add_argument("--num-random", type=int, default=1)
    p.add_argument("--models", type=int, default=16)
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-k", type=int, default=16, help="reference models behind the baselines")
    p.add_argument("--out", help="a JSON file for every row and set")
    a = p.parse_args()
    params = json.loads(a.params)
    setting = prepare_setting(dataset=a.dataset, train_subset=a.train_subset)
    method = make_method(a.method, params).resolved(setting.spec.train.batch_size)
    problem = Problem(setting=setting, method=method, config=SearchConfig(reference_models=a.ref_k))
    sets = {b: problem.members(baseline_units(problem, b, a.seed)) for b in a.baselines.split(",") if b}
    sets.update({f"random_{r}": problem.members(u) for r, u in enumerate(random_units(problem, a.num_random, a.seed))})
    for variant in a.variants.split(","):
        name, changes = parse_variant(variant)
        start = time.time()
        sets[f"search[{variant}]"] = search_worst_case(setting, a.method, params,
                                                       SearchConfig(objective=name, **changes), seed=a.seed).indices
        print(f"# search {variant}: {time.time() - start:.1f}s", file=sys.stderr, flush=True)
    rows = {}
    for label, forget in sets.items():
        seeds = list(range(a.models))
        u = model_statistics(setting, a.method, params, forget, seeds)
        r = model_statistics(setting, "retrain", {}, forget, [RETRAIN_SEED_OFFSET + s for s in seeds])
        mean = u_lira_split_average(stack(u, "lsc"), stack(r, "lsc"), splits=a.splits)
        first = u_lira_split_average(stack(u, "lsc"), stack(r, "lsc"), splits=1)
        gap = float(stack(u, "acc")[:, 0].mean() - stack(r, "acc")[:, 0].mean())
        rows[label] = {**mean, "tpr_at_0.1pct_fpr_first": first["tpr_at_0.1pct_fpr"], "forget_acc_gap": gap}
        print(f"{label:45s} tpr0.1={mean['tpr_at_0.1pct_fpr']:.3f} (1st {first['tpr_at_0.1pct_fpr']:.3f}) "
              f"tpr1={mean['tpr_at_1pct_fpr']:.3f} auc={mean['auc']:.4f} faccgap={gap:.1f}", flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"args": vars(a), "rows": rows, "sets": {k: v.tolist() for k, v in sets.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()
