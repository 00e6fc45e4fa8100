"""`list`, `train`, `unlearn`, `tune` and `compare` commands."""
from __future__ import annotations

from pathlib import Path

import click

from .app import RichProgress, cli, pass_app
from .options import (
    ExecutorOptions,
    ForgetSetOptions,
    OutputOptions,
    SettingOptions,
    num_seeds_option,
    with_executor,
    with_forget_set,
    with_output,
    with_setting,
)


def registries() -> dict:
    """Every registry `list` can show (imported on use, so --help stays fast)."""
    from ..datasets import DATASETS
    from ..forget_sets import BASELINES, SELECTORS
    from ..methods import METHODS
    from ..scoring.attacks import ATTACKS
    from ..search import SOLVERS
    from ..search.objectives import OBJECTIVES
    from ..training.models import MODELS
    from ..training.optim import OPTIMIZERS, SCHEDULES
    from ..training.recipes import RECIPES

    found = {"methods": METHODS, "datasets": DATASETS, "models": MODELS, "solvers": SOLVERS, "attacks": ATTACKS,
             "selectors": SELECTORS, "objectives": OBJECTIVES, "baselines": BASELINES, "optimizers": OPTIMIZERS,
             "schedules": SCHEDULES, "recipes": RECIPES}
    # the generative task's (search --task generation): its registries import no diffusers
    from ..datasets.concepts import CONCEPT_DATASETS
    from ..methods.concepts import CONCEPT_METHODS
    from ..search.concepts import CONCEPT_OBJECTIVES

    return {**found, "concept-methods": CONCEPT_METHODS, "concept-datasets": CONCEPT_DATASETS,
            "concept-objectives": CONCEPT_OBJECTIVES}


KINDS = ("methods", "datasets", "models", "solvers", "attacks", "selectors", "objectives", "baselines", "optimizers",
         "schedules", "recipes", "concept-methods", "concept-datasets", "concept-objectives")


@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@pass_app
def list_command(app, kind: str) -> None:
    """List a registry: methods, datasets, models, solvers, attacks, selectors, objectives, baselines,
    optimizers, schedules or recipes."""
    from rich.table import Table

    from ..core.registry import describe
    from ..methods.stacked import stackable

    reg = registries()[kind]
    table = Table(box=None)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("aliases")
    if kind == "methods":
        table.add_column("unrolled")
        table.add_column("stacked")  # an audit's runs of it train as one stack (Retrain: always)
    table.add_column("description")
    for name in reg.names():
        entry = reg.get(name)
        row = [name, ", ".join(reg.aliases_of(name))]
        if kind == "methods":
            row.append("yes" if entry.differentiable else "no")
            row.append("yes" if name == "retrain" or stackable(entry) else "no")
        row.append(describe(entry))
        table.add_row(*row)
    app.out.print(table)


def _params_option(fn):
    return click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                        help="Method hyper-parameter (typed; unknown keys are rejected). Repeatable.")(fn)


@cli.command("train")
@with_setting
@click.option("--architecture", type=click.Choice(["single", "sisa", "arcane"]), default="single", show_default=True,
              help="single model, or the sharded original of the SISA / ARCANE exact-unlearning systems.")
@_params_option
@with_output("Write accuracies and timings (JSON) to this file.", folder=False)
@pass_app
def train_command(app, architecture: str, params: tuple[str, ...], data: SettingOptions, output: OutputOptions) -> None:
    """Train (or fetch from the cache) the original model and report its accuracy."""
    from ..core.io import write_json
    from ..methods import make_method, parse_params
    from ..training.loop import split_accuracies

    hyper = parse_params(architecture, params) if architecture != "single" else {}
    out = output.file()
    with RichProgress(app.err) as progress:
        setting = data.build(progress)
        data, model = setting.data, setting.original
        single_seconds = setting.train_seconds
        record = {"architecture": architecture, "dataset": data.name, "model": setting.spec.name,
                  "original_source": setting.original_source, "single_model_train_seconds": single_seconds}
        if architecture != "single":
            built = make_method(architecture, hyper).partitioned_original(data, setting.spec, progress=progress)
            model = built.model
            record.update(params=hyper, train_seconds=built.train_seconds,
                          overhead_vs_single=built.train_seconds / single_seconds if single_seconds else None)
    single, accs = split_accuracies(setting.original, data), split_accuracies(model, data)
    record.update(accuracy=accs, single_model_accuracy=single)
    if out:
        write_json(out, record)
    app.out.print(f"{data.name} / {setting.spec.name} ({architecture}): train {accs['train']:.2f}%  "
                  f"val {accs['val']:.2f}%  test {accs['test']:.2f}%  (cache key {setting.original_key})")
    timing = "training time unknown (a checkpoint)" if single_seconds is None else f"trained in {single_seconds:.1f}s"
    if architecture == "single":
        app.out.print(f"original: {setting.original_source}, {timing}")
    else:
        overhead = record["overhead_vs_single"]
        app.out.print(f"single model: test {single['test']:.2f}%, {timing}; {architecture}: "
                      f"{record['train_seconds']:.1f}s to train"
                      + (f" ({overhead:.2f}× a single model)" if overhead else "")
                      + f", accuracy cost {single['test'] - accs['test']:.2f} points")


