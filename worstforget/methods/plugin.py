"""Third-party methods with the NeurIPS'23 challenge signature `unlearn(net, retain, forget, val) -> net`.

`load_plugins(["pkg.mod:unlearning"])` registers each function as a method named after it. The adapter
runs a plug-in the way the challenge did — torch DataLoaders of the retain, forget and validation splits,
batches as `(x, y)` tuples or Kaggle's `{"image": x, "age_group": y}` dicts — and audits it like any
method: the global RNGs are seeded from the unit seed (and restored afterwards), a function that changes
`net` in place may return None, and anything the plug-in does wrong (raises, calls `sys.exit`, returns
something that is not a usable model) becomes one line naming the plug-in, with the traceback in the run
log. Cached results are keyed on the plug-in's source (`code_key`), so editing it recomputes.

This file is the adapter (`PluginMethod`) and the guards around a plug-in's run; loading and hashing the
plug-in's code live in plugin_load.py, the loaders it is handed in challenge_loaders.py.
"""
from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.errors import ConfigError, WorstforgetError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runlog import where_logged
from ..core.seeds import derive_seed, generator
from ..datasets import Dataset
from .base import UnlearningMethod, check_weights
from .challenge_loaders import BatchFormatError, ChallengeDataset, ChallengeLoader, top_weighted

