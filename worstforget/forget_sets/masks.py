"""Forget sets as training indices: validation of user sets, their sizes, 0/1 masks and weights, and random
sets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, WorstforgetError
from ..core.seeds import generator
from ..datasets import Dataset


def forget_mask(data: Dataset, forget_set: torch.Tensor) -> torch.Tensor:
    """Boolean (num_train,) mask of a forget set given as training indices."""
    mask = torch.zeros(data.num_train, dtype=torch.bool, device=data.device)
    mask[forget_set.to(data.device)] = True
    return mask


def forget_weights(data: Dataset, forget_set: torch.Tensor) -> torch.Tensor:
    """0/1 forget weights of a forget set (the ordinary method on that set). (num_train,)"""
    return forget_mask(data, forget_set).float()


def forgotten_classes(data: Dataset, forget: torch.Tensor) -> torch.Tensor:
    """Classes all of whose training samples are in the forget set (boolean mask over the train split)."""
    total = torch.bincount(data.y_train, minlength=data.num_classes)
    removed = torch.bincount(data.y_train[forget], minlength=data.num_classes)
    return torch.nonzero((removed == total) & (total > 0)).flatten()


def check_forget_set(indices: Any, num_train: int, *, source: str = "forget set") -> torch.Tensor:
    """Validate user indices: a non-empty 1-D integer array of unique in-range training indices."""
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise WorstforgetError(f"{source} must be a 1-D array of training indices, got shape {arr.shape}")
    if arr.size == 0:
        raise WorstforgetError(f"{source} is empty; give at least one training index")
    if arr.dtype.kind not in "iu":
        raise WorstforgetError(f"{source} must hold integer indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_train:
        raise WorstforgetError(f"{source} has indices outside [0, {num_train}) (min {arr.min()}, max {arr.max()}); "
                               "indices address the training split")
    if len(np.unique(arr)) != len(arr):
        raise WorstforgetError(f"{source} contains duplicate indices; give each training index once")
    if len(arr) >= num_train:
        raise WorstforgetError(f"{source} covers the whole training split; leave something to retain")
    return torch.as_tensor(np.sort(arr), dtype=torch.long)


def load_forget_set(path: str | Path, num_train: int) -> torch.Tensor:
    """The training indices saved with `numpy.save` at `path`, validated."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WorstforgetError(f"cannot read forget set {path} ({exc}); save indices with numpy.save") from None
    return check_forget_set(arr, num_train, source=f"forget set {path.name}")


def forget_size(num_train: int, ratio: float) -> int:
    """m = round(ratio · num_train), at least 1."""
    if not 0 < ratio < 1:
        raise ConfigError(f"--forget-ratio must be strictly between 0 and 1, got {ratio}")
    return max(1, int(round(ratio * num_train)))


def random_forget_set(num_train: int, size: int, seed: int) -> torch.Tensor:
    """A uniformly random forget set of `size` training indices, sorted, from its own seeded stream."""
    perm = torch.randperm(num_train, generator=generator(seed, "random-forget-set"))
    return perm[:size].sort().values


def top_scores(scores: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """The `size` highest-scoring indices (ties to the lower index), sorted."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:size]
    return torch.as_tensor(np.sort(order), dtype=torch.long)


__all__ = ["forget_mask", "forget_weights", "forgotten_classes", "check_forget_set", "load_forget_set", "forget_size",
           "random_forget_set", "top_scores"]