@cli.command("unlearn")
@click.option("--method", required=True, help="Unlearning method (see `worstforget list methods`).")
@with_setting
@with_forget_set(file=True, ratio_help="Size of a random forget set, as a fraction of the training samples.")
@_params_option
@num_seeds_option(1, "Unlearning seeds (runs of the method and of Retrain) to average.")
@with_output("Write summary.json and results.csv into this folder.", json_help="Print summary.json instead of a table.")
@with_executor
@pass_app
def unlearn_command(app, method: str, params: tuple[str, ...], num_seeds: int, data: SettingOptions,
                    forget: ForgetSetOptions, output: OutputOptions, runner: ExecutorOptions) -> None:
    """Run METHOD and exact Retrain on one forget set; print UA, MIA, RA, TA, RTE and Avg. Gap."""
    from ..audit.units import unlearn_on_set
    from ..methods import METHODS, make_method, parse_params

    name = METHODS.canonical(method)
    hyper = parse_params(name, params)
    make_method(name, hyper)  # reject bad hyper-parameters before any training
    out = output.folder()
    executor = runner.build(app)
    with RichProgress(app.err) as progress:
        setting = data.build(progress)
        n = setting.data.num_train
        indices = forget.indices(n)
        result = unlearn_on_set(setting, name, hyper, indices, seeds=list(range(num_seeds)), source=forget.source(),
                                progress=progress, executor=executor)
    finish(app, result, out, output.as_json, title=f"{name} vs Retrain on {len(indices)} of {n} samples "
                                                    f"({setting.data.name}/{setting.spec.name})")


def finish(app, result, out: str | Path | None, as_json: bool, *, title: str) -> None:
    """Write a comparison's folder (when --out) and print it."""
    import json

    from .render import print_comparison

    summary = result.summary()
    if out:
        result.write(out)
    if as_json:
        from ..core.io import to_jsonable

        click.echo(json.dumps(to_jsonable(summary, nan_to_none=True), indent=2))
        return
    print_comparison(app.out, summary, title=title)
    if out:
        app.out.print(str(Path(out)))


@cli.command("tune")
@click.option("--method", required=True, help="Unlearning method to tune.")
@with_setting
@click.option("--grid", "grid_specs", multiple=True, required=True, metavar="KEY=V1,V2,...",
              help="Values to try for a hyper-parameter. Repeatable; the grid is their product.")
@_params_option
@with_forget_set(seed="Seed of the random tuning sets.", seed_aliases=("--seed",))
@click.option("--num-sets", type=click.IntRange(min=1), default=3, show_default=True, help="Random forget sets.")
@with_output("Write the tuning record (JSON) to this file.", folder=False)
@click.option("--update-params", type=click.Path(dir_okay=False), default=None,
              help="Merge the best setting into this {method: params} JSON file (for --params-file).")
