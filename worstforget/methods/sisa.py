"""SISA (Bourtoule et al., IEEE S&P 2021): seeded shards × slices, aggregated by mean softmax or vote.

The checkpointed training, deletion and report are `partitioned.py`'s; this file defines only SISA's
partition and its aggregation. The training set is split into S disjoint, balanced shards from one seeded
permutation, each shard into R slices (the blocks); shard s trains one constituent, checkpointed after
every slice. Deleting a point retrains only its shard, from the checkpoint before the slice that held it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.seeds import generator
from ..datasets import Dataset
from ..training.loop import TrainConfig
from .partitioned import GroupAggregate, Partition, PartitionedMethod, recipe
from .registry import register_method

if TYPE_CHECKING:
    from ..training.original import ModelSpec

AGGREGATIONS = ("mean_softmax", "vote")
VOTE_EPS = 1e-3  # keeps log(vote share) finite for classes no constituent voted for


class Ensemble(GroupAggregate):
    """Aggregates constituent classifiers; forward returns log-probabilities used as logits.

    mean_softmax: log of the mean constituent softmax (argmax, softmax and cross-entropy downstream see the
    ensemble's probabilities). vote: log of the normalised one-hot vote counts, with a small ε so classes
    nobody voted for keep a finite logit. Constituents whose shard lost all its data are inactive.
    """

    def __init__(self, members: list[nn.Module], aggregation: str = "mean_softmax",
                 active: torch.Tensor | None = None):
        check_aggregation(aggregation)
        super().__init__(members, active)
        self.aggregation = aggregation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x) for m, a in zip(self.members, self.active.tolist()) if a])  # (K, B, C)
        k = logits.shape[0]
        if self.aggregation == "mean_softmax":
            return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(k)
        c = logits.shape[-1]
        counts = F.one_hot(logits.argmax(-1), c).sum(0).to(logits.dtype)  # (B, C)
        return torch.log((counts + VOTE_EPS) / (k + c * VOTE_EPS))


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"unknown SISA aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")


def sisa_assignment(num_train: int, shards: int, slices: int, seed: int,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced shards and slices from one seeded permutation: (shard_of, slice_of), each (num_train,)."""
    if shards < 1 or slices < 1 or shards * slices > num_train:
        raise ConfigError(f"SISA needs 1 ≤ shards·slices ≤ {num_train} training samples; got {shards}×{slices}")
    perm = torch.randperm(num_train, generator=generator(seed, "sisa-assign"))
    pos = torch.arange(num_train)
    shard = pos * shards // num_train  # contiguous runs of the permutation: shard sizes differ by ≤ 1
    size = torch.bincount(shard, minlength=shards)
    start = torch.cumsum(size, 0) - size
    slc = (pos - start[shard]) * slices // size[shard]
    shard_of, slice_of = torch.empty_like(shard), torch.empty_like(slc)
    shard_of[perm], slice_of[perm] = shard, slc
    return shard_of.to(device), slice_of.to(device)


@register_method("sisa")
@dataclass(kw_only=True)
class Sisa(PartitionedMethod):
    """SISA: exact unlearning of a sharded, sliced ensemble (retrains only affected shards from a checkpoint).

    Groups are shards, blocks are slices; forget weights are binarised at 0.5 (see `partitioned.py`).
    """

    shards: int = 5  # S disjoint shards, one constituent each
    slices: int = 4  # R slices per shard, a checkpoint after each
    aggregation: str = "mean_softmax"  # mean_softmax | vote
    epochs_per_slice: int | None = None  # None: SISA's 2e/(R+1), e = the original's epochs (same total work)

    group_noun = "shard"
    block_noun = "slice"

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation)
        super().__post_init__()

    def partition(self, data: Dataset, seed: int) -> Partition:
        shard_of, slice_of = sisa_assignment(data.num_train, self.shards, self.slices, seed, data.device)
        mine = shard_of[None, :] == torch.arange(self.shards, device=data.device)[:, None]  # (S, N)
        return Partition(block_of=torch.where(mine, slice_of[None, :], -1), blocks=self.slices)

    def block_recipe(self, spec: ModelSpec) -> TrainConfig:
        return recipe(spec, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, blocks=self.slices,
                      epochs_per_block=self.epochs_per_slice)

    def aggregate(self, members: list[nn.Module], active: torch.Tensor) -> nn.Module:
        return Ensemble(members, self.aggregation, active)
