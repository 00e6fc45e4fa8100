"""`search`: find the worst-case forget set and compare it with random and heuristic sets."""
from __future__ import annotations

from pathlib import Path

import click

from .app import RichProgress, cli, data_options, fmt, pass_app, setting_from_options
from .basic import _params_option


@cli.command("search")
@click.option("--method", default="finetune", show_default=True, help="Unlearning method to audit.")
@data_options
@click.option("--forget-ratio", type=float, default=0.1, show_default=True, help="Forget-set size as a fraction.")
@click.option("--solver", type=click.Choice(["first-order", "unrolled"]), default="first-order", show_default=True,
              help="first-order: sign-SGD lower level (the paper's); unrolled: differentiate through SGD steps.")
@click.option("--outer-steps", type=click.IntRange(min=1), default=20, show_default=True, help="Upper-level steps.")
@click.option("--inner-steps", type=click.IntRange(min=1), default=None,
              help="Lower-level optimisation steps [default: 2 epochs first-order, 10 unrolled].")
@click.option("--inner-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Lower-level learning rate [default: 1e-3 sign steps; the method's lr unrolled].")
@click.option("--upper-lr", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Upper step α, in units of the gradient's std (see --raw-step).")
@click.option("--raw-step", is_flag=True, help="Use α on the raw gradient (the paper's update) instead of normalising.")
@click.option("--gamma", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="γ of the ‖w‖² term.")
@click.option("--objective", type=click.Choice(["loss", "margin"]), default="loss", show_default=True)
@click.option("--granularity", type=click.Choice(["sample", "class"]), default="sample", show_default=True)
@click.option("--init", type=click.Choice(["uniform", "random"]), default="uniform", show_default=True,
              help="Start from w = m/N or from a random binary set.")
@click.option("--num-random", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random forget sets of the same size.")
@click.option("--eval-methods", default="", help="Comma-separated further methods evaluated on every set, or 'all'.")
@click.option("--params-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"method": {"param": value}} (e.g. from `tune --update-params`) for the audited and eval methods.')
@click.option("--seeds", "num_seeds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Unlearning seeds per forget set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Search seed (and random-set seed).")
@click.option("--mia-resamples", type=click.IntRange(min=1), default=3, show_default=True,
              help="Draws of the SVC attacker's training sample per evaluation.")
@click.option("--stability/--no-stability", default=True, show_default=True,
              help="Search again with seed+1 and report the Jaccard overlap.")
@click.option("--attacks", default="", help="Also run these attacks (loss,lira,epsilon,ks,tow) on every set; "
              "writes evaluation.json (see `worstforget evaluate`).")
@click.option("--num-models", type=click.IntRange(min=2), default=16, show_default=True,
              help="Unlearned and retrained models per set for --attacks.")
@_params_option
@click.option("--resume", is_flag=True, help="Continue an interrupted search from its last outer step.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: ./worstforget-out/search-DATASET-METHOD].")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of tables.")
@pass_app
def search_command(app, method, forget_ratio, solver, outer_steps, inner_steps, inner_lr, upper_lr, raw_step, gamma,
                   objective, granularity, init, num_random, eval_methods, params_file, num_seeds, seed, mia_resamples,
                   stability, attacks, num_models, params, resume, out, as_json, **opts) -> None:
    """Search the worst-case forget set for METHOD and report it against random sets of the same size."""
    import json

    from ..audit.worst_case import AuditOptions, run_search_audit, write_outputs
    from ..methods import METHODS, make_method, parse_params
    from ..search import SearchConfig
    from ..search.solvers import check_solver
    from .basic import load_params_file

    name = METHODS.canonical(method)
    tuned = load_params_file(params_file)
    hyper = {**tuned.get(name, {}), **parse_params(name, params)}
    instance = make_method(name, hyper)
    cfg = SearchConfig(forget_ratio=forget_ratio, solver=solver.replace("-", "_"), outer_steps=outer_steps,
                       inner_steps=inner_steps, inner_lr=inner_lr, upper_lr=upper_lr, normalize_step=not raw_step,
                       gamma=gamma, objective=objective, granularity=granularity, init=init).validate()
    check_solver(cfg.solver, instance)
    extra = METHODS.names() if eval_methods.strip() == "all" else [m for m in eval_methods.split(",") if m.strip()]
    extra = [METHODS.canonical(m) for m in extra]
    options = AuditOptions(num_random=num_random, eval_methods=extra, eval_params=tuned, seeds=num_seeds,
                           stability=stability)
    out_dir = Path(out) if out else Path("worstforget-out") / f"search-{opts['dataset'].replace(':', '_')}-{name}"
    with RichProgress(app.err) as progress:
        setting = setting_from_options(app, progress, opts)
        setting.mia_resamples = mia_resamples
        audit = run_search_audit(setting, name, hyper, cfg, seed=seed, options=options, resume=resume,
                                 progress=progress)
        evaluation = None
        if attacks.strip():
            from ..audit.attack_eval import evaluate_sets
            from .evaluate_cmd import parse_attacks

            evaluation = evaluate_sets(setting, [(name, hyper)], audit["arrays"]["sets"], num_models=num_models,
                                       attacks=parse_attacks(attacks), progress=progress)
    paths = write_outputs(out_dir, audit)
    if evaluation is not None:
        from ..audit.attack_eval import write_evaluation

        write_evaluation(out_dir, evaluation, setting=setting,
                         config={"method": name, "params": hyper, "attacks": attacks, "num_models": num_models})
    summary = audit["summary"]
    if as_json:
        click.echo(json.dumps(json.loads(paths["json"].read_text()), indent=2))
        return
    render_summary(app.out, summary)
    app.out.print(str(out_dir))


def render_summary(console, summary: dict) -> None:
    """Worst-case vs random (vs heuristic) table, every number next to Retrain's."""
    from rich.table import Table

    s = summary
    title = (f"{s['method']} on {s['dataset']}/{s['model']}: worst-case vs random forget sets "
             f"({s['forget_size']} of {s['num_train']}, {s['solver']} solver, {s['objective']} objective)")
    table = Table(title=title)
    for col in ("set", "method", "UA", "MIA", "RA", "TA", "RTE (s)", "Avg. Gap"):
        table.add_column(col, justify="left" if col in ("set", "method") else "right")
    methods = [m for m in s["worst_case"] if m not in ("avg_gap", "std", "retrain")]
    for kind in ("worst_case", "heuristic", "random"):
        if kind not in s:
            continue
        block = s[kind]
        for who in ["retrain", *methods]:
            row = block[who]
            std = block["std"][who]

            def cell(k):
                v = row[k]
                return fmt(v) if isinstance(v, dict) else fmt({"mean": v, "std": std[k], "n": 2 if len(s["unlearn_seeds"]) > 1 else 1})

            gap = "–" if who == "retrain" else (fmt(block["avg_gap"][who]) if isinstance(block["avg_gap"][who], dict)
                                                 else fmt({"mean": block["avg_gap"][who], "std": block["std"]["avg_gap"][who],
                                                           "n": len(s["unlearn_seeds"])}))
            table.add_row(kind.replace("_", "-"), who, cell("UA"), cell("MIA"), cell("RA"), cell("TA"), cell("RTE"), gap)
        table.add_section()
    console.print(table)
    moved = 1 - s["search"]["overlap_with_initial"][-1]
    cost = s["search"].get("cost_vs_training")
    line = (f"search: {s['search']['seconds']:.1f}s"
            + (f" ({cost:.2f}× training the original)" if cost else "")
            + f", {len(s['search']['objective'])} outer steps, "
            f"set moved {moved:.0%} away from its start")
    if s.get("heuristic_overlap") is not None:
        line += f", overlap with lowest-{s['objective']} heuristic {s['heuristic_overlap']:.0%}"
    if s.get("stability"):
        line += f", Jaccard with seed {s['stability']['seed_b']}: {s['stability']['jaccard']:.2f}"
    console.print(line)
