"""Named training recipes: a registry of TrainConfig overrides (`--recipe paper|fast`).

A recipe replaces the dataset's default training hyper-parameters; options given explicitly
(`--epochs`, `--lr`, ...) still win over it. Recipes change what is trained, so they reach the cache
key through the TrainConfig they produce (the recipe's name itself is not part of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.registry import Registry
from .loop import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """TrainConfig overrides and the one line `worstforget list` shows for them."""

    overrides: dict = field(default_factory=dict)
    __doc__: str = ""


RECIPES: Registry[Recipe] = Registry("training recipe")

RECIPES.register("paper")(Recipe(
    {"epochs": 182, "lr": 0.1, "batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step",
     "nesterov": False, "label_smoothing": 0.0},
    "the paper's CIFAR recipe: 182 epochs, SGD lr 0.1 ×0.1 at epochs 91 and 136, batch 256, wd 5e-4"))

RECIPES.register("fast")(Recipe(
    {"epochs": 30, "lr": 0.4, "batch_size": 512, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle",
     "nesterov": True, "label_smoothing": 0.1},
    "30 epochs for CIFAR ResNet-18: one-cycle lr 0.4 (20% warm-up, linear decay), batch 512, Nesterov, "
    "label smoothing 0.1"))


def apply_recipe(cfg: TrainConfig, name: str | None) -> TrainConfig:
    """`cfg` with the recipe's overrides applied (None: `cfg` unchanged); validated."""
    if name is None:
        return cfg.validate()
    return cfg.with_updates(**RECIPES.get(name).overrides).validate()


def recipe_config(name: str) -> TrainConfig:
    """The TrainConfig of a recipe on top of the library defaults."""
    return apply_recipe(TrainConfig(), name)
