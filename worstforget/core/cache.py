"""On-disk caches for units of work, keyed by a hash of their config and seeds.

Each unit (train a model, unlearn one set, evaluate one set) is a pure function of its config, so its
output can be reused by any later command, process or machine that shares the cache folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .io import atomic_path, to_jsonable
from .runtime import cache_root


class ModelCache:
    """State dicts under `<root>/models/<key>.pt`, loaded with weights_only=True."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    def path(self, key: str) -> Path:
        return self.root / "models" / f"{key}.pt"

    def load(self, key: str, model: nn.Module) -> bool:
        """Load the entry into `model`; False when absent or unreadable (then it is recomputed)."""
        return self.load_with_meta(key, model) is not None

    def load_with_meta(self, key: str, model: nn.Module) -> dict | None:
        """Load the entry into `model` and return its metadata; None when absent or unreadable."""
        path = self.path(key)
        if not (self.enabled and path.is_file()):
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["state_dict"])
            meta = json.loads(state.get("meta") or "{}")
        except Exception:  # a corrupt or stale cache entry is recomputed, never trusted
            return None
        return meta if isinstance(meta, dict) else {}

    def save(self, key: str, model: nn.Module, *, meta: dict | None = None) -> None:
        if not self.enabled:
            return
        with atomic_path(self.path(key)) as tmp:
            torch.save({"state_dict": model.state_dict(), "meta": json.dumps(to_jsonable(meta or {}))}, tmp)


class RecordCache:
    """JSON records under `<root>/records/<kind>/<key>.json` (metrics of one unlearning run, ...)."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], dict]) -> dict:
        path = self.root / "records" / kind / f"{key}.json"
        if self.enabled and path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                pass
        record = compute()
        if self.enabled:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(to_jsonable(record)))
        return record


class ArrayCache:
    """Named numpy arrays under `<root>/arrays/<kind>/<key>.npz` (per-model statistics of a unit)."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    def path(self, kind: str, key: str) -> Path:
        return self.root / "arrays" / kind / f"{key}.npz"

    def get(self, kind: str, key: str) -> dict | None:
        import numpy as np

        path = self.path(kind, key)
        if not (self.enabled and path.is_file()):
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            return None

    def put(self, kind: str, key: str, arrays: dict) -> None:
        import numpy as np

        if not self.enabled:
            return
        with atomic_path(self.path(kind, key)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
