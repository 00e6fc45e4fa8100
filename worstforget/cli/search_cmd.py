"""`search`: find the worst-case forget set and compare it with random and heuristic sets."""
from __future__ import annotations

from pathlib import Path

import click

from .app import RegistryChoice, RichProgress, cli, pass_app
from .basic import _params_option
from .options import (
    ExecutorOptions,
    OutputOptions,
    SettingOptions,
    attacks_option,
    forget_ratio_option,
    num_seeds_option,
    option,
    with_executor,
    with_output,
    with_setting,
)


class ObjectiveChoice(RegistryChoice):
    """The objectives of both tasks (classification's per-sample ones and generation's per-concept ones); each
    task's config says which of them it takes."""

    def __init__(self):
        super().__init__("..search.objectives:OBJECTIVES")

    def _both(self):
        import importlib

        objectives = importlib.import_module("..search.objectives", __package__).OBJECTIVES
        concepts = importlib.import_module("..search.concepts", __package__).CONCEPT_OBJECTIVES
        return objectives, concepts

    @property
    def choices(self):  # type: ignore[override]
        objectives, concepts = self._both()
        names = list(objectives.names())
        names += [a for n in objectives.names() for a in objectives.aliases_of(n) if a not in names]
        return tuple(names + [n for n in concepts.names() if n not in names])

    @choices.setter
    def choices(self, value) -> None:
        pass

    def convert(self, value, param, ctx):
        objectives, concepts = self._both()
        value = click.Choice.convert(self, value, param, ctx)
        return objectives.canonical(value) if value in objectives else concepts.canonical(value)