LOGGER = logging.getLogger("worstforget")
# float32 resolves logit differences of 1 only below 2^24: beyond it losses and attack features are noise.
MAX_LOGIT = float(2**24)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` (a SystemExit shows its code)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's `random`, numpy's global generator and torch's (CPU, CUDA, MPS) from `seed`, each from
    its own stream; afterwards restore whatever state the caller had."""
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if cuda else None, torch.mps.get_rng_state() if mps else None)
    try:
        random.seed(derive_seed(seed, "plugin-python-random"))
        np.random.seed(derive_seed(seed, "plugin-numpy-random") % 2**32)
        torch.default_generator.manual_seed(derive_seed(seed, "plugin-torch-cpu"))
        if cuda:
            torch.cuda.manual_seed_all(derive_seed(seed, "plugin-torch-cuda"))
        if mps:
            torch.mps.manual_seed(derive_seed(seed, "plugin-torch-mps"))
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda:
            torch.cuda.set_rng_state_all(saved[3])
        if mps:
            torch.mps.set_rng_state(saved[4])


# --- the process-wide state a plug-in may change -----------------------------------------------------
@contextmanager
def restored_torch_globals() -> Iterator[None]:
    """Undo, after the plug-in, what it changed of torch's process-wide settings: default dtype and device,
    intra-op threads, deterministic algorithms, float32 matmul precision, anomaly detection, cuDNN flags.
    A plug-in calling `torch.set_default_dtype(torch.float64)` must not change how the next unit (a
    reference model's training) builds its tensors. What it changed is logged."""
    getters = {
        "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "intra-op threads": (torch.get_num_threads, torch.set_num_threads),
        "deterministic algorithms": (
            lambda: (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled()),
            lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
        "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
        "cuDNN benchmark": (lambda: torch.backends.cudnn.benchmark,
                            lambda v: setattr(torch.backends.cudnn, "benchmark", v)),
        "cuDNN deterministic": (lambda: torch.backends.cudnn.deterministic,
                                lambda v: setattr(torch.backends.cudnn, "deterministic", v)),
    }
    if hasattr(torch, "get_default_device"):
        getters["default device"] = (torch.get_default_device, torch.set_default_device)
    saved = {what: get() for what, (get, _) in getters.items()}
    try:
        yield
    finally:
        for what, (get, put) in getters.items():
            if get() != saved[what]:
                LOGGER.warning("a plug-in changed torch's %s to %s; restored to %s", what, get(), saved[what])
                put(saved[what])


# Non-daemon threads that plug-ins started and left running: the CLI does not wait for them at exit.
ABANDONED_THREADS: list = []


@contextmanager
def watched_threads(label: str) -> Iterator[None]:
    """Note the non-daemon threads a plug-in starts and leaves running: Python would wait for them at exit,
    so a finished audit would never end. They are logged and kept in ABANDONED_THREADS for the CLI."""
    import threading

    before = set(threading.enumerate())
    try:
        yield
    finally:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
        if left:
            LOGGER.warning("plugin %s left %d thread(s) running (%s); worstforget will not wait for them",
                           label, len(left), ", ".join(t.name for t in left))
            ABANDONED_THREADS.extend(left)


def abandoned_threads() -> list:
    """The plug-ins' non-daemon threads still running."""
    return [t for t in ABANDONED_THREADS if t.is_alive()]


# --- the adapter -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PluginMethod(UnlearningMethod):
    """Adapter: binarises the forget weights (the round(Σw) largest form the forget set) and hands the
    user's function challenge loaders."""

    differentiable = False
    iterative = False
    function: ClassVar[Callable] = None
    target: ClassVar[str] = ""  # module:function as given to --plugin
    module_name: ClassVar[str] = ""
    function_name: ClassVar[str] = ""
    source_hash: ClassVar[str] = ""
    batch_format: ClassVar[str] = "tuple"

    def code_key(self) -> str:
        return stable_hash({"module": self.module_name, "function": self.function_name,
                            "source": self.source_hash, "batch_format": self.batch_format})

    def loaders(self, data: Dataset, forget: torch.Tensor, seed: int) -> tuple[DataLoader, DataLoader, DataLoader]:
        bs = self.batch_size or 128
        rows = torch.arange(data.num_train, device=data.device)

        def train_loader(subset: torch.Tensor, stream: str) -> DataLoader:
            dataset = ChallengeDataset(data.x_train, data.y_train, rows[subset], self.batch_format)
            return ChallengeLoader(dataset, bs, generator(seed, f"plugin-{stream}-order"))

        val = ChallengeDataset(data.x_val, data.y_val, torch.arange(len(data.y_val), device=data.device),
                               self.batch_format)
        return train_loader(~forget, "retain"), train_loader(forget, "forget"), ChallengeLoader(val, bs, None)

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec=None, progress: Progress | None = None) -> nn.Module:
        w = check_weights(forget_weights, data)
        retain, forget, val = self.loaders(data, top_weighted(w), seed)
        net = copy.deepcopy(original)
        try:
            with restored_torch_globals(), watched_threads(self.label), seeded_global_rngs(seed), torch.enable_grad():
                out = type(self).function(net, retain, forget, val)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # anything, `sys.exit(0)` included, must not end or pass the run
            raise self.failure(exc) from None
        if out is None:  # changed `net` in place, as many challenge submissions do
            out = net
        if not isinstance(out, nn.Module):
            raise WorstforgetError(f"plugin {self.label} returned {type(out).__name__}, expected the unlearned "
                                   "nn.Module (or None after changing net in place)")
        for kind, tensors in (("parameter", out.named_parameters()), ("buffer", out.named_buffers())):
            for pname, t in tensors:
                if t.is_meta:
                    raise WorstforgetError(f"plugin {self.label} returned a model whose {kind} {pname} is on the meta "
                                           "device (shapes without values); return a model with its weights")
        try:
            out = out.to(data.device)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            LOGGER.exception("the model returned by plugin %s cannot be moved to %s", self.label, data.device)
            raise WorstforgetError(f"plugin {self.label} returned a model that cannot be moved to {data.device}: "
                                   f"{describe(exc)}{where_logged()}") from None
        return self.checked(out, data).eval()

    @property
    def label(self) -> str:
        return f"{self.name} ({self.target})" if self.target else self.name

    def failure(self, exc: BaseException) -> WorstforgetError:
        """One line naming the plug-in and its exception; the traceback goes to the run log."""
        LOGGER.exception("plugin %s raised", self.label)
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, BatchFormatError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            return ConfigError(f"plugin {self.label}: {cause}{where_logged()}")
        return WorstforgetError(f"plugin {self.label} raised {describe(exc)}{where_logged()}")

    def checked(self, model: nn.Module, data: Dataset) -> nn.Module:
        """Refuse a returned model that cannot be scored: non-finite weights, a forward pass that fails on
        the dataset's inputs, the wrong number of classes, or non-finite or unresolvable logits."""
        from ..training.loop import predict_logits

        for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
            for pname, t in tensors:
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise WorstforgetError(f"plugin {self.label} returned a model whose {kind} {pname} holds "
                                           "NaN or inf")
        x = data.x_val if len(data.x_val) else data.x_train[:256]
        try:
            with torch.no_grad():
                logits = predict_logits(model, x)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            LOGGER.exception("the model returned by plugin %s fails on inputs of shape %s", self.label, tuple(x.shape))
            raise WorstforgetError(f"plugin {self.label} returned a model that fails on inputs of shape "
                                   f"{tuple(x.shape)}: {describe(exc)}{where_logged()}") from None
        if logits.shape != (len(x), data.num_classes):
            raise WorstforgetError(f"plugin {self.label} returned a model with outputs of shape "
                                   f"{tuple(logits.shape)} for {len(x)} inputs; the dataset has "
                                   f"{data.num_classes} classes")
        if not bool(torch.isfinite(logits).all()):
            raise WorstforgetError(f"plugin {self.label} returned a model whose outputs on the validation split "
                                   "are NaN or inf")
        largest = float(logits.abs().max()) if logits.numel() else 0.0
        if largest > MAX_LOGIT:
            raise WorstforgetError(f"plugin {self.label} returned a model with logits up to {largest:.3g} on the "
                                   f"validation split; beyond {MAX_LOGIT:.3g} float32 cannot score them")
        return model
