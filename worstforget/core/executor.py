"""Executors: run the independent tasks of an audit — units, per-model statistics, searches — one after
another in this process (`serial`), on a local process pool (`process`) or on a Ray cluster (`ray`), and
hand their results back in submission order.

A task is a picklable `Call`: a module-level function, its arguments and a label naming its
configuration. The function is called as `fn(setting, *args, progress=..., **kwargs)`. A Setting holds
tensors and a model, so it never travels: a worker rebuilds it from its `SettingRecipe` (the
`prepare_setting` arguments with the cache folder, the accelerator switches, the plug-ins), once per
process, loading the original model from the shared cache. Tasks are pure functions of their arguments
and seeds, so every executor returns the same numbers (timings aside).

Failures. A task raising a WorstforgetError (a diverged run, a bad option) stops the audit at once with
that message, as a serial run does. On a pool, any other exception, or a worker that dies, is logged with
the task's label and the task is retried; once `retries` more attempts have failed, the audit stops with
one WorstforgetError naming the task (its traceback in the run log). The serial executor runs tasks in
this process exactly as before: their exceptions propagate unchanged.

Progress and logs come from the driver alone: one bar per `map` over its tasks (done, running, failed)
and one run-log line per task (start, end, seconds, what it computed or that it was cached). Workers
print nothing; what they log (cache warnings, computed units, plug-in tracebacks) comes back with their
result and is logged by the driver.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import ConfigError, WorstforgetError
from .progress import NullProgress, Progress
from .registry import Registry

if TYPE_CHECKING:
    from ..setting import Setting

LOGGER = logging.getLogger("worstforget")
RAY_INSTALL = "pip install 'worstforget[ray]'"
DEFAULT_RETRIES = 2


# --- what travels ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One task: `fn(setting, *args, progress=..., **kwargs)`; `label` names it in progress, logs and errors."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class SettingRecipe:
    """What a worker needs to rebuild a Setting: `prepare_setting`'s keyword arguments (paths made absolute,
    the cache folder explicit), the SVC attacker's seed, the accelerator switches, and the plug-ins loaded in
    the driver with the folders they import from. `original_key` (filled by `build`) lets a worker check it
    rebuilt the very same original model."""

    prepare: dict
    mia_seed: int = 0
    accel: dict = field(default_factory=dict)
    plugins: tuple[tuple[str, str], ...] = ()  # (module:function[=name], batch format)
    path: tuple[str, ...] = ()  # folders put on a worker's sys.path before plug-ins are imported
    original_key: str = ""

    @classmethod
    def create(cls, **prepare: Any) -> "SettingRecipe":
        """A recipe from `prepare_setting`'s keyword arguments, taken down to what a worker can reproduce:
        the cache and data folders and every file path absolute, plug-ins and accelerator switches as now."""
        from ..methods import METHODS
        from ..methods.plugin import PluginMethod
        from ..training.accel import current_accel
        from .runtime import cache_root

        prepare = {k: v for k, v in prepare.items() if k != "progress"}
        prepare["cache_dir"] = os.path.abspath(prepare.get("cache_dir") or cache_root())
        if prepare.get("data_dir") or os.environ.get("WORSTFORGET_DATA"):
            prepare["data_dir"] = os.path.abspath(prepare.get("data_dir") or os.environ["WORSTFORGET_DATA"])
        if prepare.get("checkpoint"):
            prepare["checkpoint"] = os.path.abspath(prepare["checkpoint"])
        name, sep, source = str(prepare.get("dataset", "digits")).partition(":")
        if sep and source:  # npz:PATH, h5:PATH
            prepare["dataset"] = f"{name}:{os.path.abspath(source)}"
        plugins = tuple((cls_.target, cls_.batch_format) for cls_ in (METHODS.get(n) for n in METHODS.names())
                        if isinstance(cls_, type) and issubclass(cls_, PluginMethod) and cls_.target)
        # plug-ins import from the working folder, as `--plugin` does here
        return cls(prepare=prepare, accel=current_accel().to_dict(), plugins=plugins,
                   path=(os.getcwd(),) if plugins else ())

    @property
    def key(self) -> str:
        text = json.dumps({"prepare": self.prepare, "mia_seed": self.mia_seed, "accel": self.accel,
                           "plugins": self.plugins, "path": self.path}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def build(self, progress: Progress | None = None) -> "Setting":
        """`prepare_setting` with these arguments; the setting carries the recipe (see `recipe_of`)."""
        from ..setting import prepare_setting

        setting = prepare_setting(**self.prepare, progress=progress)
        setting.mia_seed = self.mia_seed
        # workers run on the driver's device (a Ray task's own GPU is `cuda` there, see RayExecutor)
        done = replace(self, prepare={**self.prepare, "device": str(setting.data.device)},
                       original_key=setting.original_key)
        setting.recipe = done
        return setting

    def rebuild(self) -> "Setting":
        """The setting in a worker: the plug-ins first, then `build`, checked against the driver's."""
        for folder in self.path:
            if folder not in sys.path:
                sys.path.insert(0, folder)
        if self.plugins:
            from ..methods.plugin import load_plugin

            for target, batch_format in self.plugins:  # the driver already refused clashes
                load_plugin(target, batch_format=batch_format, override=True)
        setting = replace(self, original_key="").build()
        if self.original_key and setting.original_key != self.original_key:
            raise WorstforgetError(f"a worker rebuilt another original model (key {setting.original_key}, the driver's "
                                   f"{self.original_key}); workers need the same data, code and --cache-dir")
        setting.recipe = self
        return setting


