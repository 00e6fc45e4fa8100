"""Concept datasets for generative unlearning: objects × styles, UnlearnCanvas's shape in miniature.

A concept is one (object, style) pair and its prompt ("a 3 in inverted style"); concept id = object ·
num_styles + style (object-major, like the prompt list). Every source image is drawn in every style by a
deterministic transform, so a concept's images are its object's images in its style — as UnlearnCanvas
paints each photo of an object in each style. The styles are chosen to differ in ways a small classifier
tells apart at 8×8 (polarity, stroke width, texture).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.registry import Registry
from ..core.seeds import generator

IMAGE_SIZE = 8  # digits' own resolution: a diffusion model trains in seconds on a CPU


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x


def _inverted(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def _thick(x: torch.Tensor) -> torch.Tensor:
    """Strokes dilated by a 3×3 max filter: bold."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _checkered(x: torch.Tensor) -> torch.Tensor:
    """Strokes dimmed on every other pixel of a checkerboard: a texture that keeps the shape."""
    h, w = x.shape[-2:]
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    return x * torch.where(board, 1.0, 0.35).to(x.dtype)


def _outlined(x: torch.Tensor) -> torch.Tensor:
    """The stroke's contour: dilation minus erosion."""
    dil = F.max_pool2d(x, 3, stride=1, padding=1)
    ero = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return (dil - ero).clamp(0, 1)


STYLES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "plain": _plain, "inverted": _inverted, "thick": _thick, "checkered": _checkered, "outlined": _outlined}
DEFAULT_STYLES = ("plain", "inverted", "thick", "checkered")


@dataclass
class ConceptData:
    """Images in [0, 1], shape (N, 1, H, W), with their object, style and concept ids, split train / test."""

    name: str
    objects: list[str]
    styles: list[str]
    x_train: torch.Tensor
    concept_train: torch.Tensor  # (N,) long
    x_test: torch.Tensor
    concept_test: torch.Tensor
    fingerprint: str
    template: str = "a {object} in {style} style"  # the prompt of each (object, style) pair

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def num_styles(self) -> int:
        return len(self.styles)

    @property
    def num_concepts(self) -> int:
        return self.num_objects * self.num_styles

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def concept_id(self, obj: int, style: int) -> int:
        return obj * self.num_styles + style

    def object_of(self, concept: torch.Tensor | int):
        return concept // self.num_styles

    def style_of(self, concept: torch.Tensor | int):
        return concept % self.num_styles

    def prompt(self, concept: int) -> str:
        return self.template.format(object=self.objects[self.object_of(concept)],
                                    style=self.styles[self.style_of(concept)])

    @property
    def prompts(self) -> list[str]:
        return [self.prompt(c) for c in range(self.num_concepts)]

    def to(self, device: str | torch.device) -> "ConceptData":
        return ConceptData(self.name, self.objects, self.styles, self.x_train.to(device),
                           self.concept_train.to(device), self.x_test.to(device), self.concept_test.to(device),
                           self.fingerprint, self.template)

    def describe(self) -> dict:
        return {"name": self.name, "objects": self.objects, "styles": self.styles, "num_train": len(self.x_train),
                "num_test": len(self.x_test), "image_shape": list(self.image_shape), "fingerprint": self.fingerprint}


