"""On-disk caches for units of work, keyed by a hash of their config and seeds.

Each unit (train a model, unlearn one set, evaluate one set) is a pure function of its config, so its
output can be reused by any later command, process or machine that shares the cache folder.

Integrity: every cached file embeds a SHA-256 digest of its content (`content_digest`: the bytes, dtypes and
shapes of its tensors and arrays, a record's canonical JSON), checked on every load. A file with flipped
bytes, a truncated one, one written without a digest (an older version) or a record that does not fit its
kind's schema is never used: it is recomputed, with one warning line on the "worstforget" logger.

Concurrency: a unit is computed while holding an exclusive lock on `<entry>.lock` beside its file, so
processes sharing the cache folder never compute the same unit at once; the second waits, then reads the
first's entry. Entries are written atomically and synced (`io.write_bytes_atomic`): a reader sees the old
entry or the new one, never a partial one.

Without a shared folder (Ray workers on other machines, `--ray-cache driver`): a worker caches into a private
folder of its own and knows the names of the driver's entries (`detach_reads`); reading an entry it lacks but
the driver holds raises `EntryNeeded`, and the driver sends the entry with the task's next attempt. What the
worker computed travels back as files (`list_entries`), and the driver alone stores them (`store_entry`,
checked against their digests like any read).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .io import to_jsonable, write_bytes_atomic
from .runtime import Timer, cache_root

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process locks (results stay correct, work may be duplicated)
    fcntl = None

LOGGER = logging.getLogger("worstforget")

# Units computed by this process, per record kind (the cache's own bookkeeping; tests read it).
COMPUTED: Counter = Counter()

# The fields every record of a kind must hold, as numbers (a unit: one method run on one forget set).
RECORD_FIELDS: dict[str, tuple[str, ...]] = {"unit": ("UA", "RA", "TA", "MIA", "MIA_std", "RTE")}

Validator = Callable[[Any], "str | None"]  # a record → what is wrong with it, or None


# --- digests ---------------------------------------------------------------------------------------------

def content_digest(obj: Any) -> str:
    """SHA-256 of nested dicts, lists, tensors, arrays, strings and numbers: equal exactly when the
    content is (tensor dtypes, shapes and bytes; dict keys in sorted order; floats bit for bit)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, dict):
        h.update(b"{%d:" % len(obj))
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d:" % len(obj))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}:".encode())
        h.update(a.reshape(-1).view(np.uint8))
    elif isinstance(obj, (bool, np.bool_)):
        h.update(b"b1" if obj else b"b0")
    elif isinstance(obj, (int, np.integer)):
        h.update(f"i{int(obj)};".encode())
    elif isinstance(obj, (float, np.floating)):
        h.update(f"f{float(obj).hex()};".encode())
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(b"s%d:" % len(data) + data)
    elif obj is None:
        h.update(b"n")
    else:
        raise TypeError(f"cannot digest {type(obj).__name__}")


def _untrusted(path: Path, problem: str) -> None:
    LOGGER.warning("cache entry %s %s; recomputing it", path, problem)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


# --- a worker without the driver's folder ----------------------------------------------------------------

class EntryNeeded(BaseException):
    """A detached worker read an entry it lacks that the driver's cache holds: `relpaths` (relative to the cache
    folder). Not an Exception: no task code may catch it and compute the entry instead; the executor catches it
    and asks the driver for the entries."""

    def __init__(self, relpaths: list[str]):
        super().__init__(", ".join(relpaths))
        self.relpaths = list(relpaths)


_DETACHED: dict[str, Any] = {}  # {"root": Path, "index": set of relpaths the driver holds} in a detached worker


def detach_reads(root: str | Path | None, index: "set[str] | frozenset[str] | None" = None) -> None:
    """In a worker: its cache folder `root` stands for the driver's, whose entries are `index` (None: attached)."""
    _DETACHED.clear()
    if root is not None:
        _DETACHED.update(root=Path(root), index=frozenset(index or ()), read=set())


def read_unknown() -> set[str]:
    """The entries a detached worker read from its own folder that the driver's index lacks (computed here for an
    earlier task): they go back to the driver like new ones. Cleared by the call."""
    found = set(_DETACHED.get("read", ()))
    if found:
        _DETACHED["read"].clear()
    return found


