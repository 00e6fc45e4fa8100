"""Third-party methods with the NeurIPS'23 challenge signature `unlearn(net, retain, forget, val) -> net`."""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..core.errors import ConfigError
from ..core.progress import Progress
from ..datasets import Dataset
from .base import UnlearningMethod, check_weights
from .registry import METHODS


def load_plugin(target: str) -> str:
    """Import `module:function`, register it as a method named after the function; return that name."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--plugin expects module:function, got {target!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load plugin {target!r} ({exc}); check it is importable from this Python") from None
    if not callable(fn):
        raise ConfigError(f"plugin {target!r} is not callable")
    name = attr.lower()
    cls = type(f"Plugin_{name}", (PluginMethod,), {"__doc__": f"plugin {target}: {(fn.__doc__ or '').strip()[:60]}",
                                                    "function": staticmethod(fn), "name": name})
    cls = dataclass(kw_only=True)(cls)
    METHODS.register(name, overwrite=True)(cls)
    return name


@dataclass(kw_only=True)
class PluginMethod(UnlearningMethod):
    """Adapter: binarises the forget weights (w ≥ 0.5) and hands the user's function torch DataLoaders."""

    differentiable = False
    iterative = False
    function: ClassVar[Callable] = None

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data)
        forget = w >= 0.5
        bs = self.batch_size or 128
        g = torch.Generator().manual_seed(seed)

        def loader(x, y, shuffle):
            return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=shuffle, generator=g if shuffle else None)

        net = copy.deepcopy(original)
        out = type(self).function(net, loader(data.x_train[~forget], data.y_train[~forget], True),
                                  loader(data.x_train[forget], data.y_train[forget], True),
                                  loader(data.x_val, data.y_val, False))
        if not isinstance(out, nn.Module):
            raise ConfigError(f"plugin {self.name} returned {type(out).__name__}, expected the unlearned nn.Module")
        return out.eval()
