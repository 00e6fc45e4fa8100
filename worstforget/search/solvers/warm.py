"""The warm solver: a single-loop scheme whose lower level is one unlearning run continued across outer steps.

At outer step t the run goes on from where step t−1 left it — model, optimiser state (momentum), the
method's random stream — for k more steps of the method under the current forget weights w_t (k =
`warm_fraction` of an epoch of the lower level's batches, or `inner_steps`), and the per-sample objective of
the resulting model is computed in one batched pass on the data's device. The hypergradient is that
objective plus 2γw, as in the first-order solver (the implicit term is dropped).

A forward pass over the whole training split costs about a third of a training epoch, more than the k steps
themselves at the default 0.05 epoch, so the pass covers every sample only every `warm_refresh` outer steps
(and at the first); in between it covers the samples with w > 0, and the others keep their last value.
Nothing is lost in f(w) = Σ w_i ℓ_i + γ‖w‖², whose terms all have fresh values, nor in the gradient of any
sample the projection can move out of the set or lower; a sample at w = 0 is judged on a value at most
`warm_refresh − 1` outer steps old when it competes to enter. (On Fashion-MNIST the support is 15–25% of
the samples after the first step.) Each outer step costs k steps and one pass over the support, plus a full
pass every `warm_refresh` steps, where the first-order solver takes 2 epochs from the original.
The steps are those of `first_order.lower_method` (the method's own optimiser and lr, or sign steps), at a
constant lr: a schedule decays towards the end of a run, and this run has no end. ctx.step counts from 0 in
every outer step, so a penalty that decays over a run (ℓ1-sparse's) restarts with each one.

What a continued run means for each family of methods:
  converging (finetune, ℓ1-sparse, EU-k, CF-k, random labels, SalUn, bad teacher, boundary shrink/expand):
      the run settles towards what the method reaches on the current weights, which move a little each
      outer step; continuing is what a longer run of the method would do.
  diverging (gradient ascent, and NegGrad+'s ascent term): ascent has no fixed point. Continued through a
      whole search, gradient ascent takes several times its own number of steps (5 epochs of its forget
      stream: 15 steps on a 10% digits set) and the model it leaves says nothing about the method.
  So with `warm_restart="budget"` (the default) the run restarts from the original — a fresh `prepare`
  (SalUn's mask, relabelled targets, added neurons, on the weights of that moment), optimiser and random
  stream — when its age would pass the method's own run length under the current weights (its epochs times
  the passes of its lead stream). Finetune's own run (10 epochs of the retain stream) outlasts a default
  search (20 outer steps × 0.05 epoch), so it never restarts and the two policies give the same set; gradient
  ascent restarts every few outer steps and is always scored at most one of its own runs from the original.
  Measured on digits (gradient ascent, results/search_cost.md): with `never` at 0.25 epoch per step the run
  overflows by the 20th outer step (the search stops on a non-finite hypergradient); at 0.05 the set it finds
  is less exposed than with `budget` (U-LiRA TPR@1%FPR 90.8 vs 92.7, AUC 0.992 vs 0.993).
  epoch-dependent plans (SCRUB's max then min phases, UNSIR's impair then repair) and methods that are not an
  iterative loop (retrain, influence, Fisher, plug-ins...) cannot be continued k steps at a time: their
  lower level is the first-order solver's run from the original at every outer step (one warning).

Called without a state (a caller that solves once, such as `--init heuristic`'s choice of start), the solver is
the first-order solver. The loop keeps the state (`WarmState`) and stores `state_dict()` in its per-step
checkpoint; `load_state_dict` replays the run's start (its `prepare` on its starting weights and seed) and loads
the model, optimiser, random stream, age and table of objective values, so a resumed search continues bit for
bit.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ...methods import UnlearningMethod
from ...methods.base import Context, Stepper, check_weights, plan_length, run_loop
from ..problem import Problem
from .base import SOLVERS, Hypergradient, upper_value_and_grad
from .first_order import first_order, lower_method

LOGGER = logging.getLogger("worstforget")


@dataclass
class WarmRun:
    """The lower level's run in progress: what `UnlearningMethod.apply` holds between its start and its end."""

    method: UnlearningMethod  # the lower level (first_order.lower_method at a constant lr)
    ctx: Context
    stepper: Stepper
    seed: int  # the seed of the outer step that started it
    start_weights: torch.Tensor  # (N,) the forget weights `prepare` read when it started
    age: int = 0  # steps taken since it started


