"""Render loaded results as Markdown, self-contained HTML, or a JSON document.

Markdown and HTML share one outline (built once by `_outline`, so both say the same thing): per result
folder a headline, the worst-case vs random (vs heuristic) table per method with every number beside
Retrain's, the Avg. Gap per method, the transfer table when several methods ran on the same sets, the
search trace, the class composition when labels are available, the figures, and the provenance (dataset,
model, method, solver, objective, seeds, code version, environment, full config). Several folders add a
comparison table (method × set kind Avg. Gap) at the top. HTML embeds its PNGs as base64 data URIs and
carries its CSS inline, so the single file can be handed over as is.

JSON schema (`render_json`), following the OpenUnlearning convention of one entry per metric holding an
aggregate `agg_value` and the per-item values behind it in `value_by_index` (string keys):

    {
      "schema": "worstforget-report/1",
      "worstforget_version": str,            # the version that rendered the report
      "results": [{
        "folder": str,
        "provenance": {dataset, model, method, params, solver, objective, granularity, num_train,
                       forget_size, seed, unlearn_seeds, code_version, schema_version, environment, config},
        "metrics": {
          "<set>/<who>/<metric>": {          # set: worst_case | heuristic | random; who: retrain or a method;
            "agg_value": float,              # metric: UA, MIA, RA, TA, RTE, MIA_std, avg_gap (methods only)
            "std": float, "n": int,          # mean, sample std and count over all sets × seeds
            "value_by_index": {"<set index>/<seed>": {"score": float, "set": int, "seed": int}}},
          "search/final_weights": {          # agg_value: mean weight over the worst-case set (1 = fully decided)
            "agg_value": float,
            "value_by_index": {"<training index | class index>": {"weight": float, "in_worst_case": bool}}},
          "search/objective", "search/overlap_with_initial", "search/overlap_with_heuristic",
          "search/overlap_with_random/<r>": {"agg_value": last step's value,
                                             "value_by_index": {"<outer step>": {"score": float}}},
          "search/heuristic_overlap", "search/stability_jaccard": {"agg_value": float, "value_by_index": {}},
          "class_composition": {             # only when the dataset's labels could be read
            "agg_value": total-variation distance between the set's and the training split's class shares,
            "value_by_index": {"<class>": {"name", "train_count", "forget_count", "train_share",
                                           "forget_share", "ratio"}}},
          "roc/<label>": {"agg_value": AUC,  # only with an evaluation.json
                          "value_by_index": {"<point>": {"fpr": float, "tpr": float}}}
        },
        "forget_sets": {"worst_case": [training indices]},
        "notes": [str]                       # what could not be included and why
      }],
      "comparison": [{"result": str, "method": str, "searched": bool,
                      "worst_case": float, "heuristic": float, "random": float}]
    }

NaN values are written as null so that strict JSON parsers accept the file.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.io import to_jsonable
from .load import LoadedResult
from .tables import (
    Table,
    avg_gap_table,
    class_composition,
    class_composition_table,
    combined_table,
    comparison_table,
    evaluated_methods,
    fmt_stat,
    gap_stat,
    provenance_rows,
    roc_auc,
    set_kinds,
    trace_table,
    transfer_table,
)

JSON_SCHEMA = "worstforget-report/1"
TITLE = "Worst-case forget-set audit"


# --- shared outline ------------------------------------------------------------------------------------------

@dataclass
class _Block:
    kind: str  # heading | para | table | figure | kv | details | notes
    payload: Any
    level: int = 2


def _version() -> str:
    from .. import __version__

    return __version__


def _labels(results: Sequence[LoadedResult]) -> list[str]:
    return [f"{i}. {r.label}" if len(results) > 1 else r.label for i, r in enumerate(results, 1)]


def _headline(r: LoadedResult) -> str:
    from ..audit.verdict import verdict_lines

    s = r.summary
    worst, rand = gap_stat(s, "worst_case", s["method"]), gap_stat(s, "random", s["method"])
    text = (f"{s['method']} was audited on {s['dataset']}/{s['model']} with a forget set of {s['forget_size']} of "
            f"{s['num_train']} training samples. Its Avg. Gap to Retrain is {worst[0]:.2f} on the worst-case set "
            f"and {fmt_stat(*rand)} on {'random sets' if rand[2] > 1 else 'a random set'} of the same size.")
    lines = verdict_lines(s.get("verdict") or [])
    return " ".join([text, *(["Verdict:"] + lines if lines else [])])


def _outline(results: Sequence[LoadedResult], images: Sequence[Any] | None) -> list[_Block]:
    from .plots import INSTALL_HINT, matplotlib_available

    labels = _labels(results)
    blocks = [_Block("heading", TITLE, 1),
              _Block("para", f"Generated by worstforget {_version()} on "
                             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
                             f"from {len(results)} result folder{'s' if len(results) > 1 else ''}. "
                             "Avg. Gap is the mean "
                             "absolute difference to exact Retrain on the same forget set over UA, MIA-Efficacy, RA "
                             "and TA; lower is better.")]
    if len(results) > 1:
        blocks.append(_Block("table", combined_table([(lab, r.summary) for lab, r in zip(labels, results)])))
    for i, (r, label) in enumerate(zip(results, labels)):
        s = r.summary
        plots = images[i] if images is not None and i < len(images) else None
        blocks += [_Block("heading", label, 2), _Block("para", f"Folder: {r.path}"), _Block("para", _headline(r))]
        for method in evaluated_methods(s):
            blocks.append(_Block("table", comparison_table(s, method)))
        blocks.append(_Block("table", avg_gap_table(s)))
        transfer = transfer_table(s)
        if transfer is not None:
            blocks.append(_Block("table", transfer))
        blocks.append(_Block("table", trace_table(s)))
        if r.training is not None:
            blocks.append(_Block("table", class_composition_table(r.training.labels, r.forget_sets["worst_case"],
                                                                  r.training.class_names)))
        notes = list(plots.notes) if plots is not None else ([r.data_note] if r.data_note else [])
        if plots is not None and plots.figures:
            blocks.append(_Block("heading", "Figures", 3))
            blocks += [_Block("figure", f) for f in plots.figures]
        elif plots is None and not matplotlib_available():
            notes.append(f"figures not drawn: matplotlib is not installed ({INSTALL_HINT})")
        if notes:
            blocks.append(_Block("notes", notes))
        blocks.append(_Block("heading", "Provenance", 3))
        blocks.append(_Block("kv", provenance_rows(s, r.attrs)))
        config = {"config": s.get("config"), "setting": s.get("setting"), "environment": s.get("environment")}
        blocks.append(_Block("details", ("Full configuration (JSON)", json.dumps(_clean(config), indent=2))))
    return blocks


# --- Markdown ------------------------------------------------------------------------------------------------

def _md(text: Any) -> str:
    """Text for Markdown outside code: HTML's special characters as entities. Most viewers render Markdown to
    HTML, and names and commands come from summary.json, which anyone can edit: a `<script>` there must show
    as text, never run."""
    return html.escape(str(text), quote=False)


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def _md_fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so nothing inside can close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_table(t: Table) -> list[str]:
    lines = [f"**{_md(t.title)}**", "", "| " + " | ".join(map(_md_cell, t.header)) + " |",
             "|" + "|".join(["---"] + ["---:" if t.numeric else "---"] * (len(t.header) - 1)) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"_{_md(t.note)}_"]
    return lines + [""]


def render_markdown(results: Sequence[LoadedResult], images: Sequence[Any] | None = None, *,
                    base_dir: str | Path | None = None) -> str:
    """A Markdown report; figures (a `PlotSet` per result) are linked relative to `base_dir` when given."""
    out: list[str] = []
    for b in _outline(results, images):
        if b.kind == "heading":
            out += [f"{'#' * b.level} {_md(b.payload)}", ""]
        elif b.kind == "para":
            out += [_md(b.payload), ""]
        elif b.kind == "table":
            out += _md_table(b.payload)
        elif b.kind == "figure":
            f = b.payload
            target = os.path.relpath(f.path, base_dir) if base_dir is not None else str(f.path)
            out += [f"![{_md(f.title)}]({Path(target).as_posix()})", "", f"_{_md(f.caption)}_", ""]
        elif b.kind == "notes":
            out += [f"> Note: {_md(n)}" for n in b.payload] + [""]
        elif b.kind == "kv":
            out += [f"- **{_md(k)}**: {_md(v)}" for k, v in b.payload] + [""]
        elif b.kind == "details":
            summary, text = b.payload
            # still valid JSON (< > & occur only inside its strings), and no viewer can see a tag in it
            text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            fence = _md_fence(text)
            out += ["<details>", f"<summary>{_md(summary)}</summary>", "", f"{fence}json", text, fence, "",
                    "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


# --- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #c0392b; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0 .3em; font-size: .9em; }
caption { text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child, table.text td, table.text th { text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
.note { color: #555; font-size: .85em; margin-top: 0; }
.skip { background: #fff8e1; border-left: 4px solid #e67e22; padding: .4em .8em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; max-width: 640px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; font-size: .9em; }
dt { font-weight: 600; }
dd { margin: 0; word-break: break-word; }
pre { background: #f6f8fa; padding: .8em; overflow: auto; font-size: .8em; }
"""


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    cls = "" if t.numeric else ' class="text"'
    return (f"<table{cls}><caption>{e(t.title)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(results: Sequence[LoadedResult], images: Sequence[Any] | None) -> str:
    """A single self-contained HTML page: inline CSS, figures embedded as base64 PNG data URIs."""
    from .plots import PIXELS

    e = html.escape
    parts: list[str] = []
    for b in _outline(results, images):
        if b.kind == "heading":
            parts.append(f"<h{b.level}>{e(b.payload)}</h{b.level}>")
        elif b.kind == "para":
            parts.append(f"<p>{e(b.payload)}</p>")
        elif b.kind == "table":
            parts.append(_html_table(b.payload))
        elif b.kind == "figure":
            f = b.payload
            parts.append(f'<figure><img src="{_data_uri(f.path)}" width="{PIXELS[0]}" height="{PIXELS[1]}" '
                         f'alt="{e(f.title)}"><figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>')
        elif b.kind == "notes":
            parts.append("".join(f'<p class="skip">Note: {e(n)}</p>' for n in b.payload))
        elif b.kind == "kv":
            parts.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in b.payload) + "</dl>")
        elif b.kind == "details":
            summary, text = b.payload
            parts.append(f"<details><summary>{e(summary)}</summary><pre>{e(text)}</pre></details>")
    title = e(TITLE + (f": {results[0].label}" if len(results) == 1 else f" ({len(results)} results)"))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"generator\" content=\"worstforget {e(_version())}\">\n<title>{title}</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


