"""`list`, `train` and `unlearn` commands."""
from __future__ import annotations

from pathlib import Path

import click

from .app import RichProgress, cli, data_options, fmt, pass_app, setting_from_options

KINDS = ("methods", "datasets", "models", "solvers")


@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@pass_app
def list_command(app, kind: str) -> None:
    """List registered methods, datasets, models or search solvers."""
    from rich.table import Table

    from ..core.registry import describe

    if kind == "methods":
        from ..methods import METHODS as reg
    elif kind == "datasets":
        from ..datasets import DATASETS as reg
    elif kind == "models":
        from ..training.models import MODELS as reg
    else:
        from ..search import SOLVERS as reg
    table = Table(box=None)
    table.add_column("name", style="bold")
    table.add_column("aliases")
    if kind == "methods":
        table.add_column("unrolled")
    table.add_column("description")
    for name in reg.names():
        entry = reg.get(name)
        row = [name, ", ".join(reg.aliases_of(name))]
        if kind == "methods":
            row.append("yes" if entry.differentiable else "no")
        row.append(describe(entry))
        table.add_row(*row)
    app.out.print(table)


def _params_option(fn):
    return click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                        help="Method hyper-parameter (typed; unknown keys are rejected). Repeatable.")(fn)


@cli.command("train")
@data_options
@click.option("--architecture", type=click.Choice(["single", "sisa", "arcane"]), default="single", show_default=True,
              help="single model, or the sharded original of the SISA / ARCANE exact-unlearning systems.")
@_params_option
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write accuracies and timings (JSON) here.")
@pass_app
def train_command(app, architecture: str, params: tuple[str, ...], out: str | None, **opts) -> None:
    """Train (or fetch from the cache) the original model and report its accuracy."""
    from ..core.io import write_json
    from ..methods import make_method, parse_params
    from ..training.loop import split_accuracies
    from ..training.original import training_seconds

    hyper = parse_params(architecture, params) if architecture != "single" else {}
    with RichProgress(app.err) as progress:
        setting = setting_from_options(app, progress, opts)
        data, model = setting.data, setting.original
        record = {"architecture": architecture, "dataset": data.name, "model": setting.spec.name,
                  "single_model_train_seconds": training_seconds(setting.spec, data, records=setting.records)}
        if architecture != "single":
            built = make_method(architecture, hyper).partitioned_original(data, setting.spec, progress=progress)
            model = getattr(built, "ensemble", None) or getattr(built, "scorers")
            record.update(params=hyper, train_seconds=built.train_seconds,
                          overhead_vs_single=built.train_seconds / record["single_model_train_seconds"])
    single, accs = split_accuracies(setting.original, data), split_accuracies(model, data)
    record.update(accuracy=accs, single_model_accuracy=single)
    if out:
        write_json(out, record)
    app.out.print(f"{data.name} / {setting.spec.name} ({architecture}): train {accs['train']:.2f}%  "
                  f"val {accs['val']:.2f}%  test {accs['test']:.2f}%  (cache key {setting.original_key})")
    if architecture != "single":
        app.out.print(f"single model: test {single['test']:.2f}% in {record['single_model_train_seconds']:.1f}s; "
                      f"{architecture}: {record['train_seconds']:.1f}s to train "
                      f"({record['overhead_vs_single']:.2f}× a single model), accuracy cost "
                      f"{single['test'] - accs['test']:.2f} points")


@cli.command("unlearn")
@click.option("--method", required=True, help="Unlearning method (see `worstforget list methods`).")
@data_options
@click.option("--forget-ratio", type=float, default=0.1, show_default=True, help="Size of a random forget set.")
@click.option("--forget-seed", type=int, default=0, show_default=True, help="Seed of the random forget set.")
@click.option("--forget-set", type=click.Path(dir_okay=False), default=None,
              help="A .npy file of training indices to forget (overrides --forget-ratio).")
