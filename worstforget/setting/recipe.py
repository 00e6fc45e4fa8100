"""The recipe of a setting: what a worker process needs to rebuild the very same Setting (the executors'
`Rebuildable`, core/executor/base.py) — from the driver's files (a worker that shares them), or from the
driver's payload (`Portable`: a worker on a machine without them)."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import WorstforgetError
from ..core.progress import Progress
from ..core.runtime import cache_root

if TYPE_CHECKING:
    from . import Setting


# What else a worker restores before it rebuilds a setting (the plug-ins the driver loaded): a higher layer
# registers a capture function, which returns ("module:function", state) or None; the worker imports the
# function and calls it with the state.
WORKER_STATE: list[Callable[[], "tuple[str, Any] | None"]] = []


def carry_to_workers(capture: Callable[[], "tuple[str, Any] | None"]) -> Callable:
    """Register `capture` (see WORKER_STATE); returns it, so it works as a decorator."""
    if capture not in WORKER_STATE:
        WORKER_STATE.append(capture)
    return capture


@dataclass(frozen=True)
class SettingRecipe:
    """What a worker needs to rebuild a Setting: `prepare_setting`'s keyword arguments (paths made absolute,
    the cache folder explicit), the SVC attacker's seed, the accelerator switches, and what the worker restores
    first (`WORKER_STATE`: the plug-ins loaded in the driver). `original_key` (filled by `build`) lets a worker check it
    rebuilt the very same original model."""

    prepare: dict
    mia_seed: int = 0
    accel: dict = field(default_factory=dict)
    restore: tuple[tuple[str, Any], ...] = ()  # ("module:function", state) called in a worker before building
    original_key: str = ""

    @classmethod
    def create(cls, **prepare: Any) -> "SettingRecipe":
        """A recipe from `prepare_setting`'s keyword arguments, taken down to what a worker can reproduce:
        the cache and data folders and every file path absolute, plug-ins and accelerator switches as now."""
        from ..datasets import split_spec
        from ..training.accel import current_accel

        prepare = {k: v for k, v in prepare.items() if k != "progress"}
        prepare["cache_dir"] = os.path.abspath(prepare.get("cache_dir") or cache_root())
        if prepare.get("data_dir") or os.environ.get("WORSTFORGET_DATA"):
            prepare["data_dir"] = os.path.abspath(prepare.get("data_dir") or os.environ["WORSTFORGET_DATA"])
        if prepare.get("checkpoint"):
            prepare["checkpoint"] = os.path.abspath(prepare["checkpoint"])
        name, source = split_spec(str(prepare.get("dataset", "digits")))
        if source:  # a file of the user's arrays (npz:PATH, h5:PATH): absolute, as a worker elsewhere reads it
            prepare["dataset"] = f"{name}:{os.path.abspath(source)}"
        restore = tuple(state for state in (capture() for capture in WORKER_STATE) if state is not None)
        return cls(prepare=prepare, accel=current_accel().to_dict(), restore=restore)

    @property
    def key(self) -> str:
        text = json.dumps({"prepare": self.prepare, "mia_seed": self.mia_seed, "accel": self.accel,
                           "restore": self.restore}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def device(self) -> str:
        return str(self.prepare.get("device", ""))

    def on_device(self, device: str) -> "SettingRecipe":
        return replace(self, prepare={**self.prepare, "device": device})

    def scope(self) -> AbstractContextManager:
        """The driver's accelerator switches, around each task in a worker."""
        from ..training.accel import Accel, use_accel

        return use_accel(Accel(**self.accel))

    def build(self, progress: Progress | None = None) -> "Setting":
        """`prepare_setting` with these arguments; the setting carries the recipe (its `recipe` attribute)."""
        from . import prepare_setting

        setting = prepare_setting(**self.prepare, progress=progress)
        setting.mia_seed = self.mia_seed
        # workers run on the driver's device (a Ray task's own GPU is `cuda` there, see RayExecutor)
        done = replace(self, prepare={**self.prepare, "device": str(setting.data.device)},
                       original_key=setting.original_key)
        setting.recipe = done
        return setting

    # --- a worker without the driver's files (Ray's --ray-cache driver) -----------------------------------

    @property
    def cache_folder(self) -> str:
        return str(self.prepare["cache_dir"])

    def payload_key(self, setting: "Setting") -> str:
        return f"{self.key}-{setting.original_key}"

    def payload(self, setting: "Setting") -> dict:
        """What a worker that sees none of the driver's files needs: the data and the original's weights (on the
        CPU), the setting's fields, and the plug-ins' sources (each carried state's `detached` form)."""
        restore = []
        for target, state in self.restore:
            module, _, name = target.partition(":")
            detached = getattr(getattr(importlib.import_module(module), name), "detached", None)
            restore.append((target, detached(state) if detached else state))
        return {"data": setting.data.to("cpu"), "spec": replace(setting.spec, cache_dir=None),
                "original": {k: v.detach().cpu() for k, v in setting.original.state_dict().items()},
                "original_key": setting.original_key, "train_seconds": setting.train_seconds,
                "original_source": setting.original_source, "mia_seed": setting.mia_seed,
                "mia_resamples": setting.mia_resamples, "caching": setting.records.enabled, "restore": tuple(restore)}

    def rebuild_detached(self, payload: dict, folder: str) -> "Setting":
        """The driver's setting in a worker from its `payload`, caching into the worker's own `folder`."""
        from ..core.cache import RecordCache
        from ..core.runtime import resolve_device
        from . import Setting

        for target, state in payload["restore"]:
            module, _, name = target.partition(":")
            getattr(importlib.import_module(module), name)(state)
        data = payload["data"].to(resolve_device(self.device))
        spec = replace(payload["spec"], cache_dir=folder)  # sisa/arcane/rum keep their artefacts there
        original = spec.build(data)
        original.load_state_dict(payload["original"])
        setting = Setting(data=data, spec=spec, original=original.eval(), original_key=payload["original_key"],
                          records=RecordCache(folder, enabled=payload["caching"]),
                          train_seconds=payload["train_seconds"], original_source=payload["original_source"],
                          mia_seed=payload["mia_seed"], mia_resamples=payload["mia_resamples"])
        setting.recipe = self
        return setting

    def rebuild(self) -> "Setting":
        """The setting in a worker: what the driver carried first (its plug-ins), then `build`, checked against
        the driver's."""
        for target, state in self.restore:
            module, _, name = target.partition(":")
            getattr(importlib.import_module(module), name)(state)
        setting = replace(self, original_key="").build()
        if self.original_key and setting.original_key != self.original_key:
            raise WorstforgetError(f"a worker rebuilt another original model (key {setting.original_key}, the driver's "
                                   f"{self.original_key}); workers need the same data, code and cache folder")
        setting.recipe = self
        return setting


__all__ = ["SettingRecipe", "WORKER_STATE", "carry_to_workers"]
