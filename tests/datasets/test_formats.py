"""Dataset readers and the downloader, exercised on tiny files written in each real on-disk format."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes

from worstforget.core.errors import DataNotFoundError, WorstforgetError
from worstforget.datasets import download as dl
from worstforget.datasets import formats

# ----------------------------------------------------------------------------- CIFAR writers


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us change how bytes are written
    """Writes `bytes` and `str` as Python 2 `str` opcodes (SHORT_BINSTRING/BINSTRING), as cPickle did for CIFAR."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes | str) -> None:
        if isinstance(obj, str):
            obj = obj.encode("latin-1")  # numpy's dtype codes such as 'u1' and '|' were py2 str too
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _py2_pickle(obj: object) -> bytes:
    """Protocol-2 bytes laid out like the original CIFAR files (py2 strings, numpy.core module path)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (and so the originals) name the function under numpy.core; GLOBAL is newline-framed text
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _cifar_batch(images: np.ndarray, labels: list[int], label_key: bytes) -> dict:
    # the originals flatten each image as R plane, G plane, B plane, each 32×32 row-major
    flat = np.stack([images[:, c].reshape(len(images), -1) for c in range(3)], axis=1).reshape(len(images), 3072)
    return {b"batch_label": b"training batch", label_key: labels, b"data": flat,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}


def _write_cifar10(folder: Path, per_batch: int = 4, py2: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    dump = _py2_pickle if py2 else (lambda obj: pickle.dumps(obj, protocol=2))
    images, labels = [], []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        x = _cifar_images(per_batch, seed=i)
        y = [(i + j) % 10 for j in range(per_batch)]
        (folder / name).write_bytes(dump(_cifar_batch(x, y, b"labels")))
        images.append(x)
        labels.append(y)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(dump({b"label_names": names, b"num_cases_per_batch": per_batch}))
    return np.stack(images), np.array(labels)


def test_cifar10_python2_pickles_round_trip(tmp_path: Path) -> None:
    images, labels = _write_cifar10(tmp_path / "cifar-10-batches-py")
    raw = formats.load_cifar10(tmp_path)  # root contains the folder
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (4, 3, 32, 32)
    assert raw.y_train.dtype == np.int64 and raw.y_test.dtype == np.int64
    np.testing.assert_array_equal(raw.x_train, images[:5].reshape(20, 3, 32, 32))
    np.testing.assert_array_equal(raw.x_test, images[5])
    np.testing.assert_array_equal(raw.y_train, labels[:5].reshape(-1))
    np.testing.assert_array_equal(raw.y_test, labels[5])
    assert raw.classes is not None and raw.classes[0] == "airplane" and len(raw.classes) == 10
    # a single pixel pins the layout: red plane first, rows before columns
    assert raw.x_train[1, 0, 2, 5] == images[0, 1, 0, 2, 5]


def test_cifar10_accepts_the_folder_itself_and_python3_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    images, _ = _write_cifar10(folder, per_batch=2, py2=False)
    raw = formats.load_cifar10(folder)
    np.testing.assert_array_equal(raw.x_test, images[5])


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x_train, x_test = _cifar_images(6, 1), _cifar_images(3, 2)
    train = _cifar_batch(x_train, [0, 99, 5, 42, 7, 1], b"fine_labels") | {b"coarse_labels": [0, 19, 1, 2, 3, 4]}
    test = _cifar_batch(x_test, [3, 2, 1], b"fine_labels") | {b"coarse_labels": [1, 1, 1]}
    (folder / "train").write_bytes(_py2_pickle(train))
    (folder / "test").write_bytes(_py2_pickle(test))
    fine = [f"class{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(_py2_pickle({b"fine_label_names": fine, b"coarse_label_names": fine[:20]}))
    raw = formats.load_cifar100(tmp_path)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, [0, 99, 5, 42, 7, 1])
    np.testing.assert_array_equal(raw.y_test, [3, 2, 1])
    assert raw.classes is not None and len(raw.classes) == 100 and raw.classes[99] == "class99"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol hook
        return (os.system, (f"touch {self.marker}",))


def test_restricted_load_refuses_malicious_global_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, per_batch=1)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
    with pytest.raises(WorstforgetError, match=r"refuses to load (posix|os|nt)\.system"):
        formats.load_cifar10(folder)
    with pytest.raises(WorstforgetError, match=r"refuses to load (__builtin__|builtins)\.eval"):
        formats.restricted_load(io.BytesIO(pickle.dumps(eval, protocol=2)))
    assert not marker.exists()


def test_restricted_load_reports_truncated_pickle(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(_py2_pickle({b"data": np.zeros((1, 3072), np.uint8)})[:40])
    with pytest.raises(WorstforgetError, match="not a readable pickle"):
        formats.restricted_load(path)


def test_cifar_missing_directory_names_paths_and_fix(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        formats.load_cifar10(root)
    message = str(err.value)
    assert "\n" not in message
    assert str(root) in message and str(root / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "--download" in message


# ----------------------------------------------------------------------------- SVHN


def test_svhn_mat_maps_label_10_to_0(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[3], [10]], dtype=np.uint8)})
    raw = formats.load_svhn(tmp_path)
    assert raw.x_train.shape == (5, 3, 32, 32) and raw.x_train.dtype == np.uint8
    np.testing.assert_array_equal(raw.y_train, [0, 1, 2, 0, 9])
    np.testing.assert_array_equal(raw.y_test, [3, 0])
    assert raw.y_train.dtype == np.int64
    assert raw.x_train[3, 2, 7, 11] == x[7, 11, 2, 3]  # (H, W, C, N) → (N, C, H, W)


# ----------------------------------------------------------------------------- IDX


def _write_mnist(folder: Path, gz: bool, n_train: int = 6, n_test: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", gz)
    raw = formats.load_mnist(tmp_path)
    assert raw.x_train.shape == (6, 1, 28, 28) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(raw.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert raw.y_train.dtype == np.int64 and raw.x_train.flags.writeable


@pytest.mark.parametrize("corruption", ["magic", "type", "truncated", "gzip"])
def test_mnist_corrupt_file_is_an_error(tmp_path: Path, corruption: str) -> None:
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    if corruption == "magic":
        data[0] = 0x12
    elif corruption == "type":
        data[2] = 0x07
    elif corruption == "truncated":
        del data[-10:]
    else:
        path.unlink()
        path = tmp_path / "train-images-idx3-ubyte.gz"
        data = bytearray(gzip.compress(bytes(data))[:60])
    path.write_bytes(bytes(data))
    with pytest.raises(WorstforgetError, match="not a valid IDX file"):
        formats.load_mnist(tmp_path)


def test_idx_reads_big_endian_wider_types(tmp_path: Path) -> None:
    path = tmp_path / "values-idx2-int"
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + values.tobytes())
    np.testing.assert_array_equal(formats.read_idx(path), [[1, -2], [70000, 3]])


def test_fashion_mnist_missing_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_dir = tmp_path / "usr-share"
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", (system_dir,))
    root = tmp_path / "data"
    with pytest.raises(DataNotFoundError) as err:
        formats.load_fashion_mnist(root)
    message = str(err.value)
    assert "\n" not in message
    for where in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw", system_dir):
        assert str(where) in message
    assert "apt-get install dataset-fashion-mnist" in message and "train-images-idx3-ubyte" in message


def test_fashion_mnist_partial_folder_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", ())
    _write_mnist(tmp_path / "fashion-mnist", gz=True)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"fashion-mnist lacks t10k-labels-idx1-ubyte"):
        formats.load_fashion_mnist(tmp_path)


def _debian_fashion_dir() -> Path | None:
    for folder in formats.FASHION_MNIST_SYSTEM_DIRS:
        if all((folder / f"{stem}.gz").is_file() for stem in formats._IDX_STEMS):
            return folder
    return None


@pytest.mark.skipif(_debian_fashion_dir() is None,
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    raw = formats.load_fashion_mnist(tmp_path / "empty")  # nothing in root: falls back to the package
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert raw.y_train.shape == (60000,) and raw.y_test.shape == (10000,)
    assert set(np.unique(raw.y_train)) == set(range(10))
    assert raw.classes == formats.FASHION_MNIST_CLASSES


# ----------------------------------------------------------------------------- npz / h5


def _byo_arrays(flat: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    shape = (7,) if flat else (1, 4, 4)
    return {"x_train": rng.normal(size=(10, *shape)).astype(np.float32), "y_train": np.arange(10) % 3,
            "x_test": rng.normal(size=(4, *shape)).astype(np.float32), "y_test": np.array([0, 1, 2, 1]),
            "x_val": rng.normal(size=(2, *shape)).astype(np.float32), "y_val": np.array([2.0, 0.0])}


def _write_h5(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_byo_round_trip(tmp_path: Path, fmt: str, flat: bool) -> None:
    arrays = _byo_arrays(flat)
    path = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(path, **arrays)
        raw = formats.load_npz(path)
    else:
        _write_h5(path, arrays)
        raw = formats.load_h5(path)
    np.testing.assert_array_equal(raw.x_train, arrays["x_train"])
    np.testing.assert_array_equal(raw.x_test, arrays["x_test"])
    assert raw.x_val is not None and raw.y_val is not None
    np.testing.assert_array_equal(raw.y_val, [2, 0])
    assert raw.y_train.dtype == np.int64 and raw.y_val.dtype == np.int64
    assert raw.x_train.shape == ((10, 7) if flat else (10, 1, 4, 4))


def test_byo_validation_is_optional_for_val(tmp_path: Path) -> None:
    arrays = {k: v for k, v in _byo_arrays(True).items() if not k.endswith("_val")}
    np.savez(tmp_path / "d.npz", **arrays)
    raw = formats.load_npz(tmp_path / "d.npz")
    assert raw.x_val is None and raw.y_val is None


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_byo_missing_key_is_named(tmp_path: Path, fmt: str) -> None:
    arrays = {k: v for k, v in _byo_arrays(True).items() if k != "y_test"}
    path = tmp_path / f"d.{fmt}"
    if fmt == "npz":
        np.savez(path, **arrays)
        load = formats.load_npz
    else:
        _write_h5(path, arrays)
        load = formats.load_h5
    with pytest.raises(WorstforgetError, match="lacks key 'y_test'") as err:
        load(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("y_train", np.arange(9), "x_train has 10 rows but y_train has 9"),
    ("y_train", np.full(10, -1), "y_train holds negative labels"),
    ("y_train", np.linspace(0, 1, 10), "y_train holds non-integer values"),
    ("x_test", np.zeros((4, 8), np.float32), "x_test rows have shape"),
    ("x_train", np.zeros(10, np.float32), "x_train has shape"),
    ("y_val", None, "lacks key 'y_val'"),
])
def test_byo_invalid_arrays(tmp_path: Path, key: str, value: np.ndarray | None, pattern: str) -> None:
    arrays = _byo_arrays(True)
    if value is None:
        del arrays[key]
    else:
        arrays[key] = value
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(WorstforgetError, match=pattern):
        formats.load_npz(tmp_path / "d.npz")


def test_npz_refuses_object_arrays(tmp_path: Path) -> None:
    arrays = _byo_arrays(True)
    arrays["y_train"] = np.array([object()] * 10, dtype=object)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(WorstforgetError, match="key 'y_train' is unreadable"):
        formats.load_npz(tmp_path / "d.npz")


def test_byo_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "d.npz"
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "absent")):
        formats.load_npz(path)
    with pytest.raises(DataNotFoundError):
        formats.load_h5(tmp_path / "d.h5")


def test_corrupt_containers(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip at all")
    (tmp_path / "d.h5").write_bytes(b"not hdf5 either")
    with pytest.raises(WorstforgetError, match="not a readable .npz"):
        formats.load_npz(tmp_path / "d.npz")
    with pytest.raises(WorstforgetError, match="not a readable HDF5"):
        formats.load_h5(tmp_path / "d.h5")


# ----------------------------------------------------------------------------- download


def test_download_without_network_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dl.urllib.request, "urlopen", refuse)
    root = tmp_path / "data"
    for name in ("cifar10", "mnist"):
        with pytest.raises(DataNotFoundError) as err:
            dl.download(name, root)
        message = str(err.value)
        assert "\n" not in message and "could not download" in message and "no internet?" in message
        assert "Temporary failure in name resolution" in message and str(root) in message
        assert list(root.iterdir()) == []


def test_download_checksum_mismatch_removes_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "_fetch", lambda url, out: out.write(b"definitely not the archive"))
    with pytest.raises(WorstforgetError, match="checksum mismatch for cifar-10-python.tar.gz"):
        dl.download("cifar10", tmp_path)
    with pytest.raises(WorstforgetError, match="checksum mismatch for train_32x32.mat"):
        dl.download("svhn", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _serve(monkeypatch: pytest.MonkeyPatch, name: str, payloads: dict[str, bytes]) -> None:
    """Stand in for the network, and point the checksums at the payloads we serve."""
    source = dl.SOURCES[name]
    files = tuple(replace(r, md5=hashlib.md5(payloads[r.filename]).hexdigest()) for r in source.files)
    monkeypatch.setitem(dl.SOURCES, name, replace(source, files=files))
    monkeypatch.setattr(dl, "_fetch", lambda url, out: out.write(payloads[url.rsplit("/", 1)[1]]))


def test_download_extracts_cifar_archive_for_the_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "build" / "cifar-10-batches-py"
    images, _ = _write_cifar10(staging, per_batch=2)
    archive = _tar_gz({f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in staging.iterdir()})
    _serve(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    root = tmp_path / "data"
    assert dl.download("cifar10", root) == root / "cifar-10-batches-py"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temp files left
    np.testing.assert_array_equal(formats.load_cifar10(root).x_test, images[5])
    monkeypatch.setattr(dl, "_fetch", lambda url, out: pytest.fail("already present: must not fetch again"))
    assert dl.download("cifar10", root) == root / "cifar-10-batches-py"


def test_download_refuses_path_traversal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar_gz({"cifar-10-batches-py/test_batch": b"x", "../escaped": b"boom"})
    _serve(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    root = tmp_path / "data"
    with pytest.raises(WorstforgetError, match="escapes the target folder"):
        dl.download("cifar10", root)
    assert not (tmp_path / "escaped").exists()
    assert list(root.iterdir()) == []


def test_download_idx_files_for_the_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _write_mnist(tmp_path / "build", gz=True)
    payloads = {f"{stem}.gz": (tmp_path / "build" / f"{stem}.gz").read_bytes() for stem in arrays}
    _serve(monkeypatch, "fashion_mnist", payloads)
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", ())
    root = tmp_path / "data"
    assert dl.download("fashion-mnist", root) == root / "fashion-mnist"
    assert sorted(p.name for p in root.iterdir()) == ["fashion-mnist"]
    raw = formats.load_fashion_mnist(root)
    np.testing.assert_array_equal(raw.y_train, arrays["train-labels-idx1-ubyte"])


def test_download_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(WorstforgetError, match="known datasets are"):
        dl.download("imagenet", tmp_path)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3000, 1, 12, 12), (3000, 40)])
def test_standardisation_is_the_float64_statistics_whatever_the_threads(threads: int, shape: tuple) -> None:
    """Train statistics in float64, then elementwise float32 arithmetic: the tensors equal this reference bit for
    bit, so a driver and its one-thread workers build the same data and the same cache keys."""
    import torch

    from worstforget.datasets.bundle import build_dataset
    from worstforget.datasets.raw import RawSplits

    rng = np.random.default_rng(5)
    x = (rng.integers(0, 256, size=shape) * (rng.random(shape) < 0.4)).astype(np.uint8)
    y = np.arange(shape[0]) % 10
    raw = RawSplits(x_train=x, y_train=y, x_test=x[:500], y_test=y[:500], x_val=x[500:800], y_val=y[500:800])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = build_dataset("t", raw)
    finally:
        torch.set_num_threads(before)
    axes = (0, 2, 3) if len(shape) == 4 else (0,)
    x64 = x.astype(np.float64) / 255.0
    mean = x64.mean(axis=axes, keepdims=True).astype(np.float32)
    std = np.maximum(x64.std(axis=axes, ddof=1, keepdims=True).astype(np.float32), np.float32(1e-6))
    expected = (x.astype(np.float32) / np.float32(255.0) - mean) / std
    np.testing.assert_array_equal(data.x_train.numpy(), expected)


@pytest.mark.skipif(_debian_fashion_dir() is None,
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_fingerprint_does_not_depend_on_torch_threads() -> None:
    """Real Fashion-MNIST once gave another fingerprint with 1 thread than with 2 (float32 reductions), so process
    workers refused the driver's original model. Loaded twice in this process (nothing memoises a load), under 1
    and under 2 intra-op threads: torch reads the thread count at every operation."""
    import torch

    from worstforget.datasets import load_dataset

    threads, prints = torch.get_num_threads(), []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            prints.append(load_dataset("fashion_mnist").fingerprint)
    finally:
        torch.set_num_threads(threads)
    assert len(prints) == 2 and len(set(prints)) == 1
