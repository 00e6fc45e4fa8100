"""The paper's hyper-parameter protocol: pick the setting with the smallest Avg. Gap to Retrain on
random forget sets, then reuse it unchanged on the worst-case set.

Two samplers over the same space (the product of the values given per hyper-parameter) and the same
objective — the mean Avg. Gap of the method to Retrain over the random sets (seed 0 on each):
`grid` tries every point; `tpe` lets Optuna's TPE propose points in batches of the executor's width,
in a study stored in the cache folder (one SQLite file per tuning problem), so a later call resumes it.
Every trial's units are executor tasks and cached like any other unit: a point seen before costs nothing.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.executor import Executor, serial
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.stats import Aggregate, aggregate
from ..forget_sets import forget_size, random_forget_set
from ..methods import make_method, parse_params
from ..setting import Setting
from .result import run_arrays
from .units import Unit, run_units

SAMPLERS = ("grid", "tpe")
TUNE_INSTALL = "pip install 'worstforget[tune]'"


def parse_grid(method: str, specs: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """['lr=1e-3,1e-2', 'epochs=5,10'] → {'lr': [0.001, 0.01], 'epochs': [5, 10]} (typed by the method)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        grid[key.strip().replace("-", "_")] = [parse_params(method, [f"{key}={v}"])[key.strip().replace("-", "_")]
                                               for v in values.split(",") if v.strip()]
    return grid


def tuning_sets(setting: Setting, forget_ratio: float, num_sets: int, seed: int) -> list:
    m = forget_size(setting.data.num_train, forget_ratio)
    return [random_forget_set(setting.data.num_train, m, seed + 1000 + r) for r in range(num_sets)]


def avg_gaps(setting: Setting, method: str, points: list[dict], sets: list, *, executor: Executor | None = None,
             progress: Progress | None = None) -> list[Aggregate]:
    """The Avg. Gap to Retrain (aggregated over the sets, seed 0) of `method` at every point: Retrain's units
    once per set, then every (point, set) unit, all in one executor map."""
    where = [f"tuning set {r + 1} of {len(sets)}" for r in range(len(sets))]
    units = [Unit("retrain", {}, forget, 0, w) for forget, w in zip(sets, where)]  # stacked (units.run_units)
    units += [Unit(method, params, forget, 0, w) for params in points for forget, w in zip(sets, where)]
    records = run_units(setting, units, progress=progress, executor=executor, description="tuning units")
    retrain, runs = records[:len(sets)], records[len(sets):]
    out = []
    for p in range(len(points)):
        mine = runs[p * len(sets):(p + 1) * len(sets)]
        block = run_arrays({"retrain": [[r] for r in retrain], method: [[r] for r in mine]})
        out.append(aggregate(block[method]["avg_gap"]))
    return out


def tune(setting: Setting, method: str, grid: dict[str, list[Any]], *, base: dict | None = None,
         forget_ratio: float = 0.1, num_sets: int = 3, seed: int = 0, sampler: str = "grid", trials: int = 20,
         progress: Progress | None = None, executor: Executor | None = None) -> dict:
    """Evaluate grid points on `num_sets` random forget sets — every point (`grid`), or `trials` more points
    proposed by TPE (`tpe`, resumable) — and return the evaluated rows and the best params."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    keys = sorted(grid)
    sets = tuning_sets(setting, forget_ratio, num_sets, seed)
    points = [{**(base or {}), **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))]
    for params in points:
        make_method(method, params)  # validate every point before running any
    extra: dict = {}
    if sampler == "grid":
        rows = [{"params": p, "avg_gap": gap} for p, gap in
                zip(points, avg_gaps(setting, method, points, sets, executor=executor, progress=progress))]
    else:
        rows, extra = tpe_rows(setting, method, grid, base or {}, sets, forget_ratio=forget_ratio, seed=seed,
                               trials=trials, executor=executor, progress=progress)
    scored = [r for r in rows if r["avg_gap"]["mean"] is not None]
    if not scored:
        raise ConfigError(f"no {method} setting produced a finite Avg. Gap on the tuning sets; widen the grid")
    best = min(scored, key=lambda r: r["avg_gap"]["mean"])
    return {"method": method, "grid": grid, "rows": rows, "best": best["params"], "best_avg_gap": best["avg_gap"],
            "forget_ratio": forget_ratio, "num_sets": num_sets, "set_seeds": [seed + 1000 + r for r in range(num_sets)],
            "sampler": sampler, **extra}


# --- TPE (Optuna) --------------------------------------------------------------------------------------

def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"--sampler tpe needs Optuna, which is not installed: {TUNE_INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver's progress bar and run log say enough
    return optuna


def study_key(setting: Setting, method: str, grid: dict, base: dict, forget_ratio: float, num_sets: int,
              seed: int) -> str:
    """What a tuning problem is: the original, the method and its space, the tuning sets, the evaluation."""
    return stable_hash({"v": 1, "original": setting.original_key, "spec": setting.spec.to_dict(), "method": method,
                        "grid": grid, "base": base, "forget_ratio": forget_ratio, "num_sets": num_sets, "seed": seed,
                        "mia_seed": setting.mia_seed, "mia_resamples": setting.mia_resamples})


def _choice_values(values: list) -> list:
    """Optuna's categorical choices: the values themselves when it can store them, else their positions."""
    plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
    return list(values) if plain else list(range(len(values)))


