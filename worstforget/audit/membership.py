"""Classic LiRA against the trained model: shadow models on random halves of train ∪ test.

Each example of the pool is 'in' for exactly half of the shadow models. Scores are reported in the
LiRA paper's leave-one-out protocol (every shadow model in turn is the target, the others are its
shadows), which gives num_shadows × pool_size member/non-member pairs and so resolves FPRs down to
~1/(num_shadows·pool_size/2); the global loss-threshold attack is scored on exactly the same pairs.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.progress import Progress
from ..core.seeds import derive_seed, generator
from ..scoring.metrics import logit_scaled_confidence
from ..scoring.privacy import lira_attack_metrics, lira_scores, loss_threshold_attack
from ..setting import Setting
from ..training.loop import predict_logits


def lira_on_original(setting: Setting, *, num_shadows: int = 16, seed: int = 0, fix_variance: bool = True,
                     progress: Progress | None = None) -> dict:
    from ..training.ensemble import fit_ensemble

    data = setting.data
    pool = replace(data, x_train=torch.cat([data.x_train, data.x_test]), y_train=torch.cat([data.y_train, data.y_test]),
                   fingerprint=data.fingerprint + "-lira-pool")
    n = pool.num_train
    # (M, n): each column has exactly M/2 'in' entries, placed by a seeded random ranking
    ranks = torch.rand(num_shadows, n, generator=generator(seed, "lira-membership")).argsort(0).argsort(0)
    masks = (ranks < num_shadows // 2).to(data.device)
    models = fit_ensemble(setting.spec, pool, seeds=[derive_seed(seed, "lira-shadow", i) for i in range(num_shadows)],
                          sample_weights=masks.float(), progress=progress, description="LiRA shadow models")
    lsc, losses = [], []
    for model in models:
        logits = predict_logits(model, pool.x_train).double()
        lsc.append(logit_scaled_confidence(logits, pool.y_train).cpu().numpy())
        losses.append(F.cross_entropy(logits, pool.y_train, reduction="none").cpu().numpy())
    lsc, losses, in_mask = np.stack(lsc), np.stack(losses), masks.cpu().numpy()
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
    target_logits = predict_logits(setting.original, pool.x_train).double()
    target = logit_scaled_confidence(target_logits, pool.y_train).cpu().numpy()
    t_scores = lira_scores(target, lsc, in_mask, online=True, fix_variance=fix_variance)
    member = np.zeros(n, dtype=bool)
    member[: data.num_train] = True
    target_lira = lira_attack_metrics(t_scores[member & np.isfinite(t_scores)], t_scores[~member & np.isfinite(t_scores)])
    t_loss = F.cross_entropy(target_logits, pool.y_train, reduction="none").cpu().numpy()
    target_population = loss_threshold_attack(t_loss[member], t_loss[~member])
    return {"num_shadows": num_shadows,
            "shadow_note": None if num_shadows >= 16 else "fewer than 16 shadow models: per-example Gaussian fits are "
                                                          "noisy and LiRA can score below the population attack", "pairs_positive": int(len(pos_all)), "pairs_negative": int(len(neg_all)),
            "leave_one_out": {"lira": lira, "loss_threshold": population},
            "target": {"lira": target_lira, "loss_threshold": target_population,
                       "note": f"{int(member.sum())} members vs {int((~member).sum())} non-members: FPRs below "
                               f"{1 / max(1, int((~member).sum())):.2%} are not resolved on the target alone"}}
