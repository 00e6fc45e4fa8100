"""A memorization proxy by held-out retraining (Feldman-style), cached on disk.

mem_i ≈ E[p_y(x_i) | i trained on] − E[p_y(x_i) | i held out], estimated from models trained on random
halves of the training set (every sample in exactly half of them), all trained at once by the ensemble
trainer. The scores depend only on the recipe, the data, the number of models and the seed, so they are
cached under a hash of those: the memorization selector and RUM reuse one set of shadow models.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.cache import ArrayCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.seeds import derive_seed, generator
from ..datasets import Dataset
from .loop import predict_logits

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
        spec: the recipe the shadow models are trained with (the original's).
        data: the training data.
        num_models: shadow models; each sample is trained on by exactly num_models // 2 of them.
        seed: seeds the halves and the models' initialisation and batch order.
        cache: where scores are kept (default: the cache folder of the environment).
    """
    from .ensemble import fit_ensemble

    if num_models < 2:
        raise ConfigError(f"the memorization proxy needs at least 2 models (trained-on and held-out), got {num_models}")
    cache = cache if cache is not None else ArrayCache()
    key = memorization_key(spec, data, num_models=num_models, seed=seed)
    hit = cache.get(CACHE_KIND, key)
    if hit is not None and hit.get("scores", np.empty(0)).shape == (data.num_train,):
        return hit["scores"]
    ranks = torch.rand(num_models, data.num_train, generator=generator(seed, "memorization")).argsort(0).argsort(0)
    masks = ranks < num_models // 2  # every sample in exactly half of the models
    models = fit_ensemble(spec, data, seeds=[derive_seed(seed, "memorization", i) for i in range(num_models)],
                          sample_weights=masks.float().to(data.device), progress=progress,
                          description="memorization models")
    conf = torch.stack([torch.softmax(predict_logits(m, data.x_train), 1).gather(1, data.y_train[:, None]).squeeze(1)
                        for m in models]).cpu()  # (M, N)
    inside = (conf * masks).sum(0) / masks.sum(0)
    outside = (conf * ~masks).sum(0) / (~masks).sum(0)
    scores = (inside - outside).numpy().astype(np.float32)
    cache.put(CACHE_KIND, key, {"scores": scores})
    return scores
