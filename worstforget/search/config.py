"""Settings of the worst-case forget-set search (the upper and lower levels of the bi-level problem)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.errors import ConfigError
from ..core.io import from_checked_dict

# How the unrolled solver differentiates through the lower level (search/solvers/unrolled.py); same steps.
UNROLL_BACKENDS: tuple[str, ...] = ("higher", "torch.func")


@dataclass(frozen=True)
class SearchConfig:
    forget_ratio: float = 0.1  # m = ratio · N samples (or ratio · C classes)
    solver: str = "first_order"  # first_order (sign-SGD lower level, the paper's) | unrolled (exact, through K steps)
    unroll_backend: str = "higher"  # the unrolled solver's autodiff: higher | torch.func (UNROLL_BACKENDS)
    outer_steps: int = 20  # upper-level projected-gradient steps
    inner_steps: int | None = None  # lower-level optimisation steps; None: 2 epochs (first_order) / 10 (unrolled)
    inner_lr: float | None = None  # lower-level lr; None: 1e-3 for sign steps, the method's lr when unrolled
    inner_batch_size: int | None = None  # None: the dataset's training batch size
    upper_lr: float = 0.5  # α; in units of the gradient's std when normalize_step
    normalize_step: bool = True  # divide the upper gradient by its std (False: the paper's raw step)
    gamma: float = 1e-4  # γ of the ‖w‖² term
    objective: str = "loss"  # loss | margin (minus the logit-scaled confidence; keeps ranking easy samples)
    granularity: str = "sample"  # sample | class
    init: str = "uniform"  # uniform (w = m/N) | random (a random binary set, the reference code's start)

    def validate(self) -> "SearchConfig":
        if not 0 < self.forget_ratio < 1:
            raise ConfigError(f"--forget-ratio must be strictly between 0 and 1, got {self.forget_ratio}")
        if self.outer_steps < 1:
            raise ConfigError("--outer-steps must be at least 1")
        if self.inner_steps is not None and self.inner_steps < 1:
            raise ConfigError("--inner-steps must be at least 1")
        if self.upper_lr <= 0:
            raise ConfigError("--upper-lr must be positive")
        if self.gamma < 0:
            raise ConfigError("--gamma must be non-negative")
        for name, value, allowed in (("objective", self.objective, ("loss", "margin")),
                                     ("granularity", self.granularity, ("sample", "class")),
                                     ("init", self.init, ("uniform", "random")),
                                     ("unroll-backend", self.unroll_backend, UNROLL_BACKENDS)):
            if value not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SearchConfig":
        return from_checked_dict(cls, values, "search")
