"""Reports of generative (prompt-wise) audits: the sets table, the verdict, and grids of generations — every
concept of the objects × styles grid, forgotten concepts framed — for the original, the method and Retrain,
on the searched set and on a random set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..audit.concepts import difference_text
from ..core.errors import WorstforgetError
from ..core.stats import fmt_agg


def is_generative(folder: str | Path) -> bool:
    path = Path(folder) / "summary.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("task") == "generation"
    except (OSError, ValueError):
        return False


def load_generative(folder: str | Path) -> tuple[dict, dict]:
    """(summary, grids name → (images, concept ids)) of a generative result folder."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
        grids = {}
        if (folder / "generations.npz").is_file():
            with np.load(folder / "generations.npz", allow_pickle=False) as f:
                names = {k.rsplit("__", 1)[0] for k in f.files}
                grids = {n: (f[f"{n}__images"], f[f"{n}__concepts"]) for n in names}
    except (OSError, ValueError, KeyError) as exc:
        raise WorstforgetError(f"{folder} is not a readable generative result ({exc}); rerun "
                               "`worstforget search --task generation --out` into it") from None
    return summary, grids


def mosaic(images: np.ndarray, concepts: np.ndarray, num_objects: int, num_styles: int) -> np.ndarray:
    """One image per concept laid out styles × objects (rows × columns): (styles·H, objects·W) for grey images,
    (styles·H, objects·W, 3) for colour ones (Stable Diffusion's)."""
    h, w = images.shape[-2:]
    colour = images.shape[1] == 3
    out = np.zeros((num_styles * h, num_objects * w, 3) if colour else (num_styles * h, num_objects * w))
    for img, c in zip(images, concepts):
        o, s = int(c) // num_styles, int(c) % num_styles
        out[s * h:(s + 1) * h, o * w:(o + 1) * w] = np.moveaxis(img, 0, -1) if colour else img[0]
    return out


def grid_figures(summary: dict, grids: dict, out_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per set kind: original, method and Retrain generations, forgotten concepts framed in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    data = summary["setting"]["dataset"]
    num_objects, num_styles = len(data["objects"]), len(data["styles"])
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for kind, label in (("worst_case", "searched (worst-case) concepts"), ("random", "a random concept set")):
        forget = summary["sets"][kind]["concepts"][0]
        panels = [("original", "original")] + [(f"{kind}__{who}", name) for who, name in
                                               (("method", summary["method"]), ("retrain", "Retrain"))]
        panels = [(k, n) for k, n in panels if k in grids]
        if not panels:
            continue
        fig = Figure(figsize=(3.2 * len(panels), 2.0), dpi=120, layout="constrained")
        FigureCanvasAgg(fig)
        for i, (key, name) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            images, concepts = grids[key]
            h, w = images.shape[-2:]
            ax.imshow(mosaic(images, concepts, num_objects, num_styles), cmap="gray", vmin=0, vmax=1)
            for c in forget:
                o, s = c // num_styles, c % num_styles
                ax.add_patch(Rectangle((o * w - 0.5, s * h - 0.5), w, h, fill=False, edgecolor="red", linewidth=1.5))
            ax.set_title(name, fontsize=8)
            ax.set_xticks([(o + 0.5) * w - 0.5 for o in range(num_objects)], data["objects"], fontsize=5)
            ax.set_yticks([(s + 0.5) * h - 0.5 for s in range(num_styles)], data["styles"], fontsize=5)
        fig.suptitle(f"Generations, {label} framed", fontsize=9)
        path = out_dir / f"generations-{kind}.png"
        fig.savefig(path, format="png")
        saved.append((f"Generations: {label}", path))
    return saved


def render_generative_markdown(summary: dict, figures: list[tuple[str, Path]], *,
                               base_dir: Path | None = None) -> str:
    lines = [f"# Concept unlearning audit: {summary['method']} on {summary['dataset']}", "",
             f"{summary['forget_size']} of {summary['num_concepts']} concepts; search: {summary['search']['solver']} "
             f"solver, {summary['search']['objective_name']} objective.", "",
             "Searched concepts: " + "; ".join(summary["sets"]["worst_case"]["prompts"][0]), "",
             "| set | model | UA ↑ | RA_in ↑ | RA_cross ↑ | FD ↓ | RTE (s) |", "|---|---|---|---|---|---|---|"]
    for kind, block in summary["sets"].items():
        for who, m in block["methods"].items():
            cells = " | ".join(fmt_agg(m[k], interval=False) for k in ("UA", "RA_in", "RA_cross", "FD", "RTE"))
            lines.append(f"| {kind} | {who} | {cells} |")
    lines += ["", "## Verdict", ""]
    for v in summary["verdict"]:
        d = v["difference"]
        lines.append(f"- {v['who']}: UA {fmt_agg(v['worst_case'])} on the searched concepts vs {fmt_agg(v['random'])} "
                     f"on random ones, difference {difference_text(d)}: {v['text']}.")
    lines += ["", summary.get("cost_line", ""), ""]
    for title, path in figures:
        rel = path.relative_to(base_dir) if base_dir else path
        lines += [f"## {title}", "", f"![{title}]({rel.as_posix()})", ""]
    return "\n".join(lines)
