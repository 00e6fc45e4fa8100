"""`search --task generation`: the prompt-wise audit (concept unlearning in a diffusion model).

It shares `search`'s flags where they mean the same thing (--method, --dataset, --forget-ratio, --solver,
--outer-steps, --upper-lr, --raw-step, --gamma, --objective, --num-random, --num-seeds, --seed, --stability,
--param, --resume, --out, --json, --device, --data-dir, --cache-dir, --no-cache) and has its own (--retrain-seeds,
--sample-steps, --images-per-concept); a flag of the classifier audit that has no meaning here is refused in one
line rather than silently ignored.
"""
from __future__ import annotations

from pathlib import Path

import click

# parameters of `search` the generative audit does not read (their flags come from the command itself)
CLASSIFIER_ONLY = ("warm_fraction", "warm_restart", "warm_refresh", "unroll_backend", "lower_level", "inner_steps",
                   "inner_lr", "reference_models", "granularity", "init", "baselines", "eval_methods", "params_file",
                   "attacks", "num_models", "select_models", "download", "train_subset", "norm", "checkpoint",
                   "epochs", "lr", "batch_size", "schedule", "recipe", "compile_model", "amp", "channels_last",
                   "train_seed", "mia_resamples", "executor", "workers", "retries", "ray_address", "cpus_per_task",
                   "gpus_per_task")
GENERATION_ONLY = ("retrain_seeds", "sample_steps", "images_per_concept")


def flag(name: str) -> str:
    """The flag a parameter of the current command is spelled with (its longest)."""
    for param in click.get_current_context().command.params:
        if param.name == name:
            return max(param.opts, key=len)
    return "--" + name.replace("_", "-")


