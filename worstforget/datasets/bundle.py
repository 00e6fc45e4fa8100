"""The in-memory dataset every command works on: all splits as tensors on one device."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..core.errors import WorstforgetError
from ..core.hashing import stable_hash
from ..core.seeds import generator
from .raw import RawSplits


@dataclass(frozen=True)
class Augment:
    """Batched on-device augmentation: random crop after zero padding, optional horizontal flip."""

    crop_pad: int = 0  # pixels of zero padding before the random crop; 0 disables cropping
    flip: bool = False  # random horizontal flips (wrong for digits, right for natural images)

    @property
    def enabled(self) -> bool:
        return self.crop_pad > 0 or self.flip


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test tensors (float32, normalised) plus what models need to know.

    Sample i of the training split is addressed by its row index everywhere: forget sets are index
    tensors into `x_train`, and forget weights are float tensors of shape (num_train,).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Augment = field(default_factory=Augment)
    classes: tuple[str, ...] | None = None
    fingerprint: str = ""  # hash of the data and split, part of every cache key
    input_std: float = 1.0  # mean per-channel std of the raw [0, 1] inputs: converts pixel budgets to model units

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return replace(self, x_train=move(self.x_train), y_train=move(self.y_train), x_val=move(self.x_val),
                       y_val=move(self.y_val), x_test=move(self.x_test), y_test=move(self.y_test))

    def describe(self) -> dict:
        return {"name": self.name, "num_train": self.num_train, "num_val": len(self.y_val),
                "num_test": len(self.y_test), "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "fingerprint": self.fingerprint}


def stratified_holdout(y: np.ndarray, fraction: float, seed: int, purpose: str) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out) taking `fraction` of every class, from a seeded permutation."""
    perm = torch.randperm(len(y), generator=generator(seed, purpose)).numpy()
    y_perm = y[perm]
    # rank of each sample within its class in permutation order; the first ceil(f·n_c) are held out
    order = np.argsort(y_perm, kind="stable")
    counts = np.bincount(y_perm)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.repeat(starts, counts)
    take = np.round(counts * fraction).astype(np.int64)
    if fraction > 0 and take.sum() == 0 and counts.max(initial=0) >= 2:
        # tiny data: no class reaches one held-out sample at this fraction; hold one out of the largest
        # class (it keeps the others) rather than an empty split that nothing can be measured on
        take[int(np.argmax(counts))] = 1
    held = rank < take[y_perm]
    return np.sort(perm[~held]), np.sort(perm[held])


def _holdout_or_refuse(name: str, y: np.ndarray, fraction: float, seed: int, purpose: str, split: str,
                       keys: str) -> tuple[np.ndarray, np.ndarray]:
    """`stratified_holdout`, refusing in one line when no sample can be held out (every class has one)."""
    keep, held = stratified_holdout(y, fraction, seed, purpose)
    if len(held) == 0:
        raise WorstforgetError(f"{name}: no {split} split is given and none can be held out of the {len(y)} "
                               f"training samples (every class has a single sample); add {keys} to the data, "
                               "or more training samples")
    return keep, held


def build_dataset(
    name: str,
    raw: RawSplits,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    augment: Augment = Augment(),
    scale: float | None = None,
) -> Dataset:
    """Turn file arrays into a normalised, split `Dataset` on the CPU.

    Missing validation data is held out from train (`val_fraction` per class, the paper's 45k/5k
    protocol for CIFAR); missing test data likewise with `test_fraction`. Images are scaled to [0, 1]
    (uint8 → /255 unless `scale` is given) and standardised per channel with train statistics;
    flat features are standardised per feature.
    """
    x_train, y_train = np.asarray(raw.x_train), _labels(raw.y_train, "y_train")
    x_test, y_test = raw.x_test, raw.y_test
    if x_test is None or len(x_test) == 0:
        keep, held = _holdout_or_refuse(name, y_train, test_fraction, split_seed, "test-split", "test",
                                        "x_test and y_test")
        x_test, y_test = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
    y_test = _labels(y_test, "y_test")
    if raw.x_val is not None and len(raw.x_val) > 0:
        x_val, y_val = raw.x_val, _labels(raw.y_val, "y_val")
    else:
        keep, held = _holdout_or_refuse(name, y_train, val_fraction, split_seed, "val-split", "validation",
                                        "x_val and y_val")
        x_val, y_val = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
    if x_train.shape[1:] != np.asarray(x_test).shape[1:] or x_train.shape[1:] != np.asarray(x_val).shape[1:]:
        raise WorstforgetError(f"{name}: train, validation and test inputs have different shapes "
                               f"{x_train.shape[1:]}, {np.asarray(x_val).shape[1:]}, {np.asarray(x_test).shape[1:]}; "
                               "give every split the same per-sample shape")
    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    if scale is None:
        scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    tensors = [torch.as_tensor(np.asarray(a), dtype=torch.float32) / scale for a in (x_train, x_val, x_test)]
    image = tensors[0].dim() == 4
    # The statistics in float64 with numpy (one thread, fixed summation order): torch's float32 reductions
    # round differently with the number of threads, which changed the data, its fingerprint and so every
    # cache key between a driver and its single-threaded workers. The rest is elementwise, hence exact.
    axes = (0, 2, 3) if image else (0,)
    train64 = np.asarray(x_train, dtype=np.float64) / scale
    mean = torch.from_numpy(train64.mean(axis=axes, keepdims=True).astype(np.float32))
    std = torch.from_numpy(train64.std(axis=axes, ddof=1, keepdims=True).astype(np.float32)).clamp_min(1e-6)
    del train64
    x_train_t, x_val_t, x_test_t = ((t - mean) / std for t in tensors)
    fingerprint = stable_hash({"name": name, "split_seed": split_seed, "val": val_fraction,
                               "test": test_fraction, "x": x_train_t, "y": y_train, "xt": x_test_t})
    return Dataset(
        name=name,
        x_train=x_train_t.contiguous(), y_train=torch.as_tensor(y_train, dtype=torch.long),
        x_val=x_val_t.contiguous(), y_val=torch.as_tensor(y_val, dtype=torch.long),
        x_test=x_test_t.contiguous(), y_test=torch.as_tensor(y_test, dtype=torch.long),
        num_classes=num_classes, augment=augment if image else Augment(),
        classes=raw.classes, fingerprint=fingerprint, input_std=float(std.mean()),
    )


def _labels(y: np.ndarray | None, key: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)) or (len(y) and y.min() < 0):
        raise WorstforgetError(f"{key} must be a 1-D array of non-negative integer class labels")
    return y.astype(np.int64)


def augment_batch(x: torch.Tensor, spec: Augment, g: torch.Generator) -> torch.Tensor:
    """Random crop (with zero padding) and horizontal flip for a whole batch at once, on x's device."""
    if not spec.enabled or x.dim() != 4:
        return x
    b, _, h, w = x.shape
    if spec.crop_pad > 0:
        p = spec.crop_pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]  # (B,1,H,1)
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]  # (B,1,1,W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if spec.flip:
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
