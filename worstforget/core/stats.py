"""One aggregate shape for every number users read, and one way to print it.

An aggregate is `{"mean", "std", "n"}` over the runs behind a number (sets × seeds, or sets), with
`{"low", "high"}` added where an interval exists. A single run is an aggregate with n = 1 and std None.
Non-finite values never enter an aggregate: a run that diverged is reported as such before it gets here.
"""
from __future__ import annotations

import math
from typing import Iterable, TypedDict

import numpy as np


class Aggregate(TypedDict, total=False):
    mean: float | None
    std: float | None
    n: int
    low: float
    high: float


def aggregate(values: Iterable[float] | np.ndarray, *, low: float | None = None,
              high: float | None = None) -> Aggregate:
    """Mean, sample standard deviation (ddof 1; None below two runs) and count of the finite values."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    out: Aggregate = {"mean": float(arr.mean()) if arr.size else None,
                      "std": float(arr.std(ddof=1)) if arr.size > 1 else None, "n": int(arr.size)}
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        out["low"], out["high"] = float(low), float(high)
    return out


def is_aggregate(obj: object) -> bool:
    return isinstance(obj, dict) and "mean" in obj and "n" in obj


def fmt_number(value: float | None, digits: int = 2) -> str:
    """A number with fixed decimals; '–' for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_agg(agg: Aggregate | float | None, digits: int = 2, *, sep: str = " ± ", interval: bool = True) -> str:
    """'2.92 ± 0.71' over several runs, '2.92' for one, '0.98 [0.97, 0.99]' when an interval exists."""
    if agg is None:
        return "–"
    if not isinstance(agg, dict):
        return fmt_number(agg, digits)
    text = fmt_number(agg.get("mean"), digits)
    if text == "–":
        return text
    if interval and "low" in agg and "high" in agg:
        return f"{text} [{agg['low']:.{digits}f}, {agg['high']:.{digits}f}]"
    std = agg.get("std")
    if agg.get("n", 0) > 1 and std is not None:
        return f"{text}{sep}{std:.{digits}f}"
    return text


def difference_interval(a: Aggregate, b: Aggregate, *, z: float = 1.96) -> tuple[float, float, float] | None:
    """(a − b, low, high): a normal-approximation interval of a difference of two means, each side's spread
    counted — Welch's standard error over runs, or for a single run its own 95% interval (low, high) read as
    ±1.96 standard errors. A single run without an interval has an unknown spread: then low and high are NaN
    (no interval — never a zero-width one). None when a mean is missing."""
    if a.get("mean") is None or b.get("mean") is None:
        return None
    diff = a["mean"] - b["mean"]
    se2 = 0.0
    for side in (a, b):
        if side.get("n", 0) > 1 and side.get("std") is not None:
            se2 += side["std"] ** 2 / side["n"]
        elif "low" in side and "high" in side:
            se2 += ((side["high"] - side["low"]) / (2 * 1.96)) ** 2
        else:
            return diff, math.nan, math.nan
    half = z * math.sqrt(se2)
    return diff, diff - half, diff + half
