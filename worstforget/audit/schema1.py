"""Schema 1 of the result folders, read and upgraded to schema 2 (the current one) as it is read.

Schema 1 kept one dataset per random set's overlap trace, one set of each baseline kind as a bare dataset and
the heuristic's units nowhere, and nested attack scores per kind and method under `scores`.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def random_overlaps(group) -> np.ndarray | None:
    """The search group's `overlap_with_random_<i>` datasets stacked in order of i (None when there are none)."""
    randoms = sorted((k for k in group if k.startswith("overlap_with_random_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if not randoms:
        return None
    return np.stack([group[k][()] for k in randoms])


def upgrade_summary(summary: dict, forget_sets: dict) -> tuple[dict, dict]:
    """Schema 1 kept one set of each baseline kind as a bare dataset and the heuristic's units nowhere."""
    summary = dict(summary)
    for kind in ("worst_case", "heuristic", "random"):
        summary.pop(kind, None)
    return summary, forget_sets


def evaluation_scores(doc: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """A schema-1 evaluation.json's per-set scores and extras:
    {"scores": {kind: {method: scores | {mean/std..., "per_set": [...]}}, "lira_original": ...}}."""
    raw = doc.get("scores", {})
    scores = {kind: {m: (v["per_set"] if "per_set" in v else [v]) for m, v in per.items()}
              for kind, per in raw.items() if kind != "lira_original" and isinstance(per, dict)}
    extra = {"lira_original": raw["lira_original"]} if "lira_original" in raw else {}
    return scores, extra
