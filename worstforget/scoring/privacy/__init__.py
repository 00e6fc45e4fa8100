"""Privacy and forgetting metrics on arrays of model outputs (numpy/scipy only; no model training here).

* `scores`: LiRA's logit-scaled confidence from logits.
* `epsilon`: the NeurIPS'23 unlearning-challenge per-example ε, forgetting quality F and final score.
* `lira`: per-example (U-)LiRA likelihood-ratio scores, online/offline, fixed variance, attack summary.
* `rmia`: offline RMIA (relative likelihood ratios against population samples), attack summary.
* `roc`: ROC curve, AUC, TPR at fixed FPR, ROC downsampling.
* `population`: loss-threshold attack, two-sample KS test, tug-of-war (ToW).
* `intervals`: Student-t and bootstrap intervals.
"""
from __future__ import annotations

from .epsilon import (
    BOUND_ALPHA,
    DELTA,
    EPSILON_CAP,
    bucket_epsilon_limit,
    clopper_pearson_upper,
    final_score,
    forget_score,
    forgetting_quality,
    per_example_epsilon,
    per_example_points,
    resolution_note,
    threshold_epsilon,
)
from .intervals import bootstrap_interval, mean_t_interval
from .lira import (
    lira_attack_metrics,
    lira_offline,
    lira_online,
    lira_scores,
    u_lira_halvings,
    u_lira_per_example,
    u_lira_split_average,
)
from .population import ks_test, loss_threshold_attack, tug_of_war
from .rmia import (
    RMIA_GAMMA,
    RMIA_OFFLINE_A,
    offline_marginal,
    relative_scores,
    rmia_attack_metrics,
    rmia_scores,
    true_label_probability,
)
from .roc import (
    auc,
    balanced_accuracy,
    curve_area,
    downsample_roc,
    member_threshold,
    roc_curve,
    tpr_at_fpr,
)
from .scores import CHALLENGE_FLOOR, PrivacyInputError, logit_scaled_confidence

__all__ = [
    "BOUND_ALPHA",
    "CHALLENGE_FLOOR",
    "DELTA",
    "EPSILON_CAP",
    "PrivacyInputError",
    "RMIA_GAMMA",
    "RMIA_OFFLINE_A",
    "auc",
    "balanced_accuracy",
    "bootstrap_interval",
    "bucket_epsilon_limit",
    "clopper_pearson_upper",
    "curve_area",
    "downsample_roc",
    "final_score",
    "forget_score",
    "forgetting_quality",
    "ks_test",
    "lira_attack_metrics",
    "lira_offline",
    "lira_online",
    "lira_scores",
    "u_lira_halvings",
    "u_lira_per_example",
    "u_lira_split_average",
    "logit_scaled_confidence",
    "loss_threshold_attack",
    "mean_t_interval",
    "offline_marginal",
    "per_example_epsilon",
    "per_example_points",
    "relative_scores",
    "resolution_note",
    "rmia_attack_metrics",
    "rmia_scores",
    "roc_curve",
    "threshold_epsilon",
    "member_threshold",
    "tpr_at_fpr",
    "true_label_probability",
    "tug_of_war",
]
