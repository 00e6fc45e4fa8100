"""One registry mechanism for every extension kind (datasets, models, methods, solvers, attacks).

A registry maps a short lowercase name to a factory. Aliases resolve to the same entry, duplicates are
refused, and an unknown name raises a ConfigError that suggests the closest names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → factory map with aliases and did-you-mean errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = (), overwrite: bool = False) -> Callable[[T], T]:
        def add(obj: T) -> T:
            for key in (name, *aliases):
                if not overwrite and (key in self._entries or key in self._aliases):
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return add

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        key = name.strip().lower().replace("-", "_")
        key = self._aliases.get(key, key)
        if key in self._entries:
            return key
        near = difflib.get_close_matches(key, [*self._entries, *self._aliases], n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The registered names in the order they were registered."""
        return list(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, target in self._aliases.items() if target == name)

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except ConfigError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> tuple[dict, dict]:
        """State for tests that register temporary entries (restore with `restore`)."""
        return dict(self._entries), dict(self._aliases)

    def restore(self, state: tuple[dict, dict]) -> None:
        self._entries, self._aliases = dict(state[0]), dict(state[1])


def describe(obj: object) -> str:
    """First line of an object's docstring, for `worstforget list`."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