SEARCH_OPTIONS = [
    forget_ratio_option("Forget-set size as a fraction of the training samples (or of the classes)."),
    click.option("--solver", type=RegistryChoice("..search.solvers:SOLVERS", dashes=True), default="warm",
                 show_default=True,
                 help="warm: one unlearning run continued across outer steps (fast); first-order: K steps from the "
                      "original every outer step (the paper's); unrolled: differentiate through K SGD steps."),
    click.option("--warm-fraction", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="warm: epochs of the method's steps per outer step [default: the outer steps span the method's "
                      "own run on a set of m samples]."),
    click.option("--warm-restart", type=click.Choice(["budget", "never"]), default="budget", show_default=True,
                 help="warm: restart the run from the original when it outlives the method's own run (budget)."),
    click.option("--warm-refresh", type=click.IntRange(min=1), default=10, show_default=True,
                 help="warm: score every sample every this many outer steps (the samples with w > 0 every step)."),
    click.option("--unroll-backend", type=click.Choice(["higher", "torch.func"]), default="higher", show_default=True,
                 help="How --solver unrolled differentiates the lower level (same hypergradient)."),
    click.option("--lower-level", type=click.Choice(["method", "sign"]), default="method", show_default=True,
                 help="first-order's inner steps: the method's own optimizer and lr, or sign-SGD (the paper's)."),
    click.option("--outer-steps", type=click.IntRange(min=1), default=20, show_default=True, help="Upper-level steps."),
    click.option("--inner-steps", type=click.IntRange(min=1), default=None,
                 help="Lower-level optimisation steps [default: 2 epochs first-order, 10 unrolled]."),
    click.option("--inner-lr", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Lower-level learning rate [default: the method's; 1e-3 for sign steps]."),
    click.option("--upper-lr", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
                 help="Upper step α, in units of the gradient's std (see --raw-step)."),
    click.option("--raw-step", "normalize_step", is_flag=True, flag_value=False, default=True,
                 help="Use α on the raw gradient (the paper's update) instead of normalising."),
    click.option("--gamma", type=click.FloatRange(min=0), default=1e-4, show_default=True,
                 help="γ of the ‖w‖² term."),
    click.option("--objective", type=ObjectiveChoice(), default="confidence",
                 show_default=True, help="Per-sample upper objective (see `worstforget list objectives`); "
                                         "`--objective loss --lower-level sign` is the paper's search. With --task "
                                         "generation, per concept: recognition (default), loss (the paper's), "
                                         "loss_gap."),
    click.option("--reference-models", type=click.IntRange(min=2), default=16, show_default=True,
                 help="Models on random halves behind the confidence and exposure objectives and the memorization and "
                      "exposure baselines (trained once per setting, cached)."),
    click.option("--granularity", type=click.Choice(["sample", "class"]), default="sample", show_default=True),
    click.option("--init", type=click.Choice(["uniform", "random", "heuristic"]), default="uniform", show_default=True,
                 help="Start from w = m/N, from a random binary set, or from the baseline set with the best search "
                      "objective (reported as such)."),
]
SEARCH_KEYS = ("forget_ratio", "solver", "warm_fraction", "warm_restart", "warm_refresh", "unroll_backend",
               "lower_level", "outer_steps", "inner_steps", "inner_lr", "upper_lr", "normalize_step", "gamma",
               "objective", "reference_models", "granularity", "init")


def with_search_config(fn):
    """The search's options, handed to the command as one (validated) SearchConfig `cfg`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..search import SearchConfig

        cfg = SearchConfig(**{k: kwargs.pop(k) for k in SEARCH_KEYS})
        # the generative task validates its own config (search/concepts.py: other objectives and solvers)
        kwargs["cfg"] = cfg if kwargs.get("task") == "generation" else cfg.validate()
        return fn(*args, **kwargs)

    for declare in reversed(SEARCH_OPTIONS):
        wrapper = declare(wrapper)
    return wrapper


@cli.command("search")
@click.option("--task", type=click.Choice(["classification", "generation"]), default="classification",
              show_default=True, help="classification: forget training samples of a classifier; generation: forget "
                                      "concepts (object × style prompts) of a diffusion model (the prompt-wise "
                                      "search; pip install 'worstforget[generative]').")
@click.option("--method", default="finetune", show_default=True,
              help="Unlearning method to audit (generation: esd, ablation, gradient_ascent; default esd).")
@with_setting
@with_search_config
@click.option("--num-random", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random forget sets of the same size.")
@click.option("--baselines", default="lowest_loss,memorization,exposure", show_default=True,
              help="One-shot sets of the same size run beside the search (see `worstforget list baselines`); "
                   "comma-separated, or 'none'.")
@click.option("--eval-methods", default="", help="Comma-separated further methods evaluated on every set, or 'all'.")
@click.option("--params-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"method": {"param": value}} (e.g. from `tune --update-params`) for the audited and eval '
                   'methods.')
@num_seeds_option(2, "Unlearning seeds per forget set.")
@option("--search-seed", "search_seed", aliases=("--seed",), type=int, default=0, show_default=True,
        help="Seed of the search (and of the random sets).")
@click.option("--stability/--no-stability", default=True, show_default=True,
              help="Search again with seed+1 and report the Jaccard overlap.")
@attacks_option("", "Also run these attacks on every set, comma-separated; writes evaluation.json (see `worstforget "
                    "evaluate`).")
@click.option("--num-models", type=click.IntRange(min=2), default=16, show_default=True,
              help="Unlearned and retrained models per set for --attacks.")
@click.option("--select-models", type=click.IntRange(min=0), default=None,
              help="Attack-validated selection: attack the search, its stability twin, the searches by the other "
                   "objectives and the baseline sets with U-LiRA on this many unlearned and retrained models (≥ 4; "
                   "0 = off) and keep the most exposed; --attacks then scores it with fresh models [default: "
                   "--num-models with --attacks lira or rmia, else 0].")
@_params_option
@click.option("--resume", is_flag=True, help="Continue an interrupted search from its last outer step.")
@click.option("--retrain-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="--task generation: Retrain seeds per concept set (each a full training of the diffusion model).")
@click.option("--sample-steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="--task generation: DDIM steps of every generation the metrics judge and the methods learn from.")
@click.option("--images-per-concept", type=click.IntRange(min=2), default=6, show_default=True,
              help="--task generation: generations per concept that UA, RA and FD judge.")
@with_output("Output folder [default: ./worstforget-out/search-DATASET-METHOD].",
             json_help="Print summary.json instead of tables.")
@with_executor
@pass_app
def search_command(app, task: str, method: str, cfg, num_random: int, baselines: str, eval_methods: str,
                   params_file: str | None, num_seeds: int, search_seed: int, stability: bool, attacks: list[str],
                   num_models: int, select_models: int | None,
                   params: tuple[str, ...], resume: bool, retrain_seeds: int, sample_steps: int,
                   images_per_concept: int, data: SettingOptions, output: OutputOptions,
                   runner: ExecutorOptions) -> None:
    """Search the worst-case forget set for METHOD and report it against random sets of the same size."""
    import json

    from .generation_cmd import check_task_flags, run_generation_search

    if task == "generation":
        return run_generation_search(app, method=method, cfg=cfg, num_random=num_random, num_seeds=num_seeds,
                                     retrain_seeds=retrain_seeds, search_seed=search_seed, stability=stability,
                                     params=params, resume=resume, data=data, output=output,
                                     sample_steps=sample_steps, images_per_concept=images_per_concept)
    check_task_flags(task)

    from ..audit.worst_case import AuditOptions, audit_worst_case
    from ..core.errors import ConfigError
    from ..core.io import to_jsonable
    from ..methods import METHODS, make_method, parse_params
    from ..search.solvers import check_solver
    from .basic import load_params_file
    from .evaluate_cmd import check_attack_models
    from .render import print_comparison, print_verdict, search_line

    if resume and data.no_cache:  # the per-step checkpoint lives in the cache
        raise ConfigError("--resume needs the cache (drop --no-cache)")
    name = METHODS.canonical(method)
    tuned = load_params_file(params_file)
    hyper = {**tuned.get(name, {}), **parse_params(name, params)}
    check_solver(cfg.solver, make_method(name, hyper))
    extra = METHODS.names() if eval_methods.strip() == "all" else [m for m in eval_methods.split(",") if m.strip()]
    options = AuditOptions(num_random=num_random, eval_methods=extra, eval_params=tuned, seeds=num_seeds,
                           stability=stability, attacks=check_attack_models(attacks, num_models),
                           baselines=[] if baselines.strip() == "none" else
                           [b for b in baselines.split(",") if b.strip()],
                           num_models=num_models, select_models=select_models).validate()
    out_dir = output.folder(Path("worstforget-out") / f"search-{data.dataset.replace(':', '_')}-{name}")
    executor = runner.build(app)
    with RichProgress(app.err) as progress:
        setting = data.build(progress)
        audit = audit_worst_case(setting, name, hyper, cfg, seed=search_seed, options=options, resume=resume,
                                 progress=progress, executor=executor)
    audit.write(out_dir)
    summary = audit.summary()
    if output.as_json:
        click.echo(json.dumps(to_jsonable(summary, nan_to_none=True), indent=2))
        return
    s = summary
    print_comparison(app.out, summary, title=f"{s['method']} on {s['dataset']}/{s['model']}: {s['forget_size']} of "
                                             f"{s['num_train']} samples, {s['solver']} solver, "
                                             f"{s['objective']} objective")
    app.out.print(search_line(summary), soft_wrap=False)
    if audit.evaluation is not None:
        from .render import evaluation_table

        app.out.print(evaluation_table(audit.evaluation.summary(), name))
    print_verdict(app.out, summary)
    app.out.print(str(out_dir))
