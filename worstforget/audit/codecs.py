"""The file codecs of the audit results (result.py's types): the only writers and readers of a result folder.

Files of a result folder (schema 2):
  summary.json             header, `sets.<kind>.methods.<who>.<metric>` aggregates, search trace, provenance
  results.csv              tidy rows: set_kind, set_index, method, seed, metric, value
  result.h5                (search) forget sets, search trace and weights, per-run metrics, /evaluation arrays
  worst_case_indices.npy   (search) training indices of the worst-case set
  evaluation.json / .h5    (attacks) `sets.<kind>.methods.<method>.<score>` aggregates; per-example arrays
Folders written by schema 1 are read and upgraded (schema1.py): their per-run arrays are re-aggregated.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..core.errors import WorstforgetError
from ..core.io import json_bytes, to_jsonable
from . import schema1

if TYPE_CHECKING:  # result.py imports this module; the readers import its types on use
    from .result import AttackEvaluation, SearchAudit

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
CSV_FIELDS = ("set_kind", "set_index", "method", "seed", "metric", "value")
# Every file a result folder's writers own: a rewrite drops those the new result lacks, so no file of an
# earlier run (a finetune audit's evaluation.json under a gradient_ascent summary) is read as the new run's.
RESULT_FILES = ("summary.json", "results.csv", "result.h5", "worst_case_indices.npy", "evaluation.json",
                "evaluation.h5")


# --- writing ------------------------------------------------------------------------------------------------

def csv_value(value: float) -> str:
    return repr(float(value)) if np.isfinite(value) else ""


def csv_bytes(rows: Iterator[tuple]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(rows)
    return buf.getvalue().encode()


def search_h5_bytes(audit: SearchAudit) -> bytes:
    """result.h5 of a search audit: attributes, the search trace, forget sets, per-run metrics, /evaluation."""
    import h5py

    s = audit.summary()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["worstforget_version"] = s.get("code_version", "")
        f.attrs["config_json"] = json.dumps(to_jsonable(s.get("config", {}), nan_to_none=True))
        f.attrs["environment_json"] = json.dumps(to_jsonable(s.get("environment", {})))
        f.attrs["seed"] = s["seed"]
        f.attrs["unlearn_seeds"] = audit.seeds
        for key in ("dataset", "model", "method", "solver", "objective", "granularity"):
            f.attrs[key] = s[key]
        g = f.create_group("search")
        for k, v in audit.search.items():
            arr = np.asarray(v, dtype=np.float32 if k in ("weights", "final_weights") else np.float64)
            g.create_dataset(k, data=arr, **({"compression": "gzip", "shuffle": True} if arr.size > 4096 else {}))
        g.attrs["seconds"] = audit.search_info.get("seconds", float("nan"))
        g.attrs["key"] = audit.search_info.get("key", "")
        fs = f.create_group("forget_sets")
        for k, v in audit.forget_sets.items():
            if isinstance(v, list):
                sub = fs.create_group(k)
                for i, members in enumerate(v):
                    sub.create_dataset(str(i), data=np.asarray(members, dtype=np.int64))
            elif v is not None:
                fs.create_dataset(k, data=np.asarray(v, dtype=np.int64))
        mg = f.create_group("metrics")
        for kind, block in audit.kinds.items():
            for who, metrics in block.metrics.items():
                g = mg.require_group(f"{kind}/{who}")
                for metric, arr in metrics.items():
                    g.create_dataset(metric, data=np.asarray(arr, dtype=np.float64))
        if audit.evaluation is not None:
            fill_evaluation_h5(audit.evaluation, f.create_group("evaluation"))
    return buf.getvalue()


def worst_case_npy_bytes(audit: SearchAudit) -> bytes:
    """worst_case_indices.npy: the worst-case set's training indices as int64."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(audit.forget_sets["worst_case"], dtype=np.int64))
    return buf.getvalue()


def fill_evaluation_h5(evaluation: AttackEvaluation, group) -> None:
    """The per-example arrays of an attack evaluation, by their HDF5 paths, into `group`."""
    group.attrs["schema_version"] = SCHEMA_VERSION
    for key, value in evaluation.arrays.items():
        arr = np.asarray(value)
        group.create_dataset(key, data=arr, **({"compression": "gzip"} if arr.size > 1000 else {}))


