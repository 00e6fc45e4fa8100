"""Tasks on a Ray cluster (an optional extra): the cluster at an address, else a local instance."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..errors import OptionError, WorstforgetError
from .base import DEFAULT_RETRIES, LOGGER, Call, Rebuildable, _first_line
from .pool import PoolExecutor, run_in_worker

RAY_INSTALL = "pip install 'worstforget[ray]'"


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise OptionError("{executor} ray needs Ray, which is not installed: %s" % RAY_INSTALL, "executor") from None
    return ray


class RayExecutor(PoolExecutor):
    """Tasks on a Ray cluster: the one at `address` (or $RAY_ADDRESS), else a local instance started here.

    Each task asks Ray for `cpus_per_task` CPUs and `gpus_per_task` GPUs (fractions share one GPU); a task
    whose worker dies is retried by Ray itself (`max_retries`). `workers` caps the tasks in flight (a local
    instance gets workers × cpus_per_task CPUs); without it the cluster's free resources decide.
    """

    name = "ray"

    def __init__(self, *, workers: int | None = None, retries: int = DEFAULT_RETRIES, address: str | None = None,
                 cpus_per_task: float | None = None, gpus_per_task: float | None = None):
        super().__init__(workers=workers, retries=retries)
        if (cpus_per_task is not None and cpus_per_task <= 0) or (gpus_per_task is not None and gpus_per_task < 0):
            raise OptionError("{cpus_per_task} must be positive and {gpus_per_task} at least 0", "cpus_per_task",
                              "gpus_per_task")
        self.ray = import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_task = cpus_per_task or 1.0
        self.gpus_per_task = gpus_per_task or 0.0
        self.startup_seconds: float | None = None  # Ray's start-up (or joining) time, when this executor did it
        self._remote = None

    @property
    def parallelism(self) -> int:
        if self.workers:
            return self.workers
        self._start()
        resources = self.ray.cluster_resources()
        slots = resources.get("CPU", 1) / self.cpus_per_task
        if self.gpus_per_task:
            slots = min(slots, resources.get("GPU", 0) / self.gpus_per_task)
        return max(1, int(slots))

    def _threads(self) -> int:
        return max(1, int(self.cpus_per_task))

    def _recipe(self, recipe: Rebuildable) -> Rebuildable:
        # a task sees only the GPUs Ray gave it, as cuda:0...; without one it runs on the CPU
        if not self.gpus_per_task and str(recipe.device).startswith("cuda"):
            LOGGER.warning("Ray tasks run on the CPU without GPUs per task (this process uses %s)", recipe.device)
        return recipe.on_device("cuda" if self.gpus_per_task else "cpu")

    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            start = time.perf_counter()
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # workers' output stays in Ray's logs
            if self.address:
                _check_reachable(self.address)
                try:
                    ray.init(address=self.address, **quiet)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise WorstforgetError(f"cannot join the Ray cluster at {self.address} ({_first_line(exc)}); "
                                           "check the address or RAY_ADDRESS (ray start --head prints it)") from None
                LOGGER.info("ray: joined the cluster at %s", self.address)
            else:
                cpus = int(self.workers * self.cpus_per_task) if self.workers else None
                ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
                LOGGER.info("ray: started a local instance (%s CPUs)", cpus or "all")
            self.startup_seconds = time.perf_counter() - start
        if self._remote is None:
            self._remote = ray.remote(run_in_worker).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                                             max_retries=self.retries)

    def _submit(self, recipe: Rebuildable, call: Call, threads: int) -> Any:
        return self._remote.remote(recipe, call, threads)

    def _wait(self, handles: list) -> list:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except self.ray.exceptions.RayError as exc:
                out.append((ref, exc))
        return out

    def _retried_already(self, exc: BaseException) -> bool:
        errors = self.ray.exceptions
        return isinstance(exc, (errors.WorkerCrashedError, getattr(errors, "NodeDiedError", errors.WorkerCrashedError)))

    def _abort(self, handles: list) -> None:
        for ref in handles:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished, or the cluster is gone: nothing left to stop
                pass


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, within seconds, when a HOST:PORT cluster address does not answer (Ray itself would
    keep retrying for minutes). Other forms (auto, ray://...) are left to Ray."""
    import re
    import socket

    match = re.fullmatch(r"\[?([^\]/:]+|[0-9a-fA-F:]+)\]?:(\d+)", address.strip())
    if not match:
        return
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout).close()
    except OSError as exc:
        raise WorstforgetError(f"cannot join the Ray cluster at {address} ({_first_line(exc)}); check the address "
                               "or RAY_ADDRESS (`ray start --head` prints the address)") from None
