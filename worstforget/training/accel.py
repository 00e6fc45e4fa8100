"""Accelerator switches for training and inference: bf16 autocast and channels_last on CUDA, torch.compile.

They change how fast a recipe runs, not the recipe, so none of them enters a cache key:

* `amp`: bf16 autocast of the forward pass and the loss. Only on CUDA (on a CPU bf16 is many times
  slower, and a GPU without bf16 gets none under "auto"); elsewhere it is a no-op.
* `channels_last`: NHWC memory format for convolutional models and their inputs, which tensor-core
  convolutions want. Only on CUDA; elsewhere a no-op.
* `compile`: `torch.compile` of the model's training forward in `fit` (any device; off by default,
  since the first call compiles for tens of seconds).

So on a CPU, results are bit for bit the same with `amp` and `channels_last` on or off. On a GPU,
bf16 rounds activations and logits to about 3 significant digits; use `Accel(amp="off")` where that
matters more than speed.

`fit` and `predict_logits` take an `accel` argument; without it they use the current settings, which a
command sets once for everything it runs with `with use_accel(Accel(compile=True)): ...`.
"""
from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..core.errors import ConfigError

AMP_MODES = ("auto", "bf16", "off")
# device types the accelerator switches act on; a test widens this to exercise the CUDA code path on a CPU
ACCELERATED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


@dataclass(frozen=True)
class Accel:
    """Speed switches of training and inference (see the module docstring)."""

    amp: str = "auto"  # auto: bf16 autocast on a CUDA GPU that supports it | bf16: required on CUDA | off
    channels_last: bool = True  # NHWC memory format for conv nets on CUDA
    compile: bool = False  # torch.compile the training forward in `fit`

    def validate(self) -> "Accel":
        if self.amp not in AMP_MODES:
            raise ConfigError(f"unknown mixed-precision mode {self.amp!r}; use one of {', '.join(AMP_MODES)}")
        return self

    def autocast_dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The autocast dtype on `device`, or None when the forward runs in float32 there."""
        self.validate()
        device = torch.device(device)
        if self.amp == "off" or device.type not in ACCELERATED_DEVICE_TYPES:
            return None
        if self.amp == "auto" and not _bf16_supported(device, native=True):
            return None  # an older GPU emulates bf16 slowly: stay in float32 unless asked
        if self.amp == "bf16" and not _bf16_supported(device, native=False):
            raise ConfigError(f"bf16 autocast was asked for but {device} does not support bfloat16; "
                              "use amp 'auto' or 'off'")
        return torch.bfloat16

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """Context for the forward pass and loss: torch.autocast where `autocast_dtype` says so, else nothing."""
        dtype = self.autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

    def memory_format(self, model: nn.Module, device: torch.device | str) -> torch.memory_format | None:
        """channels_last for a model with 2-D convolutions on an accelerated device, else None (leave as is)."""
        if not self.channels_last or torch.device(device).type not in ACCELERATED_DEVICE_TYPES:
            return None
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return None
        return torch.channels_last

    def compiled(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable to run the training forward with: `torch.compile(model)` or the model itself.

        The compiled wrapper shares the model's parameters, so optimising them trains `model`.
        """
        return torch.compile(model) if self.compile else model

    def active(self, device: torch.device | str, model: nn.Module | None = None) -> dict:
        """What these settings switch on for `device` (and `model`): for logs and benchmark tables."""
        dtype = self.autocast_dtype(device)
        fmt = self.memory_format(model, device) if model is not None else None
        return {"autocast": str(dtype).removeprefix("torch.") if dtype else "off",
                "channels_last": fmt is not None, "compile": self.compile}

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_model(model: nn.Module, fmt: torch.memory_format | None) -> nn.Module:
    """Convert the model's 4-D weights to `fmt` in place (values unchanged); None leaves it as it is."""
    return model if fmt is None else model.to(memory_format=fmt)


def prepare_input(x: torch.Tensor, fmt: torch.memory_format | None) -> torch.Tensor:
    """Lay a batch of images out in `fmt` (values unchanged); None or non-image inputs pass through."""
    return x if fmt is None or x.dim() != 4 else x.contiguous(memory_format=fmt)


@functools.lru_cache(maxsize=None)
def _bf16_supported(device: torch.device, *, native: bool) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=not native)
    return True  # CPU autocast supports bf16 (only reached when a test widens ACCELERATED_DEVICE_TYPES)


_CURRENT: ContextVar[Accel] = ContextVar("worstforget_accel", default=Accel())


def current_accel() -> Accel:
    """The settings `fit` and `predict_logits` use when not given any (the defaults unless `use_accel`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_accel(accel: Accel) -> Iterator[Accel]:
    """Make `accel` the current settings inside the block (a command's --compile / --amp options)."""
    token = _CURRENT.set(accel.validate())
    try:
        yield accel
    finally:
        _CURRENT.reset(token)


def set_accel(accel: Accel) -> Callable[[], None]:
    """Make `accel` current until the returned function is called (for a command's whole run)."""
    token = _CURRENT.set(accel.validate())
    return lambda: _CURRENT.reset(token)
