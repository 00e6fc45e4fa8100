"""Executors: run the independent tasks of an audit — units, per-model statistics, searches — one after
another in this process (`serial`, base.py), on a local process pool (`process`, pool.py) or on a Ray
cluster (`ray`, ray.py), and hand their results back in submission order."""
from __future__ import annotations

from typing import Any

from ..errors import OptionError
from ..registry import Registry
from .base import DEFAULT_RETRIES, Call, Executor, NotRebuildableError, Outcome, Portable, Rebuildable, recipe_of
from .pool import PoolExecutor, ProcessExecutor, run_detached, run_in_worker
from .ray import RAY_CACHE_MODES, RAY_INSTALL, RayExecutor, import_ray

EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.register("serial")(Executor)
EXECUTORS.register("process")(ProcessExecutor)
EXECUTORS.register("ray")(RayExecutor)

RAY_OPTIONS = ("address", "cpus_per_task", "gpus_per_task", "ray_cache")


def make_executor(name: str = "serial", *, workers: int | None = None, retries: int = DEFAULT_RETRIES,
                  **ray_options: Any) -> Executor:
    """An executor by registry name; `address`, `cpus_per_task`, `gpus_per_task` and `ray_cache` are Ray's alone."""
    cls = EXECUTORS.get(name)
    if cls is Executor and workers is not None:
        raise OptionError("{workers} needs {executor} process or ray (serial runs one unit at a time)", "workers",
                          "executor")
    given = {k: v for k, v in ray_options.items() if v is not None}
    unknown = set(given) - set(RAY_OPTIONS)
    if unknown:
        raise TypeError(f"unknown executor options {sorted(unknown)}")
    if given and cls is not RayExecutor:
        names = sorted(given)
        verb = "apply" if len(names) > 1 else "applies"
        raise OptionError(", ".join("{%s}" % k for k in names) + f" {verb} to {{executor}} ray only "
                          f"(got {{executor}} {EXECUTORS.canonical(name)})", *names, "executor")
    return cls(workers=workers, retries=retries, **given)


def serial() -> Executor:
    """The default: every task in this process, one after another."""
    return Executor()


__all__ = ["Call", "Rebuildable", "Portable", "NotRebuildableError", "Outcome", "recipe_of", "run_in_worker",
           "run_detached", "RAY_CACHE_MODES", "Executor",
           "PoolExecutor", "ProcessExecutor", "RayExecutor", "EXECUTORS", "make_executor", "serial", "import_ray",
           "RAY_INSTALL"]
