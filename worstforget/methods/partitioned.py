"""Exact unlearning of a partitioned original: the algorithm SISA and ARCANE share.

A partitioned method audits its own original: G group models instead of one. Group g uses some of the
training samples, split into B blocks; block b of a group is trained on that group's blocks 0..b, starting
from the state saved after block b − 1, so the original keeps G × (B + 1) checkpoints (column 0 is the
initialisation). Unlearning binarises forget weights (w ≥ 0.5 deletes the sample: these methods delete
points, they cannot down-weight them). Every group holding a deleted sample restarts from the checkpoint
saved before its earliest block holding one and retrains its later blocks on what remains; the other
groups keep their original model bit for bit. Training the original and unlearning call the same
`train_blocks`, so an unlearned group is, by construction, what training on the remaining data gives.

A subclass of `PartitionedMethod` says only what differs between methods:

* `partition(data, seed)`: for each group, each training sample's block (−1 = not used by that group);
* `group_data(data, g)`: the dataset view group g is trained on (its labels; the architecture is `spec`'s);
* `block_recipe(spec)`: the training recipe of one block;
* `aggregate(members, active)`: the module predicting from the group models, given which still have data.

Caching: the whole checkpoint grid and the seconds it took to train are one `ModelCache` entry, keyed by
the method's name, GRID_VERSION, the data fingerprint, the architecture, the per-block recipe, the
partition itself (a hash of every sample's block) and the seed. The unit runner calls
`partitioned_original` before timing `apply`, so building the original is never counted as unlearning.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..core.cache import ModelCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed
from ..datasets import Dataset
from ..training.loop import TrainConfig, fit
from .base import UnlearningMethod, check_weights

if TYPE_CHECKING:
    from ..training.original import ModelSpec

GRID_VERSION = 2  # bump when the training of a partitioned original changes (invalidates cached grids)

State = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Incremental training over blocks


def block_seeds(seed: int, tag: str, group: int, blocks: int) -> list[int]:
    """One batch-order seed per block of a group: training and unlearning use different tags."""
    return [derive_seed(seed, tag, group, b) for b in range(blocks)]


def per_block_epochs(total_epochs: int, blocks: int) -> int:
    """SISA's e' = 2e/(B+1): block b is trained on b/B of the data, so Σ_b e'·b/B = e full passes."""
    return max(1, round(2 * total_epochs / (blocks + 1)))


def recipe(spec: ModelSpec, *, epochs: int | None, lr: float | None, batch_size: int | None,
           blocks: int, epochs_per_block: int | None, select_best: bool | None = None) -> TrainConfig:
    """The per-block training recipe: the original's, with its epoch budget spread over the blocks."""
    cfg = spec.train.with_updates(epochs=epochs, lr=lr, batch_size=batch_size)
    per_block = epochs_per_block if epochs_per_block is not None else per_block_epochs(cfg.epochs, blocks)
    return cfg.with_updates(epochs=per_block, select_best=select_best).validate()


def train_blocks(model: nn.Module, data: Dataset, block_of: torch.Tensor, cfg: TrainConfig, *, start: int,
                 seeds: list[int], progress: Progress | None = None, description: str = "train block") -> list[State]:
    """Train `model` in place on blocks start..B−1, block b on every sample of blocks ≤ b.

    Args:
        block_of: (num_train,) block of each sample for this group; −1 = not used (other group, deleted).
        cfg: the per-block recipe (its `epochs` are the epochs of one block).
        start: first block to train; `model` must hold the state saved before it.
        seeds: batch-order seed of every block (len = B).

    Returns the state after each trained block (B − start states). A block whose cumulative data is empty
    (everything deleted) leaves the state unchanged, as training on nothing would.
    """
    states = []
    for b in range(start, len(seeds)):
        mask = (block_of >= 0) & (block_of <= b)
        if bool(mask.any()):
            fit(model, data, cfg, seed=seeds[b], sample_weights=mask.float(), progress=progress,
                description=f"{description} {b + 1}/{len(seeds)}")
        states.append(clone_state(model))
    return states


def block_work(block_of: torch.Tensor, blocks: int, start: int = 0) -> int:
    """Samples processed by `train_blocks` from `start` per epoch (Σ_b |blocks ≤ b|): the retraining cost unit."""
    used = block_of[block_of >= 0]
    counts = torch.bincount(used, minlength=blocks).cumsum(0)
    return int(counts[start:].sum())


