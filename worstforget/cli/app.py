"""The click group, its error handling, registry choices, the executor flags (which `run` forwards) and rich
rendering helpers (rich lives only here). The option groups commands take are in options.py."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from ..core.errors import ConfigError, OptionError, WorstforgetError

MIA_RESAMPLES = 3  # = setting.MIA_RESAMPLES (a test keeps them equal; importing it here would load torch for --help)


class WorstforgetGroup(click.Group):
    """Turns library errors into one-line messages: bad options exit 2, other problems exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..core.runlog import LOGGER, stop_run_log, where_logged

        try:
            return super().invoke(ctx)
        except OptionError as exc:  # raised once work began (an executor's choice): the library's names as flags
            raise click.UsageError(exc.worded(lambda n: EXECUTOR_FLAGS.get(n, "--" + n.replace("_", "-"))),
                                   ctx=None) from None
        except ConfigError as exc:
            raise click.UsageError(str(exc), ctx=None) from None
        except WorstforgetError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException(
                "interrupted; completed units are cached and --resume continues a search") from None
        except click.UsageError as exc:  # a bad option: one line naming it, no usage block (still exit 2)
            if exc.ctx is None:
                raise
            raise click.UsageError(exc.format_message(), ctx=None) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: one line here, the traceback in the run log
            LOGGER.exception("unexpected error")
            raise click.ClickException(f"unexpected {type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}"
                                       f"{where_logged()}; please report it") from None
        finally:
            stop_run_log()


class RegistryChoice(click.Choice):
    """A choice among a registry's names (and aliases), read when first needed so `--help` stays fast.

    `registry` is "module:ATTRIBUTE" of a `core.registry.Registry`; values come back as canonical names.
    """

    def __init__(self, registry: str, *, dashes: bool = False):
        self._target, self._dashes = registry, dashes
        self.case_sensitive = False

    def _registry(self):
        import importlib

        module, _, attr = self._target.partition(":")
        return getattr(importlib.import_module(module, __package__), attr)

    @property
    def choices(self):  # type: ignore[override]
        reg = self._registry()
        names = [n.replace("_", "-") if self._dashes else n for n in reg.names()]
        return tuple(names + [a for n in reg.names() for a in reg.aliases_of(n) if a not in names])

    @choices.setter
    def choices(self, value) -> None:
        pass

    def convert(self, value, param, ctx):
        return self._registry().canonical(super().convert(value, param, ctx))


class AppContext:
    """Consoles built per invocation (not at import) so tests control width and colour."""

    def __init__(self, *, quiet: bool = False, width: int | None = None):
        from rich.console import Console

        self.out = Console(width=width, soft_wrap=False)
        self.err = Console(stderr=True, width=width, quiet=quiet)
        self.quiet = quiet
        self.executors: dict | None = None  # set by `run`: executors shared by its steps (closed when it ends)


@click.group(cls=WorstforgetGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                       "auto_envvar_prefix": "WORSTFORGET"})
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE:FUNCTION[=NAME]",
              help="Register a method with the challenge signature unlearn(net, retain, forget, val) -> net "
                   "(named after the function, or NAME). Repeatable.")
@click.option("--batch-format", type=click.Choice(["tuple", "dict"]), default="tuple", show_default=True,
              help="Batches the plug-ins' loaders yield: (x, y), or Kaggle's {'image': x, 'age_group': y}.")
@click.option("--plugin-override", is_flag=True, help="Let a plug-in replace the built-in method of its name.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.version_option(package_name="worstforget", message="%(version)s")
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...], batch_format: str, plugin_override: bool, quiet: bool) -> None:
    """Audit machine-unlearning methods on their worst-case forget sets.

    \b
    Quick start (CPU, seconds):
      worstforget search --method finetune
      worstforget unlearn --method random_label --forget-ratio 0.1
      worstforget list methods
    """
    if ctx.obj is None:
        ctx.obj = AppContext(quiet=quiet)
    from ..core.runlog import start_run_log

    start_run_log(ctx.invoked_subcommand or "worstforget", echo_warnings=not quiet)  # closed by WorstforgetGroup.invoke
    if plugins:
        import os
        import sys

        from ..methods.plugin_load import load_plugins

        if os.getcwd() not in sys.path:  # as `python -m` does: a submission in the working folder imports
            sys.path.insert(0, os.getcwd())
        load_plugins(plugins, batch_format=batch_format, override=plugin_override)


