"""The attack registry: each attack turns the per-model statistics of one forget set into scores.

An attack is declared once, at registration (`register_attack`): the statistics it reads (fields of `Stats`),
the keys of its scores, the columns the compact tables show, the verdict measures it offers and its help
text. `evaluate`/`search --attacks`, the verdict, `worstforget list attacks` and `experiments/tables.py` read
them from here, so a new attack is one function (or file) plus its registration.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from ..core.registry import Registry
from .privacy import (
    BOUND_ALPHA,
    RMIA_GAMMA,
    RMIA_OFFLINE_A,
    bootstrap_interval,
    final_score,
    forgetting_quality,
    ks_test,
    lira_attack_metrics,
    loss_threshold_attack,
    mean_t_interval,
    per_example_epsilon,
    per_example_points,
    resolution_note,
    rmia_scores,
    true_label_probability,
    tug_of_war,
    u_lira_halvings,
)
from .privacy.roc import _tpr_at, curve_area, roc_curve


@dataclass
class Stats:
    """Per-model statistics of N unlearned (U) and N retrained (R) models on one forget set.

    Arrays are (num_models, n_examples) for per-example values, (num_models,) for accuracies (percent).
    """

    lsc_u: np.ndarray  # logit-scaled confidence of each forget example under each unlearned model
    lsc_r: np.ndarray
    loss_u: np.ndarray  # forget-example losses
    loss_r: np.ndarray
    test_loss_u: np.ndarray  # (num_models, n_test)
    test_loss_r: np.ndarray
    acc_u: dict  # {"forget", "retain", "test"} → (num_models,)
    acc_r: dict
    seconds_u: np.ndarray
    seconds_r: np.ndarray
    seed: int = 0


STATISTICS = tuple(f.name for f in fields(Stats))


@dataclass(frozen=True)
class Measure:
    """A verdict measure an attack offers: a score key where higher = the set is harder for the method."""

    key: str
    label: str
    digits: int = 3


@dataclass(frozen=True)
class Attack:
    """One registered attack: `fn(stats) -> {key: score}` and what it declares about itself."""

    name: str
    fn: Callable[[Stats], dict]
    help: str  # one line for `worstforget list attacks` and the CLI's --attacks help
    statistics: tuple[str, ...]  # the fields of Stats it reads
    keys: tuple[str, ...]  # the score keys it returns (evaluation.json `sets.<kind>.methods.<m>.<key>`)
    columns: tuple[str, ...] = ()  # keys shown in the worst-case tables (experiments/tables.py)
    summary: tuple[str, ...] = ()  # keys shown in the attacks table (experiments/tables.py)
    measures: tuple[Measure, ...] = ()  # what the verdict judges sets by
    default: bool = True  # in `evaluate`'s default --attacks

    def __post_init__(self) -> None:
        unknown = set(self.statistics) - set(STATISTICS)
        if unknown:
            raise ValueError(f"attack {self.name} reads unknown statistics {sorted(unknown)}; Stats has {STATISTICS}")
        object.__setattr__(self, "__doc__", self.help)  # `worstforget list` shows the first docstring line

    def __call__(self, stats: Stats) -> dict:
        return self.fn(stats)


ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(name: str, *, statistics: tuple[str, ...], keys: tuple[str, ...], aliases: tuple[str, ...] = (),
                    columns: tuple[str, ...] = (), summary: tuple[str, ...] = (), measures: tuple[Measure, ...] = (),
                    default: bool = True, help: str | None = None) -> Callable:
    """Register `fn(stats) -> dict` as attack `name` (help: its docstring's first line unless given)."""
    def add(fn: Callable[[Stats], dict]) -> Callable[[Stats], dict]:
        text = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        ATTACKS.register(name, aliases=aliases)(Attack(name=name, fn=fn, help=text, statistics=statistics, keys=keys,
                                                       columns=columns, summary=summary, measures=measures,
                                                       default=default))
        return fn

    return add


def attack_measures() -> tuple[Measure, ...]:
    """Every registered attack's verdict measures, in registration order."""
    return tuple(m for name in ATTACKS.in_order() for m in ATTACKS.get(name).measures)


def default_attacks() -> list[str]:
    return [n for n in ATTACKS.in_order() if ATTACKS.get(n).default]


def attacks_help() -> str:
    """'name: help' of every attack, for the CLI."""
    return "; ".join(f"{n}: {ATTACKS.get(n).help}" for n in ATTACKS.in_order())


TARGET_KEYS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "roc", "per_example")  # of `_target_summary`


