"""Executors whose tasks run in other processes: the driver loop shared with Ray (retries, one error naming
the task), the worker side (the context rebuilt once per process from its recipe, nothing printed), and the
standard library's process pool.

Without a shared file system (a Ray executor with ray_cache driver), a worker rebuilds the context from the driver's
payload (`Portable`, base.py) into a private cache folder of its own (`run_detached`); an entry it lacks that
the driver holds comes with the task's next attempt, and what it computed comes back as files that the driver
alone stores in its cache.

On a pool, an exception other than a WorstforgetError, or a worker that dies, is logged with the task's label
and the task is retried; once `retries` more attempts have failed, the audit stops with one WorstforgetError
naming the task (its traceback in the run log). Workers print nothing: what they log (cache warnings,
computed units, plug-in tracebacks) comes back with their result and is logged by the driver.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections import deque
from typing import Any, Callable

from ..errors import WorstforgetError
from ..progress import Progress
from .base import (
    DEFAULT_RETRIES,
    LOGGER,
    Call,
    Executor,
    Outcome,
    Portable,
    Rebuildable,
    _execute,
    _first_line,
    _portable,
    _Tracker,
    recipe_of,
)

# --- in a worker -------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # per worker process: the setting of the last recipe, threads applied


def _prepare_worker(threads: int) -> None:
    """Once per worker process: nothing reaches the root logger (which would print), and torch gets
    `threads` intra-op threads so that several workers share the cores."""
    import torch

    if not _WORKER.get("ready"):
        LOGGER.propagate = False
        LOGGER.setLevel(logging.INFO)
        _WORKER["ready"] = True
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _worker_setting(key: str, rebuild: Callable[[], Any]) -> Any:
    """This worker's setting for `key`, rebuilt when the last task's was another. One setting per worker: the
    last one's data and model are dropped first, and the key is forgotten until the rebuild succeeds (a failed
    rebuild must not leave the old key standing for a setting that is gone)."""
    if _WORKER.get("key") != key:
        _WORKER.pop("setting", None)
        _WORKER["key"] = None
        _WORKER["setting"], _WORKER["key"] = rebuild(), key
    return _WORKER["setting"]


def _rebuild_failed(exc: Exception, started: float) -> Outcome:
    """The outcome of a task whose setting could not be rebuilt (called while `exc` is being handled): the
    user's error as it is, anything else as a failure with its traceback."""
    if isinstance(exc, WorstforgetError):
        return Outcome(error=_portable(exc), started=started, pid=os.getpid())
    return Outcome(failure=f"rebuilding the setting: {_first_line(exc)}", traceback=traceback.format_exc(),
                   started=started, pid=os.getpid())


def run_in_worker(recipe: Rebuildable, call: Call, threads: int) -> Outcome:
    """A task in a worker process: the context of `recipe` (rebuilt on first use), then the call in its scope."""
    _prepare_worker(threads)
    if _WORKER.pop("index_key", None) is not None:  # this process ran detached tasks before: reads are its own again
        from ..cache import detach_reads

        detach_reads(None)
    started = time.time()
    try:
        setting = _worker_setting(recipe.key, recipe.rebuild)
    except Exception as exc:
        return _rebuild_failed(exc, started)
    with recipe.scope():
        return _execute(setting, call, None, in_worker=True)


def _private_folder(key: str) -> str:
    """This worker process's own cache folder for the recipe `key` (in the node's temporary folder, never the
    driver's path), removed when the process ends normally."""
    folders = _WORKER.setdefault("folders", {})
    folder = folders.get(key)
    if folder is None or not os.path.isdir(folder):
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="worstforget-worker-")
        atexit.register(shutil.rmtree, folder, True)
        folders[key] = folder
    return folder


def run_detached(recipe: Portable, payload_key: str, load_payload: Callable[[], Any], index_key: str,
                 load_index: Callable[[], Any], call: Call, threads: int, extras: dict) -> Outcome:
    """A task in a worker that does not see the driver's files: the context rebuilt from the driver's payload
    (fetched on first use) into this process's private cache folder, which stands for the driver's (`index`:
    the names of the driver's entries; `extras`: entries the driver sent for this task). The cache entries the
    task wrote come back with its outcome."""
    from ..cache import detach_reads, list_entries, read_unknown
    from ..io import write_bytes_atomic

    _prepare_worker(threads)
    started = time.time()
    try:
        folder = _private_folder(recipe.key)  # one per driver's setting: it stands for that driver's folder
        key = f"{recipe.key}/{payload_key}"
        if _WORKER.get("key") != key:
            _WORKER.pop("index_key", None)
        setting = _worker_setting(key, lambda: recipe.rebuild_detached(load_payload(), folder))
        if _WORKER.get("index_key") != index_key:
            detach_reads(folder, load_index())
            _WORKER["index_key"] = index_key
        for rel, data in extras.items():
            if not os.path.isfile(os.path.join(folder, rel)):
                write_bytes_atomic(os.path.join(folder, rel), data)
    except Exception as exc:
        return _rebuild_failed(exc, started)
    before = list_entries(folder)
    read_unknown()
    with recipe.scope():
        outcome = _execute(setting, call, None, in_worker=True)
    if outcome.error is None and not outcome.failure:
        sent = _WORKER.setdefault("sent", {}).setdefault(recipe.key, set())  # what the driver holds from here
        after = list_entries(folder)
        back = {rel for rel, stat in after.items() if before.get(rel) != stat}
        back |= {rel for rel in read_unknown() if rel in after and rel not in sent}  # hits on an earlier task's
        for rel in sorted(back):
            with open(os.path.join(folder, rel), "rb") as fh:
                outcome.entries[rel] = fh.read()
        sent |= back
    return outcome


