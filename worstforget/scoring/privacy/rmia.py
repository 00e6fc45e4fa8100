"""RMIA, the relative membership inference attack (Zarifzadeh, Liu & Shokri, "Low-Cost High-Power
Membership Inference Attacks", ICML 2024), in its offline form (reference models that never saw x).

Owns: the offline estimate of the marginal Pr(x) from OUT reference models, the likelihood ratio
Pr(x|θ)/Pr(x), the relative score (the fraction of population samples z that x beats by a factor γ),
the conversion from a cross-entropy loss to Pr(x|θ), and the attack summary.

Definitions (paper, Section 3), for a target model θ, an example x = (input, label) and population
samples z drawn from the data distribution but outside θ's training set:

* Pr(x|θ): θ's softmax probability of x's true label (= exp(−cross-entropy)).
* Pr(x) = E_θ'[Pr(x|θ')] over models trained on population data, half of which would contain x. Offline,
  only the OUT models exist, whose mean Pr_OUT(x) underestimates Pr(x); the paper models the missing IN
  models linearly, Pr_IN(x) ≈ a·Pr_OUT(x) + (1 − a), which gives
  Pr(x) = ½[(1 + a)·Pr_OUT(x) + (1 − a)]. a = 1 says training on x changes nothing (Pr(x) = Pr_OUT(x));
  a = 0 says members are fitted perfectly (Pr_IN = 1). z gets the same estimate.
* LR_θ(x, z) = [Pr(x|θ)/Pr(x)] / [Pr(z|θ)/Pr(z)], and Score_MIA(x; θ) = Pr_z(LR_θ(x, z) ≥ γ), estimated as
  the fraction of the population sample. Higher means more member-like.

Defaults: γ = 2 and a = 0.33, the values in the paper's released reproduction configs for CIFAR-10
(``privacytrustlab/ml_privacy_meter``, ``research/2023_rmia``). a is data-dependent (those configs use
0.2 for Purchase-100; the paper picks it by attacking one reference model with the others, which needs
IN reference models). Those configs also soften the softmax (temperature 2), average references with a
trimmed mean and query augmentations; here Pr(x|θ) is the plain softmax probability and Pr_OUT the plain
mean, so only the scoring rule itself is the paper's.

Computation: for LR(z) > 0, LR(x)/LR(z) ≥ γ ⇔ LR(z) ≤ LR(x)/γ, so each score is one binary search in
the sorted population ratios (O((n_x + n_z) log n_z) per target, no n_x × n_z matrix). The two forms can
differ only for a ratio within one rounding step of γ. LR(x) = 0 scores 0 (every ratio is 0 or 0/0).
"""
from __future__ import annotations

import numpy as np

from .lira import lira_attack_metrics
from .scores import PrivacyInputError, as_float_array

#: γ of the paper's reproduction configs: x must beat z's likelihood ratio by a factor 2.
RMIA_GAMMA = 2.0
#: a of the paper's CIFAR-10 reproduction configs (Pr_IN(x) ≈ a·Pr_OUT(x) + 1 − a).
RMIA_OFFLINE_A = 0.33


def true_label_probability(loss) -> np.ndarray:
    """Pr(x|θ) = exp(−loss) from per-example cross-entropy losses (+inf, a zero probability, gives 0)."""
    arr = as_float_array(loss, "loss", finite=False)
    if np.isnan(arr).any() or (arr < 0).any():
        raise PrivacyInputError("cross-entropy losses must be non-negative numbers (NaN found or a negative loss)")
    return np.exp(-arr)


def _probabilities(values, name: str, ndim: int | None = None) -> np.ndarray:
    arr = as_float_array(values, name, ndim=ndim)
    if (arr < 0).any() or (arr > 1).any():
        raise PrivacyInputError(f"{name} must be probabilities in [0, 1], got range [{arr.min()}, {arr.max()}]")
    return arr


def _check_a(a: float) -> None:
    if not 0.0 <= a <= 1.0:
        raise PrivacyInputError(f"the offline parameter a must lie in [0, 1], got {a}")


def offline_marginal(p_ref, *, a: float = RMIA_OFFLINE_A, out_mask=None) -> np.ndarray:
    """Pr(x) = ½[(1 + a)·Pr_OUT(x) + (1 − a)], Pr_OUT(x) = mean of Pr(x|θ') over OUT reference models θ'.

    Args:
        p_ref: (M, n) probability of each example's true label under each reference model.
        a: The paper's offline parameter in [0, 1] (see the module docstring).
        out_mask: Optional bool (M, n); True where reference model m never trained on example i. Without
            it every reference model is OUT for every example.

    Returns:
        (n,) float64 marginals; NaN for an example with no OUT reference model.
    """
    _check_a(a)
    p = _probabilities(p_ref, "p_ref", ndim=2)
    if out_mask is None:
        mask = np.ones(p.shape, dtype=bool)
    else:
        mask = np.asarray(out_mask)
        if mask.dtype != bool or mask.shape != p.shape:
            raise PrivacyInputError(f"out_mask must be a bool array of shape {p.shape}, got {mask.dtype} {mask.shape}")
    count = mask.sum(0)  # (n,) OUT references per example
    with np.errstate(invalid="ignore", divide="ignore"):
        p_out = np.where(mask, p, 0.0).sum(0) / count  # 0/0 → NaN: no reference for that example
    return 0.5 * ((1.0 + a) * p_out + (1.0 - a))


