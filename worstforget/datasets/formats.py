"""Readers for the standard on-disk dataset formats, each returning `RawSplits`.

This module owns turning files into arrays: CIFAR-10/100 "python version" pickles (through a
restricted unpickler), SVHN `.mat` files, MNIST-style IDX files (gzipped or not), and
bring-your-own `.npz` / `.h5` arrays. It never downloads (see `download.py`), splits, scales or
moves data to a device. Images come back as (N, C, H, W) uint8 and labels as int64.
"""
from __future__ import annotations

import codecs
import gzip
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..core.errors import DataNotFoundError, WorstforgetError
from .raw import RawSplits

__all__ = [
    "FASHION_MNIST_SYSTEM_DIRS",
    "load_cifar10",
    "load_cifar100",
    "load_fashion_mnist",
    "load_h5",
    "load_mnist",
    "load_npz",
    "load_svhn",
    "read_idx",
    "restricted_load",
]

# Where Debian's `dataset-fashion-mnist` package puts the gzipped IDX files (from `dpkg -L`).
# A module-level tuple so tests and unusual installs can point elsewhere.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

# ----------------------------------------------------------------------------- restricted pickle

# numpy moved `_reconstruct` from numpy.core to numpy._core in 2.0; asking an array how it pickles
# itself finds the function without touching either (deprecated or private) module path.
_NDARRAY_RECONSTRUCT = np.empty(0, dtype=np.uint8).__reduce__()[0]

# Exactly the globals a CIFAR batch needs: arrays are rebuilt by _reconstruct(ndarray, shape, dtype)
# and BUILD; `_codecs.encode` is how Python 3 writes bytes into protocol-2 pickles. Everything else
# (dicts, lists, ints, strings) is built by opcodes that never import anything.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `_ALLOWED_GLOBALS`.

    Pickles run arbitrary code through the globals they import; refusing every other global here,
    before anything is called, is what makes reading a downloaded file safe.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WorstforgetError(
                f"restricted_load refuses to load {module}.{name}: dataset pickles may only hold numpy arrays, "
                "dicts, lists and strings; this file is not a genuine dataset batch, delete it and get a fresh copy"
            ) from None


def restricted_load(file: str | Path | BinaryIO, *, encoding: str = "bytes") -> Any:
    """Unpickle `file` (a path or a binary file object) admitting only numpy arrays and plain containers.

    `encoding="bytes"` is what Python-2 pickles such as the CIFAR batches need: their `str` objects
    (dict keys, the raw array buffers) come back as `bytes`.

    Raises:
        WorstforgetError: the pickle names a forbidden global, or is truncated or corrupt.
    """
    if isinstance(file, (str, Path)):
        with open(file, "rb") as stream:
            return _unpickle(stream, encoding, str(file))
    return _unpickle(file, encoding, getattr(file, "name", "<stream>"))


def _unpickle(stream: BinaryIO, encoding: str, label: str) -> Any:
    try:
        return _RestrictedUnpickler(stream, encoding=encoding).load()
    except WorstforgetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError) as exc:
        raise WorstforgetError(f"{label} is not a readable pickle ({type(exc).__name__}: {exc}); "
                               "delete it and get a fresh copy") from None


# ----------------------------------------------------------------------------- locating files

def _candidates(root: Path, subdirs: Iterable[str], extra: Iterable[Path] = ()) -> list[Path]:
    """`root`, then `root/<subdir>` for each subdir, then `extra`, without duplicates."""
    root = Path(root).expanduser()
    dirs = [root, *(root / sub for sub in subdirs), *extra]
    return list(dict.fromkeys(dirs))