def _die_with_the_driver() -> None:
    """On Linux, ask the kernel to end this worker when its parent dies (even by SIGKILL), so no orphan keeps
    computing a unit nobody will read. Elsewhere the pool's own pipe ends it after its task.

    A worker forked by the fork server has the server for its parent, and the server ends when the driver's
    end of their pipe closes; the worker inherits a copy of that end (for starting processes of its own through
    the server), which would keep the server, and so the worker, alive after the driver: it is closed here."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        try:
            os.close(alive)
        except OSError:
            pass
        server._forkserver_alive_fd = None
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def _process_worker_init(threads: int, environ: dict[str, str] | None = None) -> None:
    """A process-pool worker prints nothing: its output goes to /dev/null (results and logs come back), and
    it ends with the driver. `environ` is the driver's environment when the pool started: a worker forked by
    the fork server would otherwise see the one the server started with."""
    if environ is not None and dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    _die_with_the_driver()
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    _prepare_worker(threads)


# --- the driver -------------------------------------------------------------------------------------

class PoolExecutor(Executor):
    """Shared driver loop of the executors whose tasks run in other processes."""

    def _threads(self) -> int:
        return 1

    def _recipe(self, recipe: Rebuildable) -> Rebuildable:
        return recipe

    def _run(self, setting: Any, calls: list[Call], tracker: _Tracker, progress: Progress | None) -> list:
        recipe, threads = self._recipe(recipe_of(setting)), self._threads()
        self._start(recipe)
        root = self._detach(recipe, setting)  # the driver's cache folder when workers do not see it, else None
        width = self.parallelism
        pending, attempts = deque(range(len(calls))), [0] * len(calls)
        extras: list[dict] = [{} for _ in calls]  # per task: the driver's entries its worker asked for
        results: list = [None] * len(calls)
        inflight: dict[Any, int] = {}
        try:
            while pending or inflight:
                while pending and len(inflight) < width + 1:  # one queued beside the running ones keeps all busy
                    i = pending.popleft()
                    attempts[i] += 1
                    inflight[self._submit(recipe, calls[i], threads, extras[i])] = i
                tracker.running = min(len(inflight), width)
                tracker.show()
                for handle, outcome in self._wait(list(inflight)):
                    i = inflight.pop(handle)
                    call, label = calls[i], calls[i].label or calls[i].fn.__name__
                    if root is not None and isinstance(outcome, Outcome):
                        self._store(root, outcome, label)
                        if outcome.needs:  # not a failure: the same attempt again, with the entries it lacked
                            for level, message in outcome.logs:
                                LOGGER.log(level, "[worker %d] %s", outcome.pid, message)
                            self.computed.update(outcome.computed)
                            self._send(root, outcome.needs, extras[i], outcome.entries, label)
                            attempts[i] -= 1
                            pending.appendleft(i)
                            continue
                    if isinstance(outcome, Outcome) and outcome.error is not None:
                        for level, message in outcome.logs:
                            LOGGER.log(level, "[worker %d] %s", outcome.pid, message)
                        LOGGER.info("task %s failed: %s", label, outcome.error)
                        raise outcome.error
                    if isinstance(outcome, Outcome) and not outcome.failure:
                        tracker.finished(call, outcome, attempts[i], self)
                        results[i] = outcome.value
                        continue
                    tracker.failed += 1
                    final = not isinstance(outcome, Outcome) and self._retried_already(outcome)
                    problem = outcome.failure if isinstance(outcome, Outcome) else _first_line(outcome)
                    if isinstance(outcome, Outcome):
                        for level, message in outcome.logs:
                            LOGGER.log(level, "[worker %d] %s", outcome.pid, message)
                        LOGGER.info("failure of %s in worker %d:\n%s", label, outcome.pid, outcome.traceback)
                    if final or attempts[i] > self.retries:
                        from ..runlog import where_logged

                        tries = attempts[i] if not final else attempts[i] + self.retries
                        raise WorstforgetError(f"{label} failed {tries} time{'s' * (tries > 1)} on the {self.name} "
                                               f"executor: {problem}{where_logged()}")
                    LOGGER.warning("%s failed (attempt %d of %d): %s; retrying", label, attempts[i],
                                   self.retries + 1, problem)
                    pending.appendleft(i)
        except BaseException:
            self._abort(list(inflight))
            raise
        return results

    def start(self) -> None:
        self._start()

    @staticmethod
    def _store(root: str, outcome: Outcome, label: str) -> None:
        """The cache entries a detached worker computed, stored by the driver (checked against their digests)."""
        from ..cache import store_entry

        for rel in sorted(outcome.entries, key=lambda r: (r.endswith(".pt") and r.startswith("search/"), r)):
            try:  # a search's rows before the state that counts them
                store_entry(root, rel, outcome.entries[rel])
            except ValueError as exc:
                raise WorstforgetError(f"{label}: {exc}; the worker's copy was damaged in transit, run again") from None

    @staticmethod
    def _send(root: str, needs: list, extras: dict, computed: dict, label: str) -> None:
        """Add the driver's entries `needs` to a task's extras (and what its worker already computed)."""
        for rel in needs:
            if rel in extras:
                raise WorstforgetError(f"{label}: its worker asked twice for the cache entry {rel}; "
                                       "the workers' cache folders cannot be written")
            try:
                with open(os.path.join(root, rel), "rb") as fh:
                    extras[rel] = fh.read()
            except OSError as exc:
                raise WorstforgetError(f"{label} needs the cache entry {rel}, which the driver cannot read "
                                       f"({exc.strerror or exc}); run again") from None
        extras.update(computed)

    def _detach(self, recipe: Rebuildable, setting: Any) -> str | None:
        """Prepare a map whose workers do not see the driver's files; its cache folder, or None (shared)."""
        return None

    # backend hooks
    def _start(self, recipe: Rebuildable | None = None) -> None:
        raise NotImplementedError

    def _submit(self, recipe: Rebuildable, call: Call, threads: int, extras: dict) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list) -> list[tuple[Any, "Outcome | BaseException"]]:
        """At least one finished handle with its Outcome, or the exception that lost it (a dead worker)."""
        raise NotImplementedError

    def _retried_already(self, exc: BaseException) -> bool:
        """Whether the backend itself already spent the retries on this failure (Ray's task retries)."""
        return False

    def _abort(self, handles: list) -> None:
        raise NotImplementedError