def relative_scores(lr_x, lr_z, *, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """Score(x) = fraction of population samples z with LR(x)/LR(z) ≥ γ.

    Args:
        lr_x: (..., n_x) likelihood ratios Pr(x|θ)/Pr(x) of the scored examples, one row per target model.
        lr_z: (..., n_z) likelihood ratios of the population under the same target model(s): the same
            leading shape as ``lr_x``, or (n_z,) shared by every row.
        gamma: The threshold γ > 0.

    Returns:
        float64 scores in [0, 1] shaped like ``lr_x``. NaN in ``lr_x`` (no reference model) stays NaN;
        NaN population entries are left out of that row's population.

    Raises:
        PrivacyInputError: γ ≤ 0, infinite or negative ratios, mismatched shapes, or an empty population.
    """
    if not gamma > 0:
        raise PrivacyInputError(f"gamma must be > 0, got {gamma}")
    x = as_float_array(lr_x, "lr_x", finite=False)
    z = as_float_array(lr_z, "lr_z", finite=False)
    for arr, name in ((x, "lr_x"), (z, "lr_z")):
        if arr.ndim == 0:
            raise PrivacyInputError(f"{name} must have at least one dimension")
        if np.isinf(arr).any() or (arr < 0).any():
            raise PrivacyInputError(f"{name} must hold finite non-negative likelihood ratios")
    if z.ndim == 1:
        z = np.broadcast_to(z, x.shape[:-1] + z.shape)
    if z.shape[:-1] != x.shape[:-1]:
        raise PrivacyInputError(f"lr_z {z.shape} must share the leading shape of lr_x {x.shape}")
    rows_x = x.reshape(-1, x.shape[-1])  # (targets, n_x)
    rows_z = z.reshape(-1, z.shape[-1])  # (targets, n_z)
    out = np.empty(rows_x.shape)
    for r in range(rows_x.shape[0]):  # one binary search per target model; each is vectorised over x
        population = np.sort(rows_z[r][~np.isnan(rows_z[r])])
        if population.size == 0:
            raise PrivacyInputError("RMIA needs at least one population sample with a likelihood ratio")
        beaten = np.searchsorted(population, rows_x[r] / gamma, side="right")  # #{z: LR(z) ≤ LR(x)/γ}
        out[r] = beaten / population.size
    out[rows_x == 0] = 0.0  # LR(x)/LR(z) is 0 or 0/0, never ≥ γ
    out[np.isnan(rows_x)] = np.nan
    return out.reshape(x.shape)


def rmia_scores(p_target_x, p_ref_x, p_target_z, p_ref_z, *, a: float = RMIA_OFFLINE_A,
                gamma: float = RMIA_GAMMA, out_mask_x=None, out_mask_z=None) -> np.ndarray:
    """Offline RMIA scores of examples x against population samples z.

    Args:
        p_target_x: (n_x,) or (T, n_x) Pr(x|θ) under the target model(s).
        p_ref_x: (M, n_x) Pr(x|θ') under the reference models.
        p_target_z: (n_z,) or (T, n_z) Pr(z|θ) of the population under the same target model(s).
        p_ref_z: (M_z, n_z) Pr(z|θ') of the population under the reference models.
        a: Offline parameter of Pr(x) = ½[(1 + a)·Pr_OUT(x) + (1 − a)].
        gamma: Threshold γ of LR(x)/LR(z).
        out_mask_x: Optional bool (M, n_x), True where reference m is OUT for example i (see
            `offline_marginal`); default: every reference is OUT.
        out_mask_z: The same for the population.

    Returns:
        float64 scores in [0, 1] shaped like ``p_target_x``; higher = more member-like.

    Raises:
        PrivacyInputError: bad shapes or values, or Pr(x) = 0 (only possible with a = 1 when every OUT
            reference gives probability 0).
    """
    t_x = _probabilities(p_target_x, "p_target_x")
    t_z = _probabilities(p_target_z, "p_target_z")
    marginal_x = offline_marginal(p_ref_x, a=a, out_mask=out_mask_x)  # (n_x,)
    marginal_z = offline_marginal(p_ref_z, a=a, out_mask=out_mask_z)  # (n_z,)
    if t_x.ndim not in (1, 2) or t_x.shape[-1] != marginal_x.size:
        raise PrivacyInputError(f"p_target_x must have shape (n_x,) or (T, n_x) with n_x = {marginal_x.size}, "
                                f"got {t_x.shape}")
    if t_z.ndim != t_x.ndim or t_z.shape[:-1] != t_x.shape[:-1] or t_z.shape[-1] != marginal_z.size:
        raise PrivacyInputError(f"p_target_z must have shape {t_x.shape[:-1] + (marginal_z.size,)}, got {t_z.shape}")
    if (marginal_x == 0).any() or (marginal_z == 0).any():
        raise PrivacyInputError("Pr(x) = 0 for some example (a = 1 and every OUT reference gives it probability "
                                "0); use a < 1")
    return relative_scores(t_x / marginal_x, t_z / marginal_z, gamma=gamma)


def rmia_attack_metrics(scores_members, scores_nonmembers, *, max_points: int = 200) -> dict:
    """AUC, TPR at 1 % / 0.1 % FPR, balanced accuracy and a stored ROC of RMIA scores.

    The same summary (and TPR-at-FPR rule) as every other per-example attack, `lira_attack_metrics`,
    so RMIA and LiRA rows of one table are comparable.
    """
    return lira_attack_metrics(scores_members, scores_nonmembers, max_points=max_points)