# --- JSON ----------------------------------------------------------------------------------------------------

def _clean(obj: Any) -> Any:
    """Plain JSON types, NaN/inf → None."""
    return to_jsonable(obj, nan_to_none=True)


def _series(values: Any) -> dict:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return {"agg_value": float(arr[-1]) if arr.size else None,
            "value_by_index": {str(t): {"score": float(v)} for t, v in enumerate(arr)}}


def _result_json(r: LoadedResult) -> dict:
    s = r.summary
    seeds = list(s.get("unlearn_seeds") or r.attrs.get("unlearn_seeds") or [])
    metrics: dict[str, Any] = {}
    for kind in set_kinds(s):
        for who, group in r.metrics.get(kind, {}).items():
            for name, arr in group.items():
                arr = np.atleast_2d(np.asarray(arr, dtype=np.float64))
                flat = arr[np.isfinite(arr)]
                by_index = {}
                for i in range(arr.shape[0]):
                    for j in range(arr.shape[1]):
                        seed = seeds[j] if j < len(seeds) else j
                        by_index[f"{i}/{seed}"] = {"score": float(arr[i, j]), "set": i, "seed": seed}
                metrics[f"{kind}/{who}/{name}"] = {
                    "agg_value": float(flat.mean()) if flat.size else None,
                    "std": float(flat.std(ddof=1)) if flat.size > 1 else 0.0, "n": int(flat.size),
                    "value_by_index": by_index}
    w = np.asarray(r.search["final_weights"], dtype=np.float64)
    units = set(np.asarray(r.forget_sets.get("worst_case_units", []), dtype=np.int64).tolist())
    metrics["search/final_weights"] = {
        "agg_value": float(w[list(units)].mean()) if units else None,
        "value_by_index": {str(i): {"weight": float(v), "in_worst_case": i in units} for i, v in enumerate(w)}}
    metrics["search/objective"] = _series(r.search["objective"])
    metrics["search/overlap_with_initial"] = _series(r.search["overlap_with_initial"])
    for key, trace in r.search.items():
        if key.startswith("overlap_with_") and key not in ("overlap_with_initial", "overlap_with_random"):
            metrics[f"search/{key}"] = _series(trace)
    for k, row in enumerate(np.asarray(r.search.get("overlap_with_random", np.zeros((0, 0))))):
        metrics[f"search/overlap_with_random/{k}"] = _series(row)
    metrics["search/heuristic_overlap"] = {"agg_value": s.get("heuristic_overlap"), "value_by_index": {}}
    if s.get("stability"):
        metrics["search/stability_jaccard"] = {"agg_value": s["stability"]["jaccard"], "value_by_index": {}}
    notes = [r.data_note] if r.data_note else []
    if r.training is not None:
        comp = class_composition(r.training.labels, r.forget_sets["worst_case"],
                                 len(r.training.class_names) if r.training.class_names else None)
        names = r.training.class_names
        metrics["class_composition"] = {
            "agg_value": float(0.5 * np.abs(comp["forget_share"] - comp["train_share"]).sum()),
            "value_by_index": {str(c): {"name": names[c] if names and c < len(names) else str(c),
                                        "train_count": int(comp["train_counts"][c]),
                                        "forget_count": int(comp["forget_counts"][c]),
                                        "train_share": float(comp["train_share"][c]),
                                        "forget_share": float(comp["forget_share"][c]),
                                        "ratio": float(comp["ratio"][c])} for c in range(len(comp["train_counts"]))}}
    for label, (fpr, tpr) in r.roc.items():
        metrics[f"roc/{label}"] = {"agg_value": roc_auc(fpr, tpr),
                                   "value_by_index": {str(i): {"fpr": float(a), "tpr": float(b)}
                                                      for i, (a, b) in enumerate(zip(fpr, tpr))}}
    provenance = {k: s.get(k) for k in ("dataset", "model", "method", "params", "solver", "objective", "granularity",
                                        "num_train", "forget_size", "seed", "unlearn_seeds", "code_version",
                                        "environment", "config")}
    provenance["schema_version"] = r.schema_version
    return {"folder": str(r.path), "label": r.label, "provenance": provenance, "metrics": metrics,
            "forget_sets": {"worst_case": np.asarray(r.forget_sets["worst_case"]).tolist()}, "notes": notes}


def render_json(results: Sequence[LoadedResult]) -> dict:
    """The report as a JSON-able dict (schema in the module docstring)."""
    labels = _labels(results)
    comparison = []
    for label, r in zip(labels, results):
        s = r.summary
        for method in evaluated_methods(s):
            comparison.append({"result": label, "method": method, "searched": method == s["method"],
                               **{k: gap_stat(s, k, method)[0] if k in s else None
                                  for k in ("worst_case", "heuristic", "random")}})
    return _clean({"schema": JSON_SCHEMA, "worstforget_version": _version(),
                   "results": [_result_json(r) for r in results], "comparison": comparison})
