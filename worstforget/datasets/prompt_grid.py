"""Objects × styles prompts with one owner of the index ↔ (object, style) ↔ prompt map.

Concept id = object · num_styles + style (object-major), the order of `prompts`. Everything that turns names into
ids — the image folder reader, per-pair weights, reports — goes through `index`/`indices`, and everything that
turns ids back into names through `pair`, so a weight can never land on a transposed prompt. (The reference
code numbered its image combinations style-major but listed its prompts object-major: each prompt's weight
gradient came from another pair's images.)
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ..core.errors import ConfigError

# UnlearnCanvas's unlearning prompt (the paper's select-pair.py): objects and styles are inserted verbatim.
UNLEARNCANVAS_TEMPLATE = "A painting of a {object} in {style} style."


def _check_names(kind: str, names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise ConfigError(f"the prompt grid needs at least one {kind}; give a non-empty list of {kind}s")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ConfigError(f"every {kind} must be a non-empty string, got {bad[0]!r}; fix the {kind} list")
    seen: set[str] = set()
    dup = [n for n in names if n in seen or seen.add(n)]
    if dup:
        raise ConfigError(f"{kind} {dup[0]!r} is listed twice; each {kind} must appear once")
    return names


def _check_template(template: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"prompt template {template!r} is not a format string ({exc}); use {{object}} and "
                          "{style} as its only fields") from None
    if fields != {"object", "style"}:
        raise ConfigError(f"prompt template {template!r} has fields {sorted(fields)}; it must use exactly "
                          "{object} and {style}")
    return template


@dataclass(frozen=True)
class PromptGrid:
    """Every (object, style) pair and its prompt, object-major."""

    objects: tuple[str, ...]
    styles: tuple[str, ...]
    template: str = UNLEARNCANVAS_TEMPLATE

    def __post_init__(self):
        object.__setattr__(self, "objects", _check_names("object", self.objects))
        object.__setattr__(self, "styles", _check_names("style", self.styles))
        object.__setattr__(self, "template", _check_template(self.template))

    @property
    def num_concepts(self) -> int:
        return len(self.objects) * len(self.styles)

    def index(self, obj: str, style: str) -> int:
        """The concept id of (object, style), by name."""
        try:
            o = self.objects.index(obj)
        except ValueError:
            raise ConfigError(f"unknown object {obj!r}; the grid's objects are {', '.join(self.objects)}") from None
        try:
            s = self.styles.index(style)
        except ValueError:
            raise ConfigError(f"unknown style {style!r}; the grid's styles are {', '.join(self.styles)}") from None
        return o * len(self.styles) + s

    def indices(self, pairs: Iterable[tuple[str, str]]) -> list[int]:
        """Concept ids of (object, style) pairs, in the order given."""
        return [self.index(o, s) for o, s in pairs]

    def pair(self, concept: int) -> tuple[str, str]:
        """(object, style) of a concept id."""
        concept = int(concept)
        if not 0 <= concept < self.num_concepts:
            raise ConfigError(f"concept id {concept} is outside the grid's 0..{self.num_concepts - 1}")
        return self.objects[concept // len(self.styles)], self.styles[concept % len(self.styles)]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(object, style) of every concept id, in id order."""
        return [(o, s) for o in self.objects for s in self.styles]

    def prompt(self, concept: int) -> str:
        obj, style = self.pair(concept)
        return self.template.format(object=obj, style=style)

    @property
    def prompts(self) -> list[str]:
        """One prompt per concept id (the `concepts` list of a concept model)."""
        return [self.template.format(object=o, style=s) for o, s in self.pairs]

    def weights_by_pair(self, weights: Sequence[float]) -> dict[tuple[str, str], float]:
        """Per-concept values (e.g. the search's forget weights, indexed by concept id) keyed by their pair."""
        values = [float(w) for w in weights]
        if len(values) != self.num_concepts:
            raise ConfigError(f"{len(values)} weights for a grid of {self.num_concepts} concepts")
        return {self.pair(i): w for i, w in enumerate(values)}

    def weights_from_pairs(self, by_pair: Mapping[tuple[str, str], float]) -> list[float]:
        """The inverse of `weights_by_pair`: a value for every pair → a list indexed by concept id."""
        out = [float("nan")] * self.num_concepts
        for (obj, style), value in by_pair.items():
            out[self.index(obj, style)] = float(value)
        missing = [self.pair(i) for i, v in enumerate(out) if v != v]
        if missing:
            raise ConfigError(f"no value for {len(missing)} pair(s), first {missing[0]}; give one for every pair")
        return out

    def describe(self) -> dict:
        return {"objects": list(self.objects), "styles": list(self.styles), "template": self.template,
                "order": "object-major: id = object * num_styles + style"}
