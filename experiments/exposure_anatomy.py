"""Where a method's exposure on each set of a worst-case audit comes from, in logit-scaled confidence φ.

    python experiments/exposure_anatomy.py results/digits_worst_case_exposure/finetune [--cache-dir DIR]

For every set kind of the audit (its evaluation.h5 with per-model φ of the unlearned and retrained models),
prints the median over the set's samples of: φ under the trained original, the mean φ of the reference
models that trained on the sample (IN) and of those that did not (OUT, random halves), the mean φ of the
retrained and of the unlearned models, and the two gaps |unlearned − OUT| and |unlearned − retrained|. A
set whose original φ equals OUT carries no membership signal of its own: exposure there is made by the
method. The setting (data, original, reference models) is rebuilt from the model recipe stored in the audit's
summary.json and the cache, and checked against the audit's original-model key.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="one search result folder (summary.json, evaluation.h5)")
    parser.add_argument("--cache-dir", default=None, help="the cache the audit ran with (default: the usual)")
    parser.add_argument("--reference-models", type=int, default=16)
    parser.add_argument("--train-subset", type=int, default=None, help="the audit's --train-subset, if it had one")
    args = parser.parse_args()

    from worstforget.audit.result import SearchAudit
    from worstforget.core.errors import WorstforgetError
    from worstforget.setting import prepare_setting
    from worstforget.training.loop import predict_logits
    from worstforget.training.outputs import logit_scaled_confidence

    h5_path = args.folder / "evaluation.h5"
    if not h5_path.is_file():
        raise SystemExit(f"{h5_path}: no such file; run the audit with --attacks first")
    try:
        audit = SearchAudit.read(args.folder)
    except WorstforgetError as exc:
        raise SystemExit(str(exc)) from None
    setting_doc = audit.summary()["setting"]
    spec = setting_doc["model"]
    setting = prepare_setting(dataset=setting_doc["dataset"]["name"], model=spec["name"], norm=spec["norm"],
                              train_overrides=spec["train"], seed=spec["seed"], cache_dir=args.cache_dir,
                              train_subset=args.train_subset)
    if setting.original_key != setting_doc["original_key"]:
        raise SystemExit(f"the cache rebuilt another original ({setting.original_key}, the audit's "
                         f"{setting_doc['original_key']}); pass the audit's --cache-dir and --train-subset")
    refs = setting.references(args.reference_models)
    out_mean, in_mean = refs.out_mean("lsc"), refs.in_mean("lsc")
    with torch.no_grad():
        original = logit_scaled_confidence(predict_logits(setting.original, setting.data.x_train).double(),
                                           setting.data.y_train).numpy()

    method = audit.method
    print(f"{args.folder}: medians over each set's samples of φ (logit-scaled confidence)\n")
    print("| set | original | IN (half) | OUT (half) | retrained | unlearned | |unlearned − OUT| "
          "| |unlearned − retrained| |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with h5py.File(h5_path, "r") as h5:
        for kind in h5:
            for i in h5[kind]:
                group = h5[kind][i]
                if method not in group:
                    continue
                rows = group["forget_set"][:]
                unlearned = group[method]["lsc_unlearned"][:].mean(0)
                retrained = group[method]["lsc_retrained"][:].mean(0)
                cells = [np.median(original[rows]), np.median(in_mean[rows]), np.median(out_mean[rows]),
                         np.median(retrained), np.median(unlearned), np.median(np.abs(unlearned - out_mean[rows])),
                         np.median(np.abs(unlearned - retrained))]
                label = kind if len(h5[kind]) == 1 else f"{kind} {i}"
                print(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