def recipe_of(setting: "Setting") -> SettingRecipe:
    """The recipe a setting was built from; settings made by `prepare_setting` directly have none."""
    recipe = getattr(setting, "recipe", None)
    if recipe is None:
        raise ConfigError("a parallel executor rebuilds the setting in each worker, but this one was not built from "
                          "a recipe: build it with SettingRecipe.create(**prepare_setting_arguments).build(), "
                          "or use the serial executor")
    return recipe


@dataclass
class Outcome:
    """A task's result, or what went wrong, with what it logged and computed (it travels back from a worker)."""

    value: Any = None
    error: WorstforgetError | None = None  # the task's own one-line error: re-raised as it is
    failure: str = ""  # 'Type: first line' of any other exception (retried)
    traceback: str = ""
    started: float = 0.0  # time.time()
    seconds: float = 0.0
    computed: dict = field(default_factory=dict)  # cache kind → entries computed (none: all cached)
    logs: list = field(default_factory=list)  # (level, message) the task logged in a worker
    pid: int = 0


# --- running one task --------------------------------------------------------------------------------

class _Collect(logging.Handler):
    """Keeps what a task logs in a worker, to be logged again by the driver."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))  # adds a logged exception's traceback
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, self.format(record)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _execute(setting: "Setting", call: Call, progress: Progress | None, *, in_worker: bool) -> Outcome:
    from .cache import COMPUTED

    before = Counter(COMPUTED)
    collect = _Collect() if in_worker else None
    if collect is not None:
        LOGGER.addHandler(collect)
    outcome = Outcome(started=time.time(), pid=os.getpid())
    start = time.perf_counter()
    try:
        outcome.value = call.fn(setting, *call.args, progress=progress, **call.kwargs)
    except WorstforgetError as exc:
        if not in_worker:
            raise
        outcome.error = _portable(exc)
    except Exception as exc:
        if not in_worker:
            raise
        outcome.failure, outcome.traceback = _first_line(exc), traceback.format_exc()
    finally:
        outcome.seconds = time.perf_counter() - start
        if collect is not None:
            LOGGER.removeHandler(collect)
            outcome.logs = collect.records
    outcome.computed = {k: v - before.get(k, 0) for k, v in COMPUTED.items() if v > before.get(k, 0)}
    return outcome


def _portable(exc: WorstforgetError) -> WorstforgetError:
    """The error itself when it survives pickling, else a plain WorstforgetError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return WorstforgetError(str(exc))


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


def run_in_worker(recipe: SettingRecipe, call: Call, threads: int) -> Outcome:
    """A task in a worker process: the setting of `recipe` (rebuilt on first use), then the call."""
    _prepare_worker(threads)
    started = time.time()
    try:
        if _WORKER.get("key") != recipe.key:
            _WORKER.pop("setting", None)  # one setting per worker: drop the last one's data and model first
            _WORKER["setting"], _WORKER["key"] = recipe.rebuild(), recipe.key
        setting = _WORKER["setting"]
    except WorstforgetError as exc:
        return Outcome(error=_portable(exc), started=started, pid=os.getpid())
    except Exception as exc:
        return Outcome(failure=f"rebuilding the setting: {_first_line(exc)}", traceback=traceback.format_exc(),
                       started=started, pid=os.getpid())
    from ..training.accel import Accel, use_accel

    with use_accel(Accel(**recipe.accel)):
        return _execute(setting, call, None, in_worker=True)


