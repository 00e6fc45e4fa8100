"""Forget-set selectors of equal size, so the worst case can be shown beside cheap heuristics.

random: uniform; loss_quantile: the m samples at a quantile of the original model's loss (0 = the
easiest); memorization_proxy: held-out retraining (Feldman-style) — models trained on random halves
estimate how much more confidently a sample is predicted when it was trained on; class: whole random
classes; worst_case: the bi-level search (see `search`).
exposure: the samples on which the original model stands out most from the setting's reference models
(models on random halves that never trained on them), in the units of the search's exposure objective.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .core.errors import ConfigError
from .core.registry import Registry
from .core.seeds import generator
from .setting import Setting, forget_size, random_forget_set
from .training.loop import per_sample_loss

Selector = Callable[..., torch.Tensor]
SELECTORS: Registry[Selector] = Registry("selector")


@SELECTORS.register("random")
def select_random(setting: Setting, *, ratio: float, seed: int = 0, **_) -> torch.Tensor:
    """Uniformly random training samples."""
    return random_forget_set(setting.data.num_train, forget_size(setting.data.num_train, ratio), seed)


@SELECTORS.register("loss_quantile")
def select_loss_quantile(setting: Setting, *, ratio: float, quantile: float = 0.0, **_) -> torch.Tensor:
    """The m consecutive samples by original-model loss starting at `quantile` (0 = lowest loss)."""
    if not 0 <= quantile <= 1:
        raise ConfigError("--quantile must lie in [0, 1]")
    data = setting.data
    m = forget_size(data.num_train, ratio)
    order = per_sample_loss(setting.original, data.x_train, data.y_train).cpu().argsort()
    start = min(int(round(quantile * data.num_train)), data.num_train - m)
    return order[start:start + m].sort().values


def memorization_scores(setting: Setting, *, num_models: int = 8, seed: int = 0, progress=None) -> np.ndarray:
    """mem_i ≈ E[p_y | i trained on] − E[p_y | i held out], from models on random halves (cached in the setting's cache)."""
    from .core.cache import ArrayCache
    from .training.memorization import memorization_scores as scores

    cache = ArrayCache(setting.records.root, enabled=setting.records.enabled)
    return scores(setting.spec, setting.data, num_models=num_models, seed=seed, progress=progress, cache=cache)


@SELECTORS.register("memorization_proxy", aliases=("memorization",))
def select_memorization(setting: Setting, *, ratio: float, seed: int = 0, num_models: int = 8, progress=None,
                        **_) -> torch.Tensor:
    """The m most memorised samples by a held-out-retraining proxy (the RUM line of work)."""
    scores = memorization_scores(setting, num_models=num_models, seed=seed, progress=progress)
    m = forget_size(setting.data.num_train, ratio)
    return torch.as_tensor(np.sort(np.argsort(-scores, kind="stable")[:m]), dtype=torch.long)


def exposure_scores(setting: Setting, num_models: int = 16, *, reference_seed: int = 0,
                    progress=None) -> np.ndarray:
    """(num_train,) one-shot exposure of the original model against the setting's `num_models` reference models
    (training/reference.py `exposure`, the search's exposure objective): higher = more exposed."""
    from .training.loop import predict_logits
    from .training.reference import SampleReferences, exposure

    stats = setting.references(num_models, seed=reference_seed, progress=progress)
    refs = SampleReferences.from_stats(stats, device=setting.data.device)
    logits = predict_logits(setting.original, setting.data.x_train).double()
    return exposure(logits, setting.data.y_train, refs).cpu().numpy()


@SELECTORS.register("exposure")
def select_exposure(setting: Setting, *, ratio: float, num_models: int = 16, reference_seed: int = 0,
                    progress=None, **_) -> torch.Tensor:
    """The m samples the original model is most distinguishable on from models that never trained on them.

    Deterministic given the reference models (the same ones the search's exposure objective reads by default),
    so the selection seed is not used.
    """
    scores = exposure_scores(setting, num_models, reference_seed=reference_seed, progress=progress)
    m = forget_size(setting.data.num_train, ratio)
    return torch.as_tensor(np.sort(np.argsort(-scores, kind="stable")[:m]), dtype=torch.long)


@SELECTORS.register("class")
def select_class(setting: Setting, *, ratio: float, seed: int = 0, **_) -> torch.Tensor:
    """All samples of round(ratio · C) random classes (at least one)."""
    data = setting.data
    k = max(1, int(round(ratio * data.num_classes)))
    classes = torch.randperm(data.num_classes, generator=generator(seed, "class-selector"))[:k]
    return torch.nonzero(torch.isin(data.y_train.cpu(), classes)).flatten()
