"""Third-party methods with the NeurIPS'23 challenge signature `unlearn(net, retain, forget, val) -> net`.

`load_plugins(["pkg.mod:unlearning"])` registers each function as a method named after it. The adapter
runs a plug-in the way the challenge did — torch DataLoaders of the retain, forget and validation splits,
batches as `(x, y)` tuples or Kaggle's `{"image": x, "age_group": y}` dicts — and audits it like any
method: the global RNGs are seeded from the unit seed (and restored afterwards), a function that changes
`net` in place may return None, and anything the plug-in does wrong (raises, calls `sys.exit`, returns
something that is not a usable model) becomes one line naming the plug-in, with the traceback in the run
log. Cached results are keyed on the plug-in's source (`code_key`), so editing it recomputes.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import logging
import os
import random
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..core.errors import ConfigError, WorstforgetError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runlog import where_logged
from ..core.seeds import derive_seed, generator
from ..datasets import Dataset
from ..setting.recipe import carry_to_workers
from .base import UnlearningMethod, check_weights
from .registry import METHODS

LOGGER = logging.getLogger("worstforget")
BATCH_FORMATS = ("tuple", "dict")
DICT_KEYS = ("image", "age_group")  # the Kaggle challenge's loaders: {"image": x, "age_group": y, ...}
# float32 resolves logit differences of 1 only below 2^24: beyond it losses and attack features are noise.
MAX_LOGIT = float(2**24)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


# --- loading ---------------------------------------------------------------------------------------
def load_plugins(targets: list[str] | tuple[str, ...], *, batch_format: str = "tuple",
                 override: bool = False) -> list[str]:
    """Load every `module:function[=name]` of one invocation; two of them may not share a name."""
    seen: dict[str, str] = {}
    for target in targets:  # every name checked before anything is imported or registered
        name = plugin_name(target)
        if name in seen and seen[name] != target:
            raise ConfigError(f"plug-ins {seen[name]} and {target} are both named {name}; "
                              f"name one with --plugin MODULE:FUNCTION=NAME")
        seen[name] = target
    return [load_plugin(target, batch_format=batch_format, override=override) for target in dict.fromkeys(targets)]


def plugin_name(target: str) -> str:
    """The method name of `module:function[=name]`: the given name, else the function's, lower-case."""
    _, _, rest = target.partition(":")
    attr, _, alias = rest.partition("=")
    return (alias or attr).strip().lower().replace("-", "_")


def load_plugin(target: str, *, batch_format: str = "tuple", override: bool = False) -> str:
    """Import `module:function[=name]` and register it as a method; return the method name.

    A name already taken by a built-in method (or alias) is refused unless `override`.
    """
    module_name, _, rest = target.partition(":")
    attr, _, _ = rest.partition("=")
    module_name, attr, name = module_name.strip(), attr.strip(), plugin_name(target)
    if not module_name or not attr:
        raise ConfigError(f"--plugin expects MODULE:FUNCTION (optionally =NAME), got {target!r}")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--plugin {target}: {name!r} is not a usable method name; use letters, digits and _")
    if batch_format not in BATCH_FORMATS:
        raise ConfigError(f"--batch-format must be one of {', '.join(BATCH_FORMATS)}, got {batch_format!r}")
    check_name_free(name, target, override)
    module = import_plugin_module(module_name, target)
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"cannot load plugin {target!r}: module {module_name} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"plugin {target!r} is not callable")
    doc = (fn.__doc__ or "").strip().splitlines()
    cls = type(f"Plugin_{name}", (PluginMethod,), {
        "__doc__": f"plugin {target}" + (f": {doc[0][:60]}" if doc else ""),
        "function": staticmethod(fn), "name": name, "target": target, "module_name": module_name,
        "function_name": attr, "source_hash": source_hash(module), "batch_format": batch_format})
    cls = dataclass(kw_only=True)(cls)
    if name in METHODS and METHODS.canonical(name) != name:  # an alias of a built-in: drop it so `name` reaches us
        entries, aliases = METHODS.snapshot()
        aliases.pop(name)
        METHODS.restore((entries, aliases))
    METHODS.register(name, overwrite=True)(cls)
    return name


