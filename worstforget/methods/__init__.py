"""Unlearning methods: one registry, each method written once against per-sample forget weights."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..core.errors import ConfigError
from . import (  # noqa: F401  (imported to register the built-in methods)
    arcane,
    ascent,
    bad_teacher,
    exact,
    finetune,
    fisher,
    influence,
    puma,
    relabel,
    rum,
    scrub,
    sisa,
    ssd,
    unsir,
)
from .base import Batch, Context, Phase, Stepper, UnlearningMethod, run_loop, split_param
from .plugin_load import load_plugin
from .registry import METHODS, register_method

__all__ = ["METHODS", "register_method", "UnlearningMethod", "Phase", "Batch", "Context", "Stepper", "run_loop",
           "make_method", "parse_params", "load_plugin"]


def make_method(name: str, params: dict[str, Any] | None = None) -> UnlearningMethod:
    """Instantiate a registered method with hyper-parameters, rejecting unknown keys."""
    cls = METHODS.get(name)
    params = dict(params or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{cls.name} has no hyper-parameter {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    method = cls(**params)
    method.check_hyperparameters()
    return method


def parse_params(name: str, pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse ['lr=0.01', 'epochs=5'] against the method's field types (typed, unknown keys rejected)."""
    cls = METHODS.get(name)
    types = {f.name: f.type for f in fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, raw, value = split_param(pair, types, cls.name)
        expected = str(types[key])
        if expected.startswith("tuple"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"--param {key}={raw} for {cls.name}: expected a tuple such as (3, 5)")
            out[key] = tuple(value)
            continue
        if "float" in expected and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if ("int" in expected and "float" not in expected and not isinstance(value, int)) or \
                ("float" in expected and not isinstance(value, (int, float))) or \
                (expected.startswith("bool") and not isinstance(value, bool)) or \
                (expected.startswith("str") and not isinstance(value, str)):
            if not (value is None and "None" in expected):
                raise ConfigError(f"--param {key}={raw} for {cls.name}: expected {expected}")
        out[key] = value
    return out
