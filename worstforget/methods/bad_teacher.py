"""Bad teaching (Chundawat, Tarun, Mandal & Kankanhalli, AAAI 2023): distil the trained model on the
retain side and a randomly initialised, incompetent teacher on the forget side."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..core.seeds import derive_seed
from .base import Batch, Context, Phase, UnlearningMethod
from .registry import register_method
from .scrub import kl_to_teacher


def incompetent_teacher(ctx: Context) -> nn.Module:
    """A frozen, randomly initialised model of the original's architecture, drawn from the run's seed.

    Built from the recipe when there is one (the architecture's own initialisation); a bare checkpoint
    gets a copy of the original whose layers are reset with PyTorch's default initialisation.
    """
    init_seed = derive_seed(ctx.seed, "bad-teacher")
    if ctx.spec is not None:
        teacher = ctx.spec.build(ctx.data, seed=init_seed)
    else:
        teacher = copy.deepcopy(ctx.original)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(init_seed)
            for module in teacher.modules():
                if module is not teacher and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    teacher = teacher.to(ctx.data.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def bad_teacher_per_sample(student_logits: torch.Tensor, competent_logits: torch.Tensor,
                           incompetent_logits: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    """(1 − w_i)·KL_T(competent ‖ student) + w_i·KL_T(incompetent ‖ student), per sample. (B,)"""
    return (1 - w) * kl_to_teacher(student_logits, competent_logits, temperature) + \
        w * kl_to_teacher(student_logits, incompetent_logits, temperature)


@register_method("bad_teacher", aliases=("bad_teaching", "incompetent_teacher"))
@dataclass(kw_only=True)
class BadTeacher(UnlearningMethod):
    """Bad teaching: one pass over the training set, each sample pulled toward the trained model's outputs
    with weight 1 − w and toward a random model's outputs with weight w (KL at temperature T).

    Source: Chundawat et al., "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks Using an
    Incompetent Teacher", AAAI 2023, and its released code: 1 epoch, Adam, lr 1e-4, T = 1. The reference
    distils on a random 30 % of the retain set to save time; here the whole retain side is used (one pass
    over all samples), which costs more but removes a source of run-to-run variance. The KL is summed over
    classes and scaled by T² (as SCRUB's); at T = 1 this is the reference's loss up to the constant 1/C its
    element-wise mean applies, which Adam's scale invariance makes irrelevant.
    """

    epochs: int = 1
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    temperature: float = 1.0

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        ctx.extra["incompetent"] = incompetent_teacher(ctx)
        return model

    def loss(self, model: nn.Module, batches: dict[str, Batch], ctx: Context) -> torch.Tensor:
        b = batches["all"]
        with torch.no_grad():
            competent, incompetent = ctx.original(b.x), ctx.extra["incompetent"](b.x)
        return bad_teacher_per_sample(model(b.x), competent, incompetent, b.w, self.temperature).mean()

    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        return [Phase(("all",), self.loss)]
