"""ARCANE (Yan et al., IJCAI 2022): exact unlearning with one model per class and block-wise saved states.

This file owns the ARCANE original (`arcane_original`, `ClassScorers`) and the registered `arcane` method;
the checkpointed block training and caching come from `sisa.py`.

What ARCANE does, and how it is simplified here (honestly):

* Partition by class, one model per class. ARCANE trains a *one-class* model per class; here each class
  gets a binary "this class vs the rest" scorer (the architecture of `spec` with two outputs), whose score
  is its log-odds. Prediction is the argmax over the class scores, which `ClassScorers` returns as logits.
* Representative data. Scorer c's positives are the `representative_fraction` of class c closest to the
  class mean in input space (deterministic). The other samples of class c are not used by scorer c.
* Negatives. A binary scorer needs negatives, which ARCANE's one-class models do not. Each training sample
  is offered as a negative to exactly one other class (a seeded uniform choice) and accepted with the
  probability that gives scorer c about `negative_ratio`·|positives| negatives drawn uniformly from the
  other classes. So a sample sits in at most two scorers (its own class, if representative, and the one
  it is a negative for), and a sample in neither costs nothing to delete — ARCANE's data-reduction win.
* Blocks with saved states. Each scorer's samples are split into `blocks` blocks; block b is trained on
  blocks 1..b starting from the state saved after block b−1 (as SISA's slices), epochs per block 2e/(B+1).
* Deletion. Forget weights are binarised (w ≥ 0.5 deletes the sample). Every scorer holding a deleted
  sample restarts from the state saved before its earliest block holding one and retrains its later
  blocks on what remains; the other scorers are untouched.
* Ordering. ARCANE sorts each class so that samples likely to be deleted sit in late blocks. The library
  does not know deletion likelihoods, so blocks keep a seeded random order: deletion cost here is the
  cost of random, not likely-to-be-deleted, requests.
* Model selection. Binary scorers are trained without best-epoch selection on validation accuracy
  (one-vs-rest validation accuracy is dominated by negatives, so it is no guide).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..core.cache import ModelCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed, generator
from ..datasets import Dataset
from ..training.loop import TrainConfig
from ..training.original import training_seconds
from .base import UnlearningMethod, check_weights
from .registry import register_method
from .sisa import (
    GRID_VERSION,
    State,
    block_seeds,
    block_work,
    load_or_train_grid,
    recipe,
    sync_device,
    train_blocks,
    with_state,
)

if TYPE_CHECKING:
    from ..training.original import ModelSpec


INACTIVE_SCORE = -30.0  # log-odds of a class whose scorer lost all its training data: never predicted, finite CE


class ClassScorers(nn.Module):
    """One binary scorer per class; forward returns (N, C) scores (log-odds of 'this class'), used as logits.

    A scorer left with no training data after deletions is inactive: its class scores INACTIVE_SCORE.
    """

    def __init__(self, scorers: list[nn.Module], active: torch.Tensor | None = None):
        super().__init__()
        self.scorers = nn.ModuleList(scorers)
        if active is None:
            active = torch.ones(len(scorers), dtype=torch.bool)
        self.register_buffer("active", active.to(torch.bool).cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([m(x) for m in self.scorers], dim=1)  # (B, C, 2)
        scores = z[..., 1] - z[..., 0]
        return torch.where(self.active.to(scores.device), scores, torch.full_like(scores, INACTIVE_SCORE))


@dataclass
class ArcaneOriginal:
    """The class-partitioned original: its scorers, every saved state and each sample's block per scorer."""

    scorers: ClassScorers
    checkpoints: list[list[State]]  # [class][b]: b = 0 the initialisation, b ≥ 1 the state after block b
    block_of: torch.Tensor  # (C, num_train) long: block of sample i in scorer c, −1 = not used by c
    representative: torch.Tensor  # (num_train,) bool: a positive of its own class's scorer
    cfg: TrainConfig  # per-block recipe
    train_seconds: float
    key: str
    seed: int

    @property
    def blocks(self) -> int:
        return len(self.checkpoints[0]) - 1

    def member_block(self, c: int, deleted: torch.Tensor | None = None) -> torch.Tensor:
        row = self.block_of[c]
        return row if deleted is None else torch.where(deleted, torch.full_like(row, -1), row)


def binary_view(data: Dataset, c: int) -> Dataset:
    """The dataset relabelled 'class c' (1) vs the rest (0): what scorer c is trained on."""
    return replace(data, y_train=(data.y_train == c).long(), y_val=(data.y_val == c).long(),
                   y_test=(data.y_test == c).long(), num_classes=2, fingerprint=f"{data.fingerprint}-vs{c}")


