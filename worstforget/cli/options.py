"""Option groups shared by the commands, each a small frozen dataclass built by one decorator: the setting
(data, model, original training, device, cache), the executor, the forget set and the output. A command
receives the dataclasses, never a dict of loose options. Every shared option (`--out`, `--forget-ratio`,
`--attacks`) is declared here, once.

Names: counts are `--num-X` (`--num-seeds`, `--num-sets`, `--num-models`), seeds are `--X-seed`
(`--train-seed`, `--forget-seed`, `--search-seed`). The spellings of earlier releases (`--seeds`, `--seed`,
`--set-seed`) still work as hidden aliases.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import click

from .app import EXECUTOR_FLAGS, EXECUTOR_KEYS, MIA_RESAMPLES, AppContext, RegistryChoice, executor_options


class AliasedOption(click.Option):
    """An option with old spellings that still parse but are left out of --help (`hidden_aliases`)."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx: click.Context):
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def option(*names: str, aliases: tuple[str, ...] = (), **kwargs: Any) -> Callable:
    """click.option with hidden `aliases` (old spellings) placed after the names it is documented under."""
    flags = [n for n in names if n.startswith("-")]
    dest = [n for n in names if not n.startswith("-")]
    return click.option(*flags, *aliases, *dest, cls=AliasedOption, hidden_aliases=aliases, **kwargs)


def option_group(cls: type, name: str, options: list[Callable]) -> Callable:
    """A decorator declaring `options` (whose destinations are the fields of dataclass `cls`, any subset) and
    handing the command one `cls` instance as keyword `name` instead of the loose values."""
    keys = [f.name for f in fields(cls)]

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = cls(**{k: kwargs.pop(k) for k in keys if k in kwargs})
            return fn(*args, **kwargs)

        for declare in reversed(options):
            wrapper = declare(wrapper)
        return wrapper

    return decorator