def _target_keys(prefix: str, *extra: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{k}" for k in (*TARGET_KEYS, *extra))


LSC = ("lsc_u", "lsc_r")


@register_attack("svc", statistics=(), keys=())
def svc(stats: Stats) -> dict:
    """Population SVC on confidence (MIA-Efficacy) is computed per model by the metrics module."""
    return {}


@register_attack("loss", statistics=("loss_u", "loss_r", "test_loss_u", "test_loss_r"),
                 keys=tuple(f"loss_{k}{r}" for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
                            for r in ("", "_retrain")))
def loss(stats: Stats) -> dict:
    """Loss-threshold attack, forget vs test, on each unlearned model and each retrained model."""
    per_u = [loss_threshold_attack(stats.loss_u[i], stats.test_loss_u[i]) for i in range(len(stats.loss_u))]
    per_r = [loss_threshold_attack(stats.loss_r[i], stats.test_loss_r[i]) for i in range(len(stats.loss_r))]
    out = {}
    for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
        out[f"loss_{key}"] = _interval([p[key] for p in per_u])
        out[f"loss_{key}_retrain"] = _interval([p[key] for p in per_r])
    return out


def _u_lira(stats: Stats, *, online: bool, fix_variance: bool, prefix: str = "lira") -> dict:
    """Per-example U-LiRA: half the models are shadows, half are targets (then the halves swap).

    For each forget example, Gaussians are fitted to its statistic under shadow unlearned ('in': the
    example was seen, then unlearned) and shadow retrained models ('out': never seen); every target
    model is scored, and the attack separates unlearned from retrained targets. Offline uses only the
    retrained shadows (one-sided test).
    """
    n = min(len(stats.lsc_u), len(stats.lsc_r))
    half = n // 2
    if half < 2:
        return {f"{prefix}_note": "LiRA needs at least 4 models of each kind"}
    halvings = u_lira_halvings(stats.lsc_u[:n], stats.lsc_r[:n], halvings=HALVINGS, seed=stats.seed, online=online,
                               fix_variance=fix_variance)
    mode = ("online" if online else "offline") + (", fixed variance" if fix_variance else "")
    return {f"{prefix}_mode": mode, **_target_summary(prefix, *halvings[0], stats.seed, halvings=halvings)}


def _target_summary(prefix: str, pos_m: np.ndarray, neg_m: np.ndarray, seed: int,
                    halvings: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """AUC and TPR at 1 % / 0.1 % FPR with bootstrap intervals, ROC and per-example exposure of scores
    (targets, examples) of unlearned (pos) and retrained (neg) target models.

    With `halvings` (the scores of every split of the models into shadows and targets, `pos_m, neg_m` the
    first), AUC and TPRs are means over the halvings: at 0.1 % FPR one halving rests on a handful of negatives
    above the threshold and two halvings of the same models differ by tens of points, while the mean keeps the
    draw of models as the only noise. Each bootstrap draw resamples the forget examples and, per halving, the
    target models of BOOTSTRAP_HALVINGS random halvings and averages them: its interval is that of a mean of
    fewer halvings, a little wider than the point estimate's own. ROC points are the first halving's.
    """
    halvings = halvings or [(pos_m, neg_m)]
    ex = pos_m.shape[1]

    def one(p_m, n_m, rows_p, rows_n, columns) -> dict:
        a, b = p_m[np.ix_(rows_p, columns)].ravel(), n_m[np.ix_(rows_n, columns)].ravel()
        fpr, tpr = roc_curve(a[np.isfinite(a)], b[np.isfinite(b)])
        low = _tpr_at(fpr, tpr, LOW_FPRS)  # FPR < target, as lira_attack_metrics
        return {"auc": curve_area(fpr, tpr), "tpr_at_1pct_fpr": float(low[0]), "tpr_at_0.1pct_fpr": float(low[1])}

    def mean_of(draw, which) -> dict:
        parts = [one(*halvings[h], *draw(*halvings[h])) for h in which]
        return {k: float(np.mean([q[k] for q in parts])) for k in parts[0]}

    every = np.arange(ex)
    metrics = {**lira_attack_metrics(*(m[np.isfinite(m)] for m in (pos_m.ravel(), neg_m.ravel()))),
               **mean_of(lambda p_m, n_m: (np.arange(len(p_m)), np.arange(len(n_m)), every), range(len(halvings)))}
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(BOOTSTRAP_RESAMPLES):  # each draw: examples, and per halving target models, of a few halvings
        columns = rng.integers(0, ex, ex)
        which = rng.choice(len(halvings), min(BOOTSTRAP_HALVINGS, len(halvings)), replace=False)
        boots.append(mean_of(lambda p_m, n_m: (rng.integers(0, len(p_m), len(p_m)),
                                               rng.integers(0, len(n_m), len(n_m)), columns), which))
    exposure = np.mean([np.nanmean(p_m, 0) - np.nanmean(n_m, 0) for p_m, n_m in halvings], 0)

    def interval(key: str) -> dict:
        values = [b[key] for b in boots]
        return {"value": metrics[key], "low": float(np.percentile(values, 2.5)),
                "high": float(np.percentile(values, 97.5))}

    return {f"{prefix}_auc": interval("auc"),
            f"{prefix}_tpr_at_1pct_fpr": interval("tpr_at_1pct_fpr"),
            f"{prefix}_tpr_at_0.1pct_fpr": interval("tpr_at_0.1pct_fpr"),
            f"{prefix}_roc": {"roc_fpr": metrics["roc_fpr"], "roc_tpr": metrics["roc_tpr"]},
            f"{prefix}_per_example": exposure}


BOOTSTRAP_RESAMPLES = 100
LOW_FPRS = np.array([0.01, 0.001])
BOOTSTRAP_HALVINGS = 4
HALVINGS = 20  # splits of the models into shadows and targets that U-LiRA's numbers average


@register_attack("lira", aliases=("lira_online",), statistics=LSC, keys=_target_keys("lira", "mode", "note"),
                 columns=("lira_auc", "lira_tpr_at_1pct_fpr", "lira_tpr_at_0.1pct_fpr"),
                 summary=("lira_auc", "lira_tpr_at_1pct_fpr", "lira_tpr_at_0.1pct_fpr"),
                 measures=(Measure("lira_tpr_at_0.1pct_fpr", "U-LiRA TPR@0.1%FPR"), Measure("lira_auc", "U-LiRA AUC")))
def lira(stats: Stats) -> dict:
    """Per-example U-LiRA, online (Gaussians under unlearned and retrained shadow models)."""
    return _u_lira(stats, online=True, fix_variance=False)


@register_attack("lira_fixed", statistics=LSC, keys=_target_keys("lira_fixed", "mode", "note"), default=False)
def lira_fixed(stats: Stats) -> dict:
    """Per-example U-LiRA, online with one global variance (steadier with few models)."""
    return _u_lira(stats, online=True, fix_variance=True, prefix="lira_fixed")


@register_attack("lira_offline", statistics=("lsc_r", "lsc_u"), keys=_target_keys("lira_offline", "mode", "note"),
                 default=False)
def lira_offline_attack(stats: Stats) -> dict:
    """Per-example U-LiRA, offline: only retrained shadow models (no unlearned shadows needed)."""
    return _u_lira(stats, online=False, fix_variance=False, prefix="lira_offline")


@register_attack("rmia", statistics=("loss_u", "loss_r", "test_loss_u", "test_loss_r"),
                 keys=_target_keys("rmia", "params", "note"), columns=("rmia_tpr_at_0.1pct_fpr",),
                 summary=("rmia_auc", "rmia_tpr_at_0.1pct_fpr"),
                 measures=(Measure("rmia_tpr_at_0.1pct_fpr", "RMIA TPR@0.1%FPR"),), default=False,
                 help="Offline RMIA (Zarifzadeh et al., ICML'24) with retrained models as references.")
def rmia(stats: Stats) -> dict:
    """Offline RMIA (Zarifzadeh et al., ICML'24) with retrained models as references and test examples as
    the population: half the retrained models are references, the other unlearned and retrained models
    targets (then the halves swap), as in U-LiRA. A forget example scores high under a target whose
    probability of its label, relative to the references, beats that of most test examples."""
    n = min(len(stats.loss_u), len(stats.loss_r))
    half = n // 2
    if half < 1:
        return {"rmia_note": "RMIA needs at least 2 models of each kind"}
    p_x_u, p_x_r = true_label_probability(stats.loss_u[:n]), true_label_probability(stats.loss_r[:n])
    p_z_u, p_z_r = true_label_probability(stats.test_loss_u[:n]), true_label_probability(stats.test_loss_r[:n])
    pos, neg = [], []  # (targets, ex) scores of unlearned / retrained target models
    for refs, target in ((slice(0, half), slice(half, n)), (slice(half, n), slice(0, half))):
        for p_x, p_z, out in ((p_x_u, p_z_u, pos), (p_x_r, p_z_r, neg)):
            out.append(rmia_scores(p_x[target], p_x_r[refs], p_z[target], p_z_r[refs]))
    return {"rmia_params": {"offline_a": RMIA_OFFLINE_A, "gamma": RMIA_GAMMA, "references": half},
            **_target_summary("rmia", np.concatenate(pos), np.concatenate(neg), stats.seed)}


@register_attack("epsilon", statistics=("lsc_u", "lsc_r", "acc_u", "acc_r"),
                 keys=("epsilon_resolution", *(k for s in ("", "_bounded")
                                               for k in (f"forget_quality{s}", f"epsilon_score{s}",
                                                         f"epsilon{s}_per_example"))),
                 summary=("forget_quality_bounded", "epsilon_score_bounded"),
                 help="The NeurIPS'23 forgetting quality F and final score, as released and with bounded rates.")
def epsilon(stats: Stats) -> dict:
    """The NeurIPS'23 forgetting quality F and final score F·(RA_U/RA_R)·(TA_U/TA_R), as released
    (empirical rates) and with Clopper–Pearson-bounded rates (`*_bounded`, see `per_example_epsilon`)."""
    n = min(len(stats.lsc_u), len(stats.lsc_r))
    out = {"epsilon_resolution": resolution_note(n)}
    for suffix, alpha in (("", None), ("_bounded", BOUND_ALPHA)):
        eps = per_example_epsilon(stats.lsc_r[:n], stats.lsc_u[:n], confidence_alpha=alpha)
        quality = forgetting_quality(eps, n)
        points = per_example_points(eps, n)  # F is the mean of these, so the bootstrap resamples examples
        boot = bootstrap_interval(points, np.mean, n_resamples=1000, seed=stats.seed)
        score = final_score(quality, stats.acc_u["retain"].mean(), stats.acc_r["retain"].mean(),
                            stats.acc_u["test"].mean(), stats.acc_r["test"].mean())
        out.update({f"forget_quality{suffix}": {"value": quality, "low": boot[1], "high": boot[2]},
                    f"epsilon_score{suffix}": score, f"epsilon{suffix}_per_example": eps})
    return out


@register_attack("ks", statistics=LSC, keys=("ks_statistic", "ks_pvalue", "ks_fraction_rejected"))
def ks(stats: Stats) -> dict:
    """Two-sample KS test of the unlearned vs retrained distributions of the logit-scaled confidence."""
    statistic, p = ks_test(stats.lsc_u.ravel(), stats.lsc_r.ravel())
    from scipy.stats import ks_2samp

    per_example = np.atleast_1d(ks_2samp(stats.lsc_u, stats.lsc_r, axis=0).pvalue)  # one test per forget example
    return {"ks_statistic": statistic, "ks_pvalue": p, "ks_fraction_rejected": float((per_example < 0.05).mean())}


@register_attack("tow", statistics=("acc_u", "acc_r", "seconds_u", "seconds_r"), keys=("tow",))
def tow(stats: Stats) -> dict:
    """Tug-of-war (RUM): Π over forget/retain/test of (1 − |Acc_U − Acc_R|/100), per model pair, with a t-interval."""
    values = [tug_of_war({k: stats.acc_u[k][i] for k in stats.acc_u}, {k: stats.acc_r[k][i] for k in stats.acc_r})
              for i in range(min(len(stats.seconds_u), len(stats.seconds_r)))]
    return {"tow": _interval(values)}


def _interval(values) -> dict:
    mean, low, high = mean_t_interval(np.asarray(values, dtype=float))
    return {"value": float(mean), "low": float(low), "high": float(high)}