EXECUTOR_KEYS = ("executor", "workers", "retries", "ray_address", "cpus_per_task", "gpus_per_task", "ray_cache")
EXECUTOR_FLAGS = {"address": "--ray-address"}  # make_executor's parameters whose flag is not --NAME


def executor_options(fn: Callable) -> Callable:
    """Options that choose where a command's units run (serial, a process pool, a Ray cluster)."""
    options = [
        click.option("--executor", type=RegistryChoice("..core.executor:EXECUTORS"), default="serial",
                     show_default=True, help="Where units run: serial (this process, one after another), process (a "
                     "local process pool), ray (a Ray cluster; pip install 'worstforget[ray]')."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes (process: default one per core) or tasks in flight (ray: default what "
                          "the cluster fits)."),
        click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
                     help="Further attempts at a task that failed or whose worker died (process, ray)."),
        click.option("--ray-address", default=None,
                     help="Join the Ray cluster at this address [default: $RAY_ADDRESS, else start a local one]."),
        click.option("--cpus-per-task", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="CPUs Ray reserves per task [default: 1]."),
        click.option("--gpus-per-task", type=click.FloatRange(min=0), default=None,
                     help="GPUs Ray reserves per task; fractions share a GPU [default: 0, tasks on the CPU]."),
        click.option("--ray-cache", type=click.Choice(["auto", "shared", "driver"]), default=None,
                     help="How Ray workers reach the cache: shared (every node mounts --cache-dir), driver (the driver "
                          "sends what they need and alone writes the cache) [default: auto, shared when every node "
                          "sees the cache folder]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class RichProgress:
    """Adapts the library's progress sink to rich bars on stderr — or, when stderr is not a terminal (a log
    file, CI), to plain lines with elapsed time and an estimate of what remains (`core.progress.LineProgress`),
    also kept in the run log: a live bar there would print nothing until it ends."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from ..core.progress import LineProgress

        self._lines = None
        if not console.quiet and not console.is_terminal:
            self._lines = LineProgress(lambda line: _progress_line(console, line))
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=console, transient=False, disable=console.quiet or self._lines is not None)

    def __enter__(self) -> "RichProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def task(self, description: str, total: int | None):
        if self._lines is not None:
            return self._lines.task(description, total)
        bar = self._bar
        task_id = bar.add_task(description, total=total, info="")

        class _Task:
            def advance(self, n: int = 1, **info: object) -> None:
                text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in info.items() if v is not None)
                bar.update(task_id, advance=n, info=text)

            def close(self) -> None:
                bar.remove_task(task_id)

        return _Task()


def _progress_line(console, line: str) -> None:
    from ..core.runlog import LOGGER

    print(f"progress: {line}", file=console.file, flush=True)
    LOGGER.info("progress: %s", line)


def pass_app(fn: Callable) -> Callable:
    @functools.wraps(fn)
    @click.pass_obj
    def wrapper(app: AppContext, *args, **kwargs):
        return fn(app, *args, **kwargs)

    return wrapper


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (`kill`, a batch scheduler's time limit) ends a run like Ctrl-C: the executor's workers are
    stopped, completed units stay cached, nothing half-written is left."""
    raise KeyboardInterrupt


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(prog_name="worstforget")
    except SystemExit as exc:
        _exit_without_plugin_threads(exc.code)
        raise


def _exit_without_plugin_threads(code: Any) -> None:
    """End now when a plug-in left non-daemon threads running: the results are written, and Python would
    otherwise wait for those threads forever (a hung CI job). Nothing else is skipped when there are none."""
    import sys

    if "worstforget.methods.plugin" not in sys.modules:
        return
    from ..methods.plugin import abandoned_threads

    left = abandoned_threads()
    if not left:
        return
    import os

    status = code if isinstance(code, int) else (0 if code is None else 1)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    print(f"warning: exiting without waiting for {len(left)} thread(s) a plug-in left running", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