def representatives(data: Dataset, fraction: float) -> torch.Tensor:
    """(num_train,) bool: per class, the ⌈fraction·n_c⌉ samples closest to the class mean in input space."""
    x = data.x_train.flatten(1)
    chosen = torch.zeros(data.num_train, dtype=torch.bool, device=data.device)
    for c in range(data.num_classes):
        idx = torch.nonzero(data.y_train == c).flatten()
        if len(idx) == 0:
            continue
        dist = (x[idx] - x[idx].mean(0)).pow(2).sum(1)
        k = max(1, math.ceil(fraction * len(idx) - 1e-9))
        chosen[idx[torch.sort(dist, stable=True).indices[:k]]] = True
    return chosen


def arcane_assignment(data: Dataset, *, blocks: int, representative_fraction: float, negative_ratio: float,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(block_of (C, N), representative (N,)): which scorer uses which sample, in which block."""
    if not 0 < representative_fraction <= 1 or negative_ratio <= 0 or blocks < 1:
        raise ConfigError("arcane needs 0 < representative_fraction ≤ 1, negative_ratio > 0 and blocks ≥ 1")
    n, c_count, dev = data.num_train, data.num_classes, data.device
    if c_count < 2:
        raise ConfigError("arcane needs at least two classes")
    y = data.y_train
    rep = representatives(data, representative_fraction)
    positives = torch.bincount(y[rep], minlength=c_count).float()
    others = (n - torch.bincount(y, minlength=c_count)).float()
    # each sample is offered to one uniformly chosen other class (host = y + 1..C−1 mod C)
    g = generator(seed, "arcane-negatives")
    host = (y + 1 + torch.randint(0, c_count - 1, (n,), generator=g).to(dev)) % c_count
    offered = others / (c_count - 1)  # expected offers each class receives
    accept = (negative_ratio * positives / offered.clamp_min(1)).clamp(max=1.0)
    negative = torch.rand(n, generator=g).to(dev) < accept[host]
    member = torch.zeros(c_count, n, dtype=torch.bool, device=dev)
    member[y[rep], torch.nonzero(rep).flatten()] = True
    member[host[negative], torch.nonzero(negative).flatten()] = True
    block_of = torch.full((c_count, n), -1, dtype=torch.long, device=dev)
    for c in range(c_count):
        idx = torch.nonzero(member[c]).flatten()
        order = idx[torch.randperm(len(idx), generator=generator(seed, f"arcane-blocks-{c}")).to(dev)]
        block_of[c, order] = torch.arange(len(order), device=dev) * blocks // max(1, len(order))
    return block_of, rep


def arcane_key(spec: ModelSpec, data: Dataset, cfg: TrainConfig, *, blocks: int, representative_fraction: float,
               negative_ratio: float, seed: int) -> str:
    model = {k: v for k, v in spec.key(data).items() if k not in ("train", "seed")}
    return stable_hash({"kind": "arcane-grid", "v": GRID_VERSION, **model, "block_train": cfg.to_dict(),
                        "blocks": blocks, "representative_fraction": representative_fraction,
                        "negative_ratio": negative_ratio, "seed": seed})


def arcane_scorer(spec: ModelSpec, data: Dataset, seed: int, c: int) -> nn.Module:
    """A freshly initialised binary scorer for class c (architecture of `spec`, two outputs)."""
    return spec.build(binary_view(data, c), seed=derive_seed(seed, "arcane-init", c))


def arcane_original(spec: ModelSpec, data: Dataset, *, blocks: int, representative_fraction: float,
                    negative_ratio: float, seed: int, epochs_per_block: int | None = None,
                    cfg: TrainConfig | None = None, cache: ModelCache | None = None,
                    progress: Progress | None = None) -> ArcaneOriginal:
    """Train (or load from the cache) the per-class scorers of `spec` on `data`, with a state after every block."""
    cfg = cfg or recipe(spec, epochs=None, lr=None, batch_size=None, blocks=blocks,
                        epochs_per_block=epochs_per_block, select_best=False)
    block_of, rep = arcane_assignment(data, blocks=blocks, representative_fraction=representative_fraction,
                                      negative_ratio=negative_ratio, seed=seed)
    key = arcane_key(spec, data, cfg, blocks=blocks, representative_fraction=representative_fraction,
                     negative_ratio=negative_ratio, seed=seed)
    classes = data.num_classes

    def train_class(c: int, model: nn.Module) -> list[State]:
        return train_blocks(model, binary_view(data, c), block_of[c], cfg, start=0,
                            seeds=block_seeds(seed, "arcane-train", c, blocks), progress=progress,
                            description=f"arcane class {c} block")

    meta = {"kind": "arcane", "model": spec.to_dict(), "block_train": cfg.to_dict(), "blocks": blocks,
            "representative_fraction": representative_fraction, "negative_ratio": negative_ratio, "seed": seed}
    grid = load_or_train_grid(key, lambda c: arcane_scorer(spec, data, seed, c), classes, blocks, train_class,
                              cache=cache, meta=meta)
    states = grid.states()
    scorers = ClassScorers([with_state(arcane_scorer(spec, data, seed, c), states[c][blocks])
                            for c in range(classes)]).eval()
    return ArcaneOriginal(scorers=scorers, checkpoints=states, block_of=block_of, representative=rep, cfg=cfg,
                          train_seconds=float(grid.train_seconds), key=key, seed=seed)


@register_method("arcane")
@dataclass(kw_only=True)
class Arcane(UnlearningMethod):
    """ARCANE: exact unlearning of per-class scorers with block-wise saved states (see the module docstring).

    The audited original is the class-partitioned model of `spec` (not the single model passed to
    `apply`), built with the original's seed and cached. Forget weights are binarised at 0.5. Retrained
    blocks draw their batch order from the unlearning `seed`. After `apply`, `last_report` holds the
    training overhead and the share of training work that was redone.
    """

    differentiable = False
    iterative = False
    partitioned = True
    blocks: int = 5  # blocks per class, a saved state after each
    representative_fraction: float = 0.5  # share of each class (closest to its mean) used as positives
    negative_ratio: float = 1.0  # negatives per positive, drawn from the other classes
    epochs_per_block: int | None = None  # None: 2e/(B+1), e = the original's epochs (same total work)
    epochs: int | None = None  # None: the original's epoch budget e
    lr: float | None = None  # None: the original's learning rate

    report_keys: ClassVar[tuple[str, ...]] = ("original_train_seconds", "single_model_train_seconds",
                                              "retrained_fraction", "unlearn_seconds")

    def __post_init__(self) -> None:
        self.last_report: dict = {}

    def partitioned_original(self, data: Dataset, spec: ModelSpec | None, *,
                             progress: Progress | None = None) -> ArcaneOriginal:
        """The ARCANE original this method audits (trained once, then loaded from the cache)."""
        if spec is None:
            raise ConfigError("arcane trains its own per-class original from the model recipe (spec); it cannot "
                              "audit a bare checkpoint without --model, --epochs and --lr")
        cfg = recipe(spec, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, blocks=self.blocks,
                     epochs_per_block=self.epochs_per_block, select_best=False)
        return arcane_original(spec, data, blocks=self.blocks, representative_fraction=self.representative_fraction,
                               negative_ratio=self.negative_ratio, seed=spec.seed, cfg=cfg, progress=progress)

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec: ModelSpec | None = None, progress: Progress | None = None) -> nn.Module:
        deleted = check_weights(forget_weights, data) >= 0.5
        orig = self.partitioned_original(data, spec, progress=progress)
        with Timer() as timer:
            scorers, active, redone, touched = [], [], 0, 0
            for c in range(data.num_classes):
                model = arcane_scorer(spec, data, orig.seed, c)
                hit = deleted & (orig.block_of[c] >= 0)
                if not bool(hit.any()):  # untouched class: the original scorer, bit for bit
                    scorers.append(with_state(model, orig.checkpoints[c][orig.blocks]))
                    active.append(True)
                    continue
                first = int(orig.block_of[c][hit].min())
                model.load_state_dict(orig.checkpoints[c][first])
                block_of = orig.member_block(c, deleted)
                train_blocks(model, binary_view(data, c), block_of, orig.cfg, start=first,
                             seeds=block_seeds(seed, "arcane-unlearn", c, orig.blocks), progress=progress,
                             description=f"arcane unlearn class {c} block")
                redone += block_work(block_of, orig.blocks, first)
                touched += 1
                scorers.append(model.eval())
                active.append(bool((block_of >= 0).any()))
            unlearned = ClassScorers(scorers, torch.tensor(active)).eval()
            sync_device(unlearned)
        total = sum(block_work(orig.block_of[c], orig.blocks) for c in range(data.num_classes))
        self.last_report = {
            "original_train_seconds": orig.train_seconds,
            "single_model_train_seconds": training_seconds(spec, data),
            "retrained_fraction": redone / total,
            "unlearn_seconds": timer.seconds,
            "retrained_classes": touched,
        }
        return unlearned
