"""The package's import graph runs one way: every import (module level or inside a function) goes from a
layer to the same layer or a lower one.

Layers, lowest first: core → datasets → training → setting → {methods, scoring, search, forget_sets} →
audit → report → cli. The package's `__init__` (the façade) and `__main__` may import anything. The
four peers of the middle layer may import each other only along the arrows in PEER_ARROWS (as they do
today: the search runs methods, the metrics read forget-set masks), which have no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "worstforget"
LAYERS = {"core": 0, "datasets": 1, "training": 2, "setting": 3, "methods": 4, "scoring": 4, "search": 4,
          "forget_sets": 4, "audit": 5, "report": 6, "cli": 7}
# imports between peers of one layer: the search runs methods; the metrics read forget-set masks; nothing else
PEER_ARROWS = {("search", "methods"), ("scoring", "forget_sets")}


def _part(module: str) -> str | None:
    """The top-level part of the package a dotted module name (worstforget.x.y) belongs to; "__init__" for
    the package itself (`from .. import __version__`)."""
    parts = module.split(".")
    if parts[0] != "worstforget":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "__init__"


def imports(path: Path) -> set[str]:
    """Every worstforget module `path` imports, as dotted names (relative imports resolved)."""
    here = list(path.relative_to(PACKAGE.parent).parts[:-1])  # the package the file is in
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("worstforget"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                module = ".".join([*base, *([node.module] if node.module else [])])
                found.update(f"{module}.{a.name}" if not node.module else module for a in node.names)
            elif node.module and node.module.startswith("worstforget"):
                found.add(node.module)
    return found


def arrows() -> set[tuple[str, str, str]]:
    """(importing part, imported part, file) for every import across parts of the package."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name in ("__init__.py", "__main__.py"):
            continue  # the façade, and `python -m worstforget` (the CLI's entry point)
        src = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for module in imports(path):
            dst = _part(module)
            if dst and src and dst != src and dst != "__init__":
                out.add((src, dst, str(path.relative_to(PACKAGE.parent))))
    return out


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__"))
             and p.name not in ("__init__.py", "__main__.py")}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_no_import_runs_up_the_layers():
    upward = sorted(f"{file}: {src} → {dst}" for src, dst, file in arrows()
                    if dst in LAYERS and src in LAYERS and LAYERS[dst] > LAYERS[src])
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_peers_import_each_other_only_along_the_listed_arrows():
    sideways = sorted(f"{file}: {src} → {dst}" for src, dst, file in arrows()
                      if src in LAYERS and dst in LAYERS and LAYERS[dst] == LAYERS[src]
                      and (src, dst) not in PEER_ARROWS)
    assert not sideways, "imports between peers outside PEER_ARROWS:\n" + "\n".join(sideways)


def test_the_peer_arrows_have_no_cycle():
    reach = {a: {b for x, b in PEER_ARROWS if x == a} for a, _ in PEER_ARROWS}
    for _ in range(len(LAYERS)):
        reach = {a: bs | {c for b in bs for c in reach.get(b, ())} for a, bs in reach.items()}
    assert all(a not in bs for a, bs in reach.items())


def test_the_parser_sees_relative_and_lazy_imports():
    found = imports(PACKAGE / "setting" / "recipe.py")
    assert "worstforget.core.errors" in found and "worstforget.training.accel" in found  # one inside a method
