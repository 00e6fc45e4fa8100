"""The click group, shared options, error handling and rich rendering helpers (rich lives only here)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from ..core.errors import ConfigError, WorstforgetError

MIA_RESAMPLES = 3  # = setting.MIA_RESAMPLES (a test keeps them equal; importing it here would load torch for --help)


class WorstforgetGroup(click.Group):
    """Turns library errors into one-line messages: bad options exit 2, other problems exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..core.runlog import LOGGER, stop_run_log, where_logged

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.UsageError(str(exc), ctx=None) from None
        except WorstforgetError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; completed units are cached and --resume continues a search") from None
        except click.UsageError as exc:  # a bad option: one line naming it, no usage block (still exit 2)
            if exc.ctx is None:
                raise
            raise click.UsageError(exc.format_message(), ctx=None) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: one line here, the traceback in the run log
            LOGGER.exception("unexpected error")
            raise click.ClickException(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
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

        from ..methods.plugin import load_plugins

        if os.getcwd() not in sys.path:  # as `python -m` does: a submission in the working folder imports
            sys.path.insert(0, os.getcwd())
        load_plugins(plugins, batch_format=batch_format, override=plugin_override)


def data_options(fn: Callable) -> Callable:
    """Options that choose the setting: data, model, original training, device, cache."""
    options = [
        click.option("--dataset", default="digits", show_default=True,
                     help="Registered dataset (see `worstforget list datasets`), or npz:PATH / h5:PATH."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder holding the dataset files [default: $WORSTFORGET_DATA or ~/.cache/worstforget/data]."),
        click.option("--download", is_flag=True, help="Fetch the official archive (checksum-verified) if missing."),
        click.option("--train-subset", type=click.IntRange(min=2), default=None,
                     help="Keep a seeded random subset of this many training samples (a CPU-scale audit of a "
                          "large dataset; validation and test splits unchanged)."),
        click.option("--model", default=None, help="Architecture [default: the dataset's]."),
        click.option("--norm", type=click.Choice(["batch", "group", "none"]), default=None,
                     help="Normalisation layers where the architecture has them."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="Audit your trained state_dict of the chosen architecture instead of training one."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs of the original model."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Training learning rate."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Training batch size."),
        click.option("--schedule", type=RegistryChoice("..training.optim:SCHEDULES"), default=None,
                     help="Learning-rate schedule of training (see `worstforget list schedules`)."),
        click.option("--recipe", type=RegistryChoice("..training.recipes:RECIPES"), default=None,
                     help="A named training recipe replacing the dataset's defaults (paper: 182 epochs; fast: 30 "
                          "epochs for CIFAR ResNet-18); --epochs, --lr... still override it."),
        click.option("--compile", "compile_model", is_flag=True, help="torch.compile the training forward."),
        click.option("--amp", type=click.Choice(["auto", "bf16", "off"]), default="auto", show_default=True,
                     help="bf16 autocast for training on CUDA (auto: where the GPU has native bf16; never on CPU)."),
        click.option("--channels-last/--no-channels-last", default=True, show_default=True,
                     help="channels_last memory format for conv nets on CUDA (no effect on CPU)."),
        click.option("--train-seed", type=int, default=0, show_default=True, help="Seed of the original model."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps."),
        click.option("--no-cache", is_flag=True, help="Recompute every unit instead of reusing cached ones."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Cache folder [default: $WORSTFORGET_CACHE or ~/.cache/worstforget]."),
        click.option("--mia-resamples", type=click.IntRange(min=1), default=MIA_RESAMPLES, show_default=True,
                     help="Draws of the SVC attacker's training sample per evaluation (MIA-Efficacy)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def setting_from_options(app: AppContext, progress, opts: dict):
    """The setting of the data options, built from a recipe that executors' workers rebuild it from."""
    from ..setting.recipe import SettingRecipe
    from ..training.accel import Accel, set_accel

    # speed switches hold for the rest of this command (undone when its click context closes)
    undo = set_accel(Accel(amp=opts["amp"], channels_last=opts["channels_last"], compile=opts["compile_model"]))
    click.get_current_context().call_on_close(undo)
    return SettingRecipe.create(
        dataset=opts["dataset"], model=opts["model"], norm=opts["norm"], data_dir=opts["data_dir"],
        download=opts["download"], device=opts["device"], checkpoint=opts["checkpoint"],
        train_overrides={"epochs": opts["epochs"], "lr": opts["lr"], "batch_size": opts["batch_size"],
                         "schedule": opts["schedule"]},
        seed=opts["train_seed"], cache=not opts["no_cache"], cache_dir=opts["cache_dir"],
        mia_resamples=opts["mia_resamples"], recipe=opts["recipe"], train_subset=opts["train_subset"]).build(progress)


EXECUTOR_KEYS = ("executor", "workers", "retries", "ray_address", "cpus_per_task", "gpus_per_task")
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
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def executor_from_options(app: AppContext, opts: dict):
    """The executor of `executor_options` (taken out of `opts`); closed when the command ends, or shared by the
    steps of `run` and closed when it ends."""
    from ..core.errors import ConfigError, OptionError
    from ..core.executor import make_executor

    chosen = {k: opts.pop(k) for k in EXECUTOR_KEYS}
    key = tuple(sorted(chosen.items()))
    if app.executors is not None and key in app.executors:
        return app.executors[key]
    try:
        executor = make_executor(chosen["executor"], workers=chosen["workers"], retries=chosen["retries"],
                                 address=chosen["ray_address"], cpus_per_task=chosen["cpus_per_task"],
                                 gpus_per_task=chosen["gpus_per_task"])
    except OptionError as exc:  # the library names its parameters; here they are flags
        raise ConfigError(exc.worded(lambda name: EXECUTOR_FLAGS.get(name, "--" + name.replace("_", "-")))) from None
    if app.executors is not None:
        app.executors[key] = executor
    else:
        click.get_current_context().call_on_close(executor.close)
    executor.start()
    return executor


class RichProgress:
    """Adapts the library's progress sink to rich bars on stderr."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=console, transient=False, disable=console.quiet)

    def __enter__(self) -> "RichProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def task(self, description: str, total: int | None):
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
    cli(prog_name="worstforget")
