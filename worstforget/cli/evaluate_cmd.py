"""`evaluate`: per-example attacks and the NeurIPS'23 score on a search result or a chosen forget set."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .app import RichProgress, cli, data_options, fmt, pass_app, setting_from_options
from .basic import _params_option


def attacks_option(fn):
    return click.option("--attacks", default="svc,loss,lira,epsilon,ks,tow", show_default=True,
                        help="Comma-separated attacks (svc, loss, lira, epsilon, ks, tow).")(fn)


def parse_attacks(text: str) -> list[str]:
    from ..scoring.attacks import ATTACKS

    return [ATTACKS.canonical(a) for a in text.split(",") if a.strip()]


@cli.command("evaluate")
@click.option("--method", default=None, help="Method to evaluate [default: the result's method].")
@data_options
@click.option("--result", "result_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A `search` output folder: evaluate its worst-case, heuristic and random sets.")
@click.option("--forget-set", type=click.Path(exists=True, dir_okay=False), default=None, help=".npy training indices.")
@click.option("--selector", default="random", show_default=True,
              help="random | loss_quantile | memorization_proxy | class (when no --result/--forget-set).")
@click.option("--forget-ratio", type=float, default=0.1, show_default=True)
@click.option("--forget-seed", type=int, default=0, show_default=True)
@click.option("--quantile", type=float, default=0.0, show_default=True, help="loss_quantile: where the window starts.")
@attacks_option
@click.option("--num-models", type=click.IntRange(min=2), default=16, show_default=True,
              help="Unlearned and retrained models per set (512 in the NeurIPS'23 challenge).")
@click.option("--params-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"method": {"param": value}} of tuned hyper-parameters.')
@click.option("--lira-original", is_flag=True, help="Also run classic LiRA (shadow models) on the trained model.")
@_params_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: the --result folder, else ./worstforget-out/evaluate].")
@pass_app
def evaluate_command(app, method, result_dir, forget_set, selector, forget_ratio, forget_seed, quantile, attacks,
                     num_models, params_file, lira_original, params, out, **opts) -> None:
    """Attack METHOD's unlearning with N unlearned vs N retrained models: U-LiRA, ε-score, KS, ToW, loss."""
    import torch

    from ..audit.attack_eval import evaluate_sets, write_evaluation
    from ..core.errors import WorstforgetError
    from ..forget_sets import SELECTORS
    from ..methods import METHODS, make_method, parse_params
    from ..setting import forget_size, load_forget_set

    attack_names = parse_attacks(attacks)
    summary = None
    if result_dir:
        path = Path(result_dir) / "summary.json"
        if not path.is_file():
            raise WorstforgetError(f"{result_dir} has no summary.json; pass a folder written by `worstforget search`")
        summary = json.loads(path.read_text())
        method = method or summary["method"]
    from .basic import load_params_file

    name = METHODS.canonical(method or "finetune")
    base = (summary or {}).get("params", {}) if summary and summary["method"] == name else {}
    hyper = {**base, **load_params_file(params_file).get(name, {}), **parse_params(name, params)}
    make_method(name, hyper)
    if not result_dir and not forget_set:
        SELECTORS.canonical(selector)
        forget_size(100, forget_ratio)
    with RichProgress(app.err) as progress:
        setting = setting_from_options(app, progress, opts)
        n = setting.data.num_train
        if summary is not None:
            import h5py

            if summary["num_train"] != n or summary["dataset"] != setting.data.name:
                raise WorstforgetError(f"{result_dir} was computed on {summary['dataset']} with {summary['num_train']} "
                                       f"training samples; pass the same --dataset/--model options")
            with h5py.File(Path(result_dir) / "result.h5", "r") as f:
                fs = f["forget_sets"]
                sets = {"worst_case": [torch.as_tensor(fs["worst_case"][()])],
                        "random": [torch.as_tensor(fs["random"][k][()]) for k in sorted(fs["random"], key=int)]}
                if "heuristic" in fs:
                    sets["heuristic"] = [torch.as_tensor(fs["heuristic"][()])]
        elif forget_set:
            sets = {"given": [load_forget_set(forget_set, n)]}
        else:
            chosen = SELECTORS.get(selector)(setting, ratio=forget_ratio, seed=forget_seed, quantile=quantile,
                                             progress=progress)
            sets = {SELECTORS.canonical(selector): [chosen]}
        evaluation = evaluate_sets(setting, [(name, hyper)], sets, num_models=num_models, attacks=attack_names,
                                   progress=progress)
        if lira_original:
            from ..audit.membership import lira_on_original

            evaluation["scores"]["lira_original"] = lira_on_original(setting, num_shadows=num_models, progress=progress)
    out_dir = Path(out or result_dir or Path("worstforget-out") / "evaluate")
    config = {"method": name, "params": hyper, "attacks": attack_names, "num_models": num_models,
              "selector": None if (result_dir or forget_set) else selector, "forget_ratio": forget_ratio,
              "forget_seed": forget_seed, "model": setting.spec.to_dict()}
    paths = write_evaluation(out_dir, evaluation, setting=setting, config=config)
    render_evaluation(app.out, evaluation["scores"], name)
    app.out.print(str(paths["json"]))


def render_evaluation(console, scores: dict, method: str) -> None:
    from rich.table import Table

    from ..audit.attack_eval import SCALARS

    kinds = [k for k, per_method in scores.items() if k != "lira_original" and method in per_method]
    table = Table(title=f"{method}: attacks on N unlearned vs N retrained models")
    table.add_column("score")
    for kind in kinds:
        table.add_column(kind.replace("_", "-"), justify="right")
    for key in SCALARS:
        cells = []
        for kind in kinds:
            v = scores[kind][method].get(key)
            if isinstance(v, dict) and "mean" in v:
                cells.append(fmt(v, 3))
            elif isinstance(v, dict) and "value" in v:
                cells.append(f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]")
            elif isinstance(v, (int, float)):
                cells.append(f"{v:.3g}")
            else:
                cells.append("–")
        table.add_row(key, *cells)
    console.print(table)
    if "lira_original" in scores:
        lo = scores["lira_original"]["leave_one_out"]
        console.print(f"LiRA on the trained model ({scores['lira_original']['num_shadows']} shadows, leave-one-out): "
                      f"AUC {lo['lira']['auc']:.3f}, TPR@0.1%FPR {lo['lira']['tpr_at_0.1pct_fpr']:.2%} vs loss "
                      f"threshold AUC {lo['loss_threshold']['auc']:.3f}, TPR@0.1%FPR "
                      f"{lo['loss_threshold']['tpr_at_0.1pct_fpr']:.2%}")
