"""The setting every audit runs in: the data, the original model and the caches (forget sets over its training
split live in `forget_sets`); `recipe.py` rebuilds it in a worker."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core.cache import ModelCache, RecordCache
from ..core.errors import ConfigError
from ..core.progress import Progress
from ..core.runtime import resolve_device
from ..datasets import Dataset, dataset_info, load_dataset
from ..training.loop import TrainConfig
from ..training.original import ModelSpec, obtain_original
from .recipe import SettingRecipe

MIA_RESAMPLES = 3  # draws of the SVC attacker's training sample per evaluation (library and CLI alike)


@dataclass
class Setting:
    """A dataset, the original model trained on it, and the caches every unit uses.

    A setting built by `SettingRecipe.build` (recipe.py) also carries a `recipe` attribute that workers
    rebuild it from. It is deliberately not a field: `dataclasses.replace` must drop it, because a changed
    setting (other data, another model) can no longer be rebuilt from the recipe.
    """

    data: Dataset
    spec: ModelSpec
    original: nn.Module
    original_key: str
    records: RecordCache
    train_seconds: float | None = None  # measured when the original was trained; None = unknown (checkpoint)
    original_source: str = "trained"  # trained | cache | checkpoint
    mia_seed: int = 0
    mia_resamples: int = MIA_RESAMPLES

    def references(self, num_models: int = 16, *, seed: int = 0, progress: Progress | None = None):
        """Reference models of this setting (training/reference.py `ReferenceStats`): `num_models` models of the
        original's recipe on random halves of the training split, trained on first use, kept in the setting's
        cache folder and in memory (keyed by recipe, data, models and seed)."""
        from ..core.cache import ArrayCache
        from ..training.reference import reference_key, reference_statistics

        memo = self.__dict__.setdefault("_references", {})  # not a field: `replace` starts a fresh memo
        key = reference_key(self.spec, self.data, num_models=num_models, seed=seed)
        if key not in memo:
            cache = ArrayCache(self.records.root, enabled=self.records.enabled)
            memo[key] = reference_statistics(self.spec, self.data, num_models=num_models, seed=seed,
                                             progress=progress, cache=cache)
        return memo[key]

    def describe(self) -> dict:
        return {"dataset": self.data.describe(), "model": self.spec.to_dict(), "original_key": self.original_key,
                "original_source": self.original_source, "original_train_seconds": self.train_seconds}

    def header(self) -> dict:
        """The fields every result starts with."""
        return {"dataset": self.data.name, "model": self.spec.name, "num_train": self.data.num_train}

    def provenance(self, config: dict | None = None) -> dict:
        """What produced a result: its configuration, the setting, the code version and the environment."""
        from ..core.provenance import code_version, environment

        return {"config": {**(config or {}), "model": self.spec.to_dict(), "mia_resamples": self.mia_resamples,
                           "mia_seed": self.mia_seed},
                "setting": self.describe(), "code_version": code_version(), "environment": environment()}


def prepare_setting(*, dataset: str = "digits", model: str | None = None, norm: str | None = None,
                    data_dir: str | None = None, download: bool = False, device: str = "auto",
                    checkpoint: str | None = None, train_overrides: dict | None = None, seed: int = 0,
                    split_seed: int = 0, cache: bool = True, cache_dir: str | None = None,
                    mia_resamples: int = MIA_RESAMPLES, recipe: str | None = None,
                    train_subset: int | None = None, progress: Progress | None = None) -> Setting:
    """Load the data and obtain the original model (cached training, or a user checkpoint)."""
    if mia_resamples < 1:
        raise ConfigError("--mia-resamples must be at least 1")
    dev = resolve_device(device)
    info = dataset_info(dataset)
    data = load_dataset(dataset, data_dir=data_dir, download=download, split_seed=split_seed, device=str(dev),
                        train_subset=train_subset)
    from ..training.recipes import apply_recipe  # a recipe replaces the dataset's defaults; explicit options win

    train_cfg = apply_recipe(TrainConfig.from_dict(info.default_train), recipe).with_updates(
        **(train_overrides or {})).validate()
    # the cache folder travels with the recipe: methods that keep their own artefacts (sisa, arcane, rum) use it
    spec = ModelSpec(name=model or info.default_model, train=train_cfg, seed=seed, norm=norm,
                     cache_dir=str(cache_dir) if cache_dir else None)
    original = obtain_original(spec, data, checkpoint=checkpoint, progress=progress,
                               cache=ModelCache(cache_dir, enabled=cache))
    return Setting(data=data, spec=spec, original=original.model, original_key=original.key,
                   records=RecordCache(cache_dir, enabled=cache), train_seconds=original.train_seconds,
                   original_source=original.source, mia_resamples=mia_resamples)


__all__ = ["Setting", "prepare_setting", "MIA_RESAMPLES", "SettingRecipe"]