def given(name: str) -> bool:
    """Whether the user set this parameter (not its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT",)


def check_task_flags(task: str) -> None:
    """Refuse flags of the other task before any work."""
    from ..core.errors import ConfigError

    if task == "generation":
        wrong = [flag(name) for name in CLASSIFIER_ONLY if given(name)]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --task "
                              "generation; drop it (see `worstforget search --help`)")
    else:
        wrong = [flag(name) for name in GENERATION_ONLY if given(name)]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)} applies to --task generation only")


def run_generation_search(app, *, method: str, cfg, num_random: int, num_seeds: int, retrain_seeds: int,
                          search_seed: int, stability: bool, params: tuple[str, ...], resume: bool, data,
                          output, sample_steps: int, images_per_concept: int) -> None:
    import json

    from ..core.cache import check_cache_folder
    from ..core.errors import ConfigError, OptionError, WorstforgetError
    from ..core.io import to_jsonable
    from ..core.stats import fmt_agg
    from ..datasets.concept_folder import is_concept_folder_spec
    from ..datasets.concepts import CONCEPT_DATASETS, is_concept_dataset
    from ..training.diffusion import require_diffusers
    from ..training.stable_diffusion import is_stable_diffusion_spec
    from .app import RichProgress

    check_task_flags("generation")
    dataset = data.dataset if given("dataset") else "concepts-digits"
    stable_diffusion = data.model is not None and is_stable_diffusion_spec(data.model)
    if stable_diffusion and not is_concept_folder_spec(dataset):
        raise ConfigError(f"--model {data.model} takes its concepts and their images from a folder: add --dataset "
                          "concept-folder:ROOT (ROOT/<style>/<object>/*.png, as UnlearnCanvas lays them out)")
    if not stable_diffusion and not is_concept_dataset(dataset):
        raise ConfigError(f"--dataset {dataset} is not a concept dataset; --task generation takes "
                          f"{', '.join(n.replace('_', '-') for n in CONCEPT_DATASETS.names())}")
    if data.model is not None and not stable_diffusion and data.model not in ("tiny-unet", "tiny_unet"):
        raise ConfigError(f"--model {data.model} is not available for --task generation; use tiny-unet (trained "
                          "here) or sd:PATH (a local Stable Diffusion folder)")
    if resume and data.no_cache:
        raise ConfigError("--resume needs the cache (drop --no-cache)")
    require_diffusers()
    from ..audit.concepts import ConceptAuditOptions, audit_concepts, format_verdict
    from ..methods.concepts import CONCEPT_METHODS, make_concept_method, parse_concept_params
    from ..search.concepts import ConceptSearchConfig
    from ..setting.generative import GenerationConfig, prepare_generative_setting

    name = CONCEPT_METHODS.canonical(method if given("method") else "esd")
    hyper = parse_concept_params(name, params)
    make_concept_method(name, hyper)
    search_cfg = ConceptSearchConfig(forget_ratio=cfg.forget_ratio, solver=cfg.solver, outer_steps=cfg.outer_steps
                                     if given("outer_steps") else ConceptSearchConfig.outer_steps,
                                     upper_lr=cfg.upper_lr, normalize_step=cfg.normalize_step, gamma=cfg.gamma,
                                     objective=cfg.objective if given("objective") else ConceptSearchConfig.objective
                                     ).validate()
    options = ConceptAuditOptions(num_random=num_random if given("num_random") else ConceptAuditOptions.num_random,
                                  seeds=num_seeds, retrain_seeds=retrain_seeds, stability=stability
                                  if given("stability") else False).validate()
    sampling = {}  # only what the user set: GenerationConfig's own defaults stand otherwise
    if given("sample_steps"):
        sampling["steps"] = sample_steps
    if given("images_per_concept"):
        sampling["images_per_concept"] = images_per_concept
    out_dir = output.folder(Path("worstforget-out") / f"search-{dataset.replace('_', '-')}-{name}")
    if not data.no_cache:
        try:  # before any training: a cache folder that cannot be written fails late
            check_cache_folder(data.cache_dir)
        except OptionError as exc:  # an unusable folder, not a bad option: exit 1
            raise WorstforgetError(exc.worded(lambda n: "--" + n.replace("_", "-"))) from None
    with RichProgress(app.err) as progress:
        setting = prepare_generative_setting(dataset=dataset, model=data.model, data_dir=data.data_dir,
                                             device=data.device, cache=not data.no_cache, cache_dir=data.cache_dir,
                                             generation=GenerationConfig(**sampling),
                                             progress=progress)
        audit = audit_concepts(setting, name, hyper, search_cfg, seed=search_seed, options=options, resume=resume,
                               progress=progress)
    audit.write(out_dir)
    summary = audit.summary()
    if output.as_json:
        click.echo(json.dumps(to_jsonable(summary, nan_to_none=True), indent=2))
        return
    from rich.table import Table

    table = Table(box=None, title=f"{name} on {summary['dataset']}: {summary['forget_size']} of "
                                  f"{summary['num_concepts']} concepts, {search_cfg.solver} solver, "
                                  f"{search_cfg.objective} objective")
    for col in ("set", "model", "UA ↑", "RA_in ↑", "RA_cross ↑", "FD ↓", "RTE (s)"):
        table.add_column(col, no_wrap=True)
    for kind, block in summary["sets"].items():
        for who, metrics in block["methods"].items():
            table.add_row(kind.replace("_", "-"), who, *(fmt_agg(metrics[m], 1, interval=False, sep="±")
                                                         for m in ("UA", "RA_in", "RA_cross", "FD", "RTE")))
    app.out.print(table)
    worst = summary["sets"]["worst_case"]["prompts"][0]
    app.out.print(f"searched concepts: {'; '.join(worst)}", soft_wrap=False)
    if "stability_jaccard" in summary["search"]:
        app.out.print(f"stability: a second search (seed + 1) overlaps with Jaccard "
                      f"{summary['search']['stability_jaccard']:.2f}", soft_wrap=False)
    acc = summary["setting"]["classifier_accuracy"]
    app.out.print(f"concept classifier on real test images: object {acc['object']:.1f}%, style {acc['style']:.1f}%",
                  soft_wrap=False)
    for line in format_verdict(summary):
        app.out.print(f"verdict — {line}", soft_wrap=False)
    app.out.print(summary["cost_line"], soft_wrap=False)
    app.out.print(str(out_dir))
