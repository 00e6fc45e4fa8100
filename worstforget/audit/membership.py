"""Membership attacks against the trained model with shadow models on random halves of train ∪ test:
classic LiRA (online) and offline RMIA, on the same shadow models.

Each example of the pool is 'in' for exactly half of the shadow models. Scores are reported in the
LiRA paper's leave-one-out protocol (every shadow model in turn is the target, the others are its
shadows), which gives num_shadows × pool_size member/non-member pairs and so resolves FPRs down to
~1/(num_shadows·pool_size/2); the global loss-threshold attack is scored on exactly the same pairs.
The shadow models' outputs are cached, so LiRA and RMIA with the same number of models and seed train
them once.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.cache import ArrayCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.seeds import derive_seed, generator
from ..scoring.privacy import (
    RMIA_GAMMA,
    RMIA_OFFLINE_A,
    lira_attack_metrics,
    lira_scores,
    loss_threshold_attack,
    rmia_attack_metrics,
    rmia_scores,
    true_label_probability,
)
from ..setting import Setting
from ..training.loop import predict_logits
from ..training.outputs import logit_scaled_confidence

SHADOW_VERSION = 1


def _outputs(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    return {"lsc": logit_scaled_confidence(logits, labels).cpu().numpy(),
            "loss": F.cross_entropy(logits, labels, reduction="none").cpu().numpy()}


def shadow_outputs(setting: Setting, num_shadows: int, seed: int = 0, *, progress: Progress | None = None
                   ) -> dict[str, np.ndarray]:
    """Per-example outputs on the pool train ∪ test of `num_shadows` shadow models and of the original.

    Returns (cached per setting, num_shadows and seed): ``lsc`` and ``loss`` (M, n) of the shadow models,
    ``in_mask`` bool (M, n) (shadow m trained on pool example i; each column has M//2 True entries),
    ``target_lsc`` and ``target_loss`` (n,) of the original model, and ``num_train`` (the first
    num_train pool examples are the training split, the rest the test split).
    """
    from ..training.ensemble import fit_ensemble

    data = setting.data
    cache = ArrayCache(setting.records.root, enabled=setting.records.enabled)
    key = stable_hash({"v": SHADOW_VERSION, "original": setting.original_key, "spec": setting.spec.to_dict(),
                       "data": data.fingerprint, "num_shadows": num_shadows, "seed": seed})
    found = cache.get("lira-shadows", key)
    if found is not None:
        return found
    pool = replace(data, x_train=torch.cat([data.x_train, data.x_test]), y_train=torch.cat([data.y_train, data.y_test]),
                   fingerprint=data.fingerprint + "-lira-pool")
    n = pool.num_train
    # (M, n): each column has exactly M/2 'in' entries, placed by a seeded random ranking
    ranks = torch.rand(num_shadows, n, generator=generator(seed, "lira-membership")).argsort(0).argsort(0)
    masks = (ranks < num_shadows // 2).to(data.device)
    models = fit_ensemble(setting.spec, pool, seeds=[derive_seed(seed, "lira-shadow", i) for i in range(num_shadows)],
                          sample_weights=masks.float(), progress=progress, description="LiRA shadow models")
    per_model = [_outputs(predict_logits(model, pool.x_train).double(), pool.y_train) for model in models]
    target = _outputs(predict_logits(setting.original, pool.x_train).double(), pool.y_train)
    found = {"lsc": np.stack([p["lsc"] for p in per_model]), "loss": np.stack([p["loss"] for p in per_model]),
             "in_mask": masks.cpu().numpy(), "target_lsc": target["lsc"], "target_loss": target["loss"],
             "num_train": np.array(data.num_train)}
    cache.put("lira-shadows", key, found)
    return found


def _target_note(member: np.ndarray) -> str:
    return (f"{int(member.sum())} members vs {int((~member).sum())} non-members: FPRs below "
            f"{1 / max(1, int((~member).sum())):.2%} are not resolved on the target alone")


def lira_on_original(setting: Setting, *, num_shadows: int = 16, seed: int = 0, fix_variance: bool = True,
                     progress: Progress | None = None) -> dict:
    """Online LiRA against the trained model: leave-one-out over the shadow models, and the original itself."""
    shadows = shadow_outputs(setting, num_shadows, seed, progress=progress)
    lsc, losses, in_mask = shadows["lsc"], shadows["loss"], shadows["in_mask"]
    pos, neg, loss_pos, loss_neg = [], [], [], []
    for i in range(num_shadows):
        others = np.arange(num_shadows) != i
        scores = lira_scores(lsc[i], lsc[others], in_mask[others], online=True, fix_variance=fix_variance)
        pos.append(scores[in_mask[i]])
        neg.append(scores[~in_mask[i]])
        loss_pos.append(losses[i][in_mask[i]])
        loss_neg.append(losses[i][~in_mask[i]])
    pos_all, neg_all = np.concatenate(pos), np.concatenate(neg)
    lira = lira_attack_metrics(pos_all[np.isfinite(pos_all)], neg_all[np.isfinite(neg_all)])
    population = loss_threshold_attack(np.concatenate(loss_pos), np.concatenate(loss_neg))
    # the audited model itself: members = its training split, non-members = the test split
    t_scores = lira_scores(shadows["target_lsc"], lsc, in_mask, online=True, fix_variance=fix_variance)
    member = np.arange(lsc.shape[1]) < int(shadows["num_train"])
    target_lira = lira_attack_metrics(t_scores[member & np.isfinite(t_scores)],
                                      t_scores[~member & np.isfinite(t_scores)])
    t_loss = shadows["target_loss"]
    target_population = loss_threshold_attack(t_loss[member], t_loss[~member])
    return {"num_shadows": num_shadows,
            "shadow_note": None if num_shadows >= 16 else "fewer than 16 shadow models: per-example Gaussian fits are "
                                                          "noisy and LiRA can score below the population attack",
            "pairs_positive": len(pos_all), "pairs_negative": len(neg_all),
            "leave_one_out": {"lira": lira, "loss_threshold": population},
            "target": {"lira": target_lira, "loss_threshold": target_population, "note": _target_note(member)}}


def rmia_on_original(setting: Setting, num_references: int = 16, *, seed: int = 0, a: float = RMIA_OFFLINE_A,
                     gamma: float = RMIA_GAMMA, progress: Progress | None = None) -> dict:
    """Offline RMIA against the trained model on the shadow models of `lira_on_original` (same count, same seed).

    Leave-one-out: each shadow model in turn is the target; for every pool example the reference models
    are the other shadows that never trained on it (offline: OUT models only), and the population z is
    the target's non-members, as in the paper's experiments (a non-member x is then compared with itself
    too, which counts only when γ ≤ 1). The original model is attacked with all shadows as references
    and the test split as population. Returns the structure of `lira_on_original` with ``rmia`` entries.
    """
    if num_references < 4:
        raise ConfigError(f"RMIA on the original needs at least 4 shadow models (got {num_references}) so that every "
                          "example keeps an OUT reference model in leave-one-out")
    shadows = shadow_outputs(setting, num_references, seed, progress=progress)
    prob, losses, in_mask = true_label_probability(shadows["loss"]), shadows["loss"], shadows["in_mask"]
    pos, neg, loss_pos, loss_neg = [], [], [], []
    for i in range(num_references):
        others = np.arange(num_references) != i
        out_i = ~in_mask[i]  # the target's non-members: the population
        scores = rmia_scores(prob[i], prob[others], prob[i][out_i], prob[others][:, out_i], a=a, gamma=gamma,
                             out_mask_x=~in_mask[others], out_mask_z=~in_mask[others][:, out_i])
        pos.append(scores[in_mask[i]])
        neg.append(scores[out_i])
        loss_pos.append(losses[i][in_mask[i]])
        loss_neg.append(losses[i][out_i])
    pos_all, neg_all = np.concatenate(pos), np.concatenate(neg)
    rmia = rmia_attack_metrics(pos_all[np.isfinite(pos_all)], neg_all[np.isfinite(neg_all)])
    population = loss_threshold_attack(np.concatenate(loss_pos), np.concatenate(loss_neg))
    member = np.arange(prob.shape[1]) < int(shadows["num_train"])
    t_prob = true_label_probability(shadows["target_loss"])
    t_scores = rmia_scores(t_prob, prob, t_prob[~member], prob[:, ~member], a=a, gamma=gamma,
                           out_mask_x=~in_mask, out_mask_z=~in_mask[:, ~member])
    target_rmia = rmia_attack_metrics(t_scores[member & np.isfinite(t_scores)],
                                      t_scores[~member & np.isfinite(t_scores)])
    t_loss = shadows["target_loss"]
    return {"num_shadows": num_references, "offline_a": a, "gamma": gamma, "shadow_note": None,
            "pairs_positive": len(pos_all), "pairs_negative": len(neg_all),
            "leave_one_out": {"rmia": rmia, "loss_threshold": population},
            "target": {"rmia": target_rmia, "loss_threshold": loss_threshold_attack(t_loss[member], t_loss[~member]),
                       "note": _target_note(member)}}
