"""Fetching the standard datasets from their official URLs into a data directory.

This module owns the network side: the URLs and published MD5 checksums, streaming each file to a
temporary file inside `root`, verifying it, extracting archives safely, and moving the result into
the place where `formats.py` looks for it. A failed or corrupt download never leaves partial files.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..core.errors import ConfigError, DataNotFoundError, WorstforgetError

__all__ = ["SOURCES", "download"]

_TIMEOUT_S = 60.0  # per connect/read; a stalled mirror should fail, not hang an experiment forever
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One published file: where to get it (mirrors in order of preference) and its MD5."""

    filename: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """A dataset's files and where they end up under `root` (the folder the loader searches)."""

    files: tuple[Remote, ...]
    subdir: str
    expect: tuple[str, ...]  # files that must exist in root/subdir for the data to count as present
    archive: bool = False  # a .tar.gz whose top-level folder is `subdir`


def _remotes(bases: tuple[str, ...], checksums: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(Remote(name, md5, tuple(base + name for base in bases)) for name, md5 in checksums.items())


_MNIST_BASES = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_BASES = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_SVHN_BASES = ("http://ufldl.stanford.edu/housenumbers/",)
_CIFAR_BASE = "https://www.cs.toronto.edu/~kriz/"

SOURCES: dict[str, Source] = {
    "cifar10": Source(
        files=(Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                      (_CIFAR_BASE + "cifar-10-python.tar.gz",)),),
        subdir="cifar-10-batches-py",
        expect=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        archive=True),
    "cifar100": Source(
        files=(Remote("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                      (_CIFAR_BASE + "cifar-100-python.tar.gz",)),),
        subdir="cifar-100-python",
        expect=("train", "test", "meta"),
        archive=True),
    "mnist": Source(
        files=_remotes(_MNIST_BASES, {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
        subdir="mnist",
        expect=()),
    "fashion_mnist": Source(
        files=_remotes(_FASHION_BASES, {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
        subdir="fashion-mnist",
        expect=()),
    "svhn": Source(
        files=_remotes(_SVHN_BASES, {
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}),
        subdir="svhn",
        expect=()),
}

# Errors that mean "the network or the server let us down" rather than a bug or a full disk.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def download(name: str, root: Path) -> Path:
    """Fetch dataset `name` into `root` unless it is already there; return the folder holding its files.

    Raises:
        ConfigError: unknown dataset name.
        DataNotFoundError: no mirror could be reached (the message says where to put the files by hand).
        WorstforgetError: a checksum mismatch, an unsafe archive, or an incomplete earlier extraction.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in SOURCES:
        raise ConfigError(f"cannot download '{name}': known datasets are {', '.join(sorted(SOURCES))}")
    source = SOURCES[key]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if source.archive:
        return _download_archive(source, root)
    return _download_files(source, root)


def _download_archive(source: Source, root: Path) -> Path:
    target = root / source.subdir
    if target.is_dir():
        missing = [f for f in source.expect if not (target / f).is_file()]
        if not missing:
            return target
        # we only ever create `target` by an atomic rename, so a gap means someone else's files: keep them
        raise WorstforgetError(f"{target} exists but lacks {', '.join(missing)}; remove that folder and retry")
    remote = source.files[0]
    archive = _fetch_verified(remote, root, hand_dir=root)
    try:
        _extract_atomically(archive, root, source.subdir)
    finally:
        archive.unlink(missing_ok=True)
    return target


def _download_files(source: Source, root: Path) -> Path:
    target = root / source.subdir
    for remote in source.files:
        dest = target / remote.filename
        if dest.is_file() and _md5(dest) == remote.md5:
            continue  # already fetched and intact: a re-run resumes instead of starting over
        part = _fetch_verified(remote, root, hand_dir=target)
        target.mkdir(exist_ok=True)  # only now, so a failed first fetch leaves root untouched
        os.replace(part, dest)  # same filesystem (the temp file lives in root), hence atomic
    return target


def _fetch(url: str, out: BinaryIO) -> None:
    """Stream `url` into `out` (separate so tests can stand in for the network)."""
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        shutil.copyfileobj(response, out, _CHUNK)


def _fetch_verified(remote: Remote, root: Path, hand_dir: Path) -> Path:
    """Download `remote` to a temp file in `root`, trying each mirror; return it once its MD5 matches.

    The temp file is removed on every failure, so an interrupted run leaves nothing behind.
    """
    fd, name = tempfile.mkstemp(dir=root, prefix=f".{remote.filename}.", suffix=".part")
    part = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch_any_mirror(remote, out, hand_dir)
        digest = _md5(part)
        if digest != remote.md5:
            raise WorstforgetError(f"checksum mismatch for {remote.filename}: got md5 {digest}, expected {remote.md5}; "
                                   "the download was corrupted (deleted it), retry or place the file by hand")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def _fetch_any_mirror(remote: Remote, out: BinaryIO, hand_dir: Path) -> None:
    failures: list[str] = []
    for url in remote.urls:
        try:
            _fetch(url, out)
            return
        except _NETWORK_ERRORS as exc:
            failures.append(f"{url} ({_reason(exc)})")
            out.seek(0)
            out.truncate()  # a half-written response from one mirror must not prefix the next
    raise DataNotFoundError(f"could not download {remote.filename} from {' or '.join(failures)}; "
                            f"no internet? place the files in {hand_dir} by hand")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
    text = str(reason if reason is not None else exc) or type(exc).__name__
    return " ".join(text.split())  # the message must stay on one line


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity against published sums, not security
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything but plain files and folders that stay inside the extraction directory."""
    path = PurePosixPath(member.name)
    drive = len(member.name) > 1 and member.name[1] == ":"  # C:\... would be absolute on Windows
    if path.is_absolute() or member.name.startswith(("/", "\\")) or drive or ".." in path.parts:
        raise WorstforgetError(f"refusing to extract {archive.name}: member {member.name!r} escapes the target folder")
    if not (member.isfile() or member.isdir()):
        raise WorstforgetError(f"refusing to extract {archive.name}: member {member.name!r} is a link or device")


def _extract_atomically(archive: Path, root: Path, subdir: str) -> None:
    """Extract into a staging folder inside `root`, then rename `subdir` into place in one step."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                tar.extractall(staging, members=members, **_tar_filter())
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise WorstforgetError(f"could not extract {archive.name} ({exc}); delete it and retry") from None
        extracted = staging / subdir
        if not extracted.is_dir():
            raise WorstforgetError(f"{archive.name} has no top-level folder {subdir}/; it is not the expected archive")
        os.replace(extracted, root / subdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tar_filter() -> dict[str, str]:
    # Python ≥ 3.11.4 can also enforce safety itself; older ones rely on _check_member alone
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
