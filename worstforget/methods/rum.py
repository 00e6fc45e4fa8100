"""RUM (Zhao, Kurmanji, Bărbulescu, Triantafillou & Triantafillou, NeurIPS 2024): refine the forget set
into groups of similar memorization and unlearn them one after another, least memorised first."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..core.cache import ArrayCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.seeds import derive_seed
from ..datasets import Dataset
from ..training.memorization import memorization_scores
from .base import UnlearningMethod, check_weights
from .registry import METHODS, register_method

GROUPS = ("low", "mid", "high")


def memorization_groups(scores: np.ndarray, w: torch.Tensor) -> list[torch.Tensor]:
    """The forget side (w > 0) cut into three groups of (near) equal size by memorization score:
    [low, mid, high], each sorted by training index; ties in score go by index."""
    forget = torch.nonzero(w.detach().cpu() > 0).flatten().numpy()
    order = forget[np.lexsort((forget, scores[forget]))]  # by score, then index
    return [torch.as_tensor(np.sort(part), dtype=torch.long) for part in np.array_split(order, len(GROUPS))]


def without_rows(data: Dataset, removed: torch.Tensor) -> tuple[Dataset, torch.Tensor]:
    """The data with training rows `removed` taken out, and the kept original indices (sorted)."""
    keep_mask = torch.ones(data.num_train, dtype=torch.bool)
    keep_mask[removed] = False
    keep = torch.nonzero(keep_mask).flatten()
    if len(removed) == 0:
        return data, keep
    rows = keep.to(data.device)
    fingerprint = stable_hash([data.fingerprint, removed]) if data.fingerprint else ""
    return replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows], fingerprint=fingerprint), keep


@register_method("rum")
@dataclass(kw_only=True)
class Rum(UnlearningMethod):
    """RUM: split the forget set into low/mid/high memorization thirds and run `base` on each, low → mid → high.

    Source: Zhao et al., "What makes unlearning hard and what to do about it", NeurIPS 2024, and its released
    code (`main_forget.py --sequential`): step k forgets group k, and its retain side is the training set
    minus groups 1..k — earlier groups are neither retained nor forgotten again, so here they are removed
    from the data the base method sees, and the later groups are still retained. Memorization is the
    project's held-out-retraining proxy (`training.memorization`, cached; the paper's proxy variant),
    estimated with the original's recipe from `memorization_models` shadow models. The paper builds its
    forget sets from three equal-size memorization groups; an arbitrary forget set is cut into thirds by
    rank. Fractional weights: w_i > 0 puts sample i in a group, its step uses weight w_i, and from the next
    step on the sample is out of the data (its residual retain share 1 − w_i is not trained on again).

    `base_params` go to every step, `group_params` (e.g. {"high": {"lr": 0.001}}) to one group's step, as
    the paper tunes NegGrad+ per group. The loop fields inherited from the base class are not used; a
    `batch_size` set here is the base method's default batch size. Needs the original's recipe (spec).
    """

    differentiable = False
    iterative = False
    base: str = "finetune"
    base_params: dict = field(default_factory=dict)
    group_params: dict = field(default_factory=dict)  # {"low"|"mid"|"high": {param: value}}
    memorization_models: int = 8  # shadow models of the memorization proxy
    memorization_seed: int = 0  # fixed, so every unlearning seed reuses the same (cached) scores

    def base_method(self, group: str) -> UnlearningMethod:
        from . import make_method  # the package imports this module

        cls = METHODS.get(self.base)
        if cls is type(self) or cls.partitioned:
            raise ConfigError(f"rum cannot run {cls.name} per group (it needs a single trained model to unlearn "
                              "from); pick a method such as finetune, neggrad_plus or scrub as --param base=...")
        unknown = sorted(set(self.group_params) - set(GROUPS))
        if unknown:
            raise ConfigError(f"rum group_params has unknown group(s) {', '.join(unknown)}; use low, mid or high")
        method = make_method(self.base, {**self.base_params, **self.group_params.get(group, {})})
        if method.batch_size is None and self.batch_size is not None:
            method = method.resolved(self.batch_size)
        return method

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data).detach()
        methods = {g: self.base_method(g) for g in GROUPS}  # bad parameters fail before any training
        if spec is None:
            raise ConfigError("rum needs the original model's recipe (spec) to estimate memorization; it cannot "
                              "audit a bare checkpoint without --model, --epochs and --lr")
        if float(w.sum()) == 0:
            return copy.deepcopy(original).to(data.device).eval()
        scores = memorization_scores(spec, data, num_models=self.memorization_models, seed=self.memorization_seed,
                                     progress=progress, cache=ArrayCache(getattr(spec, "cache_dir", None)))
        model, removed = original, torch.zeros(0, dtype=torch.long)
        for name, group in zip(GROUPS, memorization_groups(scores, w)):
            if len(group) == 0:
                continue
            sub, keep = without_rows(data, removed)
            in_group = torch.zeros(data.num_train, dtype=torch.bool)
            in_group[group] = True
            step_w = torch.where(in_group[keep].to(data.device), w[keep.to(data.device)], w.new_zeros(()))
            model = methods[name].apply(model, sub, step_w, seed=derive_seed(seed, "rum", name), spec=spec,
                                        progress=progress)
            removed = torch.cat([removed, group])
        return model.eval()
