"""The report's figures, drawn with matplotlib's Agg canvas and saved as PNG files.

matplotlib is an optional extra (`pip install 'worstforget[plots]'`) and is imported only inside the
functions here, so the rest of the package — and Markdown/JSON reports — work without it. Figures are
built on `matplotlib.figure.Figure` with an explicit `FigureCanvasAgg` rather than through pyplot, so
drawing never touches the caller's global backend or pyplot state.

Every figure is FIGSIZE inches at DPI dots per inch, saved without tight cropping, hence exactly
PIXELS = (640, 400) pixels: reports can lay them out, and tests can check them.

`make_plots(result, folder)` draws what the result supports and returns the saved figures plus notes for
the figures it had to skip (no labels, not images, no attack results).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import WorstforgetError
from .tables import (
    KIND_LABELS,
    class_composition,
    evaluated_methods,
    gap_stat,
    roc_auc,
    set_kinds,
)

FIGSIZE = (6.4, 4.0)  # inches
DPI = 100
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # (width, height) of every saved PNG
KIND_COLORS = {"worst_case": "#c0392b", "heuristic": "#e67e22", "lowest_loss": "#d35400", "memorization": "#8e44ad",
               "exposure": "#16a085", "random": "#2980b9", "given": "#7f8c8d"}
INSTALL_HINT = "pip install 'worstforget[plots]'"


@dataclass
class SavedFigure:
    key: str  # short identifier, also the file name stem
    title: str
    caption: str
    path: Path


@dataclass
class PlotSet:
    """The figures drawn for one result, and one line per figure that was skipped and why."""

    figures: list[SavedFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib(purpose: str = "this report") -> None:
    """Raise a one-line WorstforgetError naming the extra to install when matplotlib is missing."""
    if not matplotlib_available():
        raise WorstforgetError(f"{purpose} needs matplotlib for its figures, which is not installed; "
                               f"run {INSTALL_HINT} (or choose --format md or json)")


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from ..core.io import atomic_path

    with atomic_path(path) as tmp:
        # no bbox_inches="tight": it would crop to content and break the fixed pixel size
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# --- individual figures (each takes an LoadedResult and a fresh Figure) ----------------------------------------

def plot_objective(result, fig) -> None:
    obj = np.asarray(result.search["objective"], dtype=float)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(obj) + 1), obj, marker="o", color=KIND_COLORS["worst_case"])
    ax.set_xlabel("outer step")
    ax.set_ylabel(f"upper objective ({result.summary['objective']})")
    ax.set_title("Upper-level objective per outer step")
    ax.grid(alpha=0.3)
    if len(obj) <= 20:
        ax.set_xticks(np.arange(1, len(obj) + 1))


def plot_weights(result, fig) -> None:
    w = np.asarray(result.search["final_weights"], dtype=float)
    units = np.asarray(result.forget_sets.get("worst_case_units", []), dtype=np.int64)
    ax = fig.add_subplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    top = float(w.max()) if w.size else 1.0
    # the range follows the data: weights often stay far below 1, and a fixed [0, 1] axis squeezes them into a sliver
    ax.hist(w, bins=40, range=(0.0, top * 1.02 if top > 0 else 1.0), color="#7f8c8d", edgecolor="white")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    if units.size:
        cut = float(w[units].min())
        ax.axvline(cut, color=KIND_COLORS["worst_case"], linestyle="--", label=f"worst-case cut-off ({cut:.3g})")
        ax.legend(loc="upper center")
    unit = "class" if result.summary.get("granularity") == "class" else "training sample"
    ax.set_xlabel(f"final search weight per {unit}")
    ax.set_ylabel("count (log scale)")
    ax.set_title("Final forget weights")


def plot_class_composition(result, fig) -> None:
    t = result.training
    comp = class_composition(t.labels, result.forget_sets["worst_case"], len(t.class_names) if t.class_names else None)
    k = len(comp["train_counts"])
    x = np.arange(k)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, 100 * comp["train_share"], width=0.4, label="training split", color="#95a5a6")
    ax.bar(x + 0.2, 100 * comp["forget_share"], width=0.4, label="worst-case set", color=KIND_COLORS["worst_case"])
    if k <= 30:
        names = list(t.class_names) if t.class_names and len(t.class_names) == k else [str(c) for c in range(k)]
        ax.set_xticks(x, names, rotation=45 if max(map(len, names)) > 3 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("share of the set (%)")
    ax.set_title("Class composition: worst-case set vs training data")
    ax.legend()


def plot_gaps(result, fig) -> None:
    s = result.summary
    methods, kinds = evaluated_methods(s), set_kinds(s)
    ax = fig.add_subplot()
    width = 0.8 / max(len(kinds), 1)
    x = np.arange(len(methods))
    for j, kind in enumerate(kinds):
        stats = [gap_stat(s, kind, m) for m in methods]
        means = [st[0] for st in stats]
        errs = [st[1] if st[2] > 1 else 0.0 for st in stats]
        ax.bar(x + (j - (len(kinds) - 1) / 2) * width, means, width=width, yerr=errs, capsize=4,
               label=KIND_LABELS.get(kind, kind), color=KIND_COLORS.get(kind))
    ax.set_xticks(x, methods)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("Avg. Gap to Retrain (lower = closer)")
    ax.set_title("Avg. Gap per method: worst-case vs random sets (± std)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)


def plot_overlaps(result, fig) -> None:
    srch = result.search
    initial = np.asarray(srch["overlap_with_initial"], dtype=float)
    steps = np.arange(1, len(initial) + 1)
    ax = fig.add_subplot()
    ax.plot(steps, 100 * initial, marker="o", label="initial set", color="#8e44ad")
    rnd = np.asarray(srch.get("overlap_with_random", np.zeros((0, 0))), dtype=float)
    if rnd.size:
        ax.plot(steps, 100 * rnd.mean(axis=0), marker="s", label=f"random sets (mean of {len(rnd)})",
                color=KIND_COLORS["random"])
        ax.fill_between(steps, 100 * rnd.min(axis=0), 100 * rnd.max(axis=0), alpha=0.2, color=KIND_COLORS["random"])
    for key, trace in srch.items():
        kind = key.removeprefix("overlap_with_")
        if key.startswith("overlap_with_") and kind not in ("initial", "random"):
            ax.plot(steps, 100 * np.asarray(trace, dtype=float), marker="^", label=f"{kind} set",
                    color=KIND_COLORS.get(kind))
    ax.set_ylim(0, 100)
    ax.set_xlabel("outer step")
    ax.set_ylabel("overlap of the current set (%)")
    ax.set_title("Overlap with the initial, random and baseline sets")
    ax.legend()
    ax.grid(alpha=0.3)


def plot_hardest(result, fig) -> None:
    t = result.training
    images, idx = t.hardest_images, t.hardest
    cols = 8
    rows = max(1, int(np.ceil(len(idx) / cols)))
    weights = np.asarray(result.search["final_weights"], dtype=float)
    axes = fig.subplots(rows, cols, squeeze=False)
    for a, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if a >= len(idx):
            continue
        img = images[a].astype(np.float64)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)  # stored inputs are standardised
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", interpolation="nearest")
        else:
            ax.imshow(np.transpose(img[:3], (1, 2, 0)), interpolation="nearest")
        y = int(t.labels[idx[a]])
        name = t.class_names[y] if t.class_names and y < len(t.class_names) else str(y)
        w = weights[idx[a]] if result.summary.get("granularity") != "class" else weights[y]
        ax.set_title(f"#{idx[a]} y={name}\nw={w:.2f}", fontsize=7)
    fig.suptitle("Hardest examples: top-weighted members of the worst-case set")


def plot_roc(result, fig) -> None:
    ax = fig.add_subplot()
    for label, (fpr, tpr) in result.roc.items():
        order = np.argsort(fpr, kind="stable")
        ax.plot(fpr[order], tpr[order], label=f"{label} (AUC {roc_auc(fpr, tpr):.2f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Membership-inference ROC (evaluation.json)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


# --- driver --------------------------------------------------------------------------------------------------

def make_plots(result, out_dir: str | Path, *, prefix: str = "") -> PlotSet:
    """Draw every figure `result` supports into `out_dir` as `<prefix><key>.png`; return them and skip notes."""
    require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = result.summary
    plan: list[tuple[str, str, str, Callable[[Any, Any], None]]] = [
        ("objective", "Upper objective per outer step",
         f"The search minimises the {s['objective']} after unlearning plus γ‖w‖²; a flat curve means it converged.",
         plot_objective),
        ("weights", "Histogram of final weights",
         "Weights live in [0, 1] and sum to the forget-set size; the worst-case set is the top-m (dashed cut-off).",
         plot_weights),
        ("gaps", "Avg. Gap per method",
         "Bars are means, error bars one standard deviation over seeds (worst-case) or sets × seeds (random).",
         plot_gaps),
        ("overlaps", "Overlap per outer step",
         "Share of the current set that is also in the start set, in each random set and in the heuristic set.",
         plot_overlaps),
    ]
    notes: list[str] = []
    if result.training is not None:
        plan.insert(2, ("classes", "Class composition",
                        "Share of each class in the worst-case set against its share in the training split.",
                        plot_class_composition))
        if result.training.hardest_images is not None and len(result.training.hardest):
            plan.append(("hardest", "Hardest examples",
                         "The worst-case members with the largest final weight (ties by index), "
                         "min–max scaled per image.",
                         plot_hardest))
        else:
            notes.append(f"example grid skipped: {s['dataset']} holds flat features, not images")
    elif result.data_note:
        notes.append(result.data_note)
    if result.roc:
        plan.append(("roc", "Membership-inference ROC", "Curves read from evaluation.json in the result folder.",
                     plot_roc))
    figures = []
    for key, title, caption, draw in plan:
        fig = _new_figure()
        draw(result, fig)
        figures.append(SavedFigure(key, title, caption, _save(fig, out / f"{prefix}{key}.png")))
    return PlotSet(figures, notes)
