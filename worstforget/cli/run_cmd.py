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
    results folder. Each step's command line is recorded in OUT/commands.txt as it runs.

    Steps run in order (a step may read an earlier one's output, e.g. --params-file from tune
    --update-params); the executor options fan out the units inside each step, with one executor (one
    process pool, one Ray connection) shared by all of them. A step that names its own --executor keeps it."""
    from ..core.errors import WorstforgetError
    from ..core.io import write_json
    from ..core.provenance import code_version, environment

    try:
        spec = json.loads(Path(config).read_text())
        steps = spec["steps"]
        assert isinstance(steps, list) and all(isinstance(s, list) and s for s in steps)
    except (json.JSONDecodeError, KeyError, AssertionError, OSError) as exc:
        raise WorstforgetError(f"{config} is not an experiment config ({type(exc).__name__}); it needs "
                               '{"name": ..., "steps": [["search", "--method", "finetune", ...], ...]}') from None
    out_dir = Path(out or spec.get("out") or Path("results") / spec.get("name", Path(config).stem))
    lines = []
    shared = ctx.obj.executors = {}
    try:
        for number, step in enumerate(steps, 1):
            if only and number not in only:
                continue
            args = [str(a).replace("{out}", str(out_dir)) for a in step]
            args += executor_args(args, executor)
            lines.append("worstforget " + " ".join(args))
            click.echo(f"[{number}/{len(steps)}] {lines[-1]}", err=True)
            if dry_run:
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / "commands.txt", "a") as fh:
                fh.write(lines[-1] + "\n")
            sub = cli.make_context("worstforget", list(args), parent=ctx.parent, obj=ctx.obj)
            with sub:
                cli.invoke(sub)
    finally:
        ctx.obj.executors = None
        for pool in shared.values():
            pool.close()
    if not dry_run:
        write_json(out_dir / "run.json", {"config": spec, "config_path": str(config), "commands": lines,
                                          "code_version": code_version(), "environment": environment()})


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
