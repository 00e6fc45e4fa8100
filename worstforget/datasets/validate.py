"""The checks every dataset passes before anything trains on it, whatever file or loader it came from.

A NaN in one input trains a NaN model; a stray label of 1,000,000 builds a million-class model; a class
that only the test split holds, or a label that no training sample carries, makes metrics and class-wise
forget sets meaningless. None of these fail loudly downstream, so `load_dataset` refuses them here with a
one-line message naming the split, the values and the fix.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import InvalidDataError
from .raw import RawSplits

_SPLITS = ("train", "val", "test")
_ROWS_PER_CHUNK = 1 << 14  # bounds the temporary boolean mask of the finiteness scan on large float arrays


def validate_splits(raw: RawSplits, source: str) -> int:
    """Refuse unusable arrays; return the number of classes C (train labels are exactly 0 … C−1).

    Checks, in order: every input split is finite; labels are 1-D non-negative integers; the training
    labels cover 0 … C−1 with at least two classes; validation and test labels are among the training
    classes; the class names, if the loader gives them, number C.

    Raises:
        InvalidDataError: the first problem found, in one line.
    """
    for split in _SPLITS:
        x = getattr(raw, f"x_{split}")
        if x is not None:
            _check_finite(np.asarray(x), f"x_{split}", source)
    labels = {split: _integer_labels(getattr(raw, f"y_{split}"), f"y_{split}", source) for split in _SPLITS
              if getattr(raw, f"x_{split}") is not None and len(getattr(raw, f"x_{split}")) > 0}
    train_classes = np.unique(labels["train"])
    num_classes = len(train_classes)
    if num_classes < 2:
        raise InvalidDataError(f"{source}: y_train holds a single class ({_names(train_classes)}); a classifier "
                               "needs training samples of at least 2 classes")
    if train_classes[-1] != num_classes - 1:  # sorted and distinct, so this means a gap below the largest label
        largest = int(train_classes[-1])
        raise InvalidDataError(
            f"{source}: labels must be 0 … C−1 with every class in y_train, but y_train holds {num_classes} "
            f"distinct labels up to {largest}, leaving {largest + 1 - num_classes} classes without training "
            f"samples ({_missing(train_classes)}); renumber the labels, e.g. with np.unique(y, return_inverse=True)")
    for split in ("val", "test"):
        if split not in labels:
            continue
        unseen, counts = np.unique(labels[split][labels[split] >= num_classes], return_counts=True)
        if len(unseen):
            raise InvalidDataError(
                f"{source}: y_{split} holds labels that y_train lacks ({_names(unseen)}; {int(counts.sum())} "
                f"samples); every class needs training samples, so drop those {split} samples or add training "
                "data for them")
    if raw.classes is not None and len(raw.classes) != num_classes:
        raise InvalidDataError(f"{source}: {len(raw.classes)} class names for {num_classes} classes in y_train; "
                               "give one name per class")
    return num_classes


def check_standardised(x: torch.Tensor, split: str, source: str) -> None:
    """Finite inputs can still overflow float32 when scaled and standardised; refuse the result if so."""
    if not bool(torch.isfinite(x).all()):
        raise InvalidDataError(f"{source}: x_{split} overflows float32 once standardised (inputs too large in "
                               "magnitude); rescale the features to a moderate range before loading")


def _check_finite(x: np.ndarray, key: str, source: str) -> None:
    if x.dtype.kind not in "fc" or x.size == 0:  # integer and boolean inputs are always finite
        return
    flat = x.reshape(len(x), -1)  # loaders give (N, …) arrays
    bad_values, bad_rows, first = 0, 0, -1
    for start in range(0, len(flat), _ROWS_PER_CHUNK):
        bad = ~np.isfinite(flat[start:start + _ROWS_PER_CHUNK])
        per_row = bad.sum(axis=1)
        if first < 0 and per_row.any():
            first = start + int(np.flatnonzero(per_row)[0])
        bad_values += int(per_row.sum())
        bad_rows += int(np.count_nonzero(per_row))
    if bad_values:
        values = "value" if bad_values == 1 else "values"
        raise InvalidDataError(f"{source}: {key} holds {bad_values} NaN or infinite {values} in {bad_rows} of "
                               f"{len(flat)} rows (first at row {first}); replace or drop those rows before loading")


def _integer_labels(y, key: str, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
                           or y.dtype == np.bool_):
        raise InvalidDataError(f"{source}: {key} must be a 1-D array of integer class labels, got shape "
                               f"{y.shape} and dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (np.mod(y, 1) == 0) & (np.abs(y) < 2.0 ** 62)):
        raise InvalidDataError(f"{source}: {key} holds non-integer, non-finite or huge labels; store class "
                               "indices 0 … C−1")
    if len(y) and y.min() < 0:
        raise InvalidDataError(f"{source}: {key} holds negative labels ({_names(np.unique(y[y < 0]))}); store "
                               "class indices 0 … C−1")
    return y.astype(np.int64)


def _missing(classes: np.ndarray, limit: int = 6) -> str:
    """The labels in 0 … max(classes) that sorted, distinct `classes` lacks, named like `_names`, without
    materialising the range (a stray label of 10^18 leaves ~10^18 of them)."""
    bounds = [-1, *classes.tolist()]  # the missing labels are the gaps lo+1 … hi−1 between neighbours
    first: list[int] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        first.extend(range(lo + 1, min(hi, lo + 1 + limit - len(first))))
        if len(first) >= limit:
            break
    if int(classes[-1]) + 1 - len(classes) <= limit:
        return ", ".join(str(v) for v in first)
    last_gap = int(np.flatnonzero(np.diff(bounds) > 1)[-1])
    return ", ".join(str(v) for v in first[:limit - 1]) + f", …, {bounds[last_gap + 1] - 1}"


def _names(values: np.ndarray, limit: int = 6) -> str:
    """'3, 5, 7' for short lists; '3, 4, 5, …, 999999' (first few and the last) for long ones."""
    values = [int(v) for v in np.asarray(values).ravel()]
    if len(values) <= limit:
        return ", ".join(str(v) for v in values)
    return ", ".join(str(v) for v in values[:limit - 1]) + f", …, {values[-1]}"
