"""Divergence detection without a host synchronisation per step (shared by training and unlearning)."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..core.errors import DivergedError

UNLEARN_HINT = "lower its learning rate (--param lr=..., or --inner-lr in a search)"
TRAIN_HINT = "lower the training learning rate (--lr)"


class DivergenceWatch:
    """A device-side record of the first optimisation step whose loss was not finite.

    `observe` runs every step without a host synchronisation (no `.item()`, no Python branch on a tensor):
    the step counter, the index of the first bad step and its loss stay on the loss's device, updated with
    `torch.where`. `check` reads them — one synchronisation — and raises `DivergedError`; the loop calls it
    once per epoch and at the end, where it also checks the parameters once (a last step can turn them
    non-finite while its own loss was still finite).
    """

    def __init__(self, method: str, lr: float, hint: str = UNLEARN_HINT):
        self.method, self.lr, self.hint = method, lr, hint
        self.steps: torch.Tensor | None = None  # () long: steps observed
        self.first_bad: torch.Tensor | None = None  # () long: 0-based index of the first bad step, −1 if none
        self.bad_loss: torch.Tensor | None = None  # () the loss at that step

    def observe(self, loss: torch.Tensor) -> None:
        value = loss.detach().reshape(())
        if self.steps is None:
            self.steps = torch.zeros((), dtype=torch.long, device=value.device)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=value.device)
            self.bad_loss = torch.zeros((), dtype=value.dtype, device=value.device)
        new = (self.first_bad < 0) & ~torch.isfinite(value)
        self.first_bad = torch.where(new, self.steps, self.first_bad)
        self.bad_loss = torch.where(new, value, self.bad_loss)
        self.steps = self.steps + 1

    def check(self, total_steps: int, params: Any = None, also: torch.Tensor | None = None) -> float | None:
        """Raise if a bad step was seen, or (with `params`) if any parameter is not finite. `also` (a scalar
        tensor, e.g. the last loss for a progress bar) is read in the same synchronisation and returned."""
        value = None
        if self.first_bad is not None:
            read = [self.first_bad.double(), self.bad_loss.double()]
            if also is not None:
                read.append(also.detach().double().reshape(()).to(self.first_bad.device))
            numbers = torch.stack(read).tolist()  # the one synchronisation
            step, loss = int(numbers[0]), numbers[1]
            value = numbers[2] if also is not None else None
            if step >= 0:
                kind = "NaN" if math.isnan(loss) else ("inf" if loss > 0 else "-inf")
                raise DivergedError(f"{self.method} diverged at step {step + 1} of {total_steps} (loss is {kind}) "
                                    f"with lr={self.lr:g}; {self.hint}", method=self.method, step=step + 1)
        elif also is not None:
            value = float(also)
        if params is not None:
            tensors = [p.detach() for p in params]
            if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                raise DivergedError(f"{self.method} diverged: its parameters hold NaN or inf after the last of "
                                    f"{total_steps} steps with lr={self.lr:g}; {self.hint}", method=self.method)
        return value
