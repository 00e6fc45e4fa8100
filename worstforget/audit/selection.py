"""Attack-validated selection: among candidate forget sets, keep the one the judging attack finds most exposed.

The search's objectives are per-sample proxies of what an attack measures, and U-LiRA at a low false-positive
rate is a property of the whole set (its threshold sits in the tail of every example's retrained scores), which
no per-sample proxy ranks reliably: where proxy and attack disagree a one-shot heuristic can beat the search.
Selection asks the attack. Every distinct candidate — the search, its stability twin, the searches by the other
objectives, and the baseline sets — is attacked by U-LiRA on `num_models` unlearned vs `num_models` retrained
models, averaged over random halvings into shadows and targets; the most exposed by TPR at 0.1% FPR (then 1%)
becomes the worst-case set. A baseline set can win: the audit's worst case is the hardest set it found by any
of its means, and the record says which.

The models use seeds apart from those of the reported attack (`attack_eval`: unlearned 0…N−1, retrained
100000+), so the report scores the chosen set with fresh, independent models and the choice does not flatter
it; the selection's own scores are kept beside them.
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


def _key(forget: torch.Tensor) -> tuple[int, ...]:
    return tuple(forget.sort().values.tolist())


def select_by_attack(setting: Setting, method: str, params: dict, candidates: dict[str, torch.Tensor], *,
                     num_models: int, progress: Progress | None = None,
                     executor: Executor | None = None) -> dict:
    """Attack every candidate forget set (training indices) with U-LiRA and name the most exposed.

    Returns {"chosen", "num_models", "seconds", "scores": {name: {tpr_at_0.1pct_fpr, tpr_at_1pct_fpr, auc}}};
    candidates holding the same set are attacked once and share its scores.
    """
    seeds = [SELECT_SEED + s for s in range(num_models)]
    distinct: dict[tuple, str] = {}
    for name, forget in candidates.items():
        distinct.setdefault(_key(forget), name)
    calls, spans = [], {}
    for name in distinct.values():
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
    scores = {name: scored[distinct[_key(forget)]] for name, forget in candidates.items()}
    chosen = max(scores, key=lambda n: (scores[n]["tpr_at_0.1pct_fpr"], scores[n]["tpr_at_1pct_fpr"]))
    return {"chosen": chosen, "num_models": num_models, "seconds": timer.seconds, "scores": scores}