def check_name_free(name: str, target: str, override: bool) -> None:
    """A plug-in may replace an earlier plug-in of its name, but a built-in only when asked to."""
    if name not in METHODS or override:
        return
    owner = METHODS.canonical(name)
    if issubclass(METHODS.get(owner), PluginMethod):
        return
    what = f"like the built-in method {name}" if owner == name else f"an alias of the built-in method {owner}"
    raise ConfigError(f"plugin {target} is named {name}, {what}; pass --plugin-override to replace it "
                      f"or rename it with --plugin {target.split('=')[0]}=NEW_NAME")


def import_plugin_module(module_name: str, target: str) -> ModuleType:
    """Import the plug-in's module; any failure there (even `sys.exit`) is one line, its traceback logged."""
    try:
        return importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a plug-in's import may raise anything, SystemExit included
        LOGGER.exception("cannot import plugin %s", target)
        hint = "; check it is importable from this Python" if isinstance(exc, ImportError) else ""
        raise ConfigError(f"cannot load plugin {target!r}: {describe(exc)}{hint}{where_logged()}") from None


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` (a SystemExit shows its code)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# --- the source behind a plug-in (its cache key) ---------------------------------------------------
def source_hash(module: ModuleType) -> str:
    """Hash of the code a plug-in can run: its whole top-level package folder when the module lives in a
    package (any file there may be imported, relatively or dynamically, and re-running a small submission
    costs less than a stale result), else its file plus the sibling modules it imports by name.

    Only `.py` files count; data files a plug-in reads are hidden state (use --no-cache). A module
    without a source file gets a key unique to this process, so it is never reused from the cache.
    """
    file = getattr(module, "__file__", None)
    if not file or not Path(file).is_file():
        return f"no-source-{uuid.uuid4().hex}"
    path = Path(file).resolve()
    is_package = path.name == "__init__.py"
    depth = len(module.__name__.split(".")) - (0 if is_package else 1)  # package levels above the file's folder
    if depth > 0:
        return hash_files(path.parents[depth - 1], sorted(py_files(path.parents[depth - 1])))
    return hash_files(path.parent, sorted(sibling_imports(path)))


def py_files(folder: Path) -> Iterator[Path]:
    for p in folder.rglob("*.py"):
        if not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(folder).parts):
            yield p


def sibling_imports(path: Path) -> set[Path]:
    """The module's file and, transitively, the modules next to it that it imports (packages whole)."""
    found: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        try:
            tree = ast.parse(current.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if (path.parent / f"{top}.py").is_file():
                    todo.append(path.parent / f"{top}.py")
                elif (path.parent / top / "__init__.py").is_file():
                    found.update(py_files(path.parent / top))
    return found


def hash_files(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


# --- what the plug-in sees: challenge-style loaders ------------------------------------------------
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


# --- workers of a parallel executor load the driver's plug-ins before rebuilding the setting ----------

@carry_to_workers
def plugins_for_workers() -> tuple[str, dict] | None:
    """The plug-ins loaded here and the folder they import from (the working folder, as `--plugin` does)."""
    plugins = tuple((cls.target, cls.batch_format) for cls in (METHODS.get(n) for n in METHODS.names())
                    if isinstance(cls, type) and issubclass(cls, PluginMethod) and cls.target)
    if not plugins:
        return None
    return f"{__name__}:restore_plugins", {"plugins": plugins, "path": (os.getcwd(),)}


def restore_plugins(state: dict) -> None:
    """In a worker: the driver's folders on sys.path, then its plug-ins (the driver already refused clashes)."""
    for folder in state["path"]:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for target, batch_format in state["plugins"]:
        load_plugin(target, batch_format=batch_format, override=True)
