"""Reference models: K models of the original's recipe on random halves of the training split, cached.

Every training sample is trained on by exactly K // 2 of them (IN) and held out by the others (OUT),
so per sample there are models that saw it and models that never did. From their outputs on the
training split come
  * the OUT distribution of a sample's true-label probability and logit-scaled confidence (what a
    model that never trained on it outputs: what a retrained model should look like to an attacker),
    used by the search's exposure objective, the exposure selector and offline attacks;
  * the IN mean, which with the OUT mean gives the held-out-retraining memorization proxy;
  * `exposure`: how far a model's output on a sample lies from that OUT distribution (the search's
    exposure objective and the exposure selector share this one definition).

The models depend only on the recipe, the data, K and the seed, so their per-model outputs are cached
under a hash of those (`ArrayCache` kind "reference") and shared by every consumer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.cache import ArrayCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed, generator
from ..datasets import Dataset
from .loop import fit, predict_logits
from .outputs import logit_scaled_confidence

if TYPE_CHECKING:
    from .original import ModelSpec

CACHE_KIND = "reference"
VERSION = 2  # bump when what is stored changes, so old cached arrays are not reused (2: paired halves)
# The streams the halves and the model seeds are drawn from. They carry the name of the memorization
# proxy, which introduced these models, so its scores are unchanged now that it reads them from here.
STREAM = "memorization"
UNITS = ("prob", "lsc")
# keys of the reference models this process trained (→ seconds): a cost line tells them from cached ones
TRAINED_HERE: dict[str, float] = {}  # true-label probability | logit-scaled confidence (log p_y − log Σ_{j≠y} p_j)


def reference_key(spec: ModelSpec, data: Dataset, *, num_models: int, seed: int) -> str:
    """Cache key: the recipe, the data (its fingerprint, or a hash of its training tensors), models and seed."""
    data_id = data.fingerprint or stable_hash([data.x_train, data.y_train])
    return stable_hash({"v": VERSION, "kind": CACHE_KIND, "spec": spec.to_dict(), "data": data_id,
                        "num_models": num_models, "seed": seed})


def reference_masks(num_models: int, num_train: int, seed: int) -> torch.Tensor:
    """(K, N) bool: model k trains on sample i. Models come in complementary pairs — each pair splits its own
    random permutation of the training split in halves — so every sample is trained on by exactly K/2 models,
    and every model trains on ⌊N/2⌋ or ⌈N/2⌉ samples: equal sizes (N even) let BatchNorm models train as one
    vmapped ensemble."""
    if num_models % 2:
        raise ConfigError(f"reference models come in complementary pairs; give an even number (got {num_models})")
    g = generator(seed, STREAM)
    masks = torch.zeros(num_models, num_train, dtype=torch.bool)
    for pair in range(num_models // 2):
        perm = torch.randperm(num_train, generator=g)
        masks[2 * pair, perm[: num_train // 2]] = True
        masks[2 * pair + 1, perm[num_train // 2:]] = True
    return masks


@dataclass(frozen=True)
class ReferenceStats:
    """Per-model outputs of the reference models on the training split, and per-sample summaries.

    Arrays are (K, N): `inside[k, i]` says whether model k trained on sample i; `prob` and `lsc` are model
    k's true-label probability and logit-scaled confidence of sample i (eval mode, no augmentation).
    """

    inside: np.ndarray  # (K, N) bool
    prob: np.ndarray  # (K, N) float32, softmax of the float32 logits
    lsc: np.ndarray  # (K, N) float64, from the float32 logits in double precision
    seconds: float | None = None  # wall time of their training, measured when trained (None: unknown)
    source: str = "trained"  # trained (by this call) | cache (trained earlier, shared by every consumer)

    @property
    def num_models(self) -> int:
        return self.inside.shape[0]

    def values(self, unit: str) -> np.ndarray:
        if unit not in UNITS:
            raise ConfigError(f"unknown reference unit {unit!r}; use one of {', '.join(UNITS)}")
        return self.prob if unit == "prob" else self.lsc

    def out_mean(self, unit: str) -> np.ndarray:
        """Per-sample mean over the models that never trained on it. (N,)"""
        return _masked_mean(self.values(unit), ~self.inside)

    def out_std(self, unit: str) -> np.ndarray:
        """Per-sample standard deviation (ddof 0) over the models that never trained on it. (N,)"""
        values, out = self.values(unit), ~self.inside
        centred = np.where(out, values - self.out_mean(unit), 0.0)
        return np.sqrt((centred**2).sum(0) / out.sum(0)).astype(values.dtype)

    def in_mean(self, unit: str) -> np.ndarray:
        """Per-sample mean over the models that trained on it. (N,)"""
        return _masked_mean(self.values(unit), self.inside)


@dataclass(frozen=True)
class SampleReferences:
    """The OUT distribution of every sample as tensors (rows aligned with a model's logits): mean and std of
    the true-label probability and of the logit-scaled confidence over the models that never trained on it.

    Constants wherever they are used: an unrolled hypergradient through an objective reading them stays exact.
    """

    prob_mean: torch.Tensor  # (N,)
    prob_std: torch.Tensor  # (N,)
    lsc_mean: torch.Tensor  # (N,)
    lsc_std: torch.Tensor  # (N,)

    @classmethod
    def from_stats(cls, stats: ReferenceStats, *, device=None,
                   dtype: torch.dtype = torch.float64) -> "SampleReferences":
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a).to(device=device, dtype=dtype)

        return cls(prob_mean=put(stats.out_mean("prob")), prob_std=put(stats.out_std("prob")),
                   lsc_mean=put(stats.out_mean("lsc")), lsc_std=put(stats.out_std("lsc")))

    def to(self, dtype: torch.dtype) -> "SampleReferences":
        return SampleReferences(*(t.to(dtype) for t in (self.prob_mean, self.prob_std, self.lsc_mean, self.lsc_std)))

    def rows(self, index: torch.Tensor) -> "SampleReferences":
        """The statistics of the samples `index` (training indices), aligned with those rows' logits."""
        return SampleReferences(*(t[index] for t in (self.prob_mean, self.prob_std, self.lsc_mean, self.lsc_std)))


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # the same float32 arithmetic the memorization proxy has always used (torch sums, then divides)
    v, m = torch.from_numpy(values), torch.from_numpy(mask)
    return ((v * m).sum(0) / m.sum(0)).numpy()


def reference_statistics(spec: ModelSpec, data: Dataset, *, num_models: int = 16, seed: int = 0,
                         progress: Progress | None = None, cache: ArrayCache | None = None) -> ReferenceStats:
    """Train (or read from the cache) K reference models on random halves and return their outputs.

    Args:
        spec: the recipe the models are trained with (the original's).
        data: the training data.
        num_models: K; each sample is trained on by exactly K // 2 of them and held out by the rest.
        seed: seeds the halves and the models' initialisation and batch order.
        cache: where the per-model arrays are kept (default: the cache folder of the environment).
    """
    from . import ensemble  # looked up on use, so a test can watch the trainer

    if num_models < 2:
        raise ConfigError(f"reference models need at least 2 models (trained-on and held-out), got {num_models}")
    cache = cache if cache is not None else ArrayCache()
    key = reference_key(spec, data, num_models=num_models, seed=seed)
    shape = (num_models, data.num_train)
    hit = _from_cache(cache.get(CACHE_KIND, key), shape)
    if hit is not None:
        return hit
    with cache.lock(CACHE_KIND, key):
        hit = _from_cache(cache.get(CACHE_KIND, key), shape)  # trained meanwhile by another process?
        if hit is not None:
            return hit
        with Timer() as timer:
            stats = _train(spec, data, num_models, seed, progress, ensemble.fit_ensemble)
        stats = replace(stats, seconds=timer.seconds)
        TRAINED_HERE[key] = timer.seconds
        cache.put(CACHE_KIND, key, {"inside": stats.inside, "prob": stats.prob, "lsc": stats.lsc,
                                    "seconds": np.array(timer.seconds)})
    return stats


def _from_cache(hit: dict | None, shape: tuple[int, int]) -> ReferenceStats | None:
    if hit is None or not all(hit.get(k, np.empty(0)).shape == shape for k in ("inside", "prob", "lsc")):
        return None
    seconds = float(hit["seconds"]) if "seconds" in hit else None  # entries from before timing: unknown
    return ReferenceStats(inside=hit["inside"].astype(bool), prob=hit["prob"], lsc=hit["lsc"], seconds=seconds,
                          source="cache")


def _train(spec, data: Dataset, num_models: int, seed: int, progress, fit_ensemble) -> ReferenceStats:

    masks = reference_masks(num_models, data.num_train, seed)
    seeds = [derive_seed(seed, STREAM, i) for i in range(num_models)]
    weights = masks.float().to(data.device)
    try:
        models = fit_ensemble(spec, data, seeds=seeds, sample_weights=weights, progress=progress,
                              description="reference models")
    except ConfigError:  # an architecture the ensemble cannot stack (BatchNorm with an odd N...): one by one
        models = [fit(spec.build(data, seed=s), data, spec.train, seed=s, sample_weights=weights[i],
                      progress=progress, description=f"reference model {i + 1}/{num_models}")
                  for i, s in enumerate(seeds)]
    prob, lsc = [], []
    y = data.y_train
    for model in models:
        logits = predict_logits(model, data.x_train)
        prob.append(torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1).cpu())
        lsc.append(logit_scaled_confidence(logits.double(), y).cpu())
    return ReferenceStats(inside=masks.numpy(), prob=torch.stack(prob).numpy().astype(np.float32),
                          lsc=torch.stack(lsc).numpy())


