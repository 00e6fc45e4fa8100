"""The paper's metrics: UA, RA, TA, MIA-Efficacy (SVC on confidence), run time and Avg. Gap to Retrain."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..core.runtime import thread_map
from ..datasets import Dataset
from ..forget_sets.masks import forget_mask, forgotten_classes
from ..training.loop import predict_logits
from ..training.outputs import logit_scaled_confidence

GAP_METRICS = ("UA", "MIA", "RA", "TA")  # Avg. Gap is the mean |Δ| to Retrain over these (the paper's)
GAP_METRICS_LOGIT = ("UA", "MIA_logit", "RA", "TA")  # the same with the SVC on standardised logit-scaled confidence
ACCURACY_METRICS = ("UA", "RA", "TA")  # the accuracy gap: the Avg. Gap without a membership column
SATURATION = 1 - 1e-4  # a true-label confidence above this carries no usable signal for a 1-D attack on it
SATURATED_SHARE = 50.0  # % of forget samples past SATURATION under Retrain above which MIA-Efficacy is flagged
UNSTABLE_SPREAD = 10.0  # points of MIA spread (over seeds of one set, or over attacker resamples) flagged unstable


def mia_flags(retrain: dict[str, np.ndarray], methods: Iterable[dict[str, np.ndarray]] = ()) -> dict[str, list[str]]:
    """Which MIA columns of one set kind cannot be trusted, from the runs on it (arrays (sets, seeds)):
    `saturated` when Retrain leaves most forget samples past SATURATION (the paper's SVC then flips), and
    `unstable` when Retrain's value moves by more than UNSTABLE_SPREAD over seeds, or any run's (Retrain's or a
    method's in `methods`) over the attacker's resamples: an Avg. Gap reads both sides, and a method whose
    attacker flips between its draws (0, 0 and 100: a mean of 33) gives a gap that measures the attacker."""
    flags: dict[str, list[str]] = {}
    runs = [retrain, *methods]
    for column in ("MIA", "MIA_logit"):
        if column not in retrain:
            continue
        found = []
        if column == "MIA" and "saturated" in retrain and np.nanmean(retrain["saturated"]) > SATURATED_SHARE:
            found.append("saturated")
        values = np.atleast_2d(retrain[column])
        seed_spread = np.nanmax(np.nanstd(values, axis=1, ddof=1)) if values.shape[1] > 1 else 0.0
        # each run's mean spread over the attacker's draws, NaNs left out (a method's arrays may lack them: older
        # records); a run with no spread at all says nothing, and must not hide another's
        spreads = [run[f"{column}_std"][~np.isnan(run[f"{column}_std"])] for run in runs if f"{column}_std" in run]
        resample_spread = max((float(v.mean()) for v in spreads if v.size), default=0.0)
        if max(seed_spread, resample_spread) > UNSTABLE_SPREAD:
            found.append("unstable")
        flags[column] = found
    return flags


HIGHER_IS_BETTER = {"UA": None, "MIA": None, "RA": True, "TA": True, "RTE": False}  # None: compare with Retrain


def true_label_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Softmax probability of the true label, the 1-D feature of the paper's SVC attack. (N,)"""
    if len(y) == 0:
        return np.zeros(0)
    return torch.softmax(logits.double(), dim=1).gather(1, y[:, None]).squeeze(1).cpu().numpy()


def svc_mia_efficacy(feature_retain: np.ndarray, feature_test: np.ndarray, feature_forget: np.ndarray, *,
                     seed: int = 0, max_shadow: int = 10_000, standardize: bool = False) -> float:
    """MIA-Efficacy in percent: share of forget samples an RBF-SVC calls non-members.

    The attacker (SVC, C=3, gamma='auto') is trained on a *random* retain sample (members) against
    the test set (non-members), balanced in size, on one per-sample feature: the true-label confidence
    (the paper's), or — with `standardize` — any feature rescaled by the mean and standard deviation of
    the attacker's own training sample, so the RBF kernel's fixed width means the same on every scale.
    """
    from sklearn.svm import SVC

    if len(feature_forget) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = min(len(feature_retain), len(feature_test), max_shadow)
    members = rng.choice(feature_retain, size=n, replace=False)
    nonmembers = rng.choice(feature_test, size=n, replace=False)
    features = np.concatenate([members, nonmembers])
    query = np.asarray(feature_forget, dtype=np.float64)
    if standardize:
        centre, scale = features.mean(), features.std()
        scale = scale if scale > 0 else 1.0
        features, query = (features - centre) / scale, (query - centre) / scale
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features[:, None], labels)
    predicted_member = attack.predict(query[:, None])
    return float((1 - predicted_member).mean() * 100)


def model_outputs(model: nn.Module, data: Dataset) -> dict[str, torch.Tensor]:
    """Logits on the training and test splits (eval mode, no augmentation)."""
    return {"train": predict_logits(model, data.x_train), "test": predict_logits(model, data.x_test)}


def evaluate(model: nn.Module, data: Dataset, forget_set: torch.Tensor, *, mia_seed: int = 0,
             mia_resamples: int = 1) -> dict[str, float]:
    """UA, RA, TA (percent) and MIA-Efficacy of a model for one forget set (train-split indices).

    MIA is the mean over `mia_resamples` draws of the attacker's training sample (MIA_std their spread):
    a 1-D SVC on saturated confidences can flip on a small change of what it was trained on. MIA_logit is
    the same protocol on the standardised logit-scaled confidence, which does not saturate; `saturated` is
    the share (%) of forget samples whose true-label confidence exceeds SATURATION.
    When the forget set holds whole classes (class-wise forgetting), TA and the attacker's non-members
    use only test samples of the remaining classes, as in the class-wise protocol.
    """
    out = model_outputs(model, data)
    forget = forget_mask(data, forget_set)
    gone = forgotten_classes(data, forget)
    if len(gone):
        keep = ~torch.isin(data.y_test, gone)
        out["test"] = out["test"][keep]
        data = replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep])
    correct = out["train"].argmax(1) == data.y_train
    test_correct = out["test"].argmax(1) == data.y_test
    conf_train = true_label_confidence(out["train"], data.y_train)
    conf_test = true_label_confidence(out["test"], data.y_test)
    lsc_train = logit_scaled_confidence(out["train"].double(), data.y_train).cpu().numpy()
    lsc_test = logit_scaled_confidence(out["test"].double(), data.y_test).cpu().numpy()
    f = forget.cpu().numpy()
    # the 2 × resamples SVC fits are independent, and on a large test split (10,000 samples: 20,000 training
    # points each) they cost several trainings of a small model: they share the cores this process may use
    fits = [(conf_train[~f], conf_test, conf_train[f], mia_seed + r, False) for r in range(mia_resamples)]
    fits += [(lsc_train[~f], lsc_test, lsc_train[f], mia_seed + r, True) for r in range(mia_resamples)]
    scores = thread_map(lambda a: svc_mia_efficacy(*a[:3], seed=a[3], standardize=a[4]), fits)
    mia, mia_logit = scores[:mia_resamples], scores[mia_resamples:]
    return {
        "UA": 100.0 - float(correct[forget].float().mean() * 100),
        "RA": float(correct[~forget].float().mean() * 100),
        "TA": float(test_correct.float().mean() * 100),
        "MIA": float(np.mean(mia)),
        "MIA_std": float(np.std(mia, ddof=1)) if len(mia) > 1 else 0.0,
        "MIA_logit": float(np.mean(mia_logit)),
        "MIA_logit_std": float(np.std(mia_logit, ddof=1)) if len(mia_logit) > 1 else 0.0,
        "saturated": float((conf_train[f] > SATURATION).mean() * 100),  # % of forget samples past SATURATION
    }


def avg_gap(metrics: dict[str, float], reference: dict[str, float], keys: tuple[str, ...] = GAP_METRICS) -> float:
    """Mean |metric − Retrain's| over UA, MIA-Efficacy, RA and TA (the paper's Avg. Gap; `keys` chooses the
    MIA column)."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in keys]))
