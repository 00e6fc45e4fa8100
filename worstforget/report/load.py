"""Read one `worstforget search --out DIR` folder into a `LoadedResult`, validating it on the way.

A result folder is read by `audit.result.SearchAudit.read` (schema 1 folders are upgraded there; a newer
schema is refused with a message naming the version); the report takes its summary in the current schema.
An optional `evaluation.json` adds ROC curves of membership attacks:
any JSON object holding `roc_fpr` and `roc_tpr` lists, found anywhere in the file, becomes one curve
labelled by the keys leading to it (e.g. `{"finetune": {"roc_fpr": [...], "roc_tpr": [...]}}`).

Every problem — missing files, an unknown schema version, unreadable files — raises `WorstforgetError`
with a one-line message naming the folder and the fix.

`attach_training_data` reads the labels (and, for images, the hardest examples) from the registered
dataset the result was computed on, so that class composition and the example grid can be shown; it
never fails: when the data cannot be read the result carries a note instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audit.result import SearchAudit
from ..core.errors import WorstforgetError

HARDEST_K = 24  # examples in the grid: 3 rows × 8 columns


@dataclass
class TrainingData:
    """What the report needs from the training split: every label, and images of the hardest examples."""

    labels: np.ndarray  # (num_train,) int64
    class_names: tuple[str, ...] | None
    hardest: np.ndarray  # (k,) training indices, most-weighted first
    hardest_images: np.ndarray | None  # (k, C, H, W) float32 as stored (normalised), None for flat features


@dataclass
class LoadedResult:
    """One search result folder as the report sees it: the typed audit (read by `audit.result`, the only reader
    of the files), its summary in the current schema, ROC curves, and the training data when available."""

    audit: SearchAudit
    summary: dict[str, Any]
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # label → (fpr, tpr)
    training: TrainingData | None = None
    data_note: str | None = None  # why `training` is missing, when it is

    @property
    def path(self) -> Path:
        return self.audit.path

    @property
    def attrs(self) -> dict[str, Any]:
        return self.audit.attrs

    @property
    def search(self) -> dict[str, np.ndarray]:
        return self.audit.search

    @property
    def forget_sets(self) -> dict[str, Any]:
        return self.audit.forget_sets

    @property
    def metrics(self) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        return {kind: block.metrics for kind, block in self.audit.kinds.items()}

    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def method(self) -> str:
        return self.summary["method"]

    @property
    def methods(self) -> list[str]:
        """Every method evaluated on the sets, the searched one first (Retrain excluded)."""
        return self.audit.methods

    @property
    def kinds(self) -> list[str]:
        return list(self.summary["sets"])

    @property
    def label(self) -> str:
        s = self.summary
        return f"{s['method']} on {s['dataset']}/{s['model']} ({self.path.name})"


def _fail(path: Path, problem: str, fix: str) -> WorstforgetError:
    return WorstforgetError(f"{path}: {problem}; {fix}")


def load_result(path: str | Path) -> LoadedResult:
    """Read and validate a search result folder (see the module docstring for what fails and how)."""
    folder = Path(path)
    audit = SearchAudit.read(folder)
    return LoadedResult(audit=audit, summary=audit.summary(), roc=_read_evaluation(folder))


def _read_evaluation(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    file = folder / "evaluation.json"
    if not file.is_file():
        return {}
    try:
        doc = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(folder, f"evaluation.json is unreadable ({exc})", "fix or remove the file") from None
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def walk(node: Any, trail: list[str]) -> None:
        if isinstance(node, list):  # schema 2 keeps one score dict per set: per_set.<kind>.<method>[i]
            for i, item in enumerate(node):
                walk(item, [*trail, f"set {i}"] if len(node) > 1 else trail)
            return
        if not isinstance(node, dict):
            return
        if "roc_fpr" in node and "roc_tpr" in node:
            # container keys say nothing about the curve: {"scores": {"worst_case": {"ft": {...}}}} → "worst_case / ft"
            label = " / ".join(t for t in trail if t not in ("methods", "scores", "per_set")) or "attack"
            try:
                fpr = np.asarray(node["roc_fpr"], dtype=np.float64)
                tpr = np.asarray(node["roc_tpr"], dtype=np.float64)
            except (TypeError, ValueError):
                fpr = tpr = np.zeros(0)
            ok = (fpr.ndim == 1 and fpr.shape == tpr.shape and len(fpr) >= 2 and np.all(np.isfinite(fpr))
                  and np.all(np.isfinite(tpr)) and fpr.min() >= 0 and fpr.max() <= 1
                  and tpr.min() >= 0 and tpr.max() <= 1)
            if not ok:
                raise _fail(folder, f"evaluation.json: the ROC curve of {label} is not two equally long lists "
                                    "of rates in [0, 1]", "fix or remove the file")
            curves[label] = (fpr, tpr)
            return
        for key, value in node.items():
            walk(value, [*trail, str(key)])

    walk(doc, [])
    return curves


def attach_training_data(result: LoadedResult, *, data_dir: str | Path | None = None,
                         k: int = HARDEST_K) -> LoadedResult:
    """Fill `result.training` from the registered dataset, or `result.data_note` saying why not.

    The dataset is re-read and its fingerprint compared with the one stored in the result, so labels are
    only used when they are the very split the search ran on.
    """
    from .tables import hardest_examples

    setting = result.summary.get("setting") or {}
    info = setting.get("dataset") or {}
    name = info.get("name") or result.summary.get("dataset", "")
    if ":" in name:
        result.data_note = (f"dataset {name} is read from your own file, which the report does not re-open; "
                            "class composition and example grid skipped")
        return result
    from ..datasets import load_dataset

    try:
        data = load_dataset(name, data_dir=data_dir, device="cpu")
    except (WorstforgetError, OSError, ValueError) as exc:
        result.data_note = f"dataset {name} not available ({exc}); class composition and example grid skipped"
        return result
    expected = info.get("fingerprint")
    if expected and data.fingerprint != expected:
        result.data_note = (f"dataset {name} on this machine differs from the audited one (fingerprint "
                            f"{data.fingerprint} ≠ {expected}); class composition and example grid skipped")
        return result
    labels = data.y_train.cpu().numpy().astype(np.int64)
    hardest = hardest_examples(result.search["final_weights"], result.forget_sets["worst_case"], k,
                               granularity=result.summary.get("granularity", "sample"), labels=labels)
    images = data.x_train[hardest].cpu().numpy() if data.is_image and len(hardest) else None
    result.training = TrainingData(labels=labels, class_names=data.classes, hardest=hardest, hardest_images=images)
    return result