def evaluation_files(evaluation: AttackEvaluation, *, csv: bool = True) -> dict[str, bytes]:
    """evaluation.json, evaluation.h5 and (alone, not beside a search) results.csv."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["worstforget_version"] = evaluation.provenance.get("code_version", "")
        fill_evaluation_h5(evaluation, f)
    files = {"evaluation.json": json_bytes(evaluation.summary()), "evaluation.h5": buf.getvalue()}
    if csv:
        files["results.csv"] = csv_bytes(evaluation.rows())
    return files


# --- reading ------------------------------------------------------------------------------------------------

def _fail(folder: Path, problem: str, fix: str) -> WorstforgetError:
    return WorstforgetError(f"{folder}: {problem}; {fix}")


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# What a result's HDF5 file may declare: a hand-edited or foreign file could declare terabytes in a few bytes
# (an empty chunked dataset), link to other files, or loop; it is checked before any array is read.
MAX_H5_OBJECTS = 100_000
MAX_H5_DEPTH = 12
MIN_H5_BUDGET = 256 * 2**20  # bytes any file may declare; beyond it, at most H5_EXPANSION × its size on disk
H5_EXPANSION = 64


def check_h5_tree(h5, folder: Path, name: str, fix: str) -> None:
    """Refuse, in one line, an HDF5 file whose structure is not one worstforget writes: soft or external
    links (never written; an external link would read another file), more than MAX_H5_OBJECTS objects or
    groups nested deeper than MAX_H5_DEPTH levels, datasets of anything but numbers, or datasets whose declared
    size is far beyond what the file on disk can hold.

    HDF5's own visits walk the file (each object once, so a hard-link cycle ends): the links first, from their
    headers, which refuses a link before anything is opened through it; then the objects. A visit stops when
    its callback returns something: here, the problem (raising inside HDF5's iteration is not safe)."""
    from h5py import h5d, h5l, h5o, h5s

    size = (folder / name).stat().st_size
    budget = max(MIN_H5_BUDGET, H5_EXPANSION * size)
    count = declared = 0

    def link(path: bytes, info) -> str | None:
        nonlocal count
        count += 1
        if count > MAX_H5_OBJECTS:
            return f"{name} holds more than {MAX_H5_OBJECTS} objects"
        if info.type != h5l.TYPE_HARD:
            kind = "an external link to another file" if info.type == h5l.TYPE_EXTERNAL else "a soft link"
            return f"{name} holds {kind} at /{path.decode(errors='replace')}, which worstforget never writes"
        return None

    def node(path: bytes, info) -> str | None:
        nonlocal declared
        where = path.decode(errors="replace")
        if info.type == h5o.TYPE_GROUP:
            if path.count(b"/") + 1 > MAX_H5_DEPTH:
                return f"{name} nests groups deeper than {MAX_H5_DEPTH} levels at /{where}"
            return None
        if info.type != h5o.TYPE_DATASET:
            return f"{name} holds an object of unknown type at /{where}"
        dataset = h5d.open(h5.id, path)
        dtype = dataset.dtype
        if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
            return f"{name} holds non-numeric data ({dtype}) at /{where}"
        if dataset.get_space().get_simple_extent_type() == h5s.NULL:
            return f"{name} holds an empty-space dataset at /{where}"
        # once per hard link to it (its reference count): a reader reading by path reads it that many times
        declared += int(np.prod(dataset.shape, dtype=object)) * dtype.itemsize * info.rc
        if declared > budget:
            return (f"{name} declares {declared / 2**20:,.0f} MiB of arrays (at /{where}) in a "
                    f"{size / 2**20:,.1f} MiB file")
        return None

    problem = h5.id.links.visit(link, info=True) or h5o.visit(h5.id, node, info=True)
    if problem:
        raise _fail(folder, problem, fix)


def _check_shapes(folder: Path, search: dict, forget_sets: dict, num_train: Any, fix: str,
                  granularity: str = "sample") -> None:
    """The arrays that index the training split must fit it: final weights of length num_train (one per class,
    at most num_train of them, for a class-wise search), forget sets of at most num_train indices in
    [0, num_train)."""
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
        raise _fail(folder, f"summary.json's num_train is {num_train!r}, not a positive integer", fix)
    final = np.asarray(search["final_weights"])
    by_class = granularity == "class" and final.ndim == 1 and 1 <= len(final) <= num_train
    if final.shape != (num_train,) and not by_class:
        raise _fail(folder, f"result.h5's /search/final_weights has shape {final.shape}; the audit's training "
                            f"split has {num_train} samples", fix)
    for key, value in forget_sets.items():
        for i, members in enumerate(value if isinstance(value, list) else [value]):
            members = np.asarray(members)
            where = f"/forget_sets/{key}" + (f"/{i}" if isinstance(value, list) else "")
            if members.ndim != 1 or len(members) > num_train or members.dtype.kind not in "iu" or (
                    len(members) and (members.min() < 0 or members.max() >= num_train)):
                raise _fail(folder, f"result.h5's {where} is not a set of training indices in [0, {num_train})", fix)


def read_search_audit(folder: Path) -> SearchAudit:
    """Read a `search --out` folder (schema 1 or 2). Every problem is one WorstforgetError naming the fix."""
    from .result import SearchAudit, SetKind

    rerun = "re-run `worstforget search --out` into this folder"
    if not folder.is_dir():
        raise _fail(folder, "not a folder", "pass the --out folder of `worstforget search`")
    missing = [n for n in ("summary.json", "result.h5") if not (folder / n).is_file()]
    if missing:
        hint = "pass the --out folder of `worstforget search`"
        if missing == ["result.h5"]:
            hint = ("this looks like a `worstforget unlearn` or `compare` output; reports are built from "
                    "`worstforget search --out DIR`")
        raise _fail(folder, f"not a worstforget search result (missing {', '.join(missing)})", hint)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(folder, f"summary.json is unreadable ({exc})", rerun) from None
    if not isinstance(summary, dict) or "search" not in summary or not ("sets" in summary or "worst_case" in summary):
        raise _fail(folder, "summary.json is not a search summary (no search/sets entries)",
                    "pass the --out folder of `worstforget search`")
    import h5py

    try:
        h5 = h5py.File(folder / "result.h5", "r")
    except OSError as exc:
        raise _fail(folder, f"result.h5 is unreadable ({exc})", rerun) from None
    with h5:
        attrs = {k: _decode(v) for k, v in h5.attrs.items()}
        version = attrs.get("schema_version")
        if version is None:
            raise _fail(folder, "result.h5 has no schema_version attribute", rerun)
        if not isinstance(version, int) or version not in READABLE_SCHEMAS:
            from .. import __version__

            raise _fail(folder, f"result.h5 has schema_version {version!r} but worstforget {__version__} reads "
                                f"versions {', '.join(map(str, READABLE_SCHEMAS))}",
                        f"read it with the worstforget that wrote it ({attrs.get('worstforget_version', 'unknown')}) "
                        "or re-run the search with this one")
        check_h5_tree(h5, folder, "result.h5", rerun)
        try:
            attrs["config"] = json.loads(attrs.pop("config_json", "{}"))
            attrs["environment"] = json.loads(attrs.pop("environment_json", "{}"))
            g = h5["search"]
            search = {k: g[k][()] for k in g if not k.startswith("overlap_with_random")}
            randoms = schema1.random_overlaps(g)
            if randoms is not None:  # schema 1: one dataset per random set
                search["overlap_with_random"] = randoms
            elif "overlap_with_random" in g:
                search["overlap_with_random"] = g["overlap_with_random"][()]
            fs = h5["forget_sets"]
            forget_sets: dict[str, Any] = {}
            for k in fs:
                node = fs[k]
                forget_sets[k] = ([node[i][()] for i in sorted(node, key=int)] if isinstance(node, h5py.Group)
                                  else node[()])
            metrics = {kind: {who: {m: np.asarray(d[()], dtype=np.float64) for m, d in grp.items()}
                              for who, grp in group.items()} for kind, group in h5["metrics"].items()}
        except (KeyError, ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
            raise _fail(folder, f"result.h5 is incomplete or damaged ({exc})", rerun) from None
    for key in ("final_weights", "objective", "overlap_with_initial"):
        if key not in search:
            raise _fail(folder, f"result.h5 lacks /search/{key}", rerun)
    _check_shapes(folder, search, forget_sets, summary.get("num_train"), rerun, summary.get("granularity", "sample"))
    if version == 1:
        summary, forget_sets = schema1.upgrade_summary(summary, forget_sets)
    kinds = {kind: SetKind(sets=_sets_of(kind, forget_sets), metrics=per_who) for kind, per_who in metrics.items()}
    header = {k: v for k, v in summary.items()
              if k not in ("schema_version", "sets", "search", "stability", "heuristic_overlap", "baseline_overlap",
                           "verdict", "unlearn_seeds",
                           "config", "code_version", "environment", "setting")}
    provenance = {k: summary[k] for k in ("config", "code_version", "environment", "setting") if k in summary}
    info = {k: v for k, v in summary["search"].items()
            if k != "objective" and not k.startswith("overlap_with_")}
    audit = SearchAudit(header=header, seeds=list(summary.get("unlearn_seeds") or attrs.get("unlearn_seeds") or []),
                        kinds=kinds, provenance=provenance, search=search, search_info=info,
                        forget_sets=forget_sets, stability=summary.get("stability"),
                        baseline_overlap=summary.get("baseline_overlap") or (
                            {"heuristic": summary["heuristic_overlap"]}
                            if summary.get("heuristic_overlap") is not None else {}),
                        path=folder, attrs=attrs)
    audit.evaluation = read_attack_evaluation(folder)
    return audit


def _sets_of(kind: str, forget_sets: dict[str, Any]) -> list[np.ndarray]:
    value = forget_sets.get(kind)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def read_attack_evaluation(folder: Path) -> AttackEvaluation | None:
    """The folder's evaluation.json (schema 2, or schema 1 upgraded), or None when there is none."""
    from .result import AttackEvaluation

    path = folder / "evaluation.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(folder, f"evaluation.json is unreadable ({exc})", "fix or remove the file") from None
    if not isinstance(doc, dict):
        raise _fail(folder, "evaluation.json is not an evaluation document", "fix or remove the file")
    version = doc.get("schema_version", 1)  # schema 1 documents may lack the field
    if isinstance(version, bool) or version not in READABLE_SCHEMAS:
        from .. import __version__

        raise _fail(folder, f"evaluation.json has schema_version {version!r} but worstforget {__version__} reads "
                            f"versions {', '.join(map(str, READABLE_SCHEMAS))}",
                    f"read it with the worstforget that wrote it ({doc.get('code_version', 'unknown')}) or re-run "
                    "`worstforget evaluate` with this one")
    if version == SCHEMA_VERSION:
        scores = doc.get("per_set", {})
        extra = {k: v for k, v in doc.items() if k not in ("schema_version", "kind", "config", "sets", "per_set",
                                                           "code_version", "environment", "setting")}
    else:
        scores, extra = schema1.evaluation_scores(doc)
    return AttackEvaluation(config=doc.get("config", {}), scores=scores, arrays=_read_arrays(folder, "evaluation.h5"),
                            extra=extra,
                            provenance={k: doc[k] for k in ("code_version", "environment", "setting") if k in doc})


def _read_arrays(folder: Path, name: str) -> dict[str, np.ndarray]:
    """Every dataset of an evaluation.h5 by its path (empty when the file is absent or unreadable); a file
    that fails `check_h5_tree` is refused."""
    path = folder / name
    if not path.is_file():
        return {}
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        f = h5py.File(path, "r")
    except OSError:
        return {}
    with f:
        check_h5_tree(f, folder, name, "re-run `worstforget evaluate` or remove the file")
        f.visititems(lambda key, node: out.__setitem__(key, node[()]) if isinstance(node, h5py.Dataset) else None)
    return out
