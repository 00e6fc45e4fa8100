"""Atomic writes, output checks made before any work, and JSON conversion of results.

A result is a set of files (summary.json, result.h5, results.csv, ...) that must agree with each other, so
`write_result_folder` writes the whole set into a temporary folder beside the destination and renames it
into place: a crash or a full disk leaves the previous result or nothing, never a mixture.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import ConfigError, WorstforgetError


def to_jsonable(obj: Any, *, nan_to_none: bool = False) -> Any:
    """Convert numpy/torch scalars and arrays inside nested containers into plain JSON types
    (with `nan_to_none`, NaN and ±inf become None, for strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, nan_to_none=nan_to_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nan_to_none=nan_to_none) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), nan_to_none=nan_to_none)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if nan_to_none and isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_checked_dict(cls: type, values: dict, what: str):
    """Build a dataclass from a dict, rejecting unknown keys with a message that lists the known ones."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    The new content is synced to disk before the rename and the rename is synced after it, so a crash or
    a power cut leaves the old file or the new one, never an empty or partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _sync_file(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
        _sync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        _write_synced(tmp, data)


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (NaN and ±inf become null: no output file ever holds a bare NaN)."""
    return (json.dumps(to_jsonable(obj, nan_to_none=True), indent=2, allow_nan=False) + "\n").encode()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        _write_synced(tmp, json_bytes(obj))


def _write_synced(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_nlink > 1:  # a hard link shared with the previous result: never
        path.unlink()  # write through it, write a fresh inode
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


MIN_FREE_BYTES = 4 * 2**20  # headroom below which an output folder is refused before any work starts


def check_output_dir(out: str | Path, *, expected_bytes: int = 0, what: str = "--out") -> Path:
    """Refuse an output folder that cannot be written, before any work: a file in the way, a folder that
    cannot be created or written, or too little free space. Returns the resolved path; creates nothing."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise WorstforgetError(f"{what} {out} is a file; give a folder path")
    here = Path.cwd().resolve()
    if out.exists() and (out.resolve() == here or out.resolve() in here.parents):
        # the folder is replaced as a unit (renamed away, then deleted): never the one we are working in
        raise WorstforgetError(f"{what} {out} contains the working folder; give a new or separate folder for results")
    _check_writable(out, expected_bytes, what, fix="give a folder path")
    return out


def check_output_file(path: str | Path, *, expected_bytes: int = 0, what: str = "--out") -> Path:
    """`check_output_dir` for one output file (written beside itself and renamed): refuse a folder in its
    place, a file among its parents, a folder that cannot be written, or too little free space."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise WorstforgetError(f"{what} {path} is a folder; give a file name such as {path / 'out.json'}")
    _check_writable(path.parent, expected_bytes, what, fix="give a file path inside a folder", shown=path)
    return path


def _check_writable(folder: Path, expected_bytes: int, what: str, *, fix: str, shown: Path | None = None) -> None:
    """The nearest existing ancestor of `folder` (itself included) must be a folder that takes new entries
    and has room for them."""
    out = shown or folder
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise WorstforgetError(f"{what} {out} lies under {ancestor}, which is a file; {fix}")
    try:  # a real probe: permission bits say nothing for root or read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".worstforget-probe-", dir=ancestor)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise WorstforgetError(f"{what} {out} cannot be written ({exc.strerror or exc} in {ancestor}); "
                               "choose a writable folder") from None
    free = shutil.disk_usage(ancestor).free
    needed = MIN_FREE_BYTES + 2 * int(expected_bytes)  # the new output is written beside the old one
    if free < needed:
        raise WorstforgetError(f"{what} {out}: only {free / 2**20:.1f} MiB free on its disk, about "
                               f"{needed / 2**20:.1f} MiB needed; free space or choose another folder")


def write_result_folder(out: str | Path, files: dict[str, bytes], *, owned: tuple[str, ...] = ()) -> Path:
    """Write `files` (name → bytes) as one unit into the folder `out`.

    Other files already in `out` (a report, the user's notes) are kept, except those named in `owned`: the
    files a result of this kind may hold, which must all come from the same run (a previous run's
    evaluation.json beside a new summary.json would be read as this run's). Everything is written and synced
    in a temporary sibling folder, which then takes the place of `out`. Hidden leftovers of earlier writes
    into `out` that were killed midway (`.<name>.*.tmp`, `.<name>.*.old`) are removed first.
    """
    out = Path(out).expanduser().absolute()
    tmp = old = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_writer_tag()}.", suffix=".tmp", dir=out.parent))
        if out.is_dir():
            for entry in out.iterdir():
                if entry.name not in files and entry.name not in owned:
                    _link_or_copy(entry, tmp / entry.name)
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            _write_synced(tmp / name, data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; results are meant to be shared
        _sync_dir(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.{_writer_tag()}.old"
            os.rename(out, old)
        os.rename(tmp, out)
        _sync_dir(out.parent)
    except OSError as exc:
        if old is not None and old.exists() and not out.exists():
            os.rename(old, out)  # put the previous result back
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise WorstforgetError(f"could not write the results to {out} ({reason}); the previous contents are "
                               "unchanged — free space or choose another --out") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


# A leftover whose writer cannot be identified (an older version's name) is removed once it is this old.
STALE_UNKNOWN_SECONDS = 3600


def _writer_tag() -> str:
    """`<pid>@<host>` of this process: names its temporary folders so a later write can tell a live writer's
    folder (never touched) from a killed one's (removed)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:40] or "host"
    return f"{os.getpid()}@{host}"


def _writer_alive(tag: str) -> bool | None:
    """Whether the writer of `tag` still runs: None when it cannot be told (another host, no tag)."""
    pid, sep, host = tag.partition("@")
    if not sep or not pid.isdigit() or host != _writer_tag().partition("@")[2]:
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def remove_stale_siblings(out: Path) -> list[Path]:
    """Remove `.<out name>.<tag>.<...>.tmp` and `.<out name>.<tag>.old` folders beside `out` left by writes
    that were killed (kill -9, a power cut): those of a dead process on this host, and untagged ones older
    than STALE_UNKNOWN_SECONDS. Returns what was removed."""
    import time

    removed = []
    prefix = f".{out.name}."
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and (name.endswith(".tmp") or name.endswith(".old"))):
            continue
        middle = name[len(prefix):-4]
        if not middle:
            continue
        alive = _writer_alive(middle.split(".")[0])
        if alive is None:
            try:
                alive = time.time() - entry.lstat().st_mtime < STALE_UNKNOWN_SECONDS
            except OSError:
                continue
        if alive:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except OSError:
                continue
        removed.append(entry)
    return removed


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src, dst) -> None:
    try:
        os.link(src, dst)  # same file system: no copy
    except OSError:
        shutil.copy2(src, dst)


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
