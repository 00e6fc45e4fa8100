"""Wall-clock measurements of training and inference, and the cost of an audit projected from them.

Device work is asynchronous: every clock reading here first waits for the device (`sync`), so a
time covers the work launched before it and nothing else.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.runtime import sync
from ..datasets import Dataset
from .accel import Accel
from .loop import TrainConfig, fit, predict_logits


class EpochClock:
    """Progress sink for `fit` that records the wall time at the end of every epoch (device synchronised).

    `epoch_seconds[i]` is the time of epoch i, validation pass included; the first epoch also pays for
    one-time work (cuDNN algorithm search, torch.compile, allocator growth).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.marks: list[float] = []
        self.info: list[dict] = []

    def task(self, description: str, total: int | None) -> "EpochClock":
        sync(self.device)
        self.marks = [time.perf_counter()]
        self.info = []
        return self

    def advance(self, n: int = 1, **info: object) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())
        self.info.append(dict(info))

    def close(self) -> None:
        pass

    @property
    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def steady_epoch_seconds(self) -> float:
        """Mean time of the epochs after the first (the first alone when there is only one)."""
        times = self.epoch_seconds
        if not times:
            return float("nan")
        later = times[1:] or times
        return sum(later) / len(later)


def train_subset(data: Dataset, size: int) -> Dataset:
    """The same dataset with only its first `size` training samples (validation and test unchanged)."""
    if not 1 <= size <= data.num_train:
        raise ConfigError(f"a training subset needs 1 to {data.num_train} samples, got {size}")
    return replace(data, x_train=data.x_train[:size], y_train=data.y_train[:size])


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    seconds: float  # the timed part
    images: int  # images processed in the timed part
    warmup_s: float  # the untimed first pass


def training_throughput(model: nn.Module, data: Dataset, cfg: TrainConfig, *, images: int, seed: int = 0,
                        accel: Accel | None = None) -> Throughput:
    """Training images per second of `fit` with `cfg` (augmentation included, no validation passes).

    Trains `model` (changed in place) for two epochs over the first `images` training samples; the
    first epoch is the warm-up, the second is timed.
    """
    subset = train_subset(data, min(images, data.num_train))
    clock = EpochClock(data.device)
    fit(model, subset, cfg.with_updates(epochs=2, select_best=False), seed=seed, progress=clock, accel=accel)
    warmup, timed = clock.epoch_seconds
    return Throughput(subset.num_train / timed, timed, subset.num_train, warmup)


def inference_throughput(model: nn.Module, x: torch.Tensor, *, accel: Accel | None = None,
                         batch_size: int = 2048) -> Throughput:
    """Eval-mode images per second of `predict_logits` on x (one warm-up batch first, untimed)."""
    start = time.perf_counter()
    predict_logits(model, x[:batch_size], batch_size=batch_size, accel=accel)
    sync(x.device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    predict_logits(model, x, batch_size=batch_size, accel=accel)
    sync(x.device)
    timed = time.perf_counter() - start
    return Throughput(len(x) / timed, timed, len(x), warmup)


def timed(fn: Callable[[], object], device: torch.device | str) -> tuple[object, float]:
    """(fn(), wall seconds of it including the device work it launched)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def count_host_syncs(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """How many times `fn` made the host wait for the CUDA device (None off CUDA: nothing to count).

    Uses torch's sync debug mode, which warns at every synchronising call (`.item()`, `float(t)`,
    blocking host-to-device copies of pageable memory, `nonzero`, ...).
    """
    if torch.device(device).type != "cuda":
        fn()
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# ----------------------------------------------------------------------------------------------------
# Projections

AUDIT_FORMULA = "T = T_orig + T_refs + W·T_search + (W + R)·S·(M·(T_method + T_eval) + T_retrain + T_eval)"


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of the pieces of an audit (measured, or scaled from measurements)."""

    original: float  # training the original model once
    search: float  # one worst-case search
    method: float  # one unlearning run of one method
    retrain: float  # one exact Retrain on the retain side of a forget set
    evaluate: float  # the metrics of one unlearned model (UA, RA, TA, MIA)
    references: float = 0.0  # the exposure objective's reference models (once per setting)


def project_audit_seconds(costs: UnitCosts, *, methods: int = 10, random_sets: int = 5, searched_sets: int = 1,
                          seeds: int = 2) -> float:
    """Wall seconds of a main-table audit run unit after unit on one device (AUDIT_FORMULA).

    M = `methods` unlearning methods and Retrain, each with `seeds` (S) seeds, on W = `searched_sets`
    worst-case sets (one search each) and R = `random_sets` random sets, after one original model.
    """
    per_set_seed = methods * (costs.method + costs.evaluate) + costs.retrain + costs.evaluate
    return (costs.original + costs.references + searched_sets * costs.search
            + (searched_sets + random_sets) * seeds * per_set_seed)


def project_search_seconds(measured: float, *, outer: int, inner_images: int, values_s: float, full_outer: int,
                           full_inner_images: int, per_image_scale: float = 1.0) -> float:
    """Seconds of a full search projected from a short one.

    Every outer step costs its lower-level steps (`inner_images` images in the measured run) plus one
    pass computing the per-sample values of the upper objective (`values_s`), so one lower-level image
    costs (measured / outer − values_s) / inner_images (not below 0). The full search has `full_outer`
    steps of `full_inner_images` images each; `per_image_scale` rescales the per-image cost (e.g. for
    another batch size).
    """
    if outer < 1 or inner_images < 1:
        raise ConfigError("a measured search needs at least one outer step and one lower-level image")
    per_image = max(0.0, (measured / outer - values_s) / inner_images)
    return full_outer * (full_inner_images * per_image * per_image_scale + values_s)
