"""The prompt-wise search: the upper level weights the concepts (prompts), the lower level is a concept
unlearning method run with those weights, and the upper gradient is each concept's objective under the
unlearned model (the paper's: the diffusion loss of the concept's real images). It reuses the data-wise
search's parts: the exact capped-simplex projection, f(w) = Σ v_c w_c + γ‖w‖² and its partial derivative, the
seeded tie-break of the uniform start, and the per-step checkpoint (resume gives the same set).

Objectives (lower = the unlearned model still holds the concept: the search minimises Σ w_c v_c):
- `loss` (the paper's): mean ‖ε̂(x_t, t, c) − ε‖² over the concept's real training images and a fixed grid of
  timesteps (the paper's t = 0, 100, …, 900), fixed noise; the target is ε (the reference code regresses on
  ε/1000).
- `loss_gap`: that loss under the unlearned model minus under the original — how little unlearning moved it
  (a concept that is hard to denoise for every model does not look "remembered").
- `recognition`: minus the classifier's probability of the concept on the unlearned model's generations of
  it — the attack's own measure (UA).
Every value is computed per concept id and scattered by id (`index_add_`), so no ordering of the (object, style)
grid can assign a concept's gradient to another's weight (the reference code's transposed prompts).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core.errors import ConfigError, WorstforgetError
from ..core.hashing import stable_hash
from ..core.progress import NullProgress, Progress
from ..core.registry import Registry
from ..core.runtime import Timer, one_intra_op_thread
from ..core.seeds import derive_seed, generator
from ..methods.concepts import ConceptMethod, make_concept_method
from .checkpoint import SearchCheckpoint
from .projection import top_m, upper_step
from .solvers.base import upper_value_and_grad

CONCEPT_SOLVERS = ("warm", "first_order")
STATE_VERSION = 1


@dataclass(frozen=True)
class ConceptSearchConfig:
    forget_ratio: float = 0.1  # m = ratio · concepts (the paper: 10 of 100 prompts)
    solver: str = "warm"  # warm: one run of the method spread over the outer steps | first_order: a whole run each
    outer_steps: int = 10  # the paper's prompt-wise search: 10
    upper_lr: float = 0.5  # in units of the gradient's std when normalize_step
    normalize_step: bool = True
    gamma: float = 1e-4
    # recognition: measured to find the concepts ESD leaves most recognisable while Retrain erases them; the paper's
    # loss finds concepts every model generates well, Retrain included (results/generative/README.md)
    objective: str = "recognition"
    timesteps: int = 10  # the fixed grid of the loss objectives: 0, T/k, 2T/k, ...
    images_per_concept: int = 16  # real images per concept the loss objectives read
    generations_per_concept: int = 4  # generations per concept the recognition objective reads

    def validate(self) -> "ConceptSearchConfig":
        if not 0 < self.forget_ratio < 1:
            raise ConfigError(f"--forget-ratio must be strictly between 0 and 1, got {self.forget_ratio}")
        if self.solver not in CONCEPT_SOLVERS:
            raise ConfigError(f"--solver must be warm or first-order for --task generation, got "
                              f"{self.solver.replace('_', '-')!r}")
        if self.outer_steps < 1:
            raise ConfigError("--outer-steps must be at least 1")
        if self.upper_lr <= 0 or self.gamma < 0:
            raise ConfigError("--upper-lr must be positive and --gamma non-negative")
        if self.objective not in CONCEPT_OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(CONCEPT_OBJECTIVES.names())} for --task "
                              f"generation, got {self.objective!r}")
        if self.timesteps < 1 or self.images_per_concept < 1 or self.generations_per_concept < 1:
            raise ConfigError("the objective's timesteps and images per concept must be at least 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ConceptProblem:
    setting: object  # GenerativeSetting
    method: ConceptMethod
    config: ConceptSearchConfig
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def num_vars(self) -> int:
        return self.setting.num_concepts

    @property
    def budget(self) -> int:
        return self.setting.budget(self.config.forget_ratio)

    def timestep_grid(self) -> torch.Tensor:
        """0, T/k, …: the paper's t = 0, 100, …, 900 for T = 1000 and k = 10."""
        total = self.setting.model.num_train_timesteps
        return torch.arange(self.config.timesteps) * (total // self.config.timesteps)

    def loss_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fixed evaluation batch of the loss objectives: every concept's first images (seeded pick) ×
        every grid timestep, with fixed noise. (x0, concept ids, t, noise)"""
        if "loss_batch" not in self._memo:
            data, k = self.setting.data, self.config.images_per_concept
            g = generator(0, "concept-objective")
            rows = []
            for c in range(data.num_concepts):
                own = torch.nonzero(data.concept_train.cpu() == c).flatten()
                rows.append(own[torch.randperm(len(own), generator=g)[:k]])
            rows = torch.cat(rows)
            grid = self.timestep_grid()
            x0 = self.setting.model.encode(data.x_train[rows.to(data.x_train.device)]).repeat_interleave(len(grid), 0)
            concepts = data.concept_train[rows.to(data.x_train.device)].repeat_interleave(len(grid))
            t = grid.repeat(len(rows)).to(x0.device)
            noise = torch.randn(x0.shape, generator=g).to(x0.device)
            self._memo["loss_batch"] = (x0, concepts, t, noise)
        return self._memo["loss_batch"]

    def values(self, denoiser) -> torch.Tensor:
        """Per-concept objective v_c of an unlearned denoiser, float64 (concepts,)."""
        return CONCEPT_OBJECTIVES.get(self.config.objective)(self, denoiser)


def per_concept(values: torch.Tensor, concepts: torch.Tensor, num_concepts: int) -> torch.Tensor:
    """Mean of per-row values by concept id (index_add_: duplicates accumulate; any row order). (num_concepts,)"""
    total = torch.zeros(num_concepts, dtype=torch.float64).index_add_(0, concepts.cpu(), values.double().cpu())
    count = torch.zeros(num_concepts, dtype=torch.float64).index_add_(0, concepts.cpu(),
                                                                       torch.ones(len(concepts), dtype=torch.float64))
    return total / count.clamp_min(1)


@torch.no_grad()
def diffusion_losses(problem: ConceptProblem, denoiser, chunk: int = 1024) -> torch.Tensor:
    """Per-concept mean ‖ε̂(x_t, t, c) − ε‖² over the fixed batch; the regression target is ε. (concepts,)"""
    model = problem.setting.model
    x0, concepts, t, noise = problem.loss_batch()
    out = []
    for s in range(0, len(x0), chunk):
        sl = slice(s, s + chunk)
        pred = model.predict_noise(denoiser, model.add_noise(x0[sl], noise[sl], t[sl]), t[sl],
                                   model.condition(concepts[sl]))
        out.append((pred - noise[sl]).pow(2).flatten(1).mean(1))
    return per_concept(torch.cat(out), concepts, problem.num_vars)


CONCEPT_OBJECTIVES: Registry[Callable[[ConceptProblem, object], torch.Tensor]] = Registry("concept objective")


@CONCEPT_OBJECTIVES.register("loss")
def loss_objective(problem: ConceptProblem, denoiser) -> torch.Tensor:
    """The paper's: each concept's diffusion loss under the unlearned model (low = still generated well)."""
    return diffusion_losses(problem, denoiser)


@CONCEPT_OBJECTIVES.register("loss_gap")
def loss_gap_objective(problem: ConceptProblem, denoiser) -> torch.Tensor:
    """The diffusion loss's rise over the original's (low = unlearning barely moved the concept)."""
    if "original_loss" not in problem._memo:
        problem._memo["original_loss"] = diffusion_losses(problem, problem.setting.original)
    return diffusion_losses(problem, denoiser) - problem._memo["original_loss"]


@CONCEPT_OBJECTIVES.register("recognition")
def recognition_objective(problem: ConceptProblem, denoiser) -> torch.Tensor:
    """Minus the classifier's probability of each concept on generations of it (low = still recognisable)."""
    s, k = problem.setting, problem.config.generations_per_concept
    concepts = torch.arange(s.num_concepts).repeat_interleave(k)
    images = s.model.generate(denoiser, concepts, steps=s.generation.steps, guidance=s.generation.guidance,
                              generator=generator(0, "concept-objective-generations"))
    probs = s.classifier.concept_probabilities(images)
    own = probs[torch.arange(len(concepts)), concepts.to(probs.device)]
    return -per_concept(own, concepts, s.num_concepts)


@dataclass
class ConceptSearchResult:
    weights: torch.Tensor  # (concepts,) final relaxed w
    units: torch.Tensor  # top-m concept ids
    initial_units: torch.Tensor
    weight_history: torch.Tensor  # (outer_steps + 1, concepts)
    history: dict
    seconds: float
    key: str


def concept_search_key(setting, method: ConceptMethod, cfg: ConceptSearchConfig, seed: int) -> str:
    return stable_hash({"v": STATE_VERSION, "original": setting.original_key, "method": method.name,
                        "params": method.hyperparameters(), "search": cfg.to_dict(), "seed": seed,
                        "generation": setting.generation.to_dict()})


@one_intra_op_thread()
def search_concepts(setting, method: str | ConceptMethod, params: dict | None, cfg: ConceptSearchConfig, *,
                    seed: int = 0, resume: bool = False, state_dir: str | Path | None = None,
                    progress: Progress | None = None) -> ConceptSearchResult:
    """The m concepts the method finds hardest to erase (prompt-wise bi-level search).

    warm: one run of the method (its `steps`) spread over the outer steps, continued with the current w
    (its model, optimiser and step counter carry over and are checkpointed); first_order: a whole run from
    the original at every outer step. The hypergradient is the partial derivative v + 2γw either way.
    """
    cfg = cfg.validate()
    instance = method if isinstance(method, ConceptMethod) else make_concept_method(method, params)
    if not instance.iterative:
        raise ConfigError(f"{instance.name} is not a loop from the original and cannot be the search's lower level; "
                          "search with esd, ablation or gradient_ascent")
    problem = ConceptProblem(setting, instance, cfg)
    n, m = problem.num_vars, problem.budget
    key = concept_search_key(setting, instance, cfg, seed)
    warm = cfg.solver == "warm"
    checkpoint = None
    if setting.records.enabled:
        checkpoint = SearchCheckpoint(Path(state_dir or setting.records.root / "search"), key, n, stateful=warm)
    tie = torch.randperm(n, generator=generator(seed, "search-init")).double()
    w0 = torch.full((n,), m / n, dtype=torch.float64)
    initial = top_m(w0, m, tie_break=tie)
    w, start, elapsed = w0.clone(), 0, 0.0
    weights = [w0.clone()]
    history: dict[str, list] = {"objective": [], "overlap_with_initial": [], "step_size": []}
    last_grad = torch.zeros(n, dtype=torch.float64)
    run = instance.start(setting) if warm else None
    per_step = math.ceil(instance.steps / cfg.outer_steps)
    with checkpoint.lock() if checkpoint else nullcontext():
        state = checkpoint.load(cfg.outer_steps) if checkpoint else None
        if state is not None and (resume or state["done"]):
            start, history, elapsed = state["step"], state["history"], state["seconds"]
            weights, last_grad = state["weights"], state["last_grad"]
            w = weights[-1].clone()
            if warm and start < cfg.outer_steps:
                run.load_state_dict(state["solver_state"])
        if checkpoint:
            checkpoint.begin(weights)
        task = (progress or NullProgress()).task(f"concept search ({cfg.solver}, {instance.name})", cfg.outer_steps)
        task.advance(start)
        for t in range(start, cfg.outer_steps):
            with Timer() as timer:
                step_seed = derive_seed(seed, "outer-step", t)
                if warm:
                    instance.advance(setting, run, w.float(), seed, per_step)
                    denoiser = run.denoiser.eval()
                else:
                    denoiser = instance.apply(setting, w.float(), seed=step_seed)
                values = problem.values(denoiser)
                if warm:
                    run.denoiser.train()
                value, grad = upper_value_and_grad(values, w, cfg.gamma)
                if not (bool(torch.isfinite(grad).all()) and math.isfinite(value)):
                    raise WorstforgetError(f"the concept search's objective holds NaN or inf at outer step {t + 1}; "
                                           f"the lower level diverged: lower the method's lr (--param lr=...)")
                w, step = upper_step(w, grad, m, lr=cfg.upper_lr, normalize=cfg.normalize_step)
            elapsed += timer.seconds
            last_grad = grad
            units = top_m(w, m, tie_break=-grad)
            history["objective"].append(value)
            history["step_size"].append(step)
            history["overlap_with_initial"].append(float(torch.isin(units, initial).float().mean()))
            weights.append(w.clone())
            if checkpoint:
                checkpoint.save(w, step=t + 1, done=t + 1 == cfg.outer_steps, history=history, seconds=elapsed,
                                last_grad=last_grad, solver_state=run.state_dict() if warm else None)
            task.advance(1, objective=value)
        task.close()
    units = top_m(w, m, tie_break=-last_grad)
    return ConceptSearchResult(weights=w, units=units, initial_units=initial, weight_history=torch.stack(weights),
                               history=history, seconds=elapsed, key=key)
