"""Attack-validated selection: the forget set's samples chosen by the per-example attack itself.

The search's objective is a per-sample proxy of what U-LiRA measures; where proxy and attack disagree (a
method whose damage is a shift of every easy sample, say) a one-shot heuristic can beat it. Selection asks
the attack. The candidates — the search, its stability twin, searches by the other objectives and from each
baseline, and the baseline sets — are pooled (at most `pool_factor`·m samples, those in most candidates
first); `num_models` runs of the method unlearn the whole pool and `num_models` Retrains leave it out; every
pooled sample gets U-LiRA's per-example separation of the two, |μ_U − μ_R| / √v, v the two variances'
mean shrunk halfway to the pool's median (8 models per side estimate a variance poorly); the m most
separated samples are the worst-case set. U-LiRA at low FPR counts exactly such samples.

The models use seeds apart from those of the reported attack (`attack_eval`: unlearned 0…N−1, retrained
100000+), so the report scores the chosen set with fresh, independent models; the selection's own scores
(which flatter its choice) are kept beside them.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.executor import Executor, serial
from ..core.progress import Progress
from ..core.runtime import Timer
from ..setting import Setting
from .attack_eval import RETRAIN_SEED_OFFSET, stack, statistics_calls

SELECT_SEED = 50_000  # unlearned models of the selection: 50000…; retrained: 150000… (never the report's)
POOL_FACTOR = 3.0  # the pool holds at most this many times m samples (Retrain leaves the whole pool out)


def separation(stats_u: np.ndarray, stats_r: np.ndarray) -> np.ndarray:
    """Per-example separation of unlearned (M, n) from retrained (M', n) statistics: |μ_U − μ_R| / √v with
    v_i = ½·a_i + ½·median(a) and a_i = (σ_U,i² + σ_R,i²) / 2 (population variances)."""
    a = (stats_u.var(axis=0) + stats_r.var(axis=0)) / 2
    v = 0.5 * a + 0.5 * np.median(a)
    return np.abs(stats_u.mean(axis=0) - stats_r.mean(axis=0)) / np.sqrt(np.maximum(v, 1e-12))


def pool_of(candidates: dict[str, torch.Tensor], m: int, factor: float = POOL_FACTOR) -> torch.Tensor:
    """The samples of the candidate sets, at most ⌈factor·m⌉ (never fewer than m): those in most candidates
    first, ties in the order the candidates are given (the search's first). Sorted training indices."""
    votes: dict[int, int] = {}
    first: dict[int, int] = {}
    for rank, forget in enumerate(candidates.values()):
        for i in forget.tolist():
            votes[i] = votes.get(i, 0) + 1
            first.setdefault(i, rank * 10**9 + len(first))
    order = sorted(votes, key=lambda i: (-votes[i], first[i]))
    keep = order[: max(m, int(np.ceil(factor * m)))]
    return torch.tensor(sorted(keep), dtype=torch.long)


def select_by_attack(setting: Setting, method: str, params: dict, candidates: dict[str, torch.Tensor], *, m: int,
                     num_models: int, pool_factor: float = POOL_FACTOR, progress: Progress | None = None,
                     executor: Executor | None = None) -> tuple[torch.Tensor, dict]:
    """The m pooled samples with the largest per-example U-LiRA separation, and the selection's record:
    {"pool_size", "num_models", "seconds", "scores": {candidate: mean separation of its samples, chosen: ...},
    "share_chosen": {candidate: fraction of its samples kept}}."""
    pool = pool_of(candidates, m, pool_factor)
    seeds = [SELECT_SEED + s for s in range(num_models)]
    calls = (statistics_calls(method, params, pool, seeds)
             + statistics_calls("retrain", {}, pool, [RETRAIN_SEED_OFFSET + s for s in seeds]))
    with Timer() as timer:
        results = (executor or serial()).map(setting, calls, progress=progress, description="selection models")
    flat = [x for part in results for x in part]
    per_u, per_r = flat[:num_models], flat[num_models:]
    d = separation(stack(per_u, "lsc"), stack(per_r, "lsc"))  # aligned with the sorted pool
    order = np.argsort(-d, kind="stable")[:m]
    chosen = pool[torch.as_tensor(np.sort(order))]
    where = {i: k for k, i in enumerate(pool.tolist())}

    def mean_separation(forget: torch.Tensor) -> float | None:
        rows = [where[i] for i in forget.tolist() if i in where]
        return float(d[rows].mean()) if len(rows) == len(forget) else None  # None: not all pooled

    kept = set(chosen.tolist())
    record = {"pool_size": int(len(pool)), "num_models": num_models, "seconds": timer.seconds,
              "scores": {**{k: mean_separation(v) for k, v in candidates.items()}, "chosen": float(d[order].mean())},
              "share_chosen": {k: float(np.mean([i in kept for i in v.tolist()])) for k, v in candidates.items()}}
    return chosen, record