def need(*paths: str | Path) -> None:
    """Before reading entries: in a detached worker, raise `EntryNeeded` for those it lacks that the driver holds."""
    if not _DETACHED:
        return
    root, index, missing = _DETACHED["root"], _DETACHED["index"], []
    for path in paths:
        path = Path(path)
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            continue
        if not path.exists():
            if rel in index:
                missing.append(rel)
        elif rel not in index:
            _DETACHED["read"].add(rel)
    if missing:
        raise EntryNeeded(missing)


ENTRY_FOLDERS = ("models", "records", "arrays", "search")  # what a unit reads and writes (not logs, locks, studies)


def list_entries(root: str | Path) -> dict[str, tuple[int, int]]:
    """The cache entries under `root`: relpath → (size, mtime in ns); lock and temporary files left out."""
    root, found = Path(root), {}
    for folder in ENTRY_FOLDERS:
        top = root / folder
        if not top.is_dir():
            continue
        for dirpath, _, files in os.walk(top):
            for name in files:
                if name.endswith(".lock") or name.startswith("."):
                    continue
                path = Path(dirpath, name)
                try:
                    st = path.stat()
                except OSError:
                    continue
                found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


def entry_problem(relpath: str, data: bytes) -> str | None:
    """What is wrong with the bytes of the entry `relpath` (None when its digest checks out): a model, a record
    or arrays, read as their caches read them. Search checkpoints carry their own digests, checked on load."""
    parts = relpath.split("/")
    if ".." in parts or relpath.startswith("/") or parts[0] not in ENTRY_FOLDERS:
        return "is not a cache entry"
    try:
        if parts[0] == "models":
            entry = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if not (isinstance(entry, dict) and isinstance(entry.get("state_dict"), dict)
                    and isinstance(entry.get("meta"), str)):
                return "has no checksum"
            return None if content_digest([entry["state_dict"], entry["meta"]]) == entry.get("digest") else \
                "fails its checksum"
        if parts[0] == "records":
            doc = json.loads(data.decode("utf-8"))
            ok = isinstance(doc, dict) and "record" in doc and \
                hashlib.sha256(_canonical(doc["record"]).encode()).hexdigest() == doc.get("sha256")
            return None if ok else "fails its checksum"
        if parts[0] == "arrays":
            with np.load(io.BytesIO(data), allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            digest = arrays.pop(DIGEST_ARRAY, None)
            return None if digest is not None and content_digest(arrays) == str(digest) else "fails its checksum"
    except Exception as exc:  # truncated or foreign bytes: torch, json and numpy raise many types
        return f"is unreadable ({_first_line(exc)})"
    return None


def store_entry(root: str | Path, relpath: str, data: bytes) -> bool:
    """Store an entry a worker computed into the cache folder `root` (atomically), unless the folder already
    holds it; refuses bytes that fail their digest (`entry_problem`). True when written."""
    problem = entry_problem(relpath, data)
    if problem is not None:
        raise ValueError(f"cache entry {relpath} sent by a worker {problem}")
    path = Path(root) / relpath
    if path.is_file():  # the same key: the same content, computed twice (two workers before the driver held it)
        try:
            if entry_problem(relpath, path.read_bytes()) is None:
                return False
        except OSError:
            pass  # unreadable here: replaced by the worker's copy
    write_bytes_atomic(path, data)
    return True


# --- the folder --------------------------------------------------------------------------------------------

def check_cache_folder(root: str | Path | None = None) -> Path:
    """Refuse, in one line and before any work, a cache folder that cannot take new entries: a file in its
    place or on its path, or a folder (or one of its entry folders) that cannot be written — a read-only
    mount, an immutable folder. Creates the folder when missing; returns it."""
    import tempfile

    from .errors import OptionError

    given = root is not None
    root = Path(root).expanduser() if given else cache_root()
    source = ("{cache_dir}" if given else
              "WORSTFORGET_CACHE" if os.environ.get("WORSTFORGET_CACHE") else "the cache folder")
    fix = "point {cache_dir} or WORSTFORGET_CACHE at a writable folder, or pass {no_cache}"

    def refused(text: str) -> OptionError:
        """Worded with the parameter names cache_dir and no_cache (the CLI names its flags); any other brace in
        the text (a path's) is kept as it is."""
        template = text.replace("{", "{{").replace("}", "}}")
        template = template.replace("{{cache_dir}}", "{cache_dir}").replace("{{no_cache}}", "{no_cache}")
        return OptionError(template, "cache_dir", "no_cache")
    if root.exists() and not root.is_dir():
        raise refused(f"{source} {root} is a file, not a folder; {fix}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise refused(f"{source} {root} cannot be created ({exc.strerror or exc}); {fix}") from None
    folders = [root]
    for sub in ("models", "records", "arrays", "logs"):
        entry = root / sub
        if entry.is_dir():
            folders.append(entry)
            if sub in ("records", "arrays"):
                folders += [d for d in entry.iterdir() if d.is_dir()]
        elif entry.exists():
            raise refused(f"{source} {root} holds a file named {sub} where a folder belongs; {fix}")
    for folder in folders:
        try:  # a real probe: permission bits say nothing for root, immutable folders or read-only mounts
            fd, probe = tempfile.mkstemp(prefix=".worstforget-probe-", dir=folder)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise refused(f"{source} {root} cannot be written ({exc.strerror or exc} in {folder}); "
                                   f"{fix}") from None
    return root


# --- locks -----------------------------------------------------------------------------------------------

@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if needed) for the duration of the block.

    The lock is released by the kernel when the process ends, killed or not, so a crash never leaves a
    unit locked. On a local or clustered POSIX file system every process sees it. On NFS, Linux clients
    (2.6.12 and later) emulate flock with byte-range locks that the server arbitrates (NLM for NFSv3,
    built into NFSv4); mounts with `nolock` or `local_lock=flock|all` keep locks on each client, and then
    two machines may compute the same unit at once. Results stay correct (each write is an atomic rename
    of a complete, digested file); only work is duplicated. Lock files are left in place: removing one
    while another process waits on it would let a third take a different lock on a new file.
    """
    if fcntl is None:
        yield
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache cannot be locked; the write that follows reports the problem
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- models ----------------------------------------------------------------------------------------------

class ModelCache:
    """State dicts under `<root>/models/<key>.pt` ({state_dict, meta, digest}), loaded with weights_only=True."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    def path(self, key: str) -> Path:
        return self.root / "models" / f"{key}.pt"

    def lock(self, key: str):
        """Hold while training the model of `key`: another process waits, then loads it (see `file_lock`)."""
        return file_lock(self.path(key).with_name(f"{key}.pt.lock")) if self.enabled else nullcontext()

    def load(self, key: str, model: nn.Module) -> bool:
        """Load the entry into `model`; False when absent or untrusted (then it is recomputed)."""
        return self.load_with_meta(key, model) is not None

    def load_with_meta(self, key: str, model: nn.Module) -> dict | None:
        """Load the entry into `model` and return its metadata; None when absent or untrusted, leaving
        `model` untouched."""
        path = self.path(key)
        if self.enabled:
            need(path)
        if not (self.enabled and path.is_file()):
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for truncated or foreign files
            _untrusted(path, f"is unreadable ({_first_line(exc)})")
            return None
        problem = _model_entry_problem(entry, model)
        if problem:
            _untrusted(path, problem)
            return None
        model.load_state_dict(entry["state_dict"])
        meta = json.loads(entry["meta"])
        return meta if isinstance(meta, dict) else {}

    def save(self, key: str, model: nn.Module, *, meta: dict | None = None) -> None:
        if not self.enabled:
            return
        state = model.state_dict()
        meta_json = json.dumps(to_jsonable(meta or {}))
        buf = io.BytesIO()
        torch.save({"state_dict": state, "meta": meta_json, "digest": content_digest([state, meta_json])}, buf)
        write_bytes_atomic(self.path(key), buf.getvalue())


def _model_entry_problem(entry: Any, model: nn.Module) -> str | None:
    if not (isinstance(entry, dict) and isinstance(entry.get("state_dict"), dict)
            and isinstance(entry.get("meta"), str) and isinstance(entry.get("digest"), str)):
        return "has no checksum (written by an older version)"
    state = entry["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "holds values that are not tensors"
    if content_digest([state, entry["meta"]]) != entry["digest"]:
        return "fails its checksum (damaged)"
    try:
        json.loads(entry["meta"])
    except ValueError:
        return "has unreadable metadata"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in state.items()}:
        return "does not fit the architecture"
    return None


# --- records ---------------------------------------------------------------------------------------------

def record_problem(kind: str, record: Any) -> str | None:
    """What is wrong with a record of `kind` (None when it is well formed): a record is a dict with string
    keys; a kind in RECORD_FIELDS needs those fields, and holds nothing but numbers."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a record"
    fields = RECORD_FIELDS.get(kind)
    if fields is None:
        return None
    missing = [k for k in fields if k not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    wrong = [k for k, v in record.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if wrong:
        return f"has non-numeric {', '.join(sorted(wrong))}"
    return None


def _canonical(record: Any) -> str:
    return json.dumps(record, sort_keys=True)


class RecordCache:
    """JSON records under `<root>/records/<kind>/<key>.json` ({"sha256": digest, "record": {...}}): the
    metrics of one unlearning run, ..."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    def path(self, kind: str, key: str) -> Path:
        return self.root / "records" / kind / f"{key}.json"

    def get(self, kind: str, key: str, *, validate: Validator | None = None) -> dict | None:
        """The cached record of (kind, key) when there is a usable one, else None — silently: the
        `get_or_compute` that recomputes an unusable entry says why."""
        if not self.enabled:
            return None
        return self._read(self.path(kind, key), validate or (lambda record: record_problem(kind, record)), warn=False)

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], dict], *,
                       validate: Validator | None = None) -> dict:
        """The cached record of (kind, key), or `compute()` stored under it.

        A cached record is used only when its digest matches and it passes `validate` (default: the kind's
        schema, `record_problem`). The computation holds the unit's lock (`file_lock`): a process asking
        for a unit another one is computing waits for it, then reads its record.
        """
        check = validate or (lambda record: record_problem(kind, record))
        if not self.enabled:
            return self._compute(kind, key, compute)
        path = self.path(kind, key)
        found = self._read(path, check, warn=False)  # most units are cached: no lock for a hit
        if found is not None:
            return found
        with file_lock(path.with_name(f"{path.name}.lock")):
            found = self._read(path, check, warn=True)  # computed meanwhile by the lock's last holder?
            if found is not None:
                return found
            record = self._compute(kind, key, compute)
            text = json.dumps({"sha256": hashlib.sha256(_canonical(record).encode()).hexdigest(), "record": record})
            write_bytes_atomic(path, text.encode())
        return record

    @staticmethod
    def _compute(kind: str, key: str, compute: Callable[[], dict]) -> dict:
        with Timer() as timer:
            record = to_jsonable(compute())
        COMPUTED[kind] += 1
        LOGGER.info("computed %s %s in %.2fs", kind, key, timer.seconds)
        return record

    @staticmethod
    def _read(path: Path, check: Validator, *, warn: bool) -> dict | None:
        need(path)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or bad JSON
            problem = f"is unreadable ({_first_line(exc)})"
        else:
            if not (isinstance(doc, dict) and isinstance(doc.get("sha256"), str) and "record" in doc):
                problem = "has no checksum (written by an older version)"
            elif hashlib.sha256(_canonical(doc["record"]).encode()).hexdigest() != doc["sha256"]:
                problem = "fails its checksum (damaged)"
            else:
                problem = check(doc["record"])
                if problem is None:
                    return doc["record"]
                problem = f"is not a valid record: it {problem}"
        if warn:
            _untrusted(path, problem)
        return None


