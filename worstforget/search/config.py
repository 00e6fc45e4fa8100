"""Settings of the worst-case forget-set search (the upper and lower levels of the bi-level problem)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.errors import ConfigError
from ..core.io import from_checked_dict

# How the unrolled solver differentiates through the lower level (search/solvers/unrolled.py); same steps.
UNROLL_BACKENDS: tuple[str, ...] = ("higher", "torch.func")
# What the first-order solver's K inner steps are (search/solvers/first_order.py): the paper's sign-SGD
# steps, or the audited method's own optimiser and learning rate (the run an attacker actually faces).
LOWER_LEVELS: tuple[str, ...] = ("sign", "method")
# When the warm solver's continuing lower-level run restarts from the original (search/solvers/warm.py):
# budget: once its age would pass the method's own run length under the current weights; never.
WARM_RESTARTS: tuple[str, ...] = ("budget", "never")
# Fields read by the warm solver alone: left out of other solvers' search keys, which stay as they were.
WARM_FIELDS: tuple[str, ...] = ("warm_fraction", "warm_restart", "warm_refresh")


@dataclass(frozen=True)
class SearchConfig:
    forget_ratio: float = 0.1  # m = ratio · N samples (or ratio · C classes)
    solver: str = "warm"  # warm (one continuing run; measured as hard at ~0.1–0.2× training) | first_order | unrolled
    # Defaults are the audit's (the measured strongest; README "The search"); the paper's are loss + sign.
    lower_level: str = "method"  # first_order's K steps: method (its own optimiser, lr) | sign (sign-SGD, the paper's)
    unroll_backend: str = "higher"  # the unrolled solver's autodiff: higher | torch.func (UNROLL_BACKENDS)
    outer_steps: int = 20  # upper-level projected-gradient steps
    inner_steps: int | None = None  # lower-level steps per outer step; None: 2 epochs (first_order), 10 (unrolled),
    # warm_fraction of an epoch (warm)
    inner_lr: float | None = None  # lower-level lr; None: 1e-3 for sign steps, else the method's lr
    inner_batch_size: int | None = None  # None: the dataset's training batch size
    upper_lr: float = 0.5  # α; in units of the gradient's std when normalize_step
    normalize_step: bool = True  # divide the upper gradient by its std (False: the paper's raw step)
    gamma: float = 1e-4  # γ of the ‖w‖² term
    objective: str = "confidence"  # search.objectives.OBJECTIVES: confidence | exposure | loss (the paper's) | margin
    reference_models: int = 16  # models on random halves behind objectives that read references (exposure)
    granularity: str = "sample"  # sample | class
    # warm: epochs of lower-level steps per outer step (when inner_steps is None); None: the outer steps span the
    # method's own run on a set of m samples (its epochs × passes of its lead stream / outer_steps)
    warm_fraction: float | None = None
    warm_restart: str = "budget"  # warm: when the continuing run restarts from the original (WARM_RESTARTS)
    warm_refresh: int = 10  # warm: every this many outer steps the objective of every sample, else of w > 0 only
    init: str = "uniform"  # uniform (w = m/N) | random (a random binary set, the reference code's start) | heuristic

    def validate(self) -> "SearchConfig":
        if not 0 < self.forget_ratio < 1:
            raise ConfigError(f"--forget-ratio must be strictly between 0 and 1, got {self.forget_ratio}")
        if self.outer_steps < 1:
            raise ConfigError("--outer-steps must be at least 1")
        if self.inner_steps is not None and self.inner_steps < 1:
            raise ConfigError("--inner-steps must be at least 1")
        if self.warm_fraction is not None and not 0 < self.warm_fraction <= 100:
            raise ConfigError(f"--warm-fraction must be a positive number of epochs (at most 100), "
                              f"got {self.warm_fraction}")
        if self.warm_refresh < 1:
            raise ConfigError(f"--warm-refresh must be at least 1 (outer steps), got {self.warm_refresh}")
        if self.upper_lr <= 0:
            raise ConfigError("--upper-lr must be positive")
        if self.gamma < 0:
            raise ConfigError("--gamma must be non-negative")
        if self.reference_models < 2:
            raise ConfigError(f"--reference-models must be at least 2 (each sample held out by half of them), "
                              f"got {self.reference_models}")
        from .objectives import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES.names())}, got {self.objective!r}")
        for name, value, allowed in (("lower-level", self.lower_level, LOWER_LEVELS),
                                     ("granularity", self.granularity, ("sample", "class")),
                                     ("init", self.init, ("uniform", "random", "heuristic")),
                                     ("unroll-backend", self.unroll_backend, UNROLL_BACKENDS),
                                     ("warm-restart", self.warm_restart, WARM_RESTARTS)):
            if value not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def key_dict(self) -> dict:
        """The fields that decide what this search computes: the warm fields only for the warm solver."""
        values = self.to_dict()
        if self.solver.strip().lower() != "warm":
            for name in WARM_FIELDS:
                values.pop(name)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "SearchConfig":
        return from_checked_dict(cls, values, "search")
