"""`run CONFIG.json`: execute an experiment — a list of worstforget commands — and record provenance."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .app import EXECUTOR_KEYS, cli, executor_options


@cli.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Results folder [default: the config's `out`, else results/<config name>].")
@click.option("--only", type=int, multiple=True, help="Run only these step numbers (1-based). Repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the commands without running them.")
@executor_options
@click.pass_context
def run_command(ctx: click.Context, config: str, out: str | None, only: tuple[int, ...], dry_run: bool,
                **executor: object) -> None:
    """Run the experiment in CONFIG: its `steps` are worstforget command lines; `{out}` expands to the
    results folder. Each step's command line is recorded in OUT/commands.txt once it has run.

    Steps run in order (a step may read an earlier one's output, e.g. --params-file from tune
    --update-params); the executor options fan out the units inside each step, with one executor (one
    process pool, one Ray connection) shared by all of them. A step that names its own --executor keeps it."""
    from ..core.io import write_json
    from ..core.provenance import code_version, environment

    spec = read_config(config)
    steps = spec["steps"]
    out_dir = Path(out or spec.get("out") or Path("results") / spec.get("name", Path(config).stem))
    planned = {number: [a.replace("{out}", str(out_dir)) for a in step] for number, step in enumerate(steps, 1)
               if not only or number in only}
    for number, args in planned.items():  # every step's options are checked before the first one runs
        check_step(ctx, config, number, args)
    lines = []
    shared = ctx.obj.executors = {}
    try:
        for number, step in enumerate(steps, 1):
            if only and number not in only:
                continue
            args = planned[number] + executor_args(planned[number], executor)
            line = "worstforget " + " ".join(args)
            click.echo(f"[{number}/{len(steps)}] {line}", err=True)
            if dry_run:
                lines.append(line)
                continue
            sub = cli.make_context("worstforget", list(args), parent=ctx.parent, obj=ctx.obj)
            with sub:
                cli.invoke(sub)
            lines.append(line)  # recorded once it has run: commands.txt never lists a step that failed
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / "commands.txt", "a") as fh:
                fh.write(line + "\n")
    finally:
        ctx.obj.executors = None
        for pool in shared.values():
            pool.close()
    if not dry_run:
        write_json(out_dir / "run.json", {"config": spec, "config_path": str(config), "commands": lines,
                                          "code_version": code_version(), "environment": environment()})


CONFIG_SHAPE = '{"name": ..., "steps": [["search", "--method", "finetune", ...], ...]}'


def read_config(config: str) -> dict:
    """The experiment config as a dict whose `steps` are non-empty lists of strings (numbers become strings);
    anything else is one line naming the problem."""
    from ..core.errors import WorstforgetError

    def refuse(problem: str) -> WorstforgetError:
        return WorstforgetError(f"{config} is not an experiment config ({problem}); it needs {CONFIG_SHAPE}")

    try:
        spec = json.loads(Path(config).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise refuse(f"unreadable: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise refuse(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(spec, dict):
        raise refuse(f"its root is a JSON {type(spec).__name__}, not an object")
    steps = spec.get("steps")
    if not isinstance(steps, list):
        raise refuse("no `steps` list")
    for number, step in enumerate(steps, 1):
        if not (isinstance(step, list) and step and all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                                        for a in step)):
            raise refuse(f"step {number} is not a non-empty list of strings")
    for key in ("name", "out"):
        if key in spec and not isinstance(spec[key], str):
            raise refuse(f"`{key}` is not a string")
    spec["steps"] = [[str(a) for a in step] for step in steps]
    return spec


def check_step(ctx: click.Context, config: str, number: int, args: list[str]) -> None:
    """Parse a step's command line without running it: an unknown command or option, a missing or malformed
    value, or a nested `run` is refused before any step runs. A path that must exist may be written by an
    earlier step, so its absence is left to the step itself."""
    from ..core.errors import ConfigError

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{config} step {number} ({' '.join(args)}): {problem}")

    try:
        top = cli.make_context("worstforget", list(args), parent=ctx.parent, obj=ctx.obj, resilient_parsing=False)
        rest = [*getattr(top, "_protected_args", []), *top.args]
        if not rest:
            raise refuse("names no command")
        name, command, rest = cli.resolve_command(top, rest)
        if name == "run":
            raise refuse("runs another config; list its steps in this one instead")
        command.make_context(name, rest, parent=top)
    except click.BadParameter as exc:
        if isinstance(exc.param.type if exc.param else None, click.Path) and "does not exist" in exc.format_message():
            return
        raise refuse(exc.format_message()) from None
    except click.UsageError as exc:
        raise refuse(exc.format_message()) from None
    except click.exceptions.Exit:  # --help or --version in a step: nothing to check
        return


def executor_args(args: list[str], executor: dict) -> list[str]:
    """`run`'s executor options as arguments for a step whose command runs units and names no executor of its
    own (none when `run` was given none)."""
    command = cli.commands.get(args[0]) if args else None
    if command is None or not any(p.name == "executor" for p in command.params) or "--executor" in args:
        return []
    defaults = {p.name: p.default for p in command.params if p.name in EXECUTOR_KEYS}
    out: list[str] = []
    for key in EXECUTOR_KEYS:
        value = executor.get(key)
        if value is not None and value != defaults.get(key):
            out += ["--" + key.replace("_", "-"), str(value)]
    return out
