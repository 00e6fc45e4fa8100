"""Attack-based evaluation of unlearning: per-example U-LiRA, the NeurIPS'23 ε-score, KS, ToW, loss attack.

`evaluate_unlearning` trains N retrained and N unlearned models for one forget set (cached per model),
then runs the registered attacks on their per-example statistics. `lira_on_original` runs classic
LiRA (shadow models on random halves) against the trained model itself.
"""
from .registry import ATTACKS
from .runner import evaluate_unlearning, model_statistics
from .membership import lira_on_original

__all__ = ["ATTACKS", "evaluate_unlearning", "model_statistics", "lira_on_original"]
