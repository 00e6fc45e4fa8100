"""The bi-level problem instance shared by both solvers: data, original model, lower-level method, budget."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..methods import UnlearningMethod
from ..setting import Setting
from ..training.loop import predict_logits
from .config import SearchConfig
from .objectives import SampleReferences, class_means, per_sample_objective, uses_references


@dataclass
class Problem:
    """Upper variable w_var: one weight per training sample, or per class with granularity=class."""

    setting: Setting
    method: UnlearningMethod  # resolved (batch size set); the lower level's copy is derived per solver
    config: SearchConfig
    progress: Any = None  # sink for the lower level's progress bars
    whole_run: bool = False  # first-order: the lower level is the method's whole run (the warm solver's fallback)
    _references: SampleReferences | None = field(default=None, init=False, repr=False)
    _span: int | None = field(default=None, init=False, repr=False)

    @property
    def data(self):
        return self.setting.data

    @property
    def by_class(self) -> bool:
        return self.config.granularity == "class"

    @property
    def num_vars(self) -> int:
        return self.data.num_classes if self.by_class else self.data.num_train

    @property
    def budget(self) -> int:
        """m: the number of samples (or classes) in the forget set."""
        return max(1, int(round(self.config.forget_ratio * self.num_vars)))

    @property
    def inner_steps(self) -> int:
        """Lower-level steps per outer step."""
        if self.config.inner_steps is not None:
            return self.config.inner_steps
        if self.config.solver == "unrolled":
            return 10
        steps_per_epoch = -(-self.data.num_train // (self.method.batch_size or 128))
        if self.config.solver == "warm" and self.config.warm_fraction is None:
            if self._span is None:  # the method's whole run on a set of m units, spread over the outer steps
                from .solvers.warm import span_steps

                self._span = span_steps(self)
            return self._span
        if self.config.solver == "warm":  # a fraction of an epoch of the lower level's own batches
            batch_size = self.config.inner_batch_size or self.method.batch_size or 128
            return max(1, round(self.config.warm_fraction * -(-self.data.num_train // batch_size)))
        return 2 * steps_per_epoch

    def expand(self, w_var: torch.Tensor) -> torch.Tensor:
        """Per-sample forget weights from the upper variable. (N,)"""
        return w_var[self.data.y_train] if self.by_class else w_var

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Per-sample objective values → the upper variable's coordinates (class means for classes)."""
        return class_means(per_sample, self.data.y_train, self.data.num_classes) if self.by_class else per_sample

    def references(self) -> SampleReferences | None:
        """The objective's per-sample reference constants (None when it reads none), float64 on the device:
        `config.reference_models` models of the original's recipe on random halves, trained on first use."""
        if not uses_references(self.config.objective):
            return None
        if self._references is None:
            stats = self.setting.references(self.config.reference_models, progress=self.progress)
            self._references = SampleReferences.from_stats(stats, device=self.data.device)
        return self._references

    def objective(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample upper-objective values of training-split logits, in the logits' dtype. (N,)
        With `rows` (training indices), the logits are those rows' and so is the result. (len(rows),)"""
        refs, y = self.references(), self.data.y_train
        if rows is not None:
            y, refs = y[rows], None if refs is None else refs.rows(rows)
        return per_sample_objective(logits, y, self.config.objective, None if refs is None else refs.to(logits.dtype))

    def values(self, model, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample upper-objective values of a model (eval mode, no augmentation), float64, in one batched
        pass over the training split (N,), or over the training indices `rows` only (len(rows),)."""
        x = self.data.x_train if rows is None else self.data.x_train[rows]
        return self.objective(predict_logits(model, x).double(), rows)

    def members(self, unit_indices: torch.Tensor) -> torch.Tensor:
        """Training indices of a forget set given as sample or class indices."""
        if not self.by_class:
            return unit_indices.sort().values
        mask = torch.isin(self.data.y_train.cpu(), unit_indices.cpu())
        return torch.nonzero(mask).flatten()

    def lower(self, **changes) -> UnlearningMethod:
        return replace(self.method, **changes)
