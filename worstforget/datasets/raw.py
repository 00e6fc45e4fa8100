"""Arrays as read from a dataset's files, before splitting, scaling and moving to a device."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawSplits:
    """Train/test (and optional validation) arrays exactly as the files hold them.

    Images are (N, C, H, W); flat features are (N, D). Labels are int64 in [0, num_classes).
    Pixel values keep their stored dtype (uint8 images stay uint8); scaling happens later.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
