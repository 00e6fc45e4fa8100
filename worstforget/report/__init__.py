"""Robustness reports from `worstforget search` result folders.

`load_result(DIR)` reads and validates a folder (summary.json + result.h5), `tables` builds the tables as
plain rows, `plots` draws the figures (matplotlib, optional), and `render` turns one or more results into
Markdown, self-contained HTML or an OpenUnlearning-style JSON document. `worstforget report DIR...` is the
command-line front end.
"""
from .load import LoadedResult, load_result
from .render import render_html, render_json, render_markdown

__all__ = ["LoadedResult", "load_result", "render_markdown", "render_html", "render_json"]
