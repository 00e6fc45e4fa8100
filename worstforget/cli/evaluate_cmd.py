"""`evaluate`: per-example attacks and the NeurIPS'23 score on a search result or a chosen forget set."""
from __future__ import annotations

from pathlib import Path

import click

from .app import RegistryChoice, RichProgress, cli, pass_app
from .basic import _params_option
from .options import (
    ExecutorOptions,
    ForgetSetOptions,
    OutputOptions,
    SettingOptions,
    attacks_option,
    with_executor,
    with_forget_set,
    with_output,
    with_setting,
)

# U-LiRA splits the models of each kind into shadow and target halves of at least two (scoring/attacks.py).
LIRA_MIN_MODELS = 4


def check_attack_models(names: list[str], num_models: int) -> list[str]:
    """LiRA with fewer models than it needs is refused (it would be left out of the table silently)."""
    from ..core.errors import ConfigError

    if "lira" in names and num_models < LIRA_MIN_MODELS:
        raise ConfigError(f"--attacks lira needs --num-models {LIRA_MIN_MODELS} or more (two shadow and two target "
                          f"models of each kind), got {num_models}; raise --num-models or drop lira from --attacks")
    return names


@cli.command("evaluate")
@click.option("--method", default=None, help="Method to evaluate [default: the result's method].")
@with_setting
@click.option("--result", "result_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A `search` output folder: evaluate its worst-case, heuristic and random sets.")
@with_forget_set(file=True, seed="Seed of the chosen forget set (random, class selectors).")
@click.option("--selector", type=RegistryChoice("..forget_sets:SELECTORS"), default="random", show_default=True,
              help="How to choose the forget set when no --result/--forget-set: "
                   "see `worstforget list selectors`.")
@click.option("--quantile", type=float, default=0.0, show_default=True,
              help="lowest_loss: the loss quantile where the window starts (0: the lowest losses).")
@attacks_option(None, "Comma-separated attacks to run.")
@click.option("--num-models", type=click.IntRange(min=2), default=16, show_default=True,
              help="Unlearned and retrained models per set (512 in the NeurIPS'23 challenge).")
@click.option("--params-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"method": {"param": value}} of tuned hyper-parameters.')
@click.option("--lira-original", is_flag=True, help="Also run classic LiRA (shadow models) on the trained model.")
@click.option("--rmia-original", is_flag=True,
              help="Also run offline RMIA on the trained model, on the same shadow models as --lira-original.")
@_params_option
@with_output("Output folder [default: the --result folder, else ./worstforget-out/evaluate].")
@with_executor
@pass_app
def evaluate_command(app, method, result_dir, selector, quantile, attacks, num_models, params_file, lira_original,
                     rmia_original, params, data: SettingOptions, forget: ForgetSetOptions, output: OutputOptions,
                     runner: ExecutorOptions) -> None:
    """Attack METHOD's unlearning with N unlearned vs N retrained models: U-LiRA, ε-score, KS, ToW, loss."""
    from ..audit.attack_eval import evaluate_sets
    from ..audit.result import SearchAudit
    from ..forget_sets import SELECTORS
    from ..methods import METHODS, make_method, parse_params
    from .basic import load_params_file
    from .render import evaluation_table

    attack_names = check_attack_models(attacks, num_models)
    audit = SearchAudit.read(result_dir) if result_dir else None
    method = method or (audit.method if audit else None)
    name = METHODS.canonical(method or "finetune")
    base = audit.header.get("params", {}) if audit is not None and audit.method == name else {}
    hyper = {**base, **load_params_file(params_file).get(name, {}), **parse_params(name, params)}
    make_method(name, hyper)
    out_dir = output.folder(result_dir or Path("worstforget-out") / "evaluate")
    executor = runner.build(app)
    with RichProgress(app.err) as progress:
        setting = data.build(progress)
        n = setting.data.num_train
        if audit is not None:
            sets = sets_of_audit(audit, setting, result_dir)
        elif forget.forget_set:
            sets = {"given": [forget.indices(n)]}
        else:
            chosen = SELECTORS.get(selector).choose(setting, ratio=forget.forget_ratio, seed=forget.forget_seed,
                                                    quantile=quantile, progress=progress)
            sets = {selector: [chosen]}
        config = {"selector": None if (result_dir or forget.forget_set) else selector,
                  "forget_ratio": forget.forget_ratio, "forget_seed": forget.forget_seed}
        evaluation = evaluate_sets(setting, [(name, hyper)], sets, num_models=num_models, attacks=attack_names,
                                   config=config, progress=progress, executor=executor)
        if lira_original:
            from ..audit.membership import lira_on_original

            evaluation.extra["lira_original"] = lira_on_original(setting, num_shadows=num_models, progress=progress)
        if rmia_original:
            from ..audit.membership import rmia_on_original

            evaluation.extra["rmia_original"] = rmia_on_original(setting, num_references=num_models, progress=progress)
    if audit is not None and result_dir and out_dir == Path(result_dir):
        audit.evaluation = evaluation  # the search folder is rewritten as a unit, result.h5 gains /evaluation
        audit.write(out_dir)
    else:
        evaluation.write(out_dir)
    summary = evaluation.summary()
    app.out.print(evaluation_table(summary, name))
    for attack in ATTACK_NAMES:
        if f"{attack}_original" in summary:
            render_on_original(app.out, summary[f"{attack}_original"], attack)
    app.out.print(str(out_dir / "evaluation.json"))


def sets_of_audit(audit, setting, folder) -> dict:
    """The forget sets a search result holds, checked against the setting they will be run in."""
    import torch

    from ..core.errors import WorstforgetError

    if audit.header["num_train"] != setting.data.num_train or audit.header["dataset"] != setting.data.name:
        raise WorstforgetError(f"{folder} was computed on {audit.header['dataset']} with {audit.header['num_train']} "
                               "training samples; pass the same --dataset/--model options")
    return {kind: [torch.as_tensor(s) for s in block.sets] for kind, block in audit.kinds.items()}


ATTACK_NAMES = {"lira": "LiRA", "rmia": "RMIA"}


def render_on_original(console, lo: dict, attack: str) -> None:
    loo = lo["leave_one_out"]
    console.print(f"{ATTACK_NAMES[attack]} on the trained model ({lo['num_shadows']} "
                  f"shadows, leave-one-out): AUC {loo[attack]['auc']:.3f}, TPR@0.1%FPR "
                  f"{loo[attack]['tpr_at_0.1pct_fpr']:.2%} vs loss threshold AUC {loo['loss_threshold']['auc']:.3f}, "
                  f"TPR@0.1%FPR {loo['loss_threshold']['tpr_at_0.1pct_fpr']:.2%}")
