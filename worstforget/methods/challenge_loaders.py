"""What a plug-in sees: the NeurIPS'23 challenge's loaders of the retain, forget and validation splits.

Torch DataLoaders whose batches are `(x, y)` tuples or Kaggle's `{"image": x, "age_group": y}` dicts; reading
a batch the other way is one line naming the batch format to pass (`BatchFormatError`).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

BATCH_FORMATS = ("tuple", "dict")
DICT_KEYS = ("image", "age_group")  # the Kaggle challenge's loaders: {"image": x, "age_group": y, ...}


class BatchFormatError(Exception):
    """A batch indexed the other format's way; the message names --batch-format."""


class _TupleIndexError(BatchFormatError, TypeError):
    pass


class _TupleRangeError(BatchFormatError, IndexError):
    pass


class _DictKeyError(BatchFormatError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TupleBatch(tuple):
    """`(x, y)`; indexing it like a dict (or past y) raises an error that names --batch-format dict."""

    def __getitem__(self, key):
        if isinstance(key, str):
            raise _TupleIndexError(f"the plug-in read batch[{key!r}] but batches are (x, y) tuples; "
                                   "run with --batch-format dict for Kaggle-style dict batches")
        try:
            return super().__getitem__(key)
        except IndexError:
            raise _TupleRangeError(f"the plug-in read batch[{key!r}] but batches are (x, y) tuples of two; "
                                   "run with --batch-format dict for Kaggle-style dict batches") from None


class DictBatch(dict):
    """`{"image": x, "age_group": y}`; a missing key (batch[0], batch["label"]) names --batch-format."""

    def __missing__(self, key):
        raise _DictKeyError(f"the plug-in read batch[{key!r}] but batches are dicts with keys "
                            f"{', '.join(DICT_KEYS)}; run with --batch-format tuple for (x, y) batches")


def top_weighted(w: torch.Tensor) -> torch.Tensor:
    """The forget set of fractional weights: the round(Σw) samples of largest weight (exactly the 1s of 0/1
    weights). The search's uniform start w = m/N thus hands a plug-in a set of m samples, not an empty one."""
    m = int(round(float(w.sum())))
    mask = torch.zeros_like(w, dtype=torch.bool)
    if m:
        mask[torch.topk(w, m, sorted=False).indices] = True
    return mask


class ChallengeDataset(TorchDataset):
    """Rows `rows` of (x, y) served in the chosen batch format; `dataset[i]` is one sample, so plug-ins that
    build their own DataLoader over `loader.dataset` work too."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, batch_format: str):
        self.x, self.y, self.rows, self.batch_format = x, y, rows, batch_format

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.batch(index)

    def batch(self, index):
        rows = self.rows[index]
        x, y = self.x[rows], self.y[rows]
        return DictBatch(zip(DICT_KEYS, (x, y))) if self.batch_format == "dict" else TupleBatch((x, y))


class ChallengeLoader(DataLoader):
    """A DataLoader (len, batch_size, dataset as users expect) that gathers each batch with one index
    operation on the device instead of collating samples one by one."""

    def __init__(self, dataset: ChallengeDataset, batch_size: int, order: torch.Generator | None):
        super().__init__(dataset, batch_size=batch_size, shuffle=False)
        self._order = order  # None: fixed order (validation)

    def __iter__(self):
        n = len(self.dataset)
        order = torch.randperm(n, generator=self._order) if self._order is not None else torch.arange(n)
        for chunk in order.to(self.dataset.rows.device).split(self.batch_size):
            yield self.dataset.batch(chunk)


# --- the global RNGs a plug-in uses ----------------------------------------------------------------