def continuation_problem(method: UnlearningMethod, ctx: Context) -> str | None:
    """Why the method's run cannot be continued k steps at a time (None: it can): its epoch plan must be one
    phase on the same streams in every epoch, so that any k consecutive steps are alike."""
    if not method.iterative:
        return f"{method.name} is not an iterative loop"
    plans = [method.phases(epoch, ctx) for epoch in range(method.epochs)]
    if any(len(phases) != 1 for phases in plans) or len({phases[0].streams for phases in plans}) != 1:
        return f"{method.name}'s steps change with the epoch"
    return None


class WarmState:
    """The warm solver's state across outer steps: the continuing run, restarted as `warm_restart` says."""

    def __init__(self, problem: Problem):
        self.problem = problem
        # spanning the method's run (the default), the run has an end: its own schedule (lr, ℓ1 decay) runs over
        # the outer steps as over one run; a fixed fraction per step makes a run without an end: constant lr
        self.span = problem.config.warm_fraction is None and problem.config.inner_steps is None
        self.method = lower_method(problem) if self.span else replace(lower_method(problem), schedule="constant")
        self.run: WarmRun | None = None
        self.restarts = 0  # runs started after the first
        self.steps = 0  # outer steps taken
        self.values: torch.Tensor | None = None  # (N,) float64: each sample's objective at its last evaluation
        probe = None
        if self.method.iterative:
            zeros = torch.zeros(problem.data.num_train, device=problem.data.device)
            probe = self.method.context(problem.setting.original, problem.data, zeros, seed=0,
                                        spec=problem.setting.spec)
        # a spanning run walks the method's epoch plan in order, so only a method that is no loop runs cold
        self.cold_reason = ((None if self.method.iterative else f"{self.method.name} is not an iterative loop")
                            if self.span else continuation_problem(self.method, probe))
        if self.cold_reason is not None:
            LOGGER.warning("warm solver: %s; its lower level runs from the original at every outer step "
                           "(the first-order solver's)", self.cold_reason)

    def advance(self, w: torch.Tensor, seed: int) -> nn.Module:
        """Take the next k steps under forget weights `w` (N,), restarting first when due; the model to score."""
        k = self.problem.inner_steps
        if self.run is None or self._restart_due(w, k):
            self.restarts += self.run is not None
            self.run = self._start(w, seed)
        run = self.run
        ctx = run.ctx
        begin = run.age if self.span else 0  # a spanning run counts its steps on, so schedules see the whole run
        ctx.weights, ctx.seed, ctx.epoch, ctx.step = w, seed, 0, begin  # this outer step's batches, augmentation
        total = max(self.run_length(w), k * self.problem.config.outer_steps) if self.span else None
        run_loop(run.method, run.stepper, ctx, progress=self.problem.progress, max_steps=k, total_steps=total,
                 skip=begin)
        run.age += ctx.step - begin
        return self._finished(run)

    def score(self, model: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """The per-sample objective (N,) after this outer step: every sample's at a refresh step, else fresh
        values for the samples with w > 0 and the last ones for the rest. One batched pass either way."""
        if self.values is None or self.steps % self.problem.config.warm_refresh == 0:
            self.values = self.problem.values(model)
        else:
            rows = torch.nonzero(w > 0).flatten()
            self.values = self.values.index_copy(0, rows, self.problem.values(model, rows))
        self.steps += 1
        return self.values

    def run_length(self, w: torch.Tensor) -> int:
        """Steps of the method's own run under weights `w` (every phase of its epoch plan)."""
        return plan_length(self.method, self.run.ctx, w)

    def _restart_due(self, w: torch.Tensor, k: int) -> bool:
        if self.problem.config.warm_restart == "never" or self.run.age == 0:
            return False
        if self.span:  # k = ⌈run / outer steps⌉ may overshoot the run by less than k: restart once it is over
            return self.run.age >= self.run_length(w)
        return self.run.age + k > self.run_length(w)

    def _start(self, w: torch.Tensor, seed: int) -> WarmRun:
        """`apply`'s opening (`UnlearningMethod.open_run`) with the in-place stepper."""
        problem, method = self.problem, self.method
        ctx, stepper = method.open_run(problem.setting.original, problem.data, w, seed=seed, spec=problem.setting.spec)
        return WarmRun(method=method, ctx=ctx, stepper=stepper, seed=seed, start_weights=w.detach().clone())

    def _finished(self, run: WarmRun) -> nn.Module:
        """`apply`'s closing (`UnlearningMethod.close_run`), on a copy when `finish` changes the model (the run
        goes on)."""
        return run.method.close_run(run.stepper.model, run.ctx, continuing=True)

    def state_dict(self) -> dict:
        """What a resumed search needs to continue exactly ({} before the first step), on the CPU."""
        run = self.run
        if run is None:
            return {}
        return _to_cpu({"seed": run.seed, "age": run.age, "restarts": self.restarts, "steps": self.steps,
                        "values": self.values, "start_weights": run.start_weights,
                        "model": run.stepper.model.state_dict(), "optimizer": run.stepper.opt.state_dict(),
                        "rng": run.ctx.rng.get_state()})

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.run, self.restarts, self.steps, self.values = None, 0, 0, None
            return
        data = self.problem.data
        run = self._start(state["start_weights"].to(data.device), state["seed"])  # replays `prepare`
        run.stepper.model.load_state_dict(state["model"])
        run.stepper.opt.load_state_dict(state["optimizer"])
        run.ctx.rng.set_state(state["rng"])
        run.age, self.restarts, self.run = state["age"], state["restarts"], run
        self.steps = state["steps"]
        self.values = None if state["values"] is None else state["values"].to(data.device)


def _to_cpu(obj: Any) -> Any:
    """A detached CPU copy of nested dicts and lists of tensors (the checkpoint must not alias the live run)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def span_steps(problem: Problem) -> int:
    """Steps per outer step that make the outer steps span the method's own run on a set of m units (every phase
    of its epoch plan under binary weights, divided by the outer steps). The search then scores the model the
    method leaves at the end of its run, not after its first epoch; a method that is no loop gets 1 (its lower
    level is the first-order solver's)."""
    method = lower_method(problem)
    if not method.iterative:
        return 1
    w_var = torch.zeros(problem.num_vars, dtype=torch.float64, device=problem.data.device)
    w_var[: problem.budget] = 1.0
    w = problem.expand(w_var).float()
    ctx = method.context(problem.setting.original, problem.data, w, seed=0, spec=problem.setting.spec)
    return max(1, math.ceil(plan_length(method, ctx, w) / problem.config.outer_steps))


def cold_problem(problem: Problem) -> Problem:
    """The same problem for the first-order solver. Its lower level is the method's whole run from the original
    (unless `inner_steps` is set): a method whose plan changes with the epoch is searched on what it does, never
    on a few steps of its first phase."""
    cold = replace(problem, config=replace(problem.config, solver="first_order"))
    cold._references = problem._references  # the reference statistics are the same constants
    cold.whole_run = problem.config.inner_steps is None
    return cold


@SOLVERS.register("warm")
def warm(problem: Problem, w_var: torch.Tensor, seed: int, state: WarmState | None = None) -> Hypergradient:
    """One unlearning run continued across outer steps, k steps each (single loop); hypergradient ℓ + 2γw."""
    if state is None or state.cold_reason is not None:
        return first_order(cold_problem(problem), w_var, seed)
    w_var = w_var.detach().to(torch.float64)
    w = check_weights(problem.expand(w_var).float(), problem.data)
    per_sample = state.score(state.advance(w, seed), w)
    reduced = problem.reduce(per_sample)
    value, grad = upper_value_and_grad(reduced, w_var, problem.config.gamma)
    return Hypergradient(value=value, grad=grad, per_sample=per_sample)


warm.new_state = WarmState  # the loop keeps one across outer steps and checkpoints it