def concept_data_from_images(name: str, images, *, test_every: int = 5) -> ConceptData:
    """A `ConceptData` from a folder's images (`datasets.concept_folder.ConceptImages`): of each concept's images
    in file order, the last n // `test_every` (at least one) go to the test split (the classifier's held-out
    accuracy and the Fréchet distance's real side) — none from a concept with a single image, which the search's
    objective and the classifier need for training."""
    grid = images.grid
    train, test = [], []
    for c in range(grid.num_concepts):
        rows = torch.nonzero(images.concepts == c).flatten().tolist()
        held = max(1, len(rows) // test_every) if len(rows) > 1 else 0
        train += rows[:len(rows) - held]
        test += rows[len(rows) - held:]
    train_rows, test_rows = torch.tensor(train, dtype=torch.long), torch.tensor(test, dtype=torch.long)
    return ConceptData(name, list(grid.objects), list(grid.styles), images.images[train_rows],
                       images.concepts[train_rows], images.images[test_rows], images.concepts[test_rows],
                       stable_hash({"name": name, "images": images.fingerprint, "test_every": test_every}),
                       grid.template)


def stylise(images: torch.Tensor, labels: torch.Tensor, styles: tuple[str, ...], num_objects: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in every style: (N·S, 1, H, W) images and their concept ids (object-major)."""
    xs, cs = [], []
    for s, style in enumerate(styles):
        xs.append(STYLES[style](images).clamp(0, 1))
        cs.append(labels * len(styles) + s)
    del num_objects  # the ids depend on the label and style only
    return torch.cat(xs), torch.cat(cs)


def build_concepts(name: str, images: np.ndarray, labels: np.ndarray, objects: list[str], *,
                   styles: tuple[str, ...] = DEFAULT_STYLES, test_fraction: float = 0.2, seed: int = 0,
                   per_object: int | None = None) -> ConceptData:
    """Resize grey images (N, 1, h, w) in [0, 1] to IMAGE_SIZE, split by source image (seeded), stylise both splits."""
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    if per_object is not None:  # a seeded, class-balanced subset of the source images
        g = generator(seed, "concept-subset")
        keep = torch.cat([torch.nonzero(y == k).flatten()[torch.randperm(int((y == k).sum()), generator=g)]
                          [:per_object] for k in range(len(objects))])
        x, y = x[keep], y[keep]
    if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area").clamp(0, 1)
    order = torch.randperm(len(x), generator=generator(seed, "concept-split"))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    x_train, c_train = stylise(x[train], y[train], styles, len(objects))
    x_test, c_test = stylise(x[test], y[test], styles, len(objects))
    digest = hashlib.sha256()
    for t in (x_train, c_train, x_test, c_test):
        digest.update(t.contiguous().numpy().tobytes())
    fingerprint = stable_hash({"name": name, "objects": list(objects), "styles": list(styles),
                               "content": digest.hexdigest()})
    return ConceptData(name, list(objects), list(styles), x_train, c_train, x_test, c_test, fingerprint)


def _digits(_: Path | None) -> ConceptData:
    """scikit-learn's digits (10 objects) × 4 styles at 8×8: 40 concepts (offline)"""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0
    return build_concepts("concepts-digits", images, bunch.target, [str(d) for d in range(10)])


FASHION_OBJECTS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _fashion(data_dir: Path | None) -> ConceptData:
    """Fashion-MNIST (10 objects, 200 images each) × 4 styles at 8×8 (apt install dataset-fashion-mnist)"""
    from . import default_data_dir
    from .formats import load_fashion_mnist

    raw = load_fashion_mnist(Path(data_dir).expanduser() if data_dir else default_data_dir())
    images = np.asarray(raw.x_train, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.max() > 1.5:
        images = images / 255.0
    return build_concepts("concepts-fashion", images, np.asarray(raw.y_train), FASHION_OBJECTS, per_object=200)


CONCEPT_DATASETS: Registry[Callable[[Path | None], ConceptData]] = Registry("concept dataset")
CONCEPT_DATASETS.register("concepts_digits")(_digits)  # --dataset concepts-digits (the registry reads - as _)
CONCEPT_DATASETS.register("concepts_fashion")(_fashion)
def is_concept_dataset(name: str) -> bool:
    return name in CONCEPT_DATASETS


def load_concepts(name: str, *, data_dir: str | Path | None = None, device: str | torch.device = "cpu"
                  ) -> ConceptData:
    """A registered concept dataset, on `device`."""
    if not is_concept_dataset(name):
        raise ConfigError(f"unknown concept dataset {name!r} for --task generation; available: "
                          f"{', '.join(n.replace('_', '-') for n in CONCEPT_DATASETS.names())}")
    return CONCEPT_DATASETS.get(name)(Path(data_dir) if data_dir else None).to(device)
