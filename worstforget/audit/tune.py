"""The paper's hyper-parameter protocol: pick the setting with the smallest Avg. Gap to Retrain on
random forget sets, then reuse it unchanged on the worst-case set."""
from __future__ import annotations

import itertools
from typing import Any

from ..core.progress import Progress
from ..forget_sets import random_forget_set
from ..methods import make_method, parse_params
from ..setting import Setting, forget_size
from ..core.stats import aggregate
from .units import run_on_sets


def parse_grid(method: str, specs: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """['lr=1e-3,1e-2', 'epochs=5,10'] → {'lr': [0.001, 0.01], 'epochs': [5, 10]} (typed by the method)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        grid[key.strip().replace("-", "_")] = [parse_params(method, [f"{key}={v}"])[key.strip().replace("-", "_")]
                                               for v in values.split(",") if v.strip()]
    return grid


def tune(setting: Setting, method: str, grid: dict[str, list[Any]], *, base: dict | None = None,
         forget_ratio: float = 0.1, num_sets: int = 3, seed: int = 0, progress: Progress | None = None) -> dict:
    """Evaluate every grid point on `num_sets` random forget sets; return all rows and the best params."""
    keys = sorted(grid)
    m = forget_size(setting.data.num_train, forget_ratio)
    sets = [random_forget_set(setting.data.num_train, m, seed + 1000 + r) for r in range(num_sets)]
    points = [{**(base or {}), **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))]
    for params in points:
        make_method(method, params)  # validate every point before running any
    rows = []
    for params in points:
        block = run_on_sets(setting, [(method, params)], sets, seeds=[0], progress=progress)
        rows.append({"params": params, "avg_gap": aggregate(block.metrics[method]["avg_gap"])})
    best = min(rows, key=lambda r: r["avg_gap"]["mean"])
    return {"method": method, "grid": grid, "rows": rows, "best": best["params"], "best_avg_gap": best["avg_gap"],
            "forget_ratio": forget_ratio, "num_sets": num_sets, "set_seeds": [seed + 1000 + r for r in range(num_sets)]}
