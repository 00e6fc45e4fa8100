"""Concept unlearning, written once against per-concept weights w (one entry per concept, in [0, 1]).

Every method's step loss is Σ_c w_c · loss_c / Σ_c w_c over the concepts with w_c > 0, where loss_c is the
method's loss on that concept's draws; each step's random draws (images, noise, timesteps) are made for every
concept from the step's own seed, whatever w is. So a concept with w_c = 0 changes nothing — the step is exactly
the step without it — and the search's lower level (relaxed w) and the evaluation (binary w of a forget set)
run the same code. A run is resumable by step index (`start`): the warm solver continues one run across the
search's outer steps.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.registry import Registry
from ...core.seeds import derive_seed, generator
from ...training.diffusion import copy_denoiser
from ..base import split_param


@dataclass
class Draws:
    """One step's random draws for every concept: (C, B, ...) images in the denoiser's space, noise, timesteps."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor


@dataclass
class ConceptRun:
    """A run in progress: the denoiser being unlearned, its optimiser and the next step's index."""

    denoiser: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0

    def state_dict(self) -> dict:
        return {"denoiser": self.denoiser.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.denoiser.load_state_dict(state["denoiser"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


@dataclass
class ConceptMethod:
    """Shared hyper-parameters of the loop; subclasses add their own and define `draw` and `concept_losses`."""

    name: ClassVar[str] = ""
    iterative: ClassVar[bool] = True  # False: not a loop from the original (Retrain)
    steps: int = 100  # optimiser steps of one run
    lr: float = 2e-4  # Adam (ESD-x on concepts-digits: 1e-4 erases about half, 3e-4 all; results/generative)
    params: str = "xattn"  # which denoiser parameters move: all | xattn (cross-attention, ESD-x) | noxattn (ESD-u)
    per_concept: int = 4  # draws per concept and step

    def check(self) -> "ConceptMethod":
        if self.steps < 1 or self.per_concept < 1:
            raise ConfigError(f"{self.name}: steps and per_concept must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"{self.name}: lr must be positive, got {self.lr}")
        if self.params not in ("all", "xattn", "noxattn"):
            raise ConfigError(f"{self.name}: params must be all, xattn or noxattn, got {self.params!r}")
        return self

    def hyperparameters(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # --- what a method defines ---
    def draw(self, setting, g: torch.Generator) -> Draws:
        raise NotImplementedError

    def concept_losses(self, setting, denoiser: nn.Module, concepts: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Per-concept losses (len(concepts),) of the draws of `concepts` (rows of draws already selected)."""
        raise NotImplementedError

    # --- the one loop ---
    def weighted_loss(self, setting, denoiser: nn.Module, w: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Σ_c w_c loss_c / Σ_c w_c over the concepts with w_c > 0."""
        active = torch.nonzero(w > 0).flatten()
        sub = Draws(draws.x0[active], draws.noise[active], draws.t[active])
        losses = self.concept_losses(setting, denoiser, active.to(setting.device), sub)
        wa = w[active].to(losses.dtype)
        return (wa * losses).sum() / wa.sum()

    def start(self, setting) -> ConceptRun:
        denoiser = copy_denoiser(setting.original).train()
        names = {id(p) for p in setting.model.parameters_for(self.params)}
        chosen = {n for n, p in setting.original.named_parameters() if id(p) in names}
        trainable = []
        for n, p in denoiser.named_parameters():
            p.requires_grad_(n in chosen)
            if n in chosen:
                trainable.append(p)
        return ConceptRun(denoiser, torch.optim.Adam(trainable, lr=self.lr))

    def advance(self, setting, run: ConceptRun, w: torch.Tensor, seed: int, steps: int) -> ConceptRun:
        """`steps` more steps of the run with weights w; step k draws from its own seed (seed, k)."""
        w = w.detach().to(setting.device, torch.float32)
        if not bool((w > 0).any()):
            raise ConfigError(f"{self.name}: the forget weights are all zero; nothing to unlearn")
        for _ in range(steps):
            draws = self.draw(setting, generator(derive_seed(seed, "concept-step", run.step), "draws"))
            loss = self.weighted_loss(setting, run.denoiser, w, draws)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.step += 1
        return run

    def apply(self, setting, w: torch.Tensor, *, seed: int, steps: int | None = None) -> nn.Module:
        """A whole run from the original: the unlearned denoiser (eval mode)."""
        run = self.advance(setting, self.start(setting), w, seed, self.steps if steps is None else steps)
        return run.denoiser.eval().requires_grad_(False)


def noised_draws(setting, source: torch.Tensor, per_concept: int, g: torch.Generator) -> Draws:
    """For each concept c, `per_concept` images picked from source[c] (C, P, ...), noise and uniform timesteps."""
    num, pool = source.shape[:2]
    pick = torch.randint(0, pool, (num, per_concept), generator=g).to(source.device)
    x0 = torch.gather(source, 1, pick.view(num, per_concept, *([1] * (source.dim() - 2))).expand(
        num, per_concept, *source.shape[2:]))
    noise = torch.randn(x0.shape, generator=g).to(source.device)
    t = torch.randint(0, setting.model.num_train_timesteps, (num, per_concept), generator=g).to(source.device)
    return Draws(x0, noise, t)


def flat(draws: Draws, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, B, ...) draws → (A·B, ...) batches, with each row's concept id."""
    a, b = draws.x0.shape[:2]
    return (draws.x0.reshape(a * b, *draws.x0.shape[2:]), draws.noise.reshape(a * b, *draws.noise.shape[2:]),
            draws.t.reshape(a * b), concepts.repeat_interleave(b))


def per_concept_mean(values: torch.Tensor, count: int) -> torch.Tensor:
    """(A·B,) per-row values → (A,) means over each concept's B rows."""
    return values.view(count, -1).mean(1)


CONCEPT_METHODS: Registry[type[ConceptMethod]] = Registry("concept unlearning method")


def register_concept_method(name: str, *, aliases: tuple[str, ...] = ()):
    def add(cls):
        cls.name = name
        return CONCEPT_METHODS.register(name, aliases=aliases)(cls)

    return add


def make_concept_method(name: str, params: dict[str, Any] | None = None) -> ConceptMethod:
    cls = CONCEPT_METHODS.get(name)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ConfigError(f"{cls.name} has no hyper-parameter {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**(params or {})).check()


def parse_concept_params(name: str, pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """['lr=1e-4', 'params=all'] typed by the method's defaults; unknown keys and wrong types refused."""
    cls = CONCEPT_METHODS.get(name)
    defaults = {f.name: f.default for f in fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, raw, value = split_param(pair, defaults, cls.name)
        expected = type(defaults[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"--param {key}={raw} for {cls.name}: expected {expected.__name__}")
        out[key] = value
    return out
