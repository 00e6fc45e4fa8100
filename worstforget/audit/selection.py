"""Attack-validated selection: among candidate forget sets, keep the one a cheap U-LiRA finds most exposed.

The search's objective is a per-sample proxy of what an attack measures; where the proxy and the attack
disagree (a method whose damage is a shift of every easy sample, say) a one-shot heuristic can beat it.
Selection asks the attack itself: the candidates — the search, its stability twin, and a search started
from each baseline set — are each scored by U-LiRA on `num_models` unlearned vs `num_models` retrained
models, averaged over random halvings into shadows and targets, and the most exposed by TPR at 1% FPR
(AUC breaks ties) becomes the worst-case set. Its models use seeds apart from those of the reported
attack (`attack_eval`: unlearned 0…N−1, retrained 100000+), so the reported table scores the chosen set
with fresh, independent models and the choice does not flatter it; both numbers are kept.
"""
from __future__ import annotations

import torch

from ..core.executor import Executor, serial
from ..core.progress import Progress
from ..core.runtime import Timer
from ..scoring.privacy import u_lira_split_average
from ..setting import Setting
from .attack_eval import RETRAIN_SEED_OFFSET, stack, statistics_calls

SELECT_SEED = 50_000  # unlearned models of the selection: 50000…; retrained: 150000… (never the report's)
SPLITS = 20


def select_by_attack(setting: Setting, method: str, params: dict, candidates: dict[str, torch.Tensor], *,
                     num_models: int, progress: Progress | None = None,
                     executor: Executor | None = None) -> dict:
    """Score every candidate forget set (training indices) with U-LiRA and name the most exposed.

    Returns {"chosen", "num_models", "seconds", "scores": {name: {tpr_at_1pct_fpr, tpr_at_0.1pct_fpr, auc}}}.
    Candidates holding the same set are scored once.
    """
    seeds = [SELECT_SEED + s for s in range(num_models)]
    distinct: dict[tuple, str] = {}
    for name, forget in candidates.items():
        distinct.setdefault(tuple(forget.sort().values.tolist()), name)
    calls, spans = [], {}
    for key, name in distinct.items():
        forget = candidates[name]
        unlearned = statistics_calls(method, params, forget, seeds)
        retrained = statistics_calls("retrain", {}, forget, [RETRAIN_SEED_OFFSET + s for s in seeds])
        spans[name] = (len(calls), len(calls) + len(unlearned), len(calls) + len(unlearned) + len(retrained))
        calls += unlearned + retrained
    with Timer() as timer:
        results = (executor or serial()).map(setting, calls, progress=progress, description="selection models")
    scored = {}
    for name, (a, b, c) in spans.items():
        per_u = [x for part in results[a:b] for x in part]
        per_r = [x for part in results[b:c] for x in part]
        scored[name] = u_lira_split_average(stack(per_u, "lsc"), stack(per_r, "lsc"), splits=SPLITS)
    scores = {name: scored[distinct[tuple(forget.sort().values.tolist())]] for name, forget in candidates.items()}
    chosen = max(scores, key=lambda n: (scores[n]["tpr_at_1pct_fpr"], scores[n]["auc"]))
    return {"chosen": chosen, "num_models": num_models, "seconds": timer.seconds, "scores": scores}
