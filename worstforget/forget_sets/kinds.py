"""The one registry of forget-set kinds: the sets an audit runs on, in display order, each with its label in
tables and its name in sentences, and — for the one-shot kinds — a score over the training samples (higher =
picked first).

Who reads it: the audit's baselines and the search's `--init heuristic` (kinds with a score, `baseline=True`),
`evaluate --selector` (kinds with a `select`), `worstforget list baselines|selectors`, the result files' kind
order, the report and `experiments/tables.py` (labels). A new kind is one `@register_kind` here, or in a file
of its own imported by `forget_sets/__init__.py`.

A score is called as `score(setting, *, num_models, seed, objective, progress)`: `num_models` reference models
behind it (the search's), `objective` the search's per-sample objective v(θ) (lower = better fitted; only the
`heuristic` kind reads it). A select is called as `select(setting, *, ratio, seed, progress, **options)` and
returns sorted training indices; without one, a kind with a score selects the top m of its score.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.registry import Registry
from ..core.seeds import generator
from ..training.loop import per_sample_loss
from .masks import forget_size, random_forget_set, top_scores

Score = Callable[..., torch.Tensor]  # (setting, *, num_models, seed, objective, progress) → (num_train,) float64
Select = Callable[..., torch.Tensor]  # (setting, *, ratio, seed, progress, **options) → sorted indices


@dataclass(frozen=True)
class ForgetSetKind:
    """One kind of forget set: its label in tables, its name in sentences, how it is scored or chosen."""

    name: str
    label: str  # in tables ("worst-case")
    phrase: str  # in sentences ("the searched worst-case set")
    help: str  # one line for `worstforget list` and `--selector`'s help
    score: Score | None = None  # a one-shot score over the training samples, higher = picked first
    select: Select | None = None  # how `evaluate --selector` picks m samples (default: top m of `score`)
    baseline: bool = False  # run beside the search in every audit (`--baselines`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.help)  # `worstforget list` shows the first docstring line

    @property
    def selectable(self) -> bool:
        return self.select is not None or (self.score is not None and self.name != "heuristic")

    def choose(self, setting: Any, *, ratio: float, seed: int = 0, progress: Any = None,
               **options: Any) -> torch.Tensor:
        """m = ratio · N training indices of this kind (`evaluate --selector`)."""
        if self.select is not None:
            return self.select(setting, ratio=ratio, seed=seed, progress=progress, **options)
        if not self.selectable:
            raise ConfigError(f"the {self.phrase} set cannot be chosen on its own; choose one of "
                              f"{', '.join(selector_names())}")
        scores = self.score(setting, seed=seed, progress=progress, **options)
        return top_scores(scores.cpu().numpy(), forget_size(setting.data.num_train, ratio))


KINDS: Registry[ForgetSetKind] = Registry("set kind")


class _Order(Sequence):
    """The registered kinds' names in display order, read live (kinds registered later included)."""

    def __getitem__(self, i):
        return tuple(KINDS.in_order())[i]

    def __len__(self) -> int:
        return len(KINDS.in_order())

    def __repr__(self) -> str:
        return repr(tuple(self))


class _Names(Mapping):
    """kind → one of its texts (`label` or `phrase`), read live from the registry."""

    def __init__(self, field: str):
        self.field = field

    def __getitem__(self, kind: str) -> str:
        if kind not in KINDS.in_order():
            raise KeyError(kind)
        return getattr(KINDS.get(kind), self.field)

    def __iter__(self):
        return iter(KINDS.in_order())

    def __len__(self) -> int:
        return len(KINDS.in_order())


SET_KINDS: Sequence[str] = _Order()  # display order
KIND_LABELS: Mapping[str, str] = _Names("label")  # in tables
KIND_NAMES: Mapping[str, str] = _Names("phrase")  # in sentences


def register_kind(name: str, *, label: str, phrase: str, help: str, aliases: tuple[str, ...] = (),
                  select: Select | None = None, baseline: bool = False) -> Callable:
    """Register a kind; used bare (`register_kind(...)(None)`) for kinds without a score, or as a decorator of
    its score function."""
    def add(score: Score | None) -> Score | None:
        KINDS.register(name, aliases=aliases)(ForgetSetKind(name=name, label=label, phrase=phrase, help=help,
                                                          score=score, select=select, baseline=baseline))
        return score

    return add


