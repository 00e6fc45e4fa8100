"""The paper's metrics: UA, RA, TA, MIA-Efficacy (SVC on confidence), run time and Avg. Gap to Retrain."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..datasets import Dataset
from ..setting import forget_mask, forgotten_classes
from ..training.loop import predict_logits

GAP_METRICS = ("UA", "MIA", "RA", "TA")  # Avg. Gap is the mean |Δ| to Retrain over these
HIGHER_IS_BETTER = {"UA": None, "MIA": None, "RA": True, "TA": True, "RTE": False}  # None: compare with Retrain


def true_label_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Softmax probability of the true label, the 1-D feature of the paper's SVC attack. (N,)"""
    if len(y) == 0:
        return np.zeros(0)
    return torch.softmax(logits.double(), dim=1).gather(1, y[:, None]).squeeze(1).cpu().numpy()


def svc_mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray, *,
                     seed: int = 0, max_shadow: int = 10_000) -> float:
    """MIA-Efficacy in percent: share of forget samples an RBF-SVC calls non-members.

    The attacker (SVC, C=3, gamma='auto') is trained on a *random* retain sample (members) against
    the test set (non-members), balanced in size, on the true-label confidence.
    """
    from sklearn.svm import SVC

    if len(conf_forget) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = min(len(conf_retain), len(conf_test), max_shadow)
    members = rng.choice(conf_retain, size=n, replace=False)
    nonmembers = rng.choice(conf_test, size=n, replace=False)
    features = np.concatenate([members, nonmembers])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    predicted_member = attack.predict(conf_forget[:, None])
    return float((1 - predicted_member).mean() * 100)


def model_outputs(model: nn.Module, data: Dataset) -> dict[str, torch.Tensor]:
    """Logits on the training and test splits (eval mode, no augmentation)."""
    return {"train": predict_logits(model, data.x_train), "test": predict_logits(model, data.x_test)}


def evaluate(model: nn.Module, data: Dataset, forget_set: torch.Tensor, *, mia_seed: int = 0,
             mia_resamples: int = 1) -> dict[str, float]:
    """UA, RA, TA (percent) and MIA-Efficacy of a model for one forget set (train-split indices).

    MIA is the mean over `mia_resamples` draws of the attacker's training sample (MIA_std their spread):
    a 1-D SVC on saturated confidences can flip on a small change of what it was trained on.
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
    f = forget.cpu().numpy()
    mia = [svc_mia_efficacy(conf_train[~f], conf_test, conf_train[f], seed=mia_seed + r) for r in range(mia_resamples)]
    return {
        "UA": 100.0 - float(correct[forget].float().mean() * 100),
        "RA": float(correct[~forget].float().mean() * 100),
        "TA": float(test_correct.float().mean() * 100),
        "MIA": float(np.mean(mia)),
        "MIA_std": float(np.std(mia, ddof=1)) if len(mia) > 1 else 0.0,
    }






def avg_gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean |metric − Retrain's| over UA, MIA-Efficacy, RA and TA (the paper's Avg. Gap)."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in GAP_METRICS]))


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def logit_scaled_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_y − log Σ_{j≠y} p_j, computed stably from logits. (N,)"""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)
