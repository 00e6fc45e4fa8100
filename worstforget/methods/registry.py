"""The unlearning-method registry (one instance of the project's Registry)."""
from __future__ import annotations

from ..core.registry import Registry

METHODS: Registry[type] = Registry("unlearning method")


def register_method(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register an UnlearningMethod subclass and record its name on it."""

    def add(cls: type) -> type:
        cls.name = name
        return METHODS.register(name, aliases=aliases)(cls)

    return add