@click.option("--sampler", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True,
              help="grid: every point; tpe: Optuna's TPE proposes --trials points (pip install 'worstforget[tune]'), "
                   "in a study kept in the cache folder that a later call resumes.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="More TPE trials to run (--sampler tpe; stops early once every grid point is evaluated).")
@with_executor
@pass_app
def tune_command(app, method, grid_specs, params, num_sets, update_params, sampler, trials, data: SettingOptions,
                 forget: ForgetSetOptions, output: OutputOptions, runner: ExecutorOptions) -> None:
    """Pick METHOD's hyper-parameters by minimum Avg. Gap to Retrain on random forget sets (the paper's protocol)."""
    from rich.table import Table

    from ..audit.tune import parse_grid, tune
    from ..core.io import check_output_file, write_json
    from ..core.provenance import code_version
    from ..core.stats import fmt_agg
    from ..methods import METHODS, parse_params

    name = METHODS.canonical(method)
    grid = parse_grid(name, grid_specs)
    base = parse_params(name, params)
    out = output.file()
    if update_params:
        check_output_file(update_params, what="--update-params")
    merged = load_params_file(update_params) if update_params and Path(update_params).is_file() else {}
    if sampler == "tpe":
        from ..audit.tune import import_optuna

        import_optuna()  # a missing Optuna is one line before any training
    executor = runner.build(app)
    with RichProgress(app.err) as progress:
        setting = data.build(progress)
        record = tune(setting, name, grid, base=base, forget_ratio=forget.forget_ratio, num_sets=num_sets,
                      seed=forget.forget_seed,
                      sampler=sampler, trials=trials, progress=progress, executor=executor)
    record.update(setting=setting.describe(), code_version=code_version())
    if out:
        write_json(out, record)
    if update_params:
        merged[name] = record["best"]
        write_json(update_params, merged)
    table = Table(title=f"{name}: Avg. Gap to Retrain on {num_sets} random sets ({setting.data.name})")
    table.add_column("params")
    table.add_column("Avg. Gap", justify="right")
    for row in sorted(record["rows"], key=lambda r: r["avg_gap"]["mean"]):
        table.add_row(" ".join(f"{k}={v}" for k, v in row["params"].items()), fmt_agg(row["avg_gap"], sep="±"))
    app.out.print(table)
    if sampler == "tpe":
        app.out.print(f"TPE: {record['trials']} trials in the study ({record['trials_run']} now), "
                      f"{len(record['rows'])} of {record['space']} points evaluated")
    app.out.print("best: " + " ".join(f"--param {k}={v}" for k, v in record["best"].items()))


def load_params_file(path: str | None) -> dict[str, dict]:
    """{method: {param: value}} from a JSON file (e.g. merged `tune --out` records' `best`)."""
    import json

    from ..core.errors import WorstforgetError
    from ..methods import METHODS

    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WorstforgetError(f"cannot read params file {path} ({exc}); give JSON like "
                               '{"finetune": {"lr": 0.01}}') from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise WorstforgetError(f"params file {path} must map method names to objects of hyper-parameters")
    return {METHODS.canonical(k): v for k, v in raw.items()}


@cli.command("compare")
@click.option("--methods", default="all", show_default=True, help="Comma-separated methods, or 'all'.")
@with_setting
@click.option("--params-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"method": {"param": value}} of tuned hyper-parameters.')
@with_forget_set(seed="Seed of the first random forget set (the r-th uses seed + r).", seed_aliases=("--set-seed",))
@click.option("--num-sets", type=click.IntRange(min=1), default=3, show_default=True, help="Random forget sets.")
@num_seeds_option(1, "Unlearning seeds per set.")
@with_output("Write summary.json and results.csv into this folder.")
@with_executor
@pass_app
def compare_command(app, methods, params_file, num_sets, num_seeds, data: SettingOptions, forget: ForgetSetOptions,
                    output: OutputOptions, runner: ExecutorOptions) -> None:
    """Every method vs Retrain on random forget sets: UA, MIA, RA, TA, RTE and Avg. Gap, mean ± std."""
    from ..audit.units import compare_methods
    from ..methods import METHODS, make_method

    names = [n for n in METHODS.names() if n not in ("retrain",)] if methods.strip() == "all" else \
        [METHODS.canonical(m) for m in methods.split(",") if m.strip()]
    tuned = load_params_file(params_file)
    chosen = [(n, tuned.get(n, {})) for n in names if n != "retrain"]
    for n, p in chosen:
        make_method(n, p)
    out = output.folder()
    executor = runner.build(app)
    with RichProgress(app.err) as progress:
        setting = data.build(progress)
        result = compare_methods(setting, chosen, forget_ratio=forget.forget_ratio, num_sets=num_sets,
                                 seeds=list(range(num_seeds)), set_seed=forget.forget_seed, progress=progress,
                                 executor=executor)
    finish(app, result, out, False, title=f"{len(chosen)} methods vs Retrain, {num_sets} random sets of "
                                          f"{result.header['forget_size']} ({setting.data.name}/{setting.spec.name})")