class KindView:
    """The kinds of KINDS that pass `keep`, read like a registry (`list`, `canonical`, `get`)."""

    def __init__(self, what: str, keep: Callable[[ForgetSetKind], bool]):
        self.kind, self.keep = what, keep

    def names(self) -> list[str]:
        return [n for n in KINDS.in_order() if self.keep(KINDS.get(n))]

    def canonical(self, name: str) -> str:
        key = KINDS.canonical(name) if name in KINDS else name
        if key not in self.names():
            raise ConfigError(f"unknown {self.kind} {name!r}. Available: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> ForgetSetKind:
        return KINDS.get(self.canonical(name))

    def aliases_of(self, name: str) -> list[str]:
        return KINDS.aliases_of(name)

    def __contains__(self, name: str) -> bool:
        return name in KINDS and KINDS.canonical(name) in self.names()

    def __iter__(self):
        return iter(self.names())

    def help(self) -> str:
        """'name: help' of every kind, for an option's help text."""
        return "; ".join(f"{n}: {KINDS.get(n).help}" for n in self.names())


BASELINES = KindView("baseline", lambda k: k.baseline)  # one-shot sets run beside every search
SELECTORS = KindView("selector", lambda k: k.selectable)  # what `evaluate --selector` can choose


def baseline_names() -> list[str]:
    return BASELINES.names()


def selector_names() -> list[str]:
    return SELECTORS.names()


# --- the kinds, in display order ---------------------------------------------------------------------------

register_kind("worst_case", label="worst-case", phrase="searched worst-case",
              help="The bi-level search's set (worstforget search).")(None)


def _select_loss_window(setting: Any, *, ratio: float, quantile: float = 0.0, **_: Any) -> torch.Tensor:
    """The m consecutive samples by original-model loss starting at `quantile` (0 = lowest loss)."""
    if not 0 <= quantile <= 1:
        raise ConfigError(f"the loss quantile must lie in [0, 1], got {quantile}")
    data = setting.data
    m = forget_size(data.num_train, ratio)
    order = per_sample_loss(setting.original, data.x_train, data.y_train).cpu().argsort()
    start = min(int(round(quantile * data.num_train)), data.num_train - m)
    return order[start:start + m].sort().values


@register_kind("lowest_loss", aliases=("loss_quantile",), label="lowest-loss", phrase="lowest-loss heuristic",
               help="The samples the original model fits best (lowest loss; --quantile q starts the window at q): the "
                    "paper's cheap baseline.", select=_select_loss_window, baseline=True)
def lowest_loss(setting: Any, **_: Any) -> torch.Tensor:
    return -per_sample_loss(setting.original, setting.data.x_train, setting.data.y_train).double()


@register_kind("heuristic", label="heuristic", phrase="lowest-objective heuristic",
               help="The samples the original model fits best by the search's own objective (--init heuristic "
                    "starts from the baseline with the lowest objective).", baseline=True)
def lowest_objective(setting: Any, *, objective: Callable[[Any], torch.Tensor] | None = None, **_: Any) -> torch.Tensor:
    if objective is None:
        raise ConfigError("the heuristic set is scored by a search objective; it runs inside a search audit")
    return -objective(setting.original)


def memorization_scores(setting: Any, *, num_models: int = 8, seed: int = 0, progress: Any = None) -> np.ndarray:
    """mem_i ≈ E[p_y | i trained on] − E[p_y | i held out], from models on random halves (in the setting's
    cache)."""
    from ..core.cache import ArrayCache
    from ..training.memorization import memorization_scores as scores

    cache = ArrayCache(setting.records.root, enabled=setting.records.enabled)
    return scores(setting.spec, setting.data, num_models=num_models, seed=seed, progress=progress, cache=cache)


@register_kind("memorization", aliases=("memorization_proxy",), label="memorization", phrase="memorization heuristic",
               help="The most memorised samples: confidence when trained on minus when held out (held-out "
                    "retraining on random halves, the RUM line of work).", baseline=True)
def most_memorized(setting: Any, *, num_models: int = 8, seed: int = 0, progress: Any = None, **_: Any) -> torch.Tensor:
    return torch.as_tensor(memorization_scores(setting, num_models=num_models, seed=seed, progress=progress),
                           dtype=torch.float64)


def exposure_scores(setting: Any, num_models: int = 16, *, reference_seed: int = 0, progress: Any = None) -> np.ndarray:
    """(num_train,) one-shot exposure of the original model against the setting's `num_models` reference models
    (training/reference.py `exposure`, the search's exposure objective): higher = more exposed."""
    from ..training.loop import predict_logits
    from ..training.reference import SampleReferences, exposure

    stats = setting.references(num_models, seed=reference_seed, progress=progress)
    refs = SampleReferences.from_stats(stats, device=setting.data.device)
    logits = predict_logits(setting.original, setting.data.x_train).double()
    return exposure(logits, setting.data.y_train, refs).cpu().numpy()


@register_kind("exposure", label="exposure", phrase="exposure heuristic",
               help="The samples the original model is most distinguishable on from reference models that never "
                    "trained on them (the exposure objective, once, on the original).", baseline=True)
def most_exposed(setting: Any, *, num_models: int = 16, reference_seed: int = 0, progress: Any = None,
                 **_: Any) -> torch.Tensor:
    # deterministic given the reference models (the ones the search's exposure objective reads): no seed
    return torch.as_tensor(exposure_scores(setting, num_models, reference_seed=reference_seed, progress=progress),
                           dtype=torch.float64)


def _select_random(setting: Any, *, ratio: float, seed: int = 0, **_: Any) -> torch.Tensor:
    n = setting.data.num_train
    return random_forget_set(n, forget_size(n, ratio), seed)


register_kind("random", label="random", phrase="random", help="Uniformly random training samples.",
              select=_select_random)(None)


def _select_class(setting: Any, *, ratio: float, seed: int = 0, **_: Any) -> torch.Tensor:
    """All samples of round(ratio · C) random classes (at least one)."""
    data = setting.data
    k = max(1, int(round(ratio * data.num_classes)))
    classes = torch.randperm(data.num_classes, generator=generator(seed, "class-selector"))[:k]
    return torch.nonzero(torch.isin(data.y_train.cpu(), classes)).flatten()


register_kind("class", label="class", phrase="whole-class", help="All samples of round(ratio · C) random classes.",
              select=_select_class)(None)

register_kind("given", label="given", phrase="given", help="Your own indices (--forget-set FILE.npy).")(None)


__all__ = ["ForgetSetKind", "KINDS", "SET_KINDS", "KIND_LABELS", "KIND_NAMES", "BASELINES", "SELECTORS", "KindView",
           "register_kind", "baseline_names", "selector_names", "memorization_scores", "exposure_scores"]