def clone_state(model: nn.Module) -> State:
    """A detached copy of the model's state (a checkpoint that later training cannot alter)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def with_state(model: nn.Module, state: State) -> nn.Module:
    """`model` holding a copy of `state`, in eval mode."""
    model.load_state_dict(state)
    return model.eval()


def sync_device(module: nn.Module) -> None:
    """Wait for queued CUDA work so wall-clock timings cover it."""
    p = next(module.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


# ---------------------------------------------------------------------------------------------------------
# The checkpoint grid (one cache entry)


class CheckpointGrid(nn.Module):
    """Model states of G groups × (B + 1) points: column 0 is the initialisation, column b the state after block b.

    One module so that the whole grid (and the time it took to train) is one atomic `ModelCache` entry.
    """

    def __init__(self, build: Callable[[int], nn.Module], groups: int, blocks: int):
        super().__init__()
        self.grid = nn.ModuleList(nn.ModuleList(build(g) for _ in range(blocks + 1)) for g in range(groups))
        self.register_buffer("train_seconds", torch.zeros((), dtype=torch.float64))

    def states(self) -> list[list[State]]:
        return [[m.state_dict() for m in row] for row in self.grid]


def load_or_train_grid(key: str, build: Callable[[int], nn.Module], groups: int, blocks: int,
                       train_group: Callable[[int, nn.Module], list[State]], *, meta: dict,
                       cache: ModelCache | None = None) -> CheckpointGrid:
    """Load the grid cached under `key`, or train every group with `train_group(g, init_model)` and cache it."""
    cache = cache or ModelCache()
    grid = CheckpointGrid(build, groups, blocks)
    if cache.load(key, grid):
        return grid
    with Timer() as timer:
        for g in range(groups):
            model = copy.deepcopy(grid.grid[g][0])  # column 0 keeps the initialisation
            for b, state in enumerate(train_group(g, model), start=1):
                grid.grid[g][b].load_state_dict(state)
        sync_device(grid)
    grid.train_seconds.fill_(timer.seconds)
    cache.save(key, grid, meta=meta)
    return grid


# ---------------------------------------------------------------------------------------------------------
# Partition, original and aggregation


@dataclass(frozen=True)
class Partition:
    """Which group uses which training sample, in which block."""

    block_of: torch.Tensor  # (G, num_train) long: block of sample i in group g, −1 = not used by g
    blocks: int  # B blocks per group

    @property
    def groups(self) -> int:
        return self.block_of.shape[0]


@dataclass
class PartitionedOriginal:
    """A trained partitioned original: the aggregated model, every checkpoint and the partition."""

    model: nn.Module  # the aggregate of the fully trained group models: the audited original
    checkpoints: list[list[State]]  # [g][b]: b = 0 the initialisation, b ≥ 1 the state after block b
    block_of: torch.Tensor  # (G, num_train) long, −1 = not used by the group
    cfg: TrainConfig  # per-block recipe (epochs = epochs of one block)
    train_seconds: float  # wall clock of training every group model when the grid was built
    key: str  # ModelCache key of the checkpoint grid
    seed: int

    @property
    def groups(self) -> int:
        return len(self.checkpoints)

    @property
    def blocks(self) -> int:
        return len(self.checkpoints[0]) - 1

    def group_blocks(self, g: int, deleted: torch.Tensor | None = None) -> torch.Tensor:
        """(num_train,) block of each sample in group g, −1 where unused and for `deleted` (bool mask) samples."""
        row = self.block_of[g]
        return row if deleted is None else torch.where(deleted, torch.full_like(row, -1), row)

    def total_work(self) -> int:
        """Per-epoch training work of building every group (the denominator of `retrained_fraction`)."""
        return sum(block_work(self.block_of[g], self.blocks) for g in range(self.groups))


class GroupAggregate(nn.Module):
    """The group models and which of them still have training data; subclasses define how they predict."""

    def __init__(self, members: list[nn.Module], active: torch.Tensor | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        if active is None:
            active = torch.ones(len(members), dtype=torch.bool)
        self.register_buffer("active", active.to(torch.bool).cpu().clone())


@dataclass(kw_only=True)
class PartitionedMethod(UnlearningMethod):
    """Exact unlearning of a partitioned, block-checkpointed original (see the module docstring).

    The audited original is built from `spec` with the original's seed and cached; the single model passed
    to `apply` is ignored. Retrained blocks draw their batch order from the unlearning `seed`, so different
    seeds give different (equally exact) unlearned models, as Retrain does. After `apply`, `last_report`
    holds the original's training time, the share of training work redone, the number of retrained groups
    and the unlearning time.
    """

    differentiable = False
    iterative = False
    partitioned = True
    epochs: int | None = None  # None: the original's epoch budget e
    lr: float | None = None  # None: the original's learning rate

    group_noun: ClassVar[str] = "group"  # how progress messages name a group and a block
    block_noun: ClassVar[str] = "block"
    report_keys: ClassVar[tuple[str, ...]] = ("original_train_seconds", "retrained_fraction", "retrained_groups",
                                              "unlearn_seconds")

    def __post_init__(self) -> None:
        self.last_report: dict = {}

    # --- what a partitioned method defines ------------------------------------------------------
    def partition(self, data: Dataset, seed: int) -> Partition:
        raise NotImplementedError

    def group_data(self, data: Dataset, g: int) -> Dataset:
        """The dataset view group g is trained on (default: the data as it is)."""
        return data

    def block_recipe(self, spec: ModelSpec) -> TrainConfig:
        raise NotImplementedError

    def aggregate(self, members: list[nn.Module], active: torch.Tensor) -> nn.Module:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------------
    def group_model(self, spec: ModelSpec, data: Dataset, seed: int, g: int) -> nn.Module:
        """A freshly initialised model of group g: the architecture of `spec` on g's view, a per-group seed."""
        return spec.build(self.group_data(data, g), seed=derive_seed(seed, f"{self.name}-init", g))

    def partitioned_original(self, data: Dataset, spec: ModelSpec | None, *, progress: Progress | None = None,
                             cache: ModelCache | None = None) -> PartitionedOriginal:
        """The partitioned original this method audits (trained once, then loaded from the cache)."""
        if spec is None:
            raise ConfigError(f"{self.name} trains its own partitioned original from the model recipe (spec); it "
                              "cannot audit a bare checkpoint without --model, --epochs and --lr")
        seed = spec.seed
        cache = cache or ModelCache(getattr(spec, "cache_dir", None))  # the setting's cache folder
        cfg = self.block_recipe(spec)
        part = checked_partition(self.partition(data, seed), data.num_train, self.name)
        groups, blocks = part.groups, part.blocks
        model_key = {k: v for k, v in spec.key(data).items() if k not in ("train", "seed")}
        key = stable_hash({"kind": f"{self.name}-grid", "v": GRID_VERSION, **model_key, "block_train": cfg.to_dict(),
                           "partition": part.block_of, "groups": groups, "blocks": blocks, "seed": seed})

        def build(g: int) -> nn.Module:
            return self.group_model(spec, data, seed, g)

        def train_group(g: int, model: nn.Module) -> list[State]:
            return train_blocks(model, self.group_data(data, g), part.block_of[g], cfg, start=0,
                                seeds=block_seeds(seed, f"{self.name}-train", g, blocks), progress=progress,
                                description=f"{self.name} {self.group_noun} {g + 1}/{groups} {self.block_noun}")

        meta = {"kind": self.name, "model": spec.to_dict(), "block_train": cfg.to_dict(), "groups": groups,
                "blocks": blocks, "seed": seed, "method": self.hyperparameters()}
        grid = load_or_train_grid(key, build, groups, blocks, train_group, meta=meta, cache=cache)
        states = grid.states()
        members = [with_state(build(g), states[g][blocks]) for g in range(groups)]
        model = self.aggregate(members, torch.ones(groups, dtype=torch.bool)).eval()
        return PartitionedOriginal(model=model, checkpoints=states, block_of=part.block_of, cfg=cfg,
                                   train_seconds=float(grid.train_seconds), key=key, seed=seed)

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec: ModelSpec | None = None, progress: Progress | None = None) -> nn.Module:
        deleted = check_weights(forget_weights, data) >= 0.5
        orig = self.partitioned_original(data, spec, progress=progress)
        used = orig.block_of >= 0  # (G, N)
        hit = (used & deleted).any(1)  # groups that lose a sample
        active = ~hit | (used & ~deleted).any(1)  # a group left with no data has no say
        if not bool(active.any()):
            raise ConfigError(f"{self.name}: the forget set deletes every sample the group models were trained on; "
                              "nothing would remain to predict with (forget fewer samples)")
        with Timer() as timer:
            members, redone = [], 0
            for g in range(orig.groups):
                model = self.group_model(spec, data, orig.seed, g)
                if not bool(hit[g]):  # untouched group: the original model, bit for bit
                    members.append(with_state(model, orig.checkpoints[g][orig.blocks]))
                    continue
                remaining = orig.group_blocks(g, deleted)
                first = int(orig.block_of[g][used[g] & deleted].min())  # earliest block that held a deleted sample
                model.load_state_dict(orig.checkpoints[g][first])
                train_blocks(model, self.group_data(data, g), remaining, orig.cfg, start=first,
                             seeds=block_seeds(seed, f"{self.name}-unlearn", g, orig.blocks), progress=progress,
                             description=f"{self.name} unlearn {self.group_noun} {g + 1} {self.block_noun}")
                redone += block_work(remaining, orig.blocks, first)
                members.append(model.eval())
            unlearned = self.aggregate(members, active.cpu()).eval()
            sync_device(unlearned)
        self.last_report = {
            "original_train_seconds": orig.train_seconds,
            "retrained_fraction": redone / orig.total_work(),
            "retrained_groups": int(hit.sum()),
            "unlearn_seconds": timer.seconds,
        }
        return unlearned


def checked_partition(part: Partition, num_train: int, name: str) -> Partition:
    """`part` if it is a well-formed partition of `num_train` samples; a bug in a subclass raises here."""
    b = part.block_of
    if b.dim() != 2 or b.shape[1] != num_train or b.shape[0] < 1 or b.dtype != torch.long or part.blocks < 1:
        raise ConfigError(f"{name}: a partition needs a (groups, {num_train}) long tensor of blocks and ≥ 1 block; "
                          f"got {tuple(b.shape)} {b.dtype} with {part.blocks} blocks")
    if bool(((b < -1) | (b >= part.blocks)).any()) or not bool((b >= 0).any()):
        raise ConfigError(f"{name}: partition blocks must lie in −1..{part.blocks - 1} and some sample must be used")
    return part