# --- the setting -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SettingOptions:
    """What `prepare_setting` needs, as the options give it."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = None
    model: str | None = None
    norm: str | None = None
    checkpoint: str | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    schedule: str | None = None
    recipe: str | None = None
    compile_model: bool = False
    amp: str = "auto"
    channels_last: bool = True
    train_seed: int = 0
    device: str = "auto"
    no_cache: bool = False
    cache_dir: str | None = None
    mia_resamples: int = MIA_RESAMPLES

    def build(self, progress: Any = None):
        """The setting, built from a recipe that executors' workers rebuild it from."""
        from ..core.cache import check_cache_folder
        from ..core.errors import ConfigError, OptionError, WorstforgetError
        from ..core.runlog import move_run_log
        from ..setting.recipe import SettingRecipe
        from ..training.accel import Accel, set_accel

        if self.cache_dir:
            move_run_log(self.cache_dir)  # the run log belongs with the cache this command uses
        if not self.no_cache:
            try:  # before any training: a cache that cannot be written fails late
                check_cache_folder(self.cache_dir)
            except OptionError as exc:  # an unusable folder, not a bad option: exit 1, as before any work
                raise WorstforgetError(exc.worded(lambda name: "--" + name.replace("_", "-"))) from None

        # speed switches hold for the rest of this command (undone when its click context closes)
        undo = set_accel(Accel(amp=self.amp, channels_last=self.channels_last, compile=self.compile_model))
        click.get_current_context().call_on_close(undo)
        try:
            recipe = SettingRecipe.create(
                dataset=self.dataset, model=self.model, norm=self.norm, data_dir=self.data_dir,
                download=self.download, device=self.device, checkpoint=self.checkpoint,
                train_overrides={"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                                 "schedule": self.schedule},
                seed=self.train_seed, cache=not self.no_cache, cache_dir=self.cache_dir,
                mia_resamples=self.mia_resamples, recipe=self.recipe, train_subset=self.train_subset)
            return recipe.build(progress)
        except OptionError as exc:  # the library names its parameters (device); here they are flags
            raise ConfigError(exc.worded(lambda name: "--" + name.replace("_", "-"))) from None


SETTING_OPTIONS = [
        click.option("--dataset", default="digits", show_default=True,
                     help="Registered dataset (see `worstforget list datasets`), or npz:PATH / h5:PATH."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder holding the dataset files "
                          "[default: $WORSTFORGET_DATA or ~/.cache/worstforget/data]."),
        click.option("--download", is_flag=True, help="Fetch the official archive (checksum-verified) if missing."),
        click.option("--train-subset", type=click.IntRange(min=2), default=None,
                     help="Keep a seeded random subset of this many training samples (a CPU-scale audit of a "
                          "large dataset; validation and test splits unchanged)."),
        click.option("--model", default=None, help="Architecture [default: the dataset's]."),
        click.option("--norm", type=click.Choice(["batch", "group", "none"]), default=None,
                     help="Normalisation layers where the architecture has them."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="Audit your trained state_dict of the chosen architecture instead of training one."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Training epochs of the original model."),
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
        click.option("--train-seed", type=int, default=0, show_default=True,
                     help="Seed of the original model (initialisation and batch order)."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps."),
        click.option("--no-cache", is_flag=True, help="Recompute every unit instead of reusing cached ones."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Cache folder [default: $WORSTFORGET_CACHE or ~/.cache/worstforget]."),
        click.option("--mia-resamples", type=click.IntRange(min=1), default=MIA_RESAMPLES, show_default=True,
                     help="Draws of the SVC attacker's training sample per evaluation (MIA-Efficacy)."),
]

with_setting = option_group(SettingOptions, "data", SETTING_OPTIONS)


# --- the executor -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutorOptions:
    """Where a command's units run."""

    executor: str = "serial"
    workers: int | None = None
    retries: int = 2
    ray_address: str | None = None
    cpus_per_task: float | None = None
    gpus_per_task: float | None = None
    ray_cache: str | None = None

    def build(self, app: AppContext):
        """The executor; closed when the command ends, or shared by the steps of `run` and closed when it ends."""
        from ..core.errors import ConfigError, OptionError
        from ..core.executor import make_executor

        key = tuple(sorted((k, getattr(self, k)) for k in EXECUTOR_KEYS))
        if app.executors is not None and key in app.executors:
            return app.executors[key]
        try:
            executor = make_executor(self.executor, workers=self.workers, retries=self.retries,
                                     address=self.ray_address, cpus_per_task=self.cpus_per_task,
                                     gpus_per_task=self.gpus_per_task, ray_cache=self.ray_cache)
        except OptionError as exc:  # the library names its parameters; here they are flags
            raise ConfigError(exc.worded(lambda n: EXECUTOR_FLAGS.get(n, "--" + n.replace("_", "-")))) from None
        if app.executors is not None:
            app.executors[key] = executor
        else:
            click.get_current_context().call_on_close(executor.close)
        executor.start()
        return executor


def with_executor(fn: Callable) -> Callable:
    """The executor options (declared once, in app.py, where `run` forwards them), as one ExecutorOptions."""
    return option_group(ExecutorOptions, "runner", [executor_options])(fn)


# --- the forget set -----------------------------------------------------------------------------------------

FORGET_RATIO = click.FloatRange(0, 1, min_open=True, max_open=True)


@dataclass(frozen=True)
class ForgetSetOptions:
    """Which forget set: a random one of `forget_ratio` · N samples drawn with `forget_seed`, or `forget_set`."""

    forget_ratio: float = 0.1
    forget_seed: int = 0
    forget_set: str | None = None

    def indices(self, num_train: int):
        """The given set (validated), else the random one."""
        from ..forget_sets import forget_size, load_forget_set, random_forget_set

        if self.forget_set:
            return load_forget_set(self.forget_set, num_train)
        return random_forget_set(num_train, forget_size(num_train, self.forget_ratio), self.forget_seed)

    def source(self) -> str | dict:
        """How the set was chosen, as results record it."""
        return self.forget_set or {"ratio": self.forget_ratio, "seed": self.forget_seed}


def forget_ratio_option(help: str = "Forget-set size as a fraction of the training samples.") -> Callable:
    return click.option("--forget-ratio", type=FORGET_RATIO, default=0.1, show_default=True, help=help)


def with_forget_set(*, seed: str | None = "Seed of the random forget set.", file: bool = False,
                    seed_aliases: tuple[str, ...] = (), ratio_help: str | None = None) -> Callable:
    """The forget-set options a command takes: always --forget-ratio; --forget-seed unless `seed` is None;
    --forget-set FILE.npy when `file`."""
    options = [forget_ratio_option(ratio_help) if ratio_help else forget_ratio_option()]
    if seed is not None:
        options.append(option("--forget-seed", "forget_seed", aliases=seed_aliases, type=int, default=0,
                              show_default=True, help=seed))
    if file:
        options.append(click.option("--forget-set", type=click.Path(dir_okay=False), default=None,
                                    help="A .npy file of training indices to forget (overrides --forget-ratio)."))
    return option_group(ForgetSetOptions, "forget", options)


# --- the output ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputOptions:
    """Where a command writes (`out`), and whether it prints JSON instead of tables (`as_json`)."""

    out: str | None = None
    as_json: bool = False

    def folder(self, default: str | Path | None = None) -> Path | None:
        """The output folder, refused before any work when unusable."""
        from ..core.io import check_output_dir

        chosen = self.out or default
        if chosen is None:
            return None
        check_output_dir(chosen)
        return Path(chosen)

    def file(self) -> Path | None:
        """The output file, refused before any work when unusable."""
        from ..core.io import check_output_file

        if self.out:
            check_output_file(self.out)
        return Path(self.out) if self.out else None


def out_option(help: str, *, folder: bool = True) -> Callable:
    return click.option("--out", type=click.Path(file_okay=not folder, dir_okay=folder), default=None, help=help)


def with_output(help: str, *, folder: bool = True, json_help: str | None = None) -> Callable:
    """--out (a folder, or a file when not `folder`) and, with `json_help`, --json."""
    options = [out_option(help, folder=folder)]
    if json_help:
        options.append(click.option("--json", "as_json", is_flag=True, help=json_help))
    return option_group(OutputOptions, "output", options)


# --- attacks and seeds --------------------------------------------------------------------------------------

class AttackList(click.ParamType):
    """Comma-separated attack names, canonical (registry aliases allowed), read from the registry when used."""

    name = "attacks"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[str]:
        if isinstance(value, list):
            return value
        from ..scoring.attacks import ATTACKS

        return [ATTACKS.canonical(a) for a in str(value).split(",") if a.strip()]


class RegistryHelpOption(click.Option):
    """An option whose help ends with text read from a registry when --help is shown (imports stay lazy)."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx: click.Context):
        base = self.help
        self.help = f"{base} {self.help_from()}"
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = base


def _attacks_help() -> str:
    from ..scoring.attacks import ATTACKS

    return "Registered: " + ", ".join(ATTACKS.in_order()) + " (`worstforget list attacks` describes each)."


def attacks_option(default: str | None, help: str) -> Callable:
    """--attacks: comma-separated names; `default` None means the registry's default attacks."""
    if default is None:
        def default() -> str:  # type: ignore[no-redef]
            from ..scoring.attacks import default_attacks

            return ",".join(default_attacks())
    return click.option("--attacks", type=AttackList(), default=default, show_default=True, cls=RegistryHelpOption,
                        help_from=_attacks_help, help=help)


def num_seeds_option(default: int, help: str) -> Callable:
    return option("--num-seeds", "num_seeds", aliases=("--seeds",), type=click.IntRange(min=1), default=default,
                  show_default=True, help=help)


__all__ = ["SettingOptions", "ExecutorOptions", "ForgetSetOptions", "OutputOptions", "with_setting", "with_executor",
           "with_forget_set", "with_output", "attacks_option", "num_seeds_option", "forget_ratio_option", "option",
           "AliasedOption", "option_group", "FORGET_RATIO"]
