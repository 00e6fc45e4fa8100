"""ARCANE (Yan et al., IJCAI 2022): exact unlearning with one model per class and block-wise saved states.

The checkpointed training, deletion and report are `partitioned.py`'s; this file defines only ARCANE's
partition (classes, representative data, negatives, blocks) and its aggregation (`ClassScorers`).

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
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.seeds import generator
from ..datasets import Dataset
from ..training.loop import TrainConfig
from .partitioned import GroupAggregate, Partition, PartitionedMethod, recipe
from .registry import register_method

if TYPE_CHECKING:
    from ..training.original import ModelSpec

INACTIVE_SCORE = -30.0  # log-odds of a class whose scorer lost all its training data: never predicted, finite CE


class ClassScorers(GroupAggregate):
    """One binary scorer per class; forward returns (N, C) scores (log-odds of 'this class'), used as logits.

    A scorer left with no training data after deletions is inactive: its class scores INACTIVE_SCORE.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([m(x) for m in self.members], dim=1)  # (B, C, 2)
        scores = z[..., 1] - z[..., 0]
        return torch.where(self.active.to(scores.device), scores, torch.full_like(scores, INACTIVE_SCORE))


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
                      seed: int) -> torch.Tensor:
    """(C, num_train) long: the block of each sample in each class's scorer, −1 = not used by that scorer."""
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
    return block_of


@register_method("arcane")
@dataclass(kw_only=True)
class Arcane(PartitionedMethod):
    """ARCANE: exact unlearning of per-class scorers with block-wise saved states (see the module docstring).

    Groups are classes; forget weights are binarised at 0.5 (see `partitioned.py`).
    """

    blocks: int = 5  # blocks per class, a saved state after each
    representative_fraction: float = 0.5  # share of each class (closest to its mean) used as positives
    negative_ratio: float = 1.0  # negatives per positive, drawn from the other classes
    epochs_per_block: int | None = None  # None: 2e/(B+1), e = the original's epochs (same total work)

    group_noun = "class"

    def partition(self, data: Dataset, seed: int) -> Partition:
        block_of = arcane_assignment(data, blocks=self.blocks, representative_fraction=self.representative_fraction,
                                     negative_ratio=self.negative_ratio, seed=seed)
        return Partition(block_of=block_of, blocks=self.blocks)

    def group_data(self, data: Dataset, g: int) -> Dataset:
        return binary_view(data, g)

    def block_recipe(self, spec: ModelSpec) -> TrainConfig:
        return recipe(spec, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, blocks=self.blocks,
                      epochs_per_block=self.epochs_per_block, select_best=False)

    def aggregate(self, members: list[nn.Module], active: torch.Tensor) -> nn.Module:
        return ClassScorers(members, active)
