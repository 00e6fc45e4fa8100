"""The executor contract and the serial executor: a task is a picklable `Call` run against a context
object (the setting), one after another in this process, results handed back in submission order.

A task is a module-level function, its arguments and a label naming its configuration; it is called as
`fn(context, *args, progress=..., **kwargs)`. A context holds tensors and a model, so it never travels:
executors that run tasks in other processes (`pool.py`, `ray.py`) need a context that carries a `recipe`
(a `Rebuildable`: a picklable description that rebuilds the context in a worker, once per process; a
`Portable` one can also send what the rebuild reads to workers that do not see the driver's files).
Tasks are pure functions of their arguments and seeds, so every executor returns the same numbers
(timings aside).

Failures. A task raising a WorstforgetError (a diverged run, a bad option) stops the audit at once with
that message. The serial executor runs tasks in this process exactly as before: their exceptions
propagate unchanged; pools retry other failures (see `pool.py`).

Progress and logs come from the driver alone: one bar per `map` over its tasks (done, running, failed)
and one run-log line per task (start, end, seconds, what it computed or that it was cached).
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ..errors import ConfigError, OptionError, WorstforgetError
from ..progress import NullProgress, Progress

LOGGER = logging.getLogger("worstforget")
DEFAULT_RETRIES = 2


# --- what travels ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One task: `fn(context, *args, progress=..., **kwargs)`; `label` names it in progress, logs and errors."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@runtime_checkable
class Rebuildable(Protocol):
    """A picklable description of a task context that a worker process can rebuild it from.

    `key` names the context (a worker keeps the last one it rebuilt), `rebuild()` returns it, `scope()` is
    entered around every task in a worker (process-wide switches the driver had on), `device` is where it
    runs and `on_device(device)` the same recipe on another device (a Ray task's own GPU, or the CPU).
    """

    @property
    def key(self) -> str: ...

    @property
    def device(self) -> str: ...

    def rebuild(self) -> Any: ...

    def scope(self) -> AbstractContextManager: ...

    def on_device(self, device: str) -> "Rebuildable": ...


@runtime_checkable
class Portable(Rebuildable, Protocol):
    """A recipe whose context a worker can rebuild without the driver's file system (Ray, ray_cache driver).

    `payload(context)` is everything a worker would otherwise read from the driver's files (the data, the
    original model's weights, plug-in sources): picklable, put in the object store once per `payload_key`.
    `rebuild_detached(payload, folder)` rebuilds the context in a worker, caching into its private `folder`.
    `cache_folder` is the driver's cache folder (None when caching is off): the driver alone writes it.
    """

    @property
    def cache_folder(self) -> str | None: ...

    def payload_key(self, context: Any) -> str: ...

    def payload(self, context: Any) -> Any: ...

    def rebuild_detached(self, payload: Any, folder: str) -> Any: ...


class NotRebuildableError(ConfigError):
    """A parallel executor was given a context that carries no recipe to rebuild it in a worker."""


def recipe_of(context: Any) -> Rebuildable:
    """The recipe a context carries as its `recipe` attribute (see `Rebuildable`)."""
    recipe = getattr(context, "recipe", None)
    if not isinstance(recipe, Rebuildable):
        raise NotRebuildableError(
            "a parallel executor rebuilds the setting in each worker, but this one carries no recipe: build it "
            "with SettingRecipe.create(**prepare_setting_arguments).build(), or use the serial executor")
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
    node: str = ""  # the machine it ran on (Ray's node id), when known
    needs: list = field(default_factory=list)  # cache entries a detached worker lacks (see core/cache.py)
    entries: dict = field(default_factory=dict)  # relpath → bytes: the cache entries a detached worker wrote


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


def _execute(setting: Any, call: Call, progress: Progress | None, *, in_worker: bool) -> Outcome:
    from ..cache import COMPUTED, EntryNeeded

    before = Counter(COMPUTED)
    collect = _Collect() if in_worker else None
    if collect is not None:
        LOGGER.addHandler(collect)
    outcome = Outcome(started=time.time(), pid=os.getpid())
    start = time.perf_counter()
    try:
        outcome.value = call.fn(setting, *call.args, progress=progress, **call.kwargs)
    except EntryNeeded as exc:  # only in a detached worker: the driver sends them with the next attempt
        outcome.needs = exc.relpaths
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


# --- the serial executor ---------------------------------------------------------------------------------

class Executor:
    """Runs independent tasks and returns their results in submission order (see the module docstring)."""

    name = "serial"

    def __init__(self, *, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        if workers is not None and workers < 1:
            raise OptionError("{workers} must be at least 1, got %d" % workers, "workers")
        if retries < 0:
            raise ConfigError(f"retries must be at least 0, got {retries}")
        self.workers, self.retries = workers, retries
        self.computed: Counter = Counter()  # cache entries computed by this executor's tasks, per kind

    @property
    def parallelism(self) -> int:
        """How many tasks run at once (what a caller batches by)."""
        return 1

    def map(self, setting: Any, calls: Sequence[Call], *, progress: Progress | None = None,
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

    def _run(self, setting: Any, calls: list[Call], tracker: _Tracker, progress: Progress | None) -> list:
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
