"""SISA (Bourtoule et al., IEEE S&P 2021) and the checkpointed, partitioned training it shares with ARCANE.

This file owns:

* `train_blocks` — train one constituent incrementally over its blocks (block b on blocks 1..b), keeping
  the state after each block. Training the original and unlearning call the same function, so an
  unlearned constituent is, by construction, what training on the remaining data would have produced.
* `CheckpointGrid` and `load_or_train_grid` — every checkpoint of a partitioned original in one on-disk
  `ModelCache` entry, so repeated audits reuse it.
* `original.training_seconds` — the wall-clock cost of training one ordinary model (the overhead baseline).
* `Ensemble`, `sisa_original` and the registered `sisa` method.

SISA audits a different *original* from every other method: an ensemble of S constituents, one per shard,
each trained over R slices with a checkpoint after each slice. The library hands methods the single
trained model, so `sisa` ignores it and builds (or loads) its own sharded original from `spec` and `data`.
Unlearning binarises forget weights (w ≥ 0.5 is deleted) because SISA deletes points, it cannot
down-weight them; every shard holding a deleted point restarts from the checkpoint saved before the
earliest slice that held one and retrains the later slices on what remains.

Caching: a partitioned original is one `ModelCache` entry (all G × (B+1) states and its training time),
keyed by a hash of its kind, GRID_VERSION, the data fingerprint, the architecture (name, norm, params),
the per-block training recipe, the partition sizes and the seed. The single-model timing is a
`RecordCache` record ('train-seconds') under the key of the library's original model. The first `apply`
trains the partitioned original inside the call; call `partitioned_original` beforehand to keep that out
of timings (`last_report['unlearn_seconds']` never includes it).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.cache import ModelCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer
from ..core.seeds import derive_seed, generator
from ..datasets import Dataset
from ..training.loop import TrainConfig, fit
from ..training.original import training_seconds
from .base import UnlearningMethod, check_weights
from .registry import register_method

if TYPE_CHECKING:
    from ..training.original import ModelSpec

GRID_VERSION = 1  # bump when the training of a partitioned original changes (invalidates cached grids)
AGGREGATIONS = ("mean_softmax", "vote")
VOTE_EPS = 1e-3  # keeps log(vote share) finite for classes no constituent voted for

State = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Incremental training over blocks (SISA slices, ARCANE blocks)


def block_seeds(seed: int, tag: str, group: int, blocks: int) -> list[int]:
    """One batch-order seed per block of a group (shard or class): training and unlearning use different tags."""
    return [derive_seed(seed, tag, group, b) for b in range(blocks)]


def per_block_epochs(total_epochs: int, blocks: int) -> int:
    """SISA's e' = 2e/(R+1): block r is trained on r/R of the data, so Σ_r e'·r/R = e full passes."""
    return max(1, round(2 * total_epochs / (blocks + 1)))


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


