"""Dataset registry: names → loaders, with per-dataset defaults for the model and its training.

`load_dataset("digits")`, `load_dataset("cifar10", data_dir=...)`, `load_dataset("npz:/path/file.npz")`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import ConfigError
from ..core.registry import Registry
from ..core.runtime import cache_root
from ..core.seeds import generator
from .bundle import Augment, Dataset, augment_batch, build_dataset
from .raw import RawSplits
from .validate import check_standardised, validate_splits

__all__ = ["DATASETS", "DatasetInfo", "Dataset", "Augment", "augment_batch", "load_dataset", "dataset_info",
           "default_data_dir"]


@dataclass(frozen=True)
class DatasetInfo:
    """How to read a dataset and what to train on it by default."""

    read: Callable[[Path], RawSplits]  # (data_dir or file path) → arrays
    default_model: str
    default_train: dict = field(default_factory=dict)  # TrainConfig overrides
    augment: Augment = Augment()
    needs_files: bool = True  # False for bundled/synthetic data
    downloadable: bool = False
    __doc__: str = ""


DATASETS: Registry[DatasetInfo] = Registry("dataset")

_CIFAR_TRAIN = {"epochs": 182, "lr": 0.1, "batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4,
                "schedule": "step"}


def _read_digits(_: Path) -> RawSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    return RawSplits(x_train=x / 16.0, y_train=bunch.target.astype(np.int64),
                     x_test=x[:0], y_test=bunch.target[:0].astype(np.int64),
                     classes=tuple(str(c) for c in range(10)))


def _read_synthetic(_: Path) -> RawSplits:
    """Gaussian blobs: 3 classes in 8 dimensions, some overlap so a model must memorise a few points."""
    g = generator(0, "synthetic-data")
    import torch

    centers = torch.randn(3, 8, generator=g) * 2.0
    y = torch.arange(360) % 3
    x = centers[y] + torch.randn(360, 8, generator=g) * 1.5
    return RawSplits(x_train=x[:240].numpy(), y_train=y[:240].numpy(), x_test=x[240:].numpy(),
                     y_test=y[240:].numpy(), classes=("a", "b", "c"))


def _formats():
    from . import formats

    return formats


def _register_builtins() -> None:
    reg = DATASETS.register
    reg("digits")(DatasetInfo(_read_digits, "mlp", {"epochs": 40, "lr": 0.05, "batch_size": 64},
                              needs_files=False,
                              __doc__="scikit-learn's bundled 8×8 handwritten digits (1,797 images; offline)"))
    reg("synthetic", aliases=("toy",))(DatasetInfo(_read_synthetic, "mlp",
                                                   {"epochs": 20, "lr": 0.05, "batch_size": 32}, needs_files=False,
                                                   __doc__="Gaussian blobs, 3 classes × 8 features (tests)"))
    crop_flip = Augment(crop_pad=4, flip=True)
    reg("cifar10")(DatasetInfo(lambda d: _formats().load_cifar10(d), "resnet18", _CIFAR_TRAIN, crop_flip,
                               downloadable=True, __doc__="CIFAR-10 python batches; 45k train / 5k val / 10k test"))
    reg("cifar100")(DatasetInfo(lambda d: _formats().load_cifar100(d), "resnet18", _CIFAR_TRAIN, crop_flip,
                                downloadable=True, __doc__="CIFAR-100 python files (fine labels); 45k / 5k / 10k"))
    reg("svhn")(DatasetInfo(lambda d: _formats().load_svhn(d), "resnet18",
                            {"epochs": 40, "lr": 0.05, "batch_size": 256, "schedule": "cosine"},
                            Augment(crop_pad=4), downloadable=True, __doc__="SVHN cropped digits (.mat files)"))
    mnist_train = {"epochs": 15, "lr": 0.05, "batch_size": 128, "schedule": "cosine"}
    reg("mnist")(DatasetInfo(lambda d: _formats().load_mnist(d), "cnn", mnist_train, downloadable=True,
                             __doc__="MNIST IDX files (60k / 10k)"))
    reg("fashion_mnist", aliases=("fmnist",))(DatasetInfo(
        lambda d: _formats().load_fashion_mnist(d), "cnn", mnist_train, downloadable=True,
        __doc__="Fashion-MNIST IDX files (60k / 10k; apt install dataset-fashion-mnist)"))
    reg("npz")(DatasetInfo(lambda p: _formats().load_npz(p), "mlp", {"epochs": 30, "lr": 0.05, "batch_size": 128},
                           __doc__="your arrays: npz:PATH with x_train, y_train, x_test, y_test [, x_val, y_val]"))
    reg("h5")(DatasetInfo(lambda p: _formats().load_h5(p), "mlp", {"epochs": 30, "lr": 0.05, "batch_size": 128},
                          __doc__="your arrays: h5:PATH with x_train, y_train, x_test, y_test [, x_val, y_val]"))


_register_builtins()


def default_data_dir() -> Path:
    env = os.environ.get("WORSTFORGET_DATA")
    return Path(env) if env else cache_root() / "data"


def split_spec(spec: str) -> tuple[str, str | None]:
    """'npz:/a/b.npz' → ('npz', '/a/b.npz'); 'cifar10' → ('cifar10', None)."""
    name, sep, arg = spec.partition(":")
    return DATASETS.canonical(name), (arg if sep else None)


def dataset_info(spec: str) -> DatasetInfo:
    return DATASETS.get(split_spec(spec)[0])


def load_dataset(spec: str, *, data_dir: str | Path | None = None, download: bool = False,
                 split_seed: int = 0, device: str = "cpu", train_subset: int | None = None) -> Dataset:
    """Read, split and normalise a registered dataset, and move it to `device`.

    `train_subset` keeps a seeded random subset of that many training samples (validation and test splits
    unchanged; every class keeps at least one sample) — a CPU-scale audit of a large dataset. It is part of
    the data's fingerprint, so nothing computed on the full split is reused for it.

    Raises:
        ConfigError: unknown name, or a file-backed format given without its path.
        DataNotFoundError: the files are missing (the message says where we looked and how to get them).
        InvalidDataError: non-finite inputs, or labels that are not 0 … C−1 with every class in train
            (see `validate.validate_splits`); checked for every source before anything is built.
    """
    name, arg = split_spec(spec)
    info = DATASETS.get(name)
    if name in ("npz", "h5"):
        if not arg:
            raise ConfigError(f"dataset {name} needs a file: use --dataset {name}:PATH")
        source = Path(arg).expanduser()
        label = f"{name}:{source.name}"
        where = str(source)
    else:
        source = Path(data_dir).expanduser() if data_dir else default_data_dir()
        label = where = name
        if download and info.downloadable:
            from .download import download as fetch

            fetch(name, source)
    raw = info.read(source)
    validate_splits(raw, where)
    data = build_dataset(label, raw, split_seed=split_seed, augment=info.augment)
    for split in ("train", "val", "test"):
        check_standardised(getattr(data, f"x_{split}"), split, where)
    if train_subset is not None:
        data = subset_train(data, train_subset, seed=split_seed)
    return data.to(device)


def subset_train(data: Dataset, size: int, *, seed: int) -> Dataset:
    """`size` training samples drawn without replacement from the seeded stream ("train-subset", seed),
    topped up with one sample of any class the draw missed."""
    import dataclasses

    import torch

    from ..core.errors import ConfigError
    from ..core.hashing import stable_hash
    from ..core.seeds import generator

    if not 2 * data.num_classes <= size <= data.num_train:
        raise ConfigError(f"--train-subset must lie in [{2 * data.num_classes}, {data.num_train}] for {data.name} "
                          f"(twice its {data.num_classes} classes up to its training split), got {size}")
    order = torch.randperm(data.num_train, generator=generator(seed, "train-subset"))
    keep = order[:size]
    missing = [c for c in range(data.num_classes) if not bool((data.y_train[keep] == c).any())]
    for c in missing:  # swap in the first sample of the class beyond the draw, dropping the draw's last
        extra = order[size:][data.y_train[order[size:]] == c][:1]
        keep = torch.cat([keep[:-1], extra]) if len(extra) else keep
    keep = keep.sort().values
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep],
                               fingerprint=stable_hash({"data": data.fingerprint, "train_subset": size, "seed": seed}))
