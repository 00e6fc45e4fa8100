"""Read one `worstforget search --out DIR` folder into an `AuditResult`, validating it on the way.

A result folder holds `summary.json` (the means and spreads the tables use), `result.h5` (per-set,
per-seed metrics, the search trace and the forget sets; its `schema_version` attribute says how to read
it) and `worst_case_indices.npy`. An optional `evaluation.json` adds ROC curves of membership attacks:
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

from ..core.errors import WorstforgetError

SUPPORTED_SCHEMA_VERSIONS = (1,)
REQUIRED_FILES = ("summary.json", "result.h5")
HARDEST_K = 24  # examples in the grid: 3 rows × 8 columns
SET_KINDS = ("worst_case", "heuristic", "random")


@dataclass
class TrainingData:
    """What the report needs from the training split: every label, and images of the hardest examples."""

    labels: np.ndarray  # (num_train,) int64
    class_names: tuple[str, ...] | None
    hardest: np.ndarray  # (k,) training indices, most-weighted first
    hardest_images: np.ndarray | None  # (k, C, H, W) float32 as stored (normalised), None for flat features


@dataclass
class AuditResult:
    """One search result folder, loaded. Arrays come from result.h5, summaries from summary.json."""

    path: Path
    summary: dict[str, Any]
    attrs: dict[str, Any]  # result.h5 attributes; config_json/environment_json parsed into config/environment
    search: dict[str, np.ndarray]  # final_weights, objective, overlap_with_* (random stacked: (R, T)), step_size
    forget_sets: dict[str, Any]  # worst_case, worst_case_units, initial_units, random: [..], heuristic, stability_units
    metrics: dict[str, dict[str, dict[str, np.ndarray]]]  # set kind → method|retrain → metric → (num_sets, num_seeds)
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # label → (fpr, tpr)
    training: TrainingData | None = None
    data_note: str | None = None  # why `training` is missing, when it is

    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def method(self) -> str:
        return self.summary["method"]

    @property
    def methods(self) -> list[str]:
        """Every method evaluated on the sets, the searched one first (Retrain excluded)."""
        others = [m for m in self.summary["worst_case"] if m not in ("avg_gap", "std", "retrain", self.method)]
        return [self.method, *others]

    @property
    def kinds(self) -> list[str]:
        return [k for k in SET_KINDS if k in self.summary]

    @property
    def label(self) -> str:
        s = self.summary
        return f"{s['method']} on {s['dataset']}/{s['model']} ({self.path.name})"


def _fail(path: Path, problem: str, fix: str) -> WorstforgetError:
    return WorstforgetError(f"{path}: {problem}; {fix}")


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_result(path: str | Path) -> AuditResult:
    """Read and validate a search result folder (see the module docstring for what fails and how)."""
    folder = Path(path)
    if not folder.is_dir():
        raise _fail(folder, "not a folder", "pass the --out folder of `worstforget search`")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        hint = "pass the --out folder of `worstforget search`"
        if missing == ["result.h5"]:
            # `worstforget unlearn` writes summary.json only: say so rather than just "missing"
            hint = "this looks like a `worstforget unlearn` output; reports are built from `worstforget search --out DIR`"
        raise _fail(folder, f"not a worstforget search result (missing {', '.join(missing)})", hint)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(folder, f"summary.json is unreadable ({exc})", "re-run `worstforget search --out` into this folder") from None
    if not isinstance(summary, dict) or "worst_case" not in summary or "search" not in summary:
        raise _fail(folder, "summary.json is not a search summary (no worst_case/search entries)",
                    "pass the --out folder of `worstforget search`")
    result = _read_h5(folder)
    result.summary = summary
    result.roc = _read_evaluation(folder)
    return result


def _read_h5(folder: Path) -> AuditResult:
    import h5py

    file = folder / "result.h5"
    rerun = "re-run `worstforget search --out` into this folder"
    try:
        h5 = h5py.File(file, "r")
    except OSError as exc:
        raise _fail(folder, f"result.h5 is unreadable ({exc})", rerun) from None
    with h5:
        attrs = {k: _decode(v) for k, v in h5.attrs.items()}
        version = attrs.get("schema_version")
        if version is None:
            raise _fail(folder, "result.h5 has no schema_version attribute", rerun)
        if not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
            from .. import __version__

            supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
            raise _fail(folder, f"result.h5 has schema_version {version!r} but worstforget {__version__} reads "
                                f"version {supported}",
                        f"report it with the worstforget that wrote it ({attrs.get('worstforget_version', 'unknown')}) "
                        "or re-run the search with this one")
        try:
            attrs["config"] = json.loads(attrs.pop("config_json", "{}"))
            attrs["environment"] = json.loads(attrs.pop("environment_json", "{}"))
            s = h5["search"]
            search = {k: s[k][()] for k in ("final_weights", "objective", "overlap_with_initial", "step_size") if k in s}
            randoms = sorted((k for k in s if k.startswith("overlap_with_random_")), key=lambda k: int(k.rsplit("_", 1)[1]))
            search["overlap_with_random"] = np.stack([s[k][()] for k in randoms]) if randoms else np.zeros((0, 0))
            if "overlap_with_heuristic" in s:
                search["overlap_with_heuristic"] = s["overlap_with_heuristic"][()]
            search["seconds"] = np.asarray(_decode(s.attrs.get("seconds", np.nan)))
            f = h5["forget_sets"]
            sets: dict[str, Any] = {k: f[k][()] for k in ("worst_case", "worst_case_units", "initial_units",
                                                          "heuristic", "stability_units") if k in f}
            sets["random"] = [f["random"][k][()] for k in sorted(f["random"], key=int)]
            metrics: dict[str, dict[str, dict[str, np.ndarray]]] = {}
            for kind, group in h5["metrics"].items():
                metrics[kind] = {who: {m: np.asarray(d[()], dtype=np.float64) for m, d in g.items()}
                                 for who, g in group.items()}
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise _fail(folder, f"result.h5 is incomplete or damaged ({exc})", rerun) from None
    for key in ("final_weights", "objective", "overlap_with_initial"):
        if key not in search:
            raise _fail(folder, f"result.h5 lacks /search/{key}", rerun)
    return AuditResult(path=folder, summary={}, attrs=attrs, search=search, forget_sets=sets, metrics=metrics)


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
        if not isinstance(node, dict):
            return
        if "roc_fpr" in node and "roc_tpr" in node:
            # container keys say nothing about the curve: {"scores": {"worst_case": {"ft": {...}}}} → "worst_case / ft"
            label = " / ".join(t for t in trail if t not in ("methods", "scores")) or "attack"
            try:
                fpr = np.asarray(node["roc_fpr"], dtype=np.float64)
                tpr = np.asarray(node["roc_tpr"], dtype=np.float64)
            except (TypeError, ValueError):
                fpr = tpr = np.zeros(0)
            ok = (fpr.ndim == 1 and fpr.shape == tpr.shape and len(fpr) >= 2 and np.all(np.isfinite(fpr))
                  and np.all(np.isfinite(tpr)) and fpr.min() >= 0 and fpr.max() <= 1 and tpr.min() >= 0 and tpr.max() <= 1)
            if not ok:
                raise _fail(folder, f"evaluation.json: the ROC curve of {label} is not two equally long lists "
                                    "of rates in [0, 1]", "fix or remove the file")
            curves[label] = (fpr, tpr)
            return
        for key, value in node.items():
            walk(value, [*trail, str(key)])

    walk(doc, [])
    return curves


def attach_training_data(result: AuditResult, *, data_dir: str | Path | None = None, k: int = HARDEST_K) -> AuditResult:
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