def sync_device(module: nn.Module) -> None:
    """Wait for queued CUDA work so wall-clock timings cover it."""
    p = next(module.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


def recipe(spec: ModelSpec, *, epochs: int | None, lr: float | None, batch_size: int | None,
           blocks: int, epochs_per_block: int | None, select_best: bool | None = None) -> TrainConfig:
    """The per-block training recipe: the original's, with its epoch budget spread over the blocks."""
    cfg = spec.train.with_updates(epochs=epochs, lr=lr, batch_size=batch_size)
    per_block = epochs_per_block if epochs_per_block is not None else per_block_epochs(cfg.epochs, blocks)
    return cfg.with_updates(epochs=per_block, select_best=select_best).validate()


# ---------------------------------------------------------------------------------------------------------
# SISA


class Ensemble(nn.Module):
    """Aggregates constituent classifiers; forward returns log-probabilities used as logits.

    mean_softmax: log of the mean constituent softmax (argmax, softmax and cross-entropy downstream see the
    ensemble's probabilities). vote: log of the normalised one-hot vote counts, with a small ε so classes
    nobody voted for keep a finite logit. Constituents whose shard lost all its data are inactive.
    """

    def __init__(self, constituents: list[nn.Module], aggregation: str = "mean_softmax",
                 active: torch.Tensor | None = None):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown SISA aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
        self.constituents = nn.ModuleList(constituents)
        self.aggregation = aggregation
        if active is None:
            active = torch.ones(len(constituents), dtype=torch.bool)
        self.register_buffer("active", active.to(torch.bool).cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members = [m for m, a in zip(self.constituents, self.active.tolist()) if a]
        logits = torch.stack([m(x) for m in members])  # (K, B, C)
        k = logits.shape[0]
        if self.aggregation == "mean_softmax":
            return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(k)
        c = logits.shape[-1]
        counts = F.one_hot(logits.argmax(-1), c).sum(0).to(logits.dtype)  # (B, C)
        return torch.log((counts + VOTE_EPS) / (k + c * VOTE_EPS))


@dataclass
class SisaOriginal:
    """The sharded original: its ensemble, every checkpoint and the shard/slice of each training sample."""

    ensemble: Ensemble
    checkpoints: list[list[State]]  # [shard][r]: r = 0 the initialisation, r ≥ 1 the state after slice r
    shard_of: torch.Tensor  # (num_train,) long
    slice_of: torch.Tensor  # (num_train,) long, 0-based slice inside the shard
    cfg: TrainConfig  # per-slice recipe (epochs = epochs of one slice)
    train_seconds: float  # wall clock of training every constituent when the grid was built
    key: str  # ModelCache key of the checkpoint grid
    seed: int

    @property
    def shards(self) -> int:
        return len(self.checkpoints)

    @property
    def slices(self) -> int:
        return len(self.checkpoints[0]) - 1

    def block_of(self, shard: int, deleted: torch.Tensor | None = None) -> torch.Tensor:
        """(num_train,) slice of each sample of `shard`, −1 elsewhere and for `deleted` (bool mask) samples."""
        keep = self.shard_of == shard
        if deleted is not None:
            keep = keep & ~deleted
        return torch.where(keep, self.slice_of, torch.full_like(self.slice_of, -1))


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


def sisa_key(spec: ModelSpec, data: Dataset, cfg: TrainConfig, *, shards: int, slices: int, seed: int) -> str:
    model = {k: v for k, v in spec.key(data).items() if k not in ("train", "seed")}
    return stable_hash({"kind": "sisa-grid", "v": GRID_VERSION, **model, "slice_train": cfg.to_dict(),
                        "shards": shards, "slices": slices, "seed": seed})


def sisa_original(spec: ModelSpec, data: Dataset, *, shards: int, slices: int, seed: int,
                  epochs_per_slice: int | None = None, aggregation: str = "mean_softmax",
                  cfg: TrainConfig | None = None, cache: ModelCache | None = None,
                  progress: Progress | None = None) -> SisaOriginal:
    """Train (or load from the cache) the S-shard × R-slice SISA original of `spec` on `data`.

    Constituent s is `spec.build` with seed derive(seed, 'sisa-init', s); slice r is trained on slices
    1..r of its shard for `epochs_per_slice` epochs (default SISA's 2e/(R+1), e = spec.train.epochs), with
    the batch order of derive(seed, 'sisa-train', s, r). `cfg` overrides the per-slice recipe entirely.
    """
    cfg = cfg or recipe(spec, epochs=None, lr=None, batch_size=None, blocks=slices, epochs_per_block=epochs_per_slice)
    shard_of, slice_of = sisa_assignment(data.num_train, shards, slices, seed, data.device)
    key = sisa_key(spec, data, cfg, shards=shards, slices=slices, seed=seed)

    def build(s: int) -> nn.Module:
        return sisa_constituent(spec, data, seed, s)

    def train_shard(s: int, model: nn.Module) -> list[State]:
        block_of = torch.where(shard_of == s, slice_of, torch.full_like(slice_of, -1))
        return train_blocks(model, data, block_of, cfg, start=0, seeds=block_seeds(seed, "sisa-train", s, slices),
                            progress=progress, description=f"sisa shard {s + 1}/{shards} slice")

    grid = load_or_train_grid(key, build, shards, slices, train_shard, cache=cache,
                              meta={"kind": "sisa", "model": spec.to_dict(), "slice_train": cfg.to_dict(),
                                    "shards": shards, "slices": slices, "seed": seed})
    states = grid.states()
    ensemble = Ensemble([with_state(build(s), states[s][slices]) for s in range(shards)], aggregation).eval()
    return SisaOriginal(ensemble=ensemble, checkpoints=states, shard_of=shard_of, slice_of=slice_of, cfg=cfg,
                        train_seconds=float(grid.train_seconds), key=key, seed=seed)


def sisa_constituent(spec: ModelSpec, data: Dataset, seed: int, shard: int) -> nn.Module:
    """A freshly initialised constituent of `shard` (the architecture of `spec`, a per-shard init seed)."""
    return spec.build(data, seed=derive_seed(seed, "sisa-init", shard))


def with_state(model: nn.Module, state: State) -> nn.Module:
    """`model` holding a copy of `state`, in eval mode."""
    model.load_state_dict(state)
    return model.eval()


@register_method("sisa")
@dataclass(kw_only=True)
class Sisa(UnlearningMethod):
    """SISA: exact unlearning of a sharded, sliced ensemble (retrains only affected shards from a checkpoint).

    The audited original is the SISA ensemble of `spec` (not the single model passed to `apply`), built
    with the original's seed and cached. Forget weights are binarised (w ≥ 0.5 deletes the sample).
    Retrained slices draw their batch order from the unlearning `seed`, so different seeds give
    different (equally exact) unlearned ensembles, as Retrain does. After `apply`, `last_report` holds
    the training overhead and the share of training work that was redone.
    """

    differentiable = False
    iterative = False
    partitioned = True
    shards: int = 5  # S disjoint shards, one constituent each
    slices: int = 4  # R slices per shard, a checkpoint after each
    aggregation: str = "mean_softmax"  # mean_softmax | vote
    epochs_per_slice: int | None = None  # None: SISA's 2e/(R+1), e = the original's epochs (same total work)
    epochs: int | None = None  # None: the original's epoch budget e
    lr: float | None = None  # None: the original's learning rate

    report_keys: ClassVar[tuple[str, ...]] = ("original_train_seconds", "single_model_train_seconds",
                                              "retrained_fraction", "unlearn_seconds")

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown SISA aggregation {self.aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
        self.last_report: dict = {}

    def partitioned_original(self, data: Dataset, spec: ModelSpec | None, *,
                             progress: Progress | None = None) -> SisaOriginal:
        """The SISA original this method audits (trained once, then loaded from the cache)."""
        if spec is None:
            raise ConfigError("sisa trains its own sharded original from the model recipe (spec); it cannot "
                              "audit a bare checkpoint without --model, --epochs and --lr")
        cfg = recipe(spec, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, blocks=self.slices,
                     epochs_per_block=self.epochs_per_slice)
        return sisa_original(spec, data, shards=self.shards, slices=self.slices, seed=spec.seed, cfg=cfg,
                             aggregation=self.aggregation, progress=progress)

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec: ModelSpec | None = None, progress: Progress | None = None) -> nn.Module:
        deleted = check_weights(forget_weights, data) >= 0.5
        if bool(deleted.all()):
            raise ConfigError("sisa: every training sample is marked for deletion; nothing would remain")
        orig = self.partitioned_original(data, spec, progress=progress)
        with Timer() as timer:
            constituents, active = [], []
            redone = 0
            for s in range(orig.shards):
                model = sisa_constituent(spec, data, orig.seed, s)
                hit = deleted & (orig.shard_of == s)
                if not bool(hit.any()):  # untouched shard: the original constituent, bit for bit
                    constituents.append(with_state(model, orig.checkpoints[s][orig.slices]))
                    active.append(True)
                    continue
                first = int(orig.slice_of[hit].min())
                model.load_state_dict(orig.checkpoints[s][first])
                block_of = orig.block_of(s, deleted)
                train_blocks(model, data, block_of, orig.cfg, start=first,
                             seeds=block_seeds(seed, "sisa-unlearn", s, orig.slices), progress=progress,
                             description=f"sisa unlearn shard {s + 1} slice")
                redone += block_work(block_of, orig.slices, first)
                constituents.append(model.eval())
                active.append(bool((block_of >= 0).any()))  # a shard with no data left has no say
            unlearned = Ensemble(constituents, self.aggregation, torch.tensor(active)).eval()
            sync_device(unlearned)
        total = sum(block_work(orig.block_of(s), orig.slices) for s in range(orig.shards))
        self.last_report = {
            "original_train_seconds": orig.train_seconds,
            "single_model_train_seconds": training_seconds(spec, data),
            "retrained_fraction": redone / total,
            "unlearn_seconds": timer.seconds,
            "retrained_shards": sum(1 for s in range(orig.shards) if bool((deleted & (orig.shard_of == s)).any())),
        }
        return unlearned
