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

Composition (sample-wise sets): a set's TPR at a low FPR is the mean of its examples' shares (the fraction of an
example's unlearned-target scores above the set's threshold), so the union of the candidates holds a set at least
as exposed as each of them: the `size` examples with the largest shares. It becomes one more candidate, attacked
by models of its own whose seeds are disjoint from those that measured the shares (`COMPOSE_SEED`). With the same
seeds its models would nearly repeat the candidates' (same initialisation and batch order, a forget set that
differs in a few examples), so the examples that looked exposed by chance in that draw would look exposed again
and the composed set's score would carry its own selection. On fresh seeds it is an independent estimate, and the
set wins only if the attack finds its examples exposed again.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.executor import Executor, serial
from ..core.progress import Progress
from ..core.runtime import Timer
from ..scoring.privacy import u_lira_halvings, u_lira_per_example, u_lira_split_average
from ..setting import Setting
from .attack_eval import RETRAIN_SEED_OFFSET, stack, statistics_calls

SELECT_SEED = 50_000  # unlearned models of the selection: 50000…; retrained: 150000… (never the report's)
COMPOSE_SEED = 60_000  # the composed set's own models: 60000… and 160000… (neither the shares' nor the report's)
SELECT_MODELS_MAX = COMPOSE_SEED - SELECT_SEED  # more selection models would run into the composed set's seeds
SPLITS = 20


def _key(forget: torch.Tensor) -> tuple[int, ...]:
    return tuple(forget.sort().values.tolist())


def _attack(setting, method: str, params: dict, sets: dict[str, torch.Tensor], seeds: list[int], progress,
            executor) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """Per set, the (unlearned, retrained) statistics (models × examples) of `seeds`' models, and the seconds."""
    calls, spans = [], {}
    for name, forget in sets.items():
        unlearned = statistics_calls(method, params, forget, seeds)
        retrained = statistics_calls("retrain", {}, forget, [RETRAIN_SEED_OFFSET + s for s in seeds])
        spans[name] = (len(calls), len(calls) + len(unlearned), len(calls) + len(unlearned) + len(retrained))
        calls += unlearned + retrained
    with Timer() as timer:
        results = (executor or serial()).map(setting, calls, progress=progress, description="selection models")
    stats = {name: (stack([x for part in results[a:b] for x in part], "lsc"),
                    stack([x for part in results[b:c] for x in part], "lsc")) for name, (a, b, c) in spans.items()}
    return stats, timer.seconds


def _share_key(share: dict, j: int) -> tuple[float, float, float]:
    return float(share["tpr_at_0.1pct_fpr"][j]), float(share["tpr_at_1pct_fpr"][j]), float(share["score"][j])


def compose(sets: dict[str, torch.Tensor], shares: dict[str, dict], size: int) -> torch.Tensor:
    """The `size` most exposed training indices of the union of `sets`, by each example's share of its set's
    U-LiRA (`u_lira_per_example`: TPR at 0.1% FPR, then 1%, then the mean score; averaged over the sets that hold
    it), ties to the lower index."""
    where: dict[int, list[tuple[str, int]]] = {}
    for name, forget in sets.items():
        for j, i in enumerate(forget.tolist()):
            where.setdefault(i, []).append((name, j))
    keys = {i: tuple(np.mean([_share_key(shares[n], j) for n, j in spots], axis=0)) for i, spots in where.items()}
    ranked = sorted(keys, key=lambda i: (tuple(-k for k in keys[i]), i))
    return torch.tensor(sorted(ranked[:size]), dtype=torch.long)


def _rank(scores: dict) -> str:
    return max(scores, key=lambda n: (scores[n]["tpr_at_0.1pct_fpr"], scores[n]["tpr_at_1pct_fpr"]))


def select_by_attack(setting: Setting, method: str, params: dict, candidates: dict[str, torch.Tensor], *,
                     num_models: int, compose_sets: bool = False, progress: Progress | None = None,
                     executor: Executor | None = None) -> dict:
    """Attack every candidate forget set (training indices) with U-LiRA and name the most exposed; with
    `compose_sets` (sample-wise candidates of one size) the composed set of their most exposed examples competes
    too, under the name "composed".

    Returns {"chosen", "num_models", "seconds", "scores": {name: {tpr_at_0.1pct_fpr, tpr_at_1pct_fpr, auc}}} and,
    when composed, "composed" (its training indices) and "composed_from" (how many of them each candidate held);
    candidates holding the same set are attacked once and share its scores.
    """
    seeds = [SELECT_SEED + s for s in range(num_models)]
    distinct: dict[tuple, str] = {}
    for name, forget in candidates.items():
        distinct.setdefault(_key(forget), name)
    sets = {name: candidates[name] for name in distinct.values()}
    stats, seconds = _attack(setting, method, params, sets, seeds, progress, executor)
    # the halvings' scores serve both the set's average and, when composing, its examples' shares
    halved = {name: u_lira_halvings(*stats[name], halvings=SPLITS) for name in sets}
    scored = {name: u_lira_split_average(*stats[name], halvings=halved[name]) for name in sets}
    scores = {name: scored[distinct[_key(forget)]] for name, forget in candidates.items()}
    record = {"num_models": num_models}
    sizes = {len(f) for f in candidates.values()}
    if compose_sets and len(sizes) == 1:
        shares = {name: u_lira_per_example(*stats[name], halvings=halved[name]) for name in sets}
        composed = compose(sets, shares, sizes.pop())
        held = set(composed.tolist())
        record["composed"] = composed.tolist()
        record["composed_from"] = {name: len(held & set(f.tolist())) for name, f in candidates.items()}
        if _key(composed) in distinct:  # the composition is one of the candidates: nothing new to attack
            scores["composed"] = scored[distinct[_key(composed)]]
        else:
            fresh = [COMPOSE_SEED + s for s in range(num_models)]
            more, extra = _attack(setting, method, params, {"composed": composed}, fresh, progress, executor)
            scores["composed"] = u_lira_split_average(*more["composed"], splits=SPLITS)
            seconds += extra
    return {"chosen": _rank(scores), **record, "seconds": seconds, "scores": scores}
