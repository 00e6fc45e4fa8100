"""Tasks on a Ray cluster (an optional extra): the cluster at an address, else a local instance.

Two ways to reach the cache (`ray_cache`). `shared`: every node mounts the driver's cache folder (NFS,
Lustre...); workers rebuild the setting from its recipe and read and write the folder themselves. `driver`: no
node needs the driver's files; the driver puts the setting's payload (data, the original's weights, plug-in
sources) in Ray's object store once, workers cache into private folders, and the driver alone writes its
cache (pool.py `run_detached`). `auto` (default) asks one task on each node whether it sees a file the driver
just wrote in its cache folder: shared if every node does, else driver. A local instance is always shared.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..errors import OptionError, WorstforgetError
from .base import DEFAULT_RETRIES, LOGGER, Call, Portable, Rebuildable, _first_line
from .pool import PoolExecutor, run_detached, run_in_worker

RAY_INSTALL = "pip install 'worstforget[ray]'"
RAY_CACHE_MODES = ("auto", "shared", "driver")


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
    instance gets workers × cpus_per_task CPUs); without it the cluster's free resources decide. `ray_cache`
    says how workers reach the cache (see the module docstring).
    """

    name = "ray"

    def __init__(self, *, workers: int | None = None, retries: int = DEFAULT_RETRIES, address: str | None = None,
                 cpus_per_task: float | None = None, gpus_per_task: float | None = None,
                 ray_cache: str | None = None):
        super().__init__(workers=workers, retries=retries)
        if ray_cache is not None and ray_cache not in RAY_CACHE_MODES:
            raise OptionError("{ray_cache} must be one of %s, got %r" % ("|".join(RAY_CACHE_MODES), ray_cache),
                              "ray_cache")
        if (cpus_per_task is not None and cpus_per_task <= 0) or (gpus_per_task is not None and gpus_per_task < 0):
            raise OptionError("{cpus_per_task} must be positive and {gpus_per_task} at least 0", "cpus_per_task",
                              "gpus_per_task")
        self.ray = import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_task = cpus_per_task or 1.0
        self.gpus_per_task = gpus_per_task or 0.0
        self.startup_seconds: float | None = None  # Ray's start-up (or joining) time, when this executor did it
        self.ray_cache = ray_cache or "auto"
        self.mode: str | None = None  # shared | driver, once decided (auto: by the probe)
        self._remote = self._remote_detached = None
        self._payload: tuple[str, Any] | None = None  # (payload key, its object ref): put once
        self._index: tuple[str, Any] | None = None  # (index key, object ref): the names of the driver's entries

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

    def _start(self, recipe: Rebuildable | None = None) -> None:
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
                # "local": a new instance of our own, even when a Ray cluster already runs on this machine
                # (Ray would otherwise join it, and refuse the CPU count)
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
                LOGGER.info("ray: started a local instance (%s CPUs)", cpus or "all")
            self.startup_seconds = time.perf_counter() - start
        if self._remote is None:
            options = dict(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.retries)
            self._remote = ray.remote(run_in_worker).options(**options)
            self._remote_detached = ray.remote(_run_detached_on_ray).options(**options)

    def _detach(self, recipe: Rebuildable, setting: Any) -> str | None:
        mode = self._mode(recipe)
        if mode == "shared":
            return None
        if not isinstance(recipe, Portable):
            raise OptionError("{ray_cache} driver sends the setting to the workers, but this one cannot be sent (its "
                              "recipe has no payload); use {ray_cache} shared", "ray_cache")
        from ..cache import list_entries
        from ..hashing import stable_hash

        key = recipe.payload_key(setting)
        if self._payload is None or self._payload[0] != key:
            start = time.perf_counter()
            self._payload = (key, self.ray.put(recipe.payload(setting)))  # once: tasks get its ref, not a copy
            LOGGER.info("ray: put the setting's payload in the object store in %.2f s", time.perf_counter() - start)
        names = sorted(list_entries(recipe.cache_folder)) if os.path.isdir(recipe.cache_folder) else []
        index_key = stable_hash(names)
        if self._index is None or self._index[0] != index_key:
            self._index = (index_key, self.ray.put(frozenset(names)))
        return recipe.cache_folder

    def _mode(self, recipe: Rebuildable) -> str:
        """shared or driver: as asked, or (auto) shared on a local instance, else what the probe finds."""
        if self.mode is None:
            if self.ray_cache != "auto":
                self.mode = self.ray_cache
            elif not self.address or not isinstance(recipe, Portable):
                self.mode = "shared"
            else:
                blind = nodes_not_seeing(self.ray, recipe.cache_folder)
                self.mode = "driver" if blind else "shared"
                LOGGER.info("ray: %s", f"{len(blind)} node(s) do not see the cache folder {recipe.cache_folder}: "
                            "the driver sends what workers need and writes the cache" if blind else
                            f"every node sees the cache folder {recipe.cache_folder}: workers share it")
        return self.mode

    def _submit(self, recipe: Rebuildable, call: Call, threads: int, extras: dict) -> Any:
        if self.mode == "driver":  # refs inside lists travel as refs: a worker fetches the payload once
            return self._remote_detached.remote(recipe, self._payload[0], [self._payload[1]], self._index[0],
                                                [self._index[1]], call, threads, extras)
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


def _run_detached_on_ray(recipe: Portable, payload_key: str, payload: list, index_key: str, index: list, call: Call,
                         threads: int, extras: dict):
    """`run_detached` in a Ray worker: the payload and the index fetched from the object store when first used."""
    import ray

    outcome = run_detached(recipe, payload_key, lambda: ray.get(payload[0]), index_key, lambda: ray.get(index[0]),
                           call, threads, extras)
    outcome.node = ray.get_runtime_context().get_node_id()
    return outcome


def _sees(path: str, token: str) -> bool:
    try:
        with open(path) as fh:
            return fh.read() == token
    except OSError:
        return False


def nodes_not_seeing(ray, folder: str, timeout: float = 60.0) -> list[str]:
    """The ids of the cluster's live nodes on which a file the driver writes into `folder` is not visible (one
    task pinned to each node reads it back)."""
    import uuid

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    os.makedirs(folder, exist_ok=True)
    token = uuid.uuid4().hex
    path = os.path.join(os.path.abspath(folder), f".worstforget-probe-{token}")
    with open(path, "w") as fh:
        fh.write(token)
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        sees = ray.remote(_sees)
        refs = [sees.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(path, token) for node in nodes]
        answers = ray.get(refs, timeout=timeout)
    finally:
        os.remove(path)
    return [node for node, seen in zip(nodes, answers) if not seen]


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
