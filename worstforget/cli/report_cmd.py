"""`report`: turn one or more `worstforget search` result folders into a report an auditor can hand over."""
from __future__ import annotations

from pathlib import Path

import click

from .app import cli, pass_app
from .options import out_option

EXTENSIONS = {"md": "md", "html": "html", "json": "json"}


def default_report_path(dirs: list[Path], fmt: str) -> Path:
    """DIR/report.<ext> for one folder; ./report.<ext> for several (no folder owns the comparison)."""
    name = f"report.{EXTENSIONS[fmt]}"
    return dirs[0] / name if len(dirs) == 1 else Path.cwd() / name


@cli.command("report")
@click.argument("dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR...")
@click.option("--format", "fmt", type=click.Choice(sorted(EXTENSIONS)), default="html", show_default=True,
              help="html: one self-contained file with embedded figures; md: Markdown with PNGs beside it; "
                   "json: OpenUnlearning-style agg_value/value_by_index document.")
@out_option("Report file [default: DIR/report.<ext> for one folder, ./report.<ext> for several].", folder=False)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the dataset files are, for class composition and example grids "
                   "[default: $WORSTFORGET_DATA or ~/.cache/worstforget/data].")
@pass_app
def report_command(app, dirs: tuple[Path, ...], fmt: str, out: str | None, data_dir: str | None) -> None:
    """Write a robustness report from search result folders (DIR is a `worstforget search --out` folder).

    \b
    Figures (PNG) go to <report name>_files/ beside the report; HTML also embeds them.
    Several folders give one report with a section per folder and a comparison table.
    """
    import json

    from ..core.errors import WorstforgetError
    from ..core.io import atomic_path, check_output_file, to_jsonable
    from ..report import load, plots, render

    folders = list(dirs)
    from ..report.generative import is_generative

    generative = [is_generative(d) for d in folders]
    if any(generative):
        if not all(generative) or len(folders) != 1 or fmt == "json":
            raise WorstforgetError("a generative (--task generation) result is reported alone, as md or html; "
                                   "pass its folder by itself")
        return _generative_report(folders[0], fmt, out)
    # validate everything before drawing or writing anything, so a bad folder leaves no partial output
    results = [load.load_result(d) for d in folders]
    if fmt == "html":
        plots.require_matplotlib("an HTML report")
    path = (Path(out) if out else default_report_path(folders, fmt)).expanduser()
    if path.is_dir():
        raise WorstforgetError(f"--out {path} is a folder; give a file name such as {path / ('report.' + fmt)}")
    check_output_file(path)
    for r in results:
        load.attach_training_data(r, data_dir=data_dir)

    images = None
    if fmt in ("md", "html") and plots.matplotlib_available():
        files = path.with_name(f"{path.stem}_files")
        images = [plots.make_plots(r, files, prefix=f"{i}-" if len(results) > 1 else "")
                  for i, r in enumerate(results, 1)]
    for r in results:
        if r.data_note:
            app.err.print(f"note: {r.path}: {r.data_note}", highlight=False, soft_wrap=True)

    if fmt == "md":
        text = render.render_markdown(results, images, base_dir=path.parent)
    elif fmt == "html":
        text = render.render_html(results, images)
    else:
        text = json.dumps(to_jsonable(render.render_json(results)), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    click.echo(str(path))


def _generative_report(folder: Path, fmt: str, out: str | None) -> None:
    """The report of a prompt-wise audit: its table, verdict and generation grids."""
    from ..core.errors import WorstforgetError
    from ..core.io import atomic_path, check_output_file
    from ..report import generative, plots

    summary, grids = generative.load_generative(folder)
    path = (Path(out) if out else default_report_path([folder], fmt)).expanduser()
    if path.is_dir():
        raise WorstforgetError(f"--out {path} is a folder; give a file name such as {path / ('report.' + fmt)}")
    check_output_file(path)
    if fmt == "html":
        plots.require_matplotlib("an HTML report")
    figures = []
    if plots.matplotlib_available():
        figures = generative.grid_figures(summary, grids, path.with_name(f"{path.stem}_files"))
    if fmt == "html":  # the tables as preformatted text, the figures embedded: one self-contained file
        import html

        table = generative.render_generative_markdown(summary, [])
        text = ("<!doctype html><meta charset='utf-8'><title>worstforget concept audit</title>"
                f"<pre style='white-space:pre-wrap'>{html.escape(table)}</pre>"
                + "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{_uri(p)}'>"
                          for t, p in figures))
    else:
        text = generative.render_generative_markdown(summary, figures, base_dir=path.parent)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    click.echo(str(path))


def _uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