def _pool_context(preload: list[str]):
    """Where the platform has it, the fork server: it imports torch and `preload` once, and every worker of
    every pool this process starts is a fork of it, instead of a fresh interpreter importing them again (seconds
    per worker). Its workers die with it, and it with the driver. Elsewhere, spawn."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # only the first pool's list counts (the server starts once); the package comes first, since it sets
    # MKL_CBWR before torch is imported
    context.set_forkserver_preload(["worstforget", "torch", __name__, *preload])
    return context


class ProcessExecutor(PoolExecutor):
    """The standard library's process pool (fork server, else spawn), `workers` processes on this machine."""

    name = "process"

    def __init__(self, *, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        super().__init__(workers=workers, retries=retries)
        self.workers = workers or os.cpu_count() or 1
        self._pool = None

    @property
    def parallelism(self) -> int:
        return self.workers

    def _threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def _start(self, recipe: Rebuildable | None = None) -> None:
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor

            # the module that defines the recipe imports what rebuilding its setting needs (a caller's __main__
            # is left to each worker, as spawn leaves it)
            module = type(recipe).__module__ if recipe is not None else None
            preload = [module] if module not in (None, "__main__") else []
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_pool_context(preload),
                                             initializer=_process_worker_init,
                                             initargs=(self._threads(), dict(os.environ)))

    def _submit(self, recipe: Rebuildable, call: Call, threads: int, extras: dict) -> Any:
        self._start(recipe)
        return self._pool.submit(run_in_worker, recipe, call, threads)

    def _wait(self, handles: list) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            exc = future.exception()
            if isinstance(exc, BrokenProcessPool):
                if self._pool is not None and getattr(self._pool, "_broken", False):
                    self._drop_pool()  # a worker died: the pool is unusable, the next submit starts a new one
                exc = WorstforgetError("a worker process died (killed, or out of memory)")
            out.append((future, exc if exc is not None else future.result()))
        return out

    def _drop_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            pool.shutdown(wait=True, cancel_futures=True)

    def _abort(self, handles: list) -> None:
        for future in handles:
            future.cancel()
        self._drop_pool()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