def _resolve(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _find_files(dataset: str, dirs: Sequence[Path], stems: Sequence[str], how_to_get: str,
                suffixes: Sequence[str] = ("",)) -> dict[str, Path]:
    """The first directory in `dirs` holding every file in `stems` (each with one of `suffixes`).

    Raises:
        DataNotFoundError: no directory holds them all; the message lists the files, every directory
            tried, what a partially filled directory lacks, and how to get the data.
    """
    best_missing: tuple[Path, list[str]] | None = None
    for folder in dirs:
        found = {stem: _resolve(folder, stem, suffixes) for stem in stems}
        missing = [stem for stem, path in found.items() if path is None]
        if not missing:
            return {stem: path for stem, path in found.items() if path is not None}
        if len(missing) < len(stems) and best_missing is None:
            best_missing = (folder, missing)
    expected = ", ".join(f"{stem}[{'|'.join(s for s in suffixes if s)}]" if len(suffixes) > 1 else stem
                         for stem in stems)
    looked = ", ".join(str(d) for d in dirs)
    partial = (f" ({best_missing[0]} lacks {', '.join(best_missing[1])})" if best_missing else "")
    raise DataNotFoundError(f"{dataset} not found: expected {expected} in one of: {looked}{partial}; {how_to_get}")


# ----------------------------------------------------------------------------- label/array checks

def _as_labels(values: Any, what: str) -> np.ndarray:
    """Labels as a 1-D int64 array; integer-valued, non-negative, else a one-line error naming `what`."""
    y = np.asarray(values)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # column vectors are common in .mat/.h5 exports
    if y.ndim != 1:
        raise WorstforgetError(f"{what} must be a 1-D array of class indices, got shape {y.shape}; "
                               "if the labels are one-hot, store y.argmax(axis=1) instead")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise WorstforgetError(f"{what} has dtype {y.dtype}; labels must be integer class indices 0..K-1")
    if np.issubdtype(y.dtype, np.floating) and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise WorstforgetError(f"{what} holds non-integer values; labels must be integer class indices 0..K-1 "
                               "(convert with np.rint(y).astype(np.int64) if they are whole numbers stored as float)")
    if y.size and y.min() < 0:
        raise WorstforgetError(f"{what} holds negative labels (min {y.min()}); labels must be class indices 0..K-1, "
                               "remap them with np.unique(y, return_inverse=True)[1]")
    return y.astype(np.int64)


def _check_pair(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str, source: str) -> None:
    if len(x) != len(y):
        raise WorstforgetError(f"{source}: {x_name} has {len(x)} rows but {y_name} has {len(y)} labels; "
                               "they must have one label per row")


def _decode_names(values: Any) -> tuple[str, ...]:
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_BYTES_PER_IMAGE = 3 * 32 * 32


def _str_keys(entry: Any, path: Path) -> dict[str, Any]:
    """A batch dict with its Python-2 `bytes` keys decoded, so both old and re-pickled files work."""
    if not isinstance(entry, dict):
        raise WorstforgetError(f"{path} holds a {type(entry).__name__}, not a CIFAR batch dict; "
                               "delete it and extract a fresh copy of the archive")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _require_key(entry: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise WorstforgetError(f"{path} lacks the '{key}' entry (has: {', '.join(sorted(entry))}); "
                               "delete it and extract a fresh copy of the archive")
    return entry[key]


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one CIFAR batch file."""
    entry = _str_keys(restricted_load(path), path)
    data = _require_key(entry, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _CIFAR_BYTES_PER_IMAGE:
        shape = getattr(data, "shape", None)
        raise WorstforgetError(f"{path}: 'data' should be a (N, 3072) uint8 array, got {type(data).__name__} "
                               f"shape {shape}; delete it and extract a fresh copy of the archive")
    labels = _as_labels(_require_key(entry, label_key, path), f"{path} '{label_key}'")
    _check_pair(data, labels, "data", label_key, str(path))
    # each row is the R plane, then G, then B, each 32×32 row-major: exactly C-order (3, 32, 32)
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels


def _read_cifar_classes(path: Path, key: str) -> tuple[str, ...] | None:
    """Class names from the meta file, or None when it is absent (the arrays do not need it)."""
    if not path.is_file():
        return None
    return _decode_names(_require_key(_str_keys(restricted_load(path), path), key, path))


def _cifar_hint(archive: str, root: Path) -> str:
    return (f"download {archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {root}, "
            "or pass --download")


def load_cifar10(root: Path) -> RawSplits:
    """CIFAR-10 from `cifar-10-batches-py` (given directly, or as a subfolder of `root`)."""
    root = Path(root).expanduser()
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    files = _find_files("CIFAR-10", _candidates(root, ["cifar-10-batches-py"]), [*train_names, "test_batch"],
                        _cifar_hint("cifar-10-python.tar.gz", root))
    batches = [_read_cifar_batch(files[name], "labels") for name in train_names]
    x_test, y_test = _read_cifar_batch(files["test_batch"], "labels")
    classes = _read_cifar_classes(files["test_batch"].parent / "batches.meta", "label_names")
    return RawSplits(x_train=np.concatenate([b[0] for b in batches]), y_train=np.concatenate([b[1] for b in batches]),
                     x_test=x_test, y_test=y_test, classes=classes)


def load_cifar100(root: Path) -> RawSplits:
    """CIFAR-100 (fine labels) from `cifar-100-python` (given directly, or as a subfolder of `root`)."""
    root = Path(root).expanduser()
    files = _find_files("CIFAR-100", _candidates(root, ["cifar-100-python"]), ["train", "test"],
                        _cifar_hint("cifar-100-python.tar.gz", root))
    x_train, y_train = _read_cifar_batch(files["train"], "fine_labels")
    x_test, y_test = _read_cifar_batch(files["test"], "fine_labels")
    classes = _read_cifar_classes(files["train"].parent / "meta", "fine_label_names")
    return RawSplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


# ----------------------------------------------------------------------------- SVHN

def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64 with the file's 10 mapped to digit 0)."""
    from scipy.io import (
        loadmat,  # imported here: scipy is slow to import and only SVHN needs it
    )

    try:
        mat = loadmat(path)
    except (ValueError, OSError, TypeError, NotImplementedError) as exc:
        raise WorstforgetError(f"{path} is not a readable MATLAB file ({exc}); "
                               "delete it and download a fresh copy") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise WorstforgetError(f"{path}: 'X' should be a (32, 32, 3, N) uint8 array, got "
                               f"{getattr(x, 'shape', None)}; delete it and download a fresh copy")
    if y is None:
        raise WorstforgetError(f"{path} lacks the 'y' labels; delete it and download a fresh copy")
    labels = _as_labels(np.asarray(y).reshape(-1), f"{path} 'y'")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) → (N, C, H, W)
    _check_pair(images, labels, "X", "y", str(path))
    # SVHN stores the digit 0 as class 10 (MATLAB's 1-based habit)
    return images, np.where(labels == 10, 0, labels)


def load_svhn(root: Path) -> RawSplits:
    """SVHN cropped digits from `train_32x32.mat` and `test_32x32.mat` in `root` or `root/svhn`."""
    root = Path(root).expanduser()
    files = _find_files("SVHN", _candidates(root, ["svhn", "SVHN"]), ["train_32x32.mat", "test_32x32.mat"],
                        f"download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
                        f"into {root}, or pass --download")
    x_train, y_train = _read_svhn_mat(files["train_32x32.mat"])
    x_test, y_test = _read_svhn_mat(files["test_32x32.mat"])
    return RawSplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=DIGIT_CLASSES)


