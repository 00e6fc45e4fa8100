"""The typed results of the audit commands and their summaries.

`Comparison` — Retrain and methods run on named kinds of forget sets (`unlearn`, `compare`); `SearchAudit` —
a `Comparison` plus the search that found the worst-case set (`search`); `AttackEvaluation` — attack scores
over the same kinds of sets (`evaluate`, `search --attacks`). Each holds its numbers as arrays, per set kind:
`metrics[kind][who][metric]` shaped (num_sets, num_seeds). Everything a user reads is derived from those
arrays in one place (`summary`), in one aggregate shape (`core.stats.aggregate`): `{mean, std, n}`, plus
`{low, high}` where an interval exists, a single run included (n = 1).

The files of a result folder (their formats, the schema-1 upgrade) are written and read in codecs.py;
these types call it, and `read_search_audit` / `read_attack_evaluation` are re-exported from there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.io import json_bytes, to_jsonable, write_result_folder
from ..core.stats import aggregate
from ..forget_sets.kinds import KIND_LABELS, KIND_NAMES, SET_KINDS  # noqa: F401  (re-exported)
from ..scoring.metrics import ACCURACY_METRICS, GAP_METRICS, GAP_METRICS_LOGIT, avg_gap, mia_flags
from .codecs import (  # noqa: F401  (re-exported: the file constants and readers)
    CSV_FIELDS,
    READABLE_SCHEMAS,
    RESULT_FILES,
    SCHEMA_VERSION,
    check_h5_tree,
    csv_bytes,
    csv_value,
    evaluation_files,
    fill_evaluation_h5,
    read_attack_evaluation,
    read_search_audit,
    search_h5_bytes,
    worst_case_npy_bytes,
)
from .verdict import verdict

# --- per-run arrays ----------------------------------------------------------------------------------------

def run_arrays(records: dict[str, list[list[dict]]]) -> dict[str, dict[str, np.ndarray]]:
    """Unit records `who → set → seed → {metric: value}` as `who → metric → (num_sets, num_seeds)` arrays,
    with each method's Avg. Gap and RTE fraction to Retrain on the same set and seed derived here, once."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for who, per_set in records.items():
        names = [k for k, v in per_set[0][0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[who] = {k: np.array([[float(r.get(k, np.nan)) for r in runs] for runs in per_set]) for k in names}
    reference = records.get("retrain")
    for who, per_set in records.items():
        if who == "retrain" or reference is None:
            continue
        out[who]["avg_gap"] = np.array([[avg_gap(r, ref) for r, ref in zip(runs, refs)]
                                        for runs, refs in zip(per_set, reference)])
        out[who]["acc_gap"] = np.array([[avg_gap(r, ref, ACCURACY_METRICS) for r, ref in zip(runs, refs)]
                                        for runs, refs in zip(per_set, reference)])
        if "MIA_logit" in per_set[0][0]:
            out[who]["avg_gap_logit"] = np.array([[avg_gap(r, ref, GAP_METRICS_LOGIT) for r, ref in zip(runs, refs)]
                                                  for runs, refs in zip(per_set, reference)])
        out[who]["RTE_fraction"] = np.array([[r["RTE"] / ref["RTE"] if ref["RTE"] > 0 else np.nan
                                              for r, ref in zip(runs, refs)] for runs, refs in zip(per_set, reference)])
    return out


@dataclass
class SetKind:
    """The forget sets of one kind and every run on them."""

    sets: list[np.ndarray]  # training indices of each set
    metrics: dict[str, dict[str, np.ndarray]]  # who → metric → (num_sets, num_seeds)

    @property
    def who(self) -> list[str]:
        """Retrain first, then the methods in the order they ran."""
        return sorted(self.metrics, key=lambda w: (w != "retrain",))

    def summary(self) -> dict:
        out = {"num_sets": len(self.sets),
               "methods": {who: {m: aggregate(v) for m, v in self.metrics[who].items()} for who in self.who}}
        if "retrain" in self.metrics:
            out["flags"] = mia_flags(self.metrics["retrain"],
                                     [m for who, m in self.metrics.items() if who != "retrain"])
        return out


def _rows(kind: str, block: SetKind, seeds: list[int]) -> Iterator[tuple]:
    for who in block.who:
        for metric, arr in block.metrics[who].items():
            for i, row in enumerate(np.atleast_2d(arr)):
                for j, value in enumerate(row):
                    seed = seeds[j] if j < len(seeds) else j
                    yield kind, i, who, seed, metric, csv_value(value)


# --- comparisons --------------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """Retrain and methods on named kinds of forget sets (`unlearn`, `compare`, and the core of `search`)."""

    header: dict[str, Any]  # command, dataset, model, method(s), params, num_train, forget_size, ...
    seeds: list[int]  # unlearning seeds (columns of every array)
    kinds: dict[str, SetKind]
    provenance: dict[str, Any] = field(default_factory=dict)  # config, code_version, environment, setting

    @property
    def methods(self) -> list[str]:
        """Every method run beside Retrain, the audited one first."""
        first = next(iter(self.kinds.values()))
        return [w for w in first.who if w != "retrain"]

    def stat(self, kind: str, who: str, metric: str) -> dict:
        return aggregate(self.kinds[kind].metrics[who][metric])

    def summary(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **self.header, "unlearn_seeds": self.seeds,
                "sets": {kind: block.summary() for kind, block in _ordered(self.kinds)}, **self.provenance}

    def rows(self) -> Iterator[tuple]:
        for kind, block in _ordered(self.kinds):
            yield from _rows(kind, block, self.seeds)

    def files(self) -> dict[str, bytes]:
        return {"summary.json": json_bytes(self.summary()), "results.csv": csv_bytes(self.rows())}

    def write(self, out: str | Path) -> Path:
        return write_result_folder(out, self.files(), owned=RESULT_FILES)


def _ordered(kinds: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(kinds.items(), key=lambda kv: SET_KINDS.index(kv[0]) if kv[0] in SET_KINDS else len(SET_KINDS))


# --- the worst-case audit ----------------------------------------------------------------------------------

@dataclass
class SearchAudit(Comparison):
    """A worst-case audit: the search, then Retrain and methods on the worst-case, baseline and random sets.

    `search` holds the trace as arrays (weights (T+1, n), final_weights, objective, step_size,
    overlap_with_initial, overlap_with_random (R, T), overlap_with_heuristic); `forget_sets` the index
    arrays (worst_case, worst_case_units, initial_units, stability_units, and every set kind's sets);
    `search_info` the JSON-side description (seconds, cost ratios, key, inner steps).
    """

    search: dict[str, np.ndarray] = field(default_factory=dict)
    search_info: dict[str, Any] = field(default_factory=dict)
    forget_sets: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] | None = None
    baseline_overlap: dict[str, float] = field(default_factory=dict)  # share of the worst-case set in each baseline
    evaluation: "AttackEvaluation | None" = None
    path: Path | None = None  # the folder it was read from
    attrs: dict[str, Any] = field(default_factory=dict)  # result.h5 attributes when read

    @property
    def method(self) -> str:
        return self.header["method"]

    def summary(self) -> dict:
        s = super().summary()
        trace = {k: to_jsonable(v) for k, v in self.search.items()
                 if k == "objective" or k.startswith("overlap_with_")}
        s["search"] = {**self.search_info, **trace}
        s["stability"] = self.stability
        s["baseline_overlap"] = self.baseline_overlap
        s["heuristic_overlap"] = self.baseline_overlap.get("heuristic")
        s["verdict"] = verdict(s, self.evaluation.summary() if self.evaluation is not None else None)
        return s

    def rows(self) -> Iterator[tuple]:
        yield from super().rows()
        if self.evaluation is not None:
            yield from self.evaluation.rows()

    def files(self) -> dict[str, bytes]:
        files = super().files()
        files["result.h5"] = self._h5_bytes()
        files["worst_case_indices.npy"] = worst_case_npy_bytes(self)
        if self.evaluation is not None:
            files.update(self.evaluation.files(csv=False))
        return files

    def _h5_bytes(self) -> bytes:
        return search_h5_bytes(self)

    @classmethod
    def read(cls, folder: str | Path) -> "SearchAudit":
        return read_search_audit(Path(folder))


# --- attack evaluation -------------------------------------------------------------------------------------

@dataclass
class AttackEvaluation:
    """Attack scores on named kinds of forget sets: `scores[kind][method]` is one score dict per set (as
    `audit.attack_eval.evaluate_unlearning` returns them), `arrays` the per-example values by HDF5 path."""

    config: dict[str, Any]
    scores: dict[str, dict[str, list[dict]]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. lira_original: attacks on the trained model
    provenance: dict[str, Any] = field(default_factory=dict)

    def scalars(self, kind: str, method: str) -> dict[str, dict]:
        """Every numeric score of a method on the sets of one kind as an aggregate over sets (a single set
        keeps its bootstrap or t interval as low/high)."""
        per_set = self.scores[kind][method]
        names: list[str] = []
        for scores in per_set:
            names += [k for k, v in scores.items() if _scalar(v) is not None and k not in names]
        out = {}
        for k in names:
            values = [_scalar(s.get(k)) for s in per_set]
            values = [v for v in values if v is not None]
            interval = per_set[0].get(k) if len(per_set) == 1 and isinstance(per_set[0].get(k), dict) else {}
            out[k] = aggregate(values, low=interval.get("low"), high=interval.get("high"))
        return out

    def summary(self) -> dict:
        sets = {kind: {"num_sets": len(next(iter(per_method.values()))),
                       "methods": {m: self.scalars(kind, m) for m in per_method}}
                for kind, per_method in _ordered(self.scores)}
        per_set = {kind: per_method for kind, per_method in _ordered(self.scores)}
        return {"schema_version": SCHEMA_VERSION, "kind": "attack_evaluation", "config": self.config,
                "sets": sets, "per_set": per_set, **self.extra, **self.provenance}

    def rows(self) -> Iterator[tuple]:
        for kind, per_method in _ordered(self.scores):
            for method, per_set in per_method.items():
                for i, scores in enumerate(per_set):
                    for k, v in scores.items():
                        value = _scalar(v)
                        if value is not None:
                            yield kind, i, method, "", k, csv_value(value)

    def fill_h5(self, group) -> None:
        fill_evaluation_h5(self, group)

    def files(self, *, csv: bool = True) -> dict[str, bytes]:
        return evaluation_files(self, csv=csv)

    def write(self, out: str | Path) -> Path:
        return write_result_folder(out, self.files(), owned=RESULT_FILES)

    @classmethod
    def read(cls, folder: str | Path) -> "AttackEvaluation | None":
        return read_attack_evaluation(Path(folder))


def _scalar(v: Any) -> float | None:
    """The number of a score: plain numbers, `{value, low, high}` intervals and aggregates; None otherwise."""
    if isinstance(v, dict):
        v = v.get("value", v.get("mean"))
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v):
        return float(v)
    return None


__all__ = ["SCHEMA_VERSION", "SET_KINDS", "Comparison", "SearchAudit", "SetKind", "AttackEvaluation",
           "run_arrays", "read_search_audit", "read_attack_evaluation", "GAP_METRICS"]