def tpe_rows(setting: Setting, method: str, grid: dict[str, list[Any]], base: dict, sets: list, *,
             forget_ratio: float, seed: int, trials: int, executor: Executor | None = None,
             progress: Progress | None = None) -> tuple[list[dict], dict]:
    """Run `trials` more TPE trials on the study of this tuning problem; every distinct point it has evaluated,
    this call or earlier ones, as rows. Trials are asked in batches of the executor's width and their units run
    in one map per batch; a point already evaluated is told its known value without any work (and an unseen
    point is queued in its place), and the search stops early once every point of the grid is evaluated."""
    optuna = import_optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    executor = executor or serial()
    keys = sorted(grid)
    choices = {k: _choice_values(grid[k]) for k in keys}
    key = study_key(setting, method, grid, base, forget_ratio, len(sets), seed)
    storage, path = None, None
    if setting.records.enabled:
        path = Path(setting.records.root) / "tune" / f"{key}.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{path}"
    study = optuna.create_study(study_name=key, storage=storage, load_if_exists=True, direction="minimize")
    # seeded by the trials so far: a resumed study must not replay the first call's proposals
    study.sampler = optuna.samplers.TPESampler(
        seed=int(stable_hash({"seed": seed, "trials": len(study.trials)}, 8), 16))
    known = {t.user_attrs["point"]: t.user_attrs["avg_gap"] for t in study.trials
             if t.state == optuna.trial.TrialState.COMPLETE and "point" in t.user_attrs}
    space = math.prod(len(v) for v in grid.values())
    done, queued = 0, set()
    while done < trials and len(known) < space:
        batch = [study.ask() for _ in range(min(executor.parallelism, trials - done))]
        params = []
        for trial in batch:
            chosen = {k: trial.suggest_categorical(k, choices[k]) for k in keys}
            params.append({**base, **{k: grid[k][choices[k].index(v)] for k, v in chosen.items()}})
        names = [_point(p) for p in params]
        fresh = list(dict.fromkeys(n for n in names if n not in known))
        try:
            gaps = avg_gaps(setting, method, [params[names.index(n)] for n in fresh], sets, executor=executor,
                            progress=progress) if fresh else []
        except BaseException:
            for trial in batch:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        known.update(zip(fresh, gaps))
        for trial, name, p in zip(batch, names, params):
            trial.set_user_attr("point", name)
            trial.set_user_attr("avg_gap", known[name])
            if known[name]["mean"] is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, known[name]["mean"])
        # each proposal TPE repeats queues an unseen point next (grid order): a small space is covered in at
        # most twice its size in trials, where TPE alone may keep proposing its favourites
        repeats = len(batch) - len(fresh)
        unseen = [p for p in itertools.product(*(range(len(grid[k])) for k in keys))
                  if _point({**base, **{k: grid[k][i] for k, i in zip(keys, p)}}) not in known and p not in queued]
        for p in unseen[:repeats]:
            study.enqueue_trial({k: choices[k][i] for k, i in zip(keys, p)})
            queued.add(p)
        done += len(batch)
    rows, seen = [], set()
    for t in study.trials:
        name = t.user_attrs.get("point")
        if name is not None and name not in seen and name in known:
            seen.add(name)
            rows.append({"params": _params_of(name, grid, base), "avg_gap": known[name]})
    finished = sum(t.state.is_finished() for t in study.trials)
    return rows, {"trials": finished, "trials_run": done, "study": str(path) if path else None,
                  "study_name": key, "space": space}


def _point(params: dict) -> str:
    """A point's name in the study: its params as canonical JSON."""
    return json.dumps(params, sort_keys=True, default=str)


def _params_of(name: str, grid: dict[str, list[Any]], base: dict) -> dict:
    """The typed params of a stored point (its JSON names them; the grid holds the typed values)."""
    stored = json.loads(name)
    out = dict(base)
    for k, values in grid.items():
        out[k] = next(v for v in values if json.dumps(v, default=str) == json.dumps(stored[k], default=str))
    return out
