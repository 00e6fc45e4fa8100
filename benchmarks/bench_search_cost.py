"""Cost and quality of the worst-case search, per solver, against training the original model once.

    python benchmarks/bench_search_cost.py [--dataset digits] [--model mlp] [--train-subset N] [--method finetune]
        [--variants first_order,warm,unrolled] [--outer-steps 20] [--repeats 3] [--threads 2]
        [--attacks] [--num-models 16] [--stability] [--cache-dir DIR] [--out results/search_cost.md]

In one process: the original model is trained (cache off) and every search variant runs (no checkpoint),
interleaved `--repeats` times; the ratio is the median search seconds over the median training seconds.
The exposure objective's reference models are trained once before any timing (shared by every search and
by the audit's baselines) and reported as their own one-time ratio. `--cache-dir` keeps the original, the
reference models and the attack models' statistics between runs (the timed training and searches never
read it), so a second run with other variants reuses the attacks on sets it has already scored.

A variant is a solver name with optional search settings, `SOLVER[:FIELD=VALUE;...]`, for instance
`warm:warm_fraction=0.2;warm_restart=never` or `first_order:inner_steps=5`. The quality of each found set:
Retrain's unlearning accuracy on it (UA = 100 − forget accuracy, mean over the retrained models; lower =
Retrain keeps fitting the set = harder), its Jaccard with the first variant's set and, with `--attacks`,
U-LiRA (online) on `--num-models` unlearned vs retrained models: TPR at 0.1% FPR with its bootstrap
interval over target models and examples, TPR at 1% FPR and AUC (higher = the method is more exposed on
the set = harder); with `--stability`, its Jaccard with the set the same variant finds with seed + 1 (the
audit's stability measure; not timed). A random set of the same size is the reference row. Read the ratios,
not the seconds.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from worstforget.audit.attack_eval import evaluate_sets, model_statistics
from worstforget.core.cache import ArrayCache, ModelCache
from worstforget.core.errors import WorstforgetError
from worstforget.forget_sets import forget_size, forget_weights, random_forget_set
from worstforget.methods import make_method
from worstforget.search import SearchConfig, jaccard, search_worst_case
from worstforget.search.objectives import uses_references
from worstforget.setting import prepare_setting
from worstforget.training.original import original_model
from worstforget.training.reference import CACHE_KIND as REFERENCE_KIND
from worstforget.training.reference import reference_key

UA_SEEDS = 3  # retrained models behind UA when no attack runs
RANDOM_SET_SEED = 12345


def parse_variant(text: str, outer_steps: int) -> tuple[str, SearchConfig]:
    """`SOLVER[:FIELD=VALUE;...]` → (label, config); values typed by the config field's declared type."""
    solver, _, rest = text.partition(":")
    types = {f.name: f.type for f in fields(SearchConfig)}
    values: dict = {"solver": solver, "outer_steps": outer_steps}
    for item in filter(None, rest.split(";")):
        key, _, raw = item.partition("=")
        if key not in types:
            sys.exit(f"unknown search field {key!r} in variant {text!r}")
        kind = str(types[key])
        values[key] = (int(raw) if "int" in kind else float(raw) if "float" in kind
                       else raw.lower() in ("1", "true", "yes") if "bool" in kind else raw)
    return text, SearchConfig(**values).validate()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def forget_accuracy(per_model: list[dict]) -> float:
    return float(np.mean([p["acc"][0] for p in per_model]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default=None, help="default: the dataset's (use mlp on fashion_mnist)")
    parser.add_argument("--train-subset", type=int, default=None, help="a seeded subset of the training split")
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--variants", default="first_order,warm,unrolled",
                        help="comma-separated SOLVER[:FIELD=VALUE;...]; the first is the Jaccard reference")
    parser.add_argument("--outer-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", action="store_true", help="U-LiRA on every found set (and a random one)")
    parser.add_argument("--num-models", type=int, default=16)
    parser.add_argument("--stability", action="store_true", help="search again with seed + 1: Jaccard of the two")
    parser.add_argument("--cache-dir", default=None, help="keep models between runs [default: a temporary folder]")
    parser.add_argument("--out", default=None, help="append the table, with the command, to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v, args.outer_steps) for v in args.variants.split(",")]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory() as tmp:
        setting = prepare_setting(dataset=args.dataset, model=args.model, device="cpu",
                                  cache_dir=args.cache_dir or tmp, train_subset=args.train_subset)
        ref_models = {cfg.reference_models for _, cfg in variants if uses_references(cfg.objective)}
        ref_cache = ArrayCache(setting.records.root)
        ref_cached = all(ref_cache.path(REFERENCE_KIND, reference_key(setting.spec, setting.data, num_models=n,
                                                                      seed=0)).is_file() for n in ref_models)
        ref_seconds, _ = timed(lambda: [setting.references(n) for n in sorted(ref_models)])
        setting.records.enabled = False  # every search runs from scratch, without checkpoints
        times: dict[str, list[float]] = {"train": [], "method": [], **{label: [] for label, _ in variants}}
        size = forget_size(setting.data.num_train, variants[0][1].forget_ratio)
        random_weights = forget_weights(setting.data, random_forget_set(setting.data.num_train, size, RANDOM_SET_SEED))
        found: dict[str, torch.Tensor] = {}
        failed: dict[str, str] = {}  # variants that stopped (a diverged lower level): the message, not a set
        for _ in range(args.repeats):
            seconds, _ = timed(lambda: original_model(setting.spec, setting.data, cache=ModelCache(enabled=False)))
            times["train"].append(seconds)
            # the floor of a search whose lower level spans the method's run: that run, once
            method = make_method(args.method, {})
            seconds, _ = timed(lambda: method.apply(setting.original, setting.data, random_weights, seed=0))
            times["method"].append(seconds)
            for label, cfg in variants:
                if label in failed:
                    continue
                try:
                    seconds, result = timed(lambda: search_worst_case(setting, args.method, {}, cfg, seed=args.seed))
                except WorstforgetError as exc:  # the lower level diverged (or the loop saw it do so)
                    failed[label] = str(exc).split(";")[0]
                    continue
                times[label].append(seconds)
                if label in found and not torch.equal(found[label], result.indices):
                    sys.exit(f"{label}: the search found another set when repeated with the same seed")
                found[label] = result.indices
        again = {label: search_worst_case(setting, args.method, {}, cfg, seed=args.seed + 1).indices
                 for label, cfg in variants if args.stability and label in found}
        setting.records.enabled = True
        sets = {**found, "random set": random_forget_set(setting.data.num_train, size, RANDOM_SET_SEED)}
        scores = {}
        if args.attacks:
            evaluation = evaluate_sets(setting, [(args.method, {})], {k: [v] for k, v in sets.items()},
                                       num_models=args.num_models, attacks=["lira"])
            scores = {k: evaluation.scores[k][args.method][0] for k in sets}
            ua = {k: 100 - scores[k]["accuracy_retrained"]["forget"] for k in sets}
        else:
            ua = {k: 100 - forget_accuracy(model_statistics(setting, "retrain", {}, v, list(range(UA_SEEDS))))
                  for k, v in sets.items()}

    train = statistics.median(times["train"])
    run = statistics.median(times["method"])
    reference = variants[0][0]
    if reference not in sets:
        sys.exit(f"the reference variant {reference} found no set ({failed[reference]})")
    say(f"$ python benchmarks/bench_search_cost.py {shlex.join(sys.argv[1:])}")
    say()
    refs_line = ("the objective reads no reference models." if not ref_models
                 else "the objective's reference models from the cache." if ref_cached
                 else f"the objective's reference models {ref_seconds:.2f} s once "
                      f"({ref_seconds / train:.2f}× training, shared by every search).")
    say(f"{args.dataset} ({setting.data.num_train} train, model {setting.spec.name}), method {args.method}, "
        f"{args.outer_steps} outer steps, forget set {size} samples, {args.threads} threads; training the original "
        f"{train:.2f} s (median of {args.repeats}, interleaved with the searches); "
        + refs_line + f" One run of {args.method} on a random set of that size {run:.2f} s ({run / train:.3f}× "
        "training): a search whose lower level spans the method's run costs at least that.")
    say()
    ua_models = args.num_models if args.attacks else UA_SEEDS
    head = ["set", "search s", "× training", f"Retrain UA ({ua_models} models)", f"Jaccard vs {reference}"]
    if args.stability:
        head += [f"Jaccard seed {args.seed} vs {args.seed + 1}"]
    if args.attacks:
        head += [f"U-LiRA TPR@0.1%FPR [95% CI] ({args.num_models}+{args.num_models} models)", "TPR@1%FPR", "AUC"]
    say("| " + " | ".join(head) + " |")
    say("|" + "---|" * len(head))
    for name, members in sets.items():
        seconds = statistics.median(times[name]) if name in times else None
        row = [name, f"{seconds:.2f}" if seconds is not None else "–",
               f"{seconds / train:.3f}" if seconds is not None else "–", f"{ua[name]:.2f}",
               f"{jaccard(members, sets[reference]):.2f}"]
        if args.stability:
            row += [f"{jaccard(members, again[name]):.2f}" if name in again else "–"]
        if args.attacks:
            s = scores[name]
            tpr = s["lira_tpr_at_0.1pct_fpr"]
            row += [f"{100 * tpr['value']:.1f} [{100 * tpr['low']:.1f}, {100 * tpr['high']:.1f}]",
                    f"{100 * s['lira_tpr_at_1pct_fpr']['value']:.1f}", f"{s['lira_auc']['value']:.3f}"]
        say("| " + " | ".join(row) + " |")
    for label, message in failed.items():
        say(f"| {label} | {message} |" + " |" * (len(head) - 2))
    if args.out:
        with open(Path(args.out), "a") as fh:
            fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