@_params_option
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Unlearning seeds (runs of the method and of Retrain) to average.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write summary.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@pass_app
def unlearn_command(app, method: str, forget_ratio: float, forget_seed: int, forget_set: str | None,
                    params: tuple[str, ...], num_seeds: int, out: str | None, as_json: bool, **opts) -> None:
    """Run METHOD and exact Retrain on one forget set; print UA, MIA, RA, TA, RTE and Avg. Gap."""
    import json

    from ..audit.units import compare_on_set, summarize_runs
    from ..core.io import write_json
    from ..core.provenance import code_version, environment
    from ..forget_sets import random_forget_set
    from ..methods import METHODS, make_method, parse_params
    from ..scoring.metrics import mean_std
    from ..setting import forget_size, load_forget_set

    name = METHODS.canonical(method)
    hyper = parse_params(name, params)
    make_method(name, hyper)  # reject bad hyper-parameters before any training
    if forget_set is None:
        forget_size(100, forget_ratio)  # validates the ratio before loading data
    with RichProgress(app.err) as progress:
        setting = setting_from_options(app, progress, opts)
        n = setting.data.num_train
        indices = load_forget_set(forget_set, n) if forget_set else \
            random_forget_set(n, forget_size(n, forget_ratio), forget_seed)
        runs = compare_on_set(setting, [(name, hyper)], indices, seeds=list(range(num_seeds)), progress=progress)
    summary = {
        "dataset": setting.data.name, "model": setting.spec.name, "method": name, "params": hyper,
        "num_train": n, "forget_size": len(indices),
        "forget_source": forget_set or {"ratio": forget_ratio, "seed": forget_seed},
        "seeds": list(range(num_seeds)),
        name: {k: v["mean"] for k, v in summarize_runs(runs[name]).items()},
        "retrain": {k: v["mean"] for k, v in summarize_runs(runs["retrain"]).items()},
        "avg_gap": mean_std(runs["avg_gap"][name])["mean"],
        "std": {name: {k: v["std"] for k, v in summarize_runs(runs[name]).items()},
                "retrain": {k: v["std"] for k, v in summarize_runs(runs["retrain"]).items()},
                "avg_gap": mean_std(runs["avg_gap"][name])["std"]},
        "runs": runs, "setting": setting.describe(), "code_version": code_version(), "environment": environment(),
    }
    if out:
        write_json(Path(out) / "summary.json", summary)
    if as_json:
        click.echo(json.dumps({k: summary[k] for k in (name, "retrain", "avg_gap")}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{name} vs retrain on {len(indices)} of {n} samples ({setting.data.name}, {setting.spec.name})")
    for col in ("method", "UA", "MIA", "RA", "TA", "RTE (s)", "Avg. Gap"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for who in (name, "retrain"):
        s = summarize_runs(runs[who])
        gap = fmt(mean_std(runs["avg_gap"][name])) if who == name else "0"
        table.add_row(who, fmt(s["UA"]), fmt(s["MIA"]), fmt(s["RA"]), fmt(s["TA"]), fmt(s["RTE"]), gap)
    app.out.print(table)
    if out:
        app.out.print(str(Path(out) / "summary.json"))


@cli.command("tune")
@click.option("--method", required=True, help="Unlearning method to tune.")
@data_options
@click.option("--grid", "grid_specs", multiple=True, required=True, metavar="KEY=V1,V2,...",
              help="Values to try for a hyper-parameter. Repeatable; the grid is their product.")
@_params_option
@click.option("--forget-ratio", type=float, default=0.1, show_default=True)
@click.option("--num-sets", type=click.IntRange(min=1), default=3, show_default=True, help="Random forget sets.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the tuning record (JSON) here.")
@click.option("--update-params", type=click.Path(dir_okay=False), default=None,
              help="Merge the best setting into this {method: params} JSON file (for --params-file).")
@pass_app
def tune_command(app, method, grid_specs, params, forget_ratio, num_sets, seed, out, update_params, **opts) -> None:
    """Pick METHOD's hyper-parameters by minimum Avg. Gap to Retrain on random forget sets (the paper's protocol)."""
    from rich.table import Table

    from ..audit.tune import parse_grid, tune
    from ..core.io import write_json
    from ..core.provenance import code_version
    from ..methods import METHODS, parse_params
    from ..setting import forget_size

    name = METHODS.canonical(method)
    grid = parse_grid(name, grid_specs)
    base = parse_params(name, params)
    forget_size(100, forget_ratio)
    with RichProgress(app.err) as progress:
        setting = setting_from_options(app, progress, opts)
        record = tune(setting, name, grid, base=base, forget_ratio=forget_ratio, num_sets=num_sets, seed=seed,
                      progress=progress)
    record.update(setting=setting.describe(), code_version=code_version())
    if out:
        write_json(out, record)
    if update_params:
        merged = load_params_file(update_params) if Path(update_params).is_file() else {}
        merged[name] = record["best"]
        write_json(update_params, merged)
    table = Table(title=f"{name}: Avg. Gap to Retrain on {num_sets} random sets ({setting.data.name})")
    table.add_column("params")
    table.add_column("Avg. Gap", justify="right")
    for row in sorted(record["rows"], key=lambda r: r["avg_gap"]):
        table.add_row(" ".join(f"{k}={v}" for k, v in row["params"].items()),
                      fmt({"mean": row["avg_gap"], "std": row["avg_gap_std"], "n": num_sets}))
    app.out.print(table)
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
@data_options
@click.option("--params-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"method": {"param": value}} of tuned hyper-parameters.')
@click.option("--forget-ratio", type=float, default=0.1, show_default=True)
@click.option("--num-sets", type=click.IntRange(min=1), default=3, show_default=True, help="Random forget sets.")
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Unlearning seeds per set.")
@click.option("--set-seed", type=int, default=0, show_default=True, help="Seed of the first random set.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write summary.json here.")
@pass_app
def compare_command(app, methods, params_file, forget_ratio, num_sets, num_seeds, set_seed, out, **opts) -> None:
    """Every method vs Retrain on random forget sets: UA, MIA, RA, TA, RTE and Avg. Gap, mean ± std."""
    from rich.table import Table

    from ..audit.units import compare_methods
    from ..core.io import write_json
    from ..core.provenance import code_version, environment
    from ..methods import METHODS, make_method
    from ..setting import forget_size

    names = [n for n in METHODS.names() if n not in ("retrain",)] if methods.strip() == "all" else \
        [METHODS.canonical(m) for m in methods.split(",") if m.strip()]
    tuned = load_params_file(params_file)
    chosen = [(n, tuned.get(n, {})) for n in names if n != "retrain"]
    for n, p in chosen:
        make_method(n, p)
    forget_size(100, forget_ratio)
    with RichProgress(app.err) as progress:
        setting = setting_from_options(app, progress, opts)
        result = compare_methods(setting, chosen, forget_ratio=forget_ratio, num_sets=num_sets,
                                 seeds=list(range(num_seeds)), set_seed=set_seed, progress=progress)
    result.update(dataset=setting.data.name, model=setting.spec.name, params={n: p for n, p in chosen},
                  setting=setting.describe(), code_version=code_version(), environment=environment())
    if out:
        write_json(Path(out) / "summary.json", result)
    t = result["table"]
    table = Table(title=f"{len(chosen)} methods vs retrain, {num_sets} random sets of {result['forget_size']} "
                        f"({setting.data.name}/{setting.spec.name})")
    for col in ("method", "UA", "MIA", "RA", "TA", "RTE (s)", "RTE/Retrain", "Avg. Gap"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for who in ["retrain", *[n for n, _ in chosen]]:
        row = t[who]
        table.add_row(who, fmt(row["UA"]), fmt(row["MIA"]), fmt(row["RA"]), fmt(row["TA"]), fmt(row["RTE"]),
                      fmt(row["RTE_fraction"], 3) if "RTE_fraction" in row else "1",
                      fmt(row["avg_gap"]) if "avg_gap" in row else "–")
    app.out.print(table)
    if out:
        app.out.print(str(Path(out) / "summary.json"))