def _die_with_the_driver() -> None:
    """On Linux, ask the kernel to end this worker when the driver process dies (even by SIGKILL), so no
    orphan keeps computing a unit nobody will read. Elsewhere the pool's own pipe ends it after its task."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def _process_worker_init(threads: int) -> None:
    """A process-pool worker prints nothing: its output goes to /dev/null (results and logs come back), and
    it ends with the driver."""
    _die_with_the_driver()
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    _prepare_worker(threads)


# --- the driver's bookkeeping ------------------------------------------------------------------------

class _Tracker:
    """One progress bar over a map's tasks (done, running, failed) and one run-log line per task."""

    def __init__(self, progress: Progress | None, description: str, total: int):
        self.bar = (progress or NullProgress()).task(description, total)
        self.running = self.failed = 0

    def show(self, advance: int = 0) -> None:
        self.bar.advance(advance, running=self.running, failed=self.failed)

    def finished(self, call: Call, outcome: Outcome, attempt: int, executor: "Executor") -> None:
        for level, message in outcome.logs:
            LOGGER.log(level, "[worker %d] %s", outcome.pid, message)
        executor.computed.update(outcome.computed)
        what = ", ".join(f"computed {n} {kind}" for kind, n in sorted(outcome.computed.items())) or "cached"
        LOGGER.info("task %s: started %s, ended %s, %.2f s, %s (%s pid %d, attempt %d)", call.label or call.fn.__name__,
                    _clock(outcome.started), _clock(outcome.started + outcome.seconds), outcome.seconds, what,
                    executor.name, outcome.pid, attempt)
        self.show(1)

    def close(self) -> None:
        self.bar.close()


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


# --- executors ---------------------------------------------------------------------------------------

