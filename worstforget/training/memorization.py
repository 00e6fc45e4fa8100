"""A memorization proxy by held-out retraining (Feldman-style), cached on disk.

mem_i ≈ E[p_y(x_i) | i trained on] − E[p_y(x_i) | i held out], estimated from the reference models
(training/reference.py): models trained on random halves of the training set, every sample in exactly
half of them, all trained at once by the ensemble trainer and shared with the search's exposure
objective. The scores depend only on the recipe, the data, the number of models and the seed, so they
are cached under a hash of those: the memorization selector and RUM reuse one set of models.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core.cache import ArrayCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..datasets import Dataset
from .reference import reference_statistics

if TYPE_CHECKING:
    from .original import ModelSpec

CACHE_KIND = "memorization"
VERSION = 1  # bump when the estimator changes, so old cached scores are not reused


def memorization_key(spec: ModelSpec, data: Dataset, *, num_models: int, seed: int) -> str:
    """Cache key: the recipe, the data (its fingerprint, or a hash of its training tensors), models and seed."""
    data_id = data.fingerprint or stable_hash([data.x_train, data.y_train])
    return stable_hash({"v": VERSION, "spec": spec.to_dict(), "data": data_id, "num_models": num_models, "seed": seed})


def memorization_scores(spec: ModelSpec, data: Dataset, *, num_models: int = 8, seed: int = 0,
                        progress: Progress | None = None, cache: ArrayCache | None = None) -> np.ndarray:
    """(num_train,) memorization proxy of every training sample (float32), cached.

    Args:
        spec: the recipe the reference models are trained with (the original's).
        data: the training data.
        num_models: reference models; each sample is trained on by exactly num_models // 2 of them.
        seed: seeds the halves and the models' initialisation and batch order.
        cache: where scores (and the reference models' outputs) are kept (default: the environment's cache).
    """
    if num_models < 2:
        raise ConfigError(f"the memorization proxy needs at least 2 models (trained-on and held-out), got {num_models}")
    cache = cache if cache is not None else ArrayCache()
    key = memorization_key(spec, data, num_models=num_models, seed=seed)
    hit = cache.get(CACHE_KIND, key)
    if hit is not None and hit.get("scores", np.empty(0)).shape == (data.num_train,):
        return hit["scores"]
    refs = reference_statistics(spec, data, num_models=num_models, seed=seed, progress=progress, cache=cache)
    scores = (refs.in_mean("prob") - refs.out_mean("prob")).astype(np.float32)
    cache.put(CACHE_KIND, key, {"scores": scores})
    return scores