# --- arrays ----------------------------------------------------------------------------------------------

DIGEST_ARRAY = "__sha256__"


class ArrayCache:
    """Named numpy arrays under `<root>/arrays/<kind>/<key>.npz` (per-model statistics of a unit), with
    their digest stored as one more array."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    def path(self, kind: str, key: str) -> Path:
        return self.root / "arrays" / kind / f"{key}.npz"

    def lock(self, kind: str, key: str):
        """Hold while computing the arrays of (kind, key) (see `file_lock`)."""
        path = self.path(kind, key)
        return file_lock(path.with_name(f"{path.name}.lock")) if self.enabled else nullcontext()

    def get(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, key)
        if self.enabled:
            need(path)
        if not (self.enabled and path.is_file()):
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # zipfile.BadZipFile (bad CRC), ValueError, OSError, EOFError...
            _untrusted(path, f"is unreadable ({_first_line(exc)})")
            return None
        digest = arrays.pop(DIGEST_ARRAY, None)
        if digest is None or digest.shape != () or digest.dtype.kind != "U":
            _untrusted(path, "has no checksum (written by an older version)")
            return None
        if content_digest(arrays) != str(digest):
            _untrusted(path, "fails its checksum (damaged)")
            return None
        return arrays

    def put(self, kind: str, key: str, arrays: dict) -> None:
        if not self.enabled:
            return
        if DIGEST_ARRAY in arrays:
            raise ValueError(f"{DIGEST_ARRAY} is reserved for the cache's checksum")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays, **{DIGEST_ARRAY: np.array(content_digest(arrays))})
        write_bytes_atomic(self.path(kind, key), buf.getvalue())
