"""Loading third-party unlearning functions as methods, and hashing the code behind them (their cache key).

`load_plugins(["pkg.mod:unlearning"])` imports each function and registers it as a method named after it (a
`PluginMethod` subclass, plugin.py); `source_hash` keys cached results on the plug-in's source, so editing it
recomputes. Workers of a parallel executor load the driver's plug-ins before rebuilding the setting: from the
driver's working folder, or, on workers that do not see the driver's files, from the very source files the
hash covers, sent along (`ship_plugins`).
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..core.errors import ConfigError, WorstforgetError
from ..core.runlog import where_logged
from ..setting.recipe import carry_to_workers
from .challenge_loaders import BATCH_FORMATS
from .plugin import LOGGER, PluginMethod, describe
from .registry import METHODS

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


# --- workers of a parallel executor load the driver's plug-ins before rebuilding the setting ----------

@carry_to_workers
def plugins_for_workers() -> tuple[str, dict] | None:
    """The plug-ins loaded here and the folder they import from (the working folder, as `--plugin` does)."""
    plugins = tuple((cls.target, cls.batch_format) for cls in (METHODS.get(n) for n in METHODS.names())
                    if isinstance(cls, type) and issubclass(cls, PluginMethod) and cls.target)
    if not plugins:
        return None
    return f"{__name__}:restore_plugins", {"plugins": plugins, "path": (os.getcwd(),)}


def plugin_sources(module: ModuleType) -> tuple[str, dict[str, bytes]] | None:
    """The files `source_hash` covers, relative to the folder a worker puts on sys.path to import the module
    from them: (that folder's path here, {relpath: bytes}); None for a module without a source file."""
    file = getattr(module, "__file__", None)
    if not file or not Path(file).is_file():
        return None
    path = Path(file).resolve()
    depth = len(module.__name__.split(".")) - (0 if path.name == "__init__.py" else 1)
    if depth > 0:
        top = path.parents[depth - 1]  # the top-level package folder, whole
        files, root = py_files(top), top.parent
    else:
        files, root = sibling_imports(path), path.parent
    return str(root), {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(files)}


def ship_plugins(state: dict) -> dict:
    """The state of `plugins_for_workers` for workers that do not see the driver's files: each plug-in with
    its source files and their hash (its cache key), instead of the driver's working folder."""
    shipped = []
    for target, batch_format in state["plugins"]:
        cls = METHODS.get(plugin_name(target))
        module = sys.modules.get(cls.module_name) or importlib.import_module(cls.module_name)
        sources = plugin_sources(module)
        if sources is None:
            raise WorstforgetError(f"plug-in {target} has no source file to send to the Ray workers (they do not see "
                                   "this machine's files); make it a module file, or use --ray-cache shared")
        shipped.append((target, batch_format, sources[1], cls.source_hash))
    return {"plugins": state["plugins"], "path": (), "shipped": tuple(shipped)}


def _load_shipped(target: str, batch_format: str, files: dict[str, bytes], digest: str) -> None:
    """In a worker: write a plug-in's sources to a folder of its own, import them from there, and check their
    hash is the driver's (results are cached under it)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="worstforget-plugin-")
    for rel, data in files.items():
        dest = Path(folder, rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    top = target.partition(":")[0].strip().split(".")[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]  # a module of that name imported before (another payload): import the sent one
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    name = load_plugin(target, batch_format=batch_format, override=True)
    if METHODS.get(name).source_hash != digest:
        raise WorstforgetError(f"plug-in {target} sent to a Ray worker hashes differently there than on the driver; "
                               "it imports code outside its folder or package: use --ray-cache shared")


def restore_plugins(state: dict) -> None:
    """In a worker: the driver's folders on sys.path, then its plug-ins (the driver already refused clashes);
    or the plug-ins' sources the driver sent (`ship_plugins`)."""
    if state.get("shipped"):
        for target, batch_format, files, digest in state["shipped"]:
            _load_shipped(target, batch_format, files, digest)
        return
    for folder in state["path"]:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for target, batch_format in state["plugins"]:
        load_plugin(target, batch_format=batch_format, override=True)


restore_plugins.detached = ship_plugins  # what SettingRecipe.payload sends instead of the working folder