# ----------------------------------------------------------------------------- IDX (MNIST-like)

# IDX type codes (third byte of the magic number); multi-byte values are big-endian
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, why: str) -> WorstforgetError:
    return WorstforgetError(f"{path} is not a valid IDX file ({why}); delete it and get a fresh copy")


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, decompressed if they start with the gzip magic (whatever the file's name)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"broken gzip stream: {exc}") from None


def read_idx(path: Path) -> np.ndarray:
    """The array in one IDX file (gzipped or not), in native byte order, shape from its header.

    Raises:
        WorstforgetError: bad magic number, unknown type code, or a size that disagrees with the header.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise _corrupt(path, f"bad magic number {raw[:4].hex() or 'empty file'}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise _corrupt(path, f"unknown type code 0x{code:02x}")
    if ndim == 0:
        raise _corrupt(path, "zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"header truncated at {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise _corrupt(path, f"header promises shape {dims} ({expected} bytes) but {len(raw) - header} bytes follow")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a writable native-order copy, not a view of `raw`


def _read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise _corrupt(images_path, f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    if labels.ndim != 1:
        raise _corrupt(labels_path, f"expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise WorstforgetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                               "labels; the files come from different releases, get a fresh copy of both")
    return images[:, None, :, :], _as_labels(labels, str(labels_path))


_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_idx_dataset(dataset: str, dirs: Sequence[Path], how_to_get: str,
                      classes: tuple[str, ...]) -> RawSplits:
    files = _find_files(dataset, dirs, _IDX_STEMS, how_to_get, suffixes=("", ".gz"))
    x_train, y_train = _read_idx_split(files[_IDX_STEMS[0]], files[_IDX_STEMS[1]])
    x_test, y_test = _read_idx_split(files[_IDX_STEMS[2]], files[_IDX_STEMS[3]])
    return RawSplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


def load_mnist(root: Path) -> RawSplits:
    """MNIST from the four IDX files in `root`, `root/mnist`, `root/MNIST/raw` or `root/MNIST`."""
    root = Path(root).expanduser()
    dirs = _candidates(root, ["mnist", "MNIST/raw", "MNIST"])
    hint = (f"download the four *-ubyte.gz files from https://yann.lecun.com/exdb/mnist/ (or a mirror) into "
            f"{root / 'mnist'}, or pass --download")
    return _load_idx_dataset("MNIST", dirs, hint, DIGIT_CLASSES)


def load_fashion_mnist(root: Path) -> RawSplits:
    """Fashion-MNIST from `root` and its usual subfolders, falling back to Debian's package files."""
    root = Path(root).expanduser()
    dirs = _candidates(root, ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"],
                       extra=FASHION_MNIST_SYSTEM_DIRS)
    hint = (f"download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into "
            f"{root / 'fashion-mnist'}, or pass --download, or `apt-get install dataset-fashion-mnist`")
    return _load_idx_dataset("Fashion-MNIST", dirs, hint, FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------- npz / h5

_REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
_OPTIONAL_KEYS = ("x_val", "y_val")


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        where = "that directory exists but holds no such file" if path.parent.is_dir() else \
            f"directory {path.parent} does not exist"
        raise DataNotFoundError(f"{kind} file {path} not found ({where}); pass the path of a file holding "
                                "x_train, y_train, x_test, y_test [, x_val, y_val]")


def _check_features(x: np.ndarray, key: str, source: str) -> None:
    if x.ndim < 2:
        raise WorstforgetError(f"{source}: {key} has shape {x.shape}; expected (N, D) features or (N, C, H, W) "
                               f"images, reshape with {key}.reshape(len({key}), -1)")
    if x.dtype.kind == "c":  # converting would silently drop the imaginary part
        raise WorstforgetError(f"{source}: {key} has complex dtype {x.dtype}; store real features (e.g. the real and "
                               f"imaginary parts as separate columns, float32)")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise WorstforgetError(f"{source}: {key} has dtype {x.dtype}; store numeric features (e.g. float32 or uint8)")
    if len(x) == 0 and key != "x_val":
        raise WorstforgetError(f"{source}: {key} is empty; every required split needs at least one row")


def _arrays_to_splits(arrays: Mapping[str, np.ndarray], source: str, how_to_write: Callable[[str], str]) -> RawSplits:
    """Validate bring-your-own arrays and pack them; every error names the offending key and the fix."""
    for key in _REQUIRED_KEYS:
        if key not in arrays:
            found = ", ".join(sorted(arrays)) or "nothing usable"
            raise WorstforgetError(f"{source} lacks key '{key}' (found: {found}); {how_to_write(key)}")
    if ("x_val" in arrays) != ("y_val" in arrays):
        absent = "y_val" if "x_val" in arrays else "x_val"
        raise WorstforgetError(f"{source} lacks key '{absent}': x_val and y_val come together; "
                               f"{how_to_write(absent)}, or drop the other one")
    splits = [("train", True), ("test", True), ("val", "x_val" in arrays)]
    out: dict[str, np.ndarray] = {}
    for split, present in splits:
        if not present:
            continue
        x_key, y_key = f"x_{split}", f"y_{split}"
        x = np.asarray(arrays[x_key])
        _check_features(x, x_key, source)
        y = _as_labels(arrays[y_key], f"{source}: {y_key}")
        _check_pair(x, y, x_key, y_key, source)
        if split != "train" and x.shape[1:] != out["x_train"].shape[1:]:
            raise WorstforgetError(f"{source}: {x_key} rows have shape {x.shape[1:]} but x_train rows have "
                                   f"{out['x_train'].shape[1:]}; all splits need the same feature shape")
        out[x_key], out[y_key] = x, y
    return RawSplits(**out)


def load_npz(path: Path) -> RawSplits:
    """Arrays from an `.npz` written by `np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)`."""
    path = Path(path).expanduser()
    _require_file(path, "npz")
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle: object arrays could run code
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise WorstforgetError(f"{path} is not a readable .npz file ({exc}); write it with np.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise WorstforgetError(f"{path} holds a single array, not an .npz archive; write it with "
                               "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    with archive:
        arrays = {key: _npz_array(archive, key, path) for key in (*_REQUIRED_KEYS, *_OPTIONAL_KEYS)
                  if key in archive.files}
    return _arrays_to_splits(arrays, str(path),
                             lambda key: f"save it with np.savez(path, {key}=..., ...) alongside the other arrays")


def _npz_array(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise WorstforgetError(f"{path}: key '{key}' is unreadable ({exc}); store it as a plain numeric array "
                               "(object arrays are refused)") from None


def load_h5(path: Path) -> RawSplits:
    """Arrays from an HDF5 file whose top-level datasets are x_train, y_train, x_test, y_test [, x_val, y_val]."""
    import h5py  # imported here: only this format needs it

    path = Path(path).expanduser()
    _require_file(path, "h5")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise WorstforgetError(f"{path} is not a readable HDF5 file ({exc}); write it with h5py") from None
    with handle:
        arrays = {key: _h5_array(handle, key, path) for key in (*_REQUIRED_KEYS, *_OPTIONAL_KEYS) if key in handle}
    return _arrays_to_splits(arrays, str(path),
                             lambda key: f"write it with h5py: f.create_dataset('{key}', data=...)")


# An HDF5 dataset may declare far more than its file holds (an empty chunked dataset reads as zeros): what a
# file declares is refused beyond this many times its size on disk (and a floor for small files).
H5_EXPANSION = 64
H5_MIN_BUDGET = 256 * 2**20


def _h5_array(handle: Any, key: str, path: Path) -> np.ndarray:
    import h5py

    store = f"store the array itself at the top level with f.create_dataset('{key}', data=...)"
    link = handle.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise WorstforgetError(f"{path}: '{key}' is an external link to {link.filename}; {store}")
    try:
        node = handle[key]
    except (KeyError, OSError, RuntimeError, RecursionError) as exc:  # a dangling or looping soft link
        raise WorstforgetError(f"{path}: '{key}' cannot be resolved ({str(exc)[:100]}); {store}") from None
    if not isinstance(node, h5py.Dataset):
        raise WorstforgetError(f"{path}: '{key}' is a {type(node).__name__}, not a dataset; {store}")
    if node.shape is None or node.dtype.kind not in "biuf" or node.dtype.names is not None \
            or node.dtype.subdtype is not None:
        raise WorstforgetError(f"{path}: '{key}' holds {node.dtype} data of shape {node.shape}; store a plain numeric "
                               "array (float32, uint8, int64)")
    declared = int(np.prod(node.shape, dtype=object)) * node.dtype.itemsize
    budget = max(H5_MIN_BUDGET, H5_EXPANSION * path.stat().st_size)
    if declared > budget:
        raise WorstforgetError(f"{path}: '{key}' declares {declared / 2**30:,.2f} GiB ({node.shape} {node.dtype}) in a "
                               f"{path.stat().st_size / 2**20:,.1f} MiB file; store the actual array")
    try:
        return np.asarray(node[()])
    except MemoryError:
        raise WorstforgetError(f"{path}: '{key}' needs {declared / 2**30:,.2f} GiB, more than this machine can "
                               "allocate; use --train-subset on a smaller file or a larger machine") from None
    except (OSError, RuntimeError) as exc:
        raise WorstforgetError(f"{path}: '{key}' is unreadable ({str(exc)[:100]}); rewrite it with h5py") from None
