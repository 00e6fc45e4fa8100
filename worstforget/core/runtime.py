"""Devices, the cache folder and wall-clock timing."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from .errors import ConfigError, OptionError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("{device} cuda was asked for but no CUDA device is visible; use {device} cpu or auto",
                          "device")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r} ({exc}); use auto, cpu or cuda") from None


def cache_root() -> Path:
    """Where trained models and unit-of-work results are cached (WORSTFORGET_CACHE overrides)."""
    env = os.environ.get("WORSTFORGET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "worstforget"


class Timer:
    """Wall-clock seconds of a block; `with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def sync(device: torch.device | str) -> None:
    """Wait for queued accelerator work, so a wall-clock timing covers it (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def one_intra_op_thread():
    """Run with one torch intra-op thread, then give the caller's count back (also usable as a decorator).

    The concept diffusion models' CPU kernels (convolutions, group norm, attention) split their reductions by
    thread, so their numbers would change with the thread count; at this size a second thread gains ~10%."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_map(fn, items: list, workers: int | None = None) -> list:
    """`[fn(x) for x in items]` on up to `workers` threads (default: torch's intra-op count, the cores this
    process may use), in order. For calls that release the GIL (libsvm's fit and predict): the results are those
    of the loop, whatever the count, as each call is independent."""
    workers = min(len(items), workers or torch.get_num_threads())
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