class Executor:
    """Runs independent tasks and returns their results in submission order (see the module docstring)."""

    name = "serial"

    def __init__(self, *, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if retries < 0:
            raise ConfigError(f"retries must be at least 0, got {retries}")
        self.workers, self.retries = workers, retries
        self.computed: Counter = Counter()  # cache entries computed by this executor's tasks, per kind

    @property
    def parallelism(self) -> int:
        """How many tasks run at once (what a caller batches by)."""
        return 1

    def map(self, setting: "Setting", calls: Sequence[Call], *, progress: Progress | None = None,
            description: str = "units") -> list:
        """Run every call against `setting`; their results, in the order of `calls`."""
        calls = list(calls)
        if not calls:
            return []
        tracker = _Tracker(progress, description, len(calls))
        try:
            return self._run(setting, calls, tracker, progress)
        finally:
            tracker.close()

    def _run(self, setting: "Setting", calls: list[Call], tracker: _Tracker, progress: Progress | None) -> list:
        results = []
        for call in calls:
            tracker.running = 1
            tracker.show()
            try:
                outcome = _execute(setting, call, progress, in_worker=False)
            except BaseException as exc:
                tracker.failed += 1
                LOGGER.info("task %s failed: %s", call.label or call.fn.__name__, _first_line(exc))
                raise
            tracker.running = 0
            tracker.finished(call, outcome, 1, self)
            results.append(outcome.value)
        return results

    def start(self) -> None:
        """Reach the workers now (start or join Ray, make the pool), so a bad address fails before any work."""

    def close(self) -> None:
        """Release workers (a no-op for executors without any)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoolExecutor(Executor):
    """Shared driver loop of the executors whose tasks run in other processes."""

    def _threads(self) -> int:
        return 1

    def _recipe(self, recipe: SettingRecipe) -> SettingRecipe:
        return recipe

    def _run(self, setting: "Setting", calls: list[Call], tracker: _Tracker, progress: Progress | None) -> list:
        recipe, threads = self._recipe(recipe_of(setting)), self._threads()
        self._start()
        width = self.parallelism
        pending, attempts = deque(range(len(calls))), [0] * len(calls)
        results: list = [None] * len(calls)
        inflight: dict[Any, int] = {}
        try:
            while pending or inflight:
                while pending and len(inflight) < width + 1:  # one queued beside the running ones keeps all busy
                    i = pending.popleft()
                    attempts[i] += 1
                    inflight[self._submit(recipe, calls[i], threads)] = i
                tracker.running = min(len(inflight), width)
                tracker.show()
                for handle, outcome in self._wait(list(inflight)):
                    i = inflight.pop(handle)
                    call, label = calls[i], calls[i].label or calls[i].fn.__name__
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
                        from .runlog import where_logged

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

    # backend hooks
    def _start(self) -> None:
        raise NotImplementedError

    def _submit(self, recipe: SettingRecipe, call: Call, threads: int) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list) -> list[tuple[Any, "Outcome | BaseException"]]:
        """At least one finished handle with its Outcome, or the exception that lost it (a dead worker)."""
        raise NotImplementedError

    def _retried_already(self, exc: BaseException) -> bool:
        """Whether the backend itself already spent the retries on this failure (Ray's task retries)."""
        return False

    def _abort(self, handles: list) -> None:
        raise NotImplementedError


class ProcessExecutor(PoolExecutor):
    """The standard library's process pool (spawn), `workers` processes on this machine."""

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

    def _start(self) -> None:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_process_worker_init, initargs=(self._threads(),))

    def _submit(self, recipe: SettingRecipe, call: Call, threads: int) -> Any:
        self._start()
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


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
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
            raise ConfigError("--cpus-per-task must be positive and --gpus-per-task at least 0")
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

    def _recipe(self, recipe: SettingRecipe) -> SettingRecipe:
        # a task sees only the GPUs Ray gave it, as cuda:0...; without one it runs on the CPU
        if not self.gpus_per_task and str(recipe.prepare.get("device", "")).startswith("cuda"):
            LOGGER.warning("Ray tasks run on the CPU without --gpus-per-task (this process uses %s)",
                           recipe.prepare["device"])
        return replace(recipe, prepare={**recipe.prepare, "device": "cuda" if self.gpus_per_task else "cpu"})

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
                                           "check --ray-address or RAY_ADDRESS (ray start --head prints it)") from None
                LOGGER.info("ray: joined the cluster at %s", self.address)
            else:
                cpus = int(self.workers * self.cpus_per_task) if self.workers else None
                ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
                LOGGER.info("ray: started a local instance (%s CPUs)", cpus or "all")
            self.startup_seconds = time.perf_counter() - start
        if self._remote is None:
            self._remote = ray.remote(run_in_worker).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                                             max_retries=self.retries)

    def _submit(self, recipe: SettingRecipe, call: Call, threads: int) -> Any:
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
        raise WorstforgetError(f"cannot join the Ray cluster at {address} ({_first_line(exc)}); check --ray-address "
                               "or RAY_ADDRESS (`ray start --head` prints the address)") from None


EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.register("serial")(Executor)
EXECUTORS.register("process")(ProcessExecutor)
EXECUTORS.register("ray")(RayExecutor)

RAY_OPTIONS = ("address", "cpus_per_task", "gpus_per_task")


def make_executor(name: str = "serial", *, workers: int | None = None, retries: int = DEFAULT_RETRIES,
                  **ray_options: Any) -> Executor:
    """An executor by registry name; `address`, `cpus_per_task` and `gpus_per_task` are Ray's alone."""
    cls = EXECUTORS.get(name)
    if cls is Executor and workers is not None:
        raise ConfigError("--workers needs --executor process or ray (serial runs one unit at a time)")
    given = {k: v for k, v in ray_options.items() if v is not None}
    unknown = set(given) - set(RAY_OPTIONS)
    if unknown:
        raise TypeError(f"unknown executor options {sorted(unknown)}")
    if given and cls is not RayExecutor:
        flags = ", ".join("--" + k.replace("_", "-").replace("address", "ray-address") for k in sorted(given))
        raise ConfigError(f"{flags} appl{'y' if len(given) > 1 else 'ies'} to --executor ray only "
                          f"(got --executor {EXECUTORS.canonical(name)})")
    return cls(workers=workers, retries=retries, **given)


def serial() -> Executor:
    """The default: every task in this process, one after another."""
    return Executor()


__all__ = ["Call", "SettingRecipe", "recipe_of", "Executor", "ProcessExecutor", "RayExecutor", "EXECUTORS",
           "make_executor", "serial", "import_ray", "RAY_INSTALL"]