def exposure(logits: torch.Tensor, y: torch.Tensor, refs: SampleReferences) -> torch.Tensor:
    """How far a model's output on each sample lies from models that never trained on it. (N,), ≥ 0.

    |φ − mean_OUT φ|, φ the logit-scaled confidence log p_y − log Σ_{j≠y} p_j (the statistic U-LiRA fits its
    per-example Gaussians to). Two-sided: a sample left more confident than such a model (under-forgetting)
    and one pushed below it (over-forgetting, as relabelling does) both stand out from Retrain.

    Units and form were chosen by measurement (digits, finetune, 130 of 1,295 samples; the first-order
    search with the method's own lower level; U-LiRA with 16 unlearned vs 16 retrained models, mean over
    2 search seeds × 4 draws of the attack's models): this gap scored AUC 0.996, TPR@1%FPR 0.90 and
    TPR@0.1%FPR 0.49 ± 0.17; the squared standardized gap ((φ − mean)/std)² 0.994 / 0.80 / 0.44; the
    absolute standardized gap 0.993 / 0.77 / 0.33; the probability gap |p_y − mean_OUT p_y| 0.987 /
    0.64 / 0.33; the paper's loss 0.981 / 0.47 / 0.12 (random sets 0.956 / 0.21 / 0.05). Dividing by the
    OUT spread (8 models) steers the search to samples the held-out models agree on (found sets: mean OUT
    std of φ 1.23 standardized vs 1.64 here, mean OUT φ 3.4 vs 2.9), away from the atypical samples an
    attack exposes most.
    """

    return (logit_scaled_confidence(logits, y) - refs.lsc_mean).abs()
