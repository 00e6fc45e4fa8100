"""Forgetting quality of Gaussian stand-ins for retrained and unlearned outputs, released vs bounded rates.

    python experiments/simulate_epsilon.py [--examples 200] [--seed 0]

Per example, N "retrained" values ~ N(0, 1) and N "unlearned" values ~ N(shift, 1); prints F with the
challenge's empirical rates and with Clopper–Pearson-bounded rates (α = 0.05) for N = 16, 64, 256. The
shift-0 rows are the finite-sample floor of the released score quoted in `privacy.epsilon.resolution_note`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from worstforget.scoring.privacy import (  # noqa: E402
    BOUND_ALPHA,
    forgetting_quality,
    per_example_epsilon,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| N | shift (sd) | F released | F bounded |\n|---:|---:|---:|---:|")
    for n in (16, 64, 256):
        for shift in (0.0, 0.5, 1.0, 2.0, 4.0):
            retrain = rng.normal(size=(n, args.examples))
            unlearn = rng.normal(shift, 1.0, size=(n, args.examples))
            released = forgetting_quality(per_example_epsilon(retrain, unlearn), n)
            bounded = forgetting_quality(per_example_epsilon(retrain, unlearn, confidence_alpha=BOUND_ALPHA), n)
            print(f"| {n} | {shift:g} | {released:.3f} | {bounded:.3f} |")


if __name__ == "__main__":
    main()
