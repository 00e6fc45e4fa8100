"""The original (trained) model: its recipe, training with an on-disk cache, or a user checkpoint."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.cache import ModelCache
from ..core.errors import WorstforgetError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer, sync
from ..datasets import Dataset
from .loop import TrainConfig, fit
from .models import build_model
from .optim import preload_torch_optim


@dataclass(frozen=True)
class ModelSpec:
    """Architecture plus the recipe that trains it; also the recipe exact Retrain follows."""

    name: str
    train: TrainConfig
    seed: int = 0  # initialisation and batch-order seed of the original model
    norm: str | None = None  # None = the architecture's default
    params: dict = field(default_factory=dict)
    # where methods that keep artefacts of their own (sisa/arcane grids, rum's memorization scores) cache them;
    # None: the default cache folder. Not part of the recipe's identity (`key`, `to_dict`).
    cache_dir: str | None = field(default=None, compare=False, repr=False)

    def build(self, data: Dataset, *, seed: int | None = None) -> nn.Module:
        model = build_model(self.name, data.num_classes, data.input_shape, norm=self.norm,
                            seed=self.seed if seed is None else seed, **self.params)
        return model.to(data.device)

    def key(self, data: Dataset) -> dict:
        return {"data": data.fingerprint, "model": self.name, "norm": self.norm, "params": self.params,
                "train": self.train.to_dict(), "seed": self.seed}

    def to_dict(self) -> dict:
        return {"name": self.name, "norm": self.norm, "params": self.params, "seed": self.seed,
                "train": self.train.to_dict()}


@dataclass
class Original:
    """The audited model, where it came from, and how long training it took (measured once, when trained)."""

    model: nn.Module
    key: str  # cache key of everything downstream: the recipe's hash, or the checkpoint's content hash
    train_seconds: float | None  # None: unknown (a user checkpoint, or a model cached before times were kept)
    source: str  # "trained" | "cache" | "checkpoint"


def obtain_original(spec: ModelSpec, data: Dataset, *, checkpoint: str | Path | None = None,
                    progress: Progress | None = None, cache: ModelCache | None = None) -> Original:
    """The user's checkpoint, or the model of `spec` from the cache, or trained now (and timed, and cached).

    Training holds the model's cache lock: a second process asking for the same model waits, then loads it.
    """
    if checkpoint is not None:
        model = spec.build(data)
        digest = load_checkpoint(model, checkpoint)
        # the file's content, the architecture and the data determine everything downstream (not the recipe)
        key = stable_hash({"checkpoint": digest, "data": data.fingerprint, "model": spec.name, "norm": spec.norm,
                           "params": spec.params})
        return Original(model.eval(), key, None, "checkpoint")
    key = stable_hash(spec.key(data))
    cache = cache or ModelCache()
    model = spec.build(data)
    with cache.lock(key):
        meta = cache.load_with_meta(key, model)
        if meta is not None:
            seconds = meta.get("train_seconds")
            return Original(model.eval(), key, float(seconds) if seconds is not None else None, "cache")
        preload_torch_optim("sgd", data.device)  # where the loop builds torch's SGD: its import is not training
        with Timer() as timer:
            fit(model, data, spec.train, seed=spec.seed, progress=progress, description="train original")
            sync(data.device)
        cache.save(key, model, meta={**spec.to_dict(), "train_seconds": timer.seconds})
    return Original(model.eval(), key, timer.seconds, "trained")


def original_model(spec: ModelSpec, data: Dataset, *, checkpoint: str | Path | None = None,
                   progress: Progress | None = None, cache: ModelCache | None = None) -> tuple[nn.Module, str]:
    """(model, key) of `obtain_original`."""
    original = obtain_original(spec, data, checkpoint=checkpoint, progress=progress, cache=cache)
    return original.model, original.key


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load a state dict saved by torch.save — bare, or wrapped as {'state_dict': ...} or
    {'model_state_dict': ...}, with or without DataParallel's `module.` prefixes — never executing pickled
    code. Returns the SHA-256 of the file's bytes (the very bytes loaded), which keys everything downstream."""
    path = Path(path)
    if not path.is_file():
        raise WorstforgetError(f"checkpoint {path} does not exist; pass the path of a saved state_dict")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorstforgetError(f"cannot read checkpoint {path} ({exc.strerror or exc})") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorstforgetError(f"cannot read checkpoint {path} as weights-only tensors ({first[:160]}); "
                               "save it with torch.save(model.state_dict(), PATH)") from None
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise WorstforgetError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others:
        raise WorstforgetError(f"checkpoint {path} is not a state_dict ({', '.join(others[:3])} "
                               f"{'is not a tensor' if len(others) == 1 else 'are not tensors'}); "
                               "save it with torch.save(model.state_dict(), PATH)")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WorstforgetError(f"checkpoint {path} does not match the chosen architecture ({detail}); "
                               "pick the --model (and --norm) it was trained with") from None
    return hashlib.sha256(raw).hexdigest()
