"""The unlearning-method contract and the one loop every iterative method runs.

A method is written once against per-sample forget weights w ∈ [0, 1]^N: sample i contributes with
weight w_i to forget-side terms and 1 − w_i to retain-side terms. 0/1 weights give the ordinary
method on that forget set; fractional weights are what the bi-level search differentiates or ranks.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.progress import NullProgress, Progress
from ..core.seeds import generator
from ..datasets import Dataset, augment_batch
from ..training.accel import current_accel
from ..training.divergence import DivergenceWatch
from ..training.optim import lr_factor, make_optimizer

STREAMS = ("retain", "forget", "all")


@dataclass
class Batch:
    """One minibatch of a stream: inputs, labels and the forget weight of every sample."""

    idx: torch.Tensor  # (B,) training-set indices
    x: torch.Tensor  # (B, ...) augmented inputs
    y: torch.Tensor  # (B,)
    w: torch.Tensor  # (B,) forget weights (differentiable when the search unrolls)
    norm: torch.Tensor  # mean stream weight: Σ v ℓ / (B · norm) is the subset mean for 0/1 weights
    drawn: dict[str, torch.Tensor] = field(default_factory=dict)  # the phase's `draw` for this step (lead stream)

    @property
    def retain_weight(self) -> torch.Tensor:
        return 1.0 - self.w

    def retain_mean(self, per_sample: torch.Tensor) -> torch.Tensor:
        return (per_sample * (1.0 - self.w)).sum() / (len(self.w) * self.norm)

    def forget_mean(self, per_sample: torch.Tensor) -> torch.Tensor:
        return (per_sample * self.w).sum() / (len(self.w) * self.norm)


@dataclass
class Phase:
    """A pass of the loop: the lead stream sets its length, the others cycle beside it."""

    streams: tuple[str, ...]
    loss: Callable[[nn.Module, dict[str, Batch], "Context"], torch.Tensor]
    # a step's random inputs (random labels), drawn from the run's generator `ctx.rng` before the loss and handed
    # to it in the lead stream's `Batch.drawn`: a loss that draws nothing itself can run for a stack of runs,
    # each drawing from its own generator (methods/stacked.py)
    draw: Callable[[dict[str, Batch], "Context"], dict[str, torch.Tensor]] | None = None


@dataclass
class Context:
    """What a method's hooks may read or keep during one unlearning run."""

    data: Dataset
    weights: torch.Tensor  # (N,) forget weights
    seed: int
    epochs: int
    original: nn.Module  # frozen copy of the trained model (teacher, reference)
    spec: Any = None  # ModelSpec of the original, for methods that retrain
    epoch: int = 0
    step: int = 0
    total_steps: int = 1
    grad_mask: dict[str, torch.Tensor] | None = None  # SalUn: parameters allowed to change
    extra: dict[str, Any] = field(default_factory=dict)
    rng: torch.Generator | None = None


class Stepper:
    """Applies one optimisation step from a loss, in place on the model's parameters.

    A stepper is built by a factory `(model, trainable params, method) -> stepper` that `apply` calls after
    `prepare`; it exposes `model` (what the loss hooks call, and what `apply` returns after `finish`),
    `set_lr` and `step`. The factory's `differentiable` flag says whether the run keeps the autograd graph
    from the forget weights to the returned model (the unrolled search's steppers) or not (this one).

    SalUn's saliency mask (`ctx.grad_mask`) means masked parameters never move: their gradient is
    zeroed and, after the step, their old values are restored, so momentum and weight decay cannot
    move them either. Differentiable steppers must keep exactly these semantics.
    """

    differentiable: ClassVar[bool] = False

    def __init__(self, model: nn.Module, params: list[nn.Parameter], method: "UnlearningMethod"):
        self.model = model
        self.params = params
        self.opt = make_optimizer(method.optimizer, params, lr=method.lr, momentum=method.momentum,
                                  weight_decay=method.weight_decay)

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, ctx: Context) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.grad_mask is None:
            self.opt.step()
            return
        # SalUn: masked parameters must not move at all, so momentum and weight decay are undone too.
        named = dict(self.model.named_parameters())
        frozen = {n: named[n].detach().clone() for n in ctx.grad_mask}
        for n, mask in ctx.grad_mask.items():
            if named[n].grad is not None:
                named[n].grad.mul_(mask)
        self.opt.step()
        with torch.no_grad():
            for n, mask in ctx.grad_mask.items():
                named[n].copy_(torch.where(mask.bool(), named[n], frozen[n]))


StepperFactory = Callable[[nn.Module, list, "UnlearningMethod"], Any]  # with a `differentiable` attribute


@dataclass(kw_only=True)
class UnlearningMethod:
    """Base class: hyper-parameters are dataclass fields (typed, settable with --param key=value).

    Subclasses implement `phases(epoch, ctx)` (and optionally `prepare`, `finish`, `trainable`), or
    override `apply` entirely when the method is not an iterative loop (retrain, influence).

    Example:
        >>> method = METHODS.get("finetune")(epochs=5, lr=0.01)
        >>> unlearned = method.apply(original, data, forget_weights, seed=0)
    """

    epochs: int = 10  # passes over the lead stream
    lr: float = 0.01
    batch_size: int | None = None  # None: the dataset's training batch size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"  # constant | cosine | step
    optimizer: str = "sgd"  # sgd | sign (the search's lower level) | adam
    augment: bool = True

    name: ClassVar[str] = ""
    # Capabilities, declared by each method; pipelines read these and never probe with hasattr.
    differentiable: ClassVar[bool] = True  # its SGD steps can be unrolled by the search
    iterative: ClassVar[bool] = True  # runs the shared loop (the first-order search cuts it to K sign steps)
    # its losses read only the model, the batches and the run's schedule (no random draw, no per-run state), so
    # several runs can train as one vmapped stack (methods/stacked.py)
    stackable: ClassVar[bool] = False
    partitioned: ClassVar[bool] = False  # audits its own partitioned original (`partitioned_original`)
    report_keys: ClassVar[tuple[str, ...]] = ()  # numbers in `last_report` after `apply`, kept in the unit record

    # --- hooks ---------------------------------------------------------------------------------
    def phases(self, epoch: int, ctx: Context) -> list[Phase]:
        raise NotImplementedError

    def prepare(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Change the model before the loop (re-initialise layers, add a neuron, compute a mask)."""
        return model

    def trainable(self, model: nn.Module, ctx: Context) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def finish(self, model: nn.Module, ctx: Context) -> nn.Module:
        return model

    def lr_scale(self, ctx: Context) -> float:
        return lr_factor(self.schedule, ctx.step, ctx.total_steps)

    # --- driver --------------------------------------------------------------------------------
    def resolved(self, default_batch_size: int) -> "UnlearningMethod":
        return self if self.batch_size is not None else replace(self, batch_size=default_batch_size)

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check_hyperparameters(self) -> None:
        """Refuse, in one line naming the parameter and its range, values that type-check but cannot mean
        anything (see `hyperparameter_problem`); `make_method` calls it before any work."""
        for name, value in self.hyperparameters().items():
            problem = hyperparameter_problem(name, value)
            if problem:
                raise ConfigError(f"{self.name or type(self).__name__} hyper-parameter {name}={value!r}: {problem}")

    def code_key(self) -> str | None:
        """A hash of the code behind this method when the package version does not pin it (plug-ins)."""
        return None

    def context(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int,
                spec: Any = None) -> Context:
        teacher = copy.deepcopy(original).to(data.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return Context(data=data, weights=forget_weights, seed=seed, epochs=self.epochs, original=teacher,
                       spec=spec, rng=generator(seed, f"unlearn-{self.name}"))

    def apply(self, original: nn.Module, data: Dataset, forget_weights: torch.Tensor, *, seed: int = 0,
              spec: Any = None, progress: Progress | None = None, max_steps: int | None = None,
              stepper: StepperFactory | None = None) -> nn.Module:
        """Unlearn: return a new model; `original` is left untouched.

        Args:
            original: the trained model.
            data: the dataset the model was trained on.
            forget_weights: (num_train,) weights in [0, 1]; 1 = forget, 0 = retain.
            seed: seeds batch order, augmentation and any random choice of the method.
            spec: the original's ModelSpec (needed by methods that retrain).
            progress: optional progress sink.
            max_steps: stop after this many optimisation steps (the search's lower level).
            stepper: stepper factory (default: `Stepper`, in-place optimiser steps). A differentiable one
                (the unrolled search's) runs this very loop and returns a model whose forward is a
                differentiable function of `forget_weights`.
        """
        make_stepper = stepper or Stepper
        w = check_weights(forget_weights, data)
        if not make_stepper.differentiable:
            w = w.detach()  # in-place steps must never backpropagate into the caller's weights
        ctx, steps = self.open_run(original, data, w, seed=seed, spec=spec, stepper=make_stepper)
        run_loop(self, steps, ctx, progress=progress, max_steps=max_steps)
        return self.close_run(steps.model, ctx).eval()

    def open_run(self, original: nn.Module, data: Dataset, w: torch.Tensor, *, seed: int, spec: Any = None,
                 stepper: StepperFactory | None = None) -> tuple[Context, Any]:
        """`apply`'s opening: the context (the original as teacher), a copy of the original in training mode,
        `prepare`, and a stepper over its trainable parameters. Shared with the warm search solver, which
        continues the run across outer steps, so both start a run the same way."""
        ctx = self.context(original, data, w, seed=seed, spec=spec)
        model = copy.deepcopy(original).to(data.device).train()
        model = self.prepare(model, ctx)
        return ctx, (stepper or Stepper)(model, self.trainable(model, ctx), self)

    def close_run(self, model: nn.Module, ctx: Context, *, continuing: bool = False) -> nn.Module:
        """`apply`'s closing: `finish`. With `continuing` (the warm solver's run goes on after this model is
        scored) `finish` works on a copy, and is skipped when the method does not override it."""
        if not continuing:
            return self.finish(model, ctx)
        if type(self).finish is UnlearningMethod.finish:
            return model
        return self.finish(copy.deepcopy(model), ctx)


# Bounds of typed but absurd hyper-parameters. An epoch count is the work a run may start: 10^12 epochs would
# never end (and its epoch plan alone would fill the memory), so counts have a ceiling far above any recipe's.
MAX_EPOCHS = 10_000
MAX_STEPS = 10_000_000
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # parameters and steps are float32: beyond it is inf


def split_param(pair: str, known, owner: str) -> tuple[str, str, Any]:
    """One `--param key=value`: (key, the value's text, the value as a Python literal or, failing that, the text).
    A pair without `=` or an unknown key (`known`: the method's hyper-parameter names) is refused in one line."""
    import ast

    key, sep, raw = pair.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise ConfigError(f"--param expects key=value, got {pair!r}")
    if key not in known:
        raise ConfigError(f"{owner} has no hyper-parameter {key!r}; known: {', '.join(sorted(known))}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, raw, value


def hyperparameter_problem(name: str, value: Any) -> str | None:
    """What is wrong with one hyper-parameter's value (None when it is usable): every number finite and within
    float32; learning rates positive; momentum and weight decay non-negative; `epochs` in [1, MAX_EPOCHS],
    other epoch counts in [0, MAX_EPOCHS], step counts in [0, MAX_STEPS]; a batch size at least 1."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if abs(value) > FLOAT32_MAX:
        return f"is beyond float32's range (±{FLOAT32_MAX:.3g})"
    if name == "lr" or name.endswith("_lr"):
        return None if value > 0 else "a learning rate must be positive"
    if name in ("momentum", "weight_decay"):
        return None if value >= 0 else "must be zero or positive"
    if name == "batch_size":
        return None if value >= 1 else "must be at least 1"
    if name == "epochs":
        return None if 1 <= value <= MAX_EPOCHS else f"must lie in [1, {MAX_EPOCHS:,}]"
    if "epoch" in name and isinstance(value, int):
        return None if 0 <= value <= MAX_EPOCHS else f"must lie in [0, {MAX_EPOCHS:,}]"
    if (name == "steps" or name.endswith("_steps")) and isinstance(value, int):
        return None if 0 <= value <= MAX_STEPS else f"must lie in [0, {MAX_STEPS:,}]"
    return None


def check_weights(w: torch.Tensor, data: Dataset) -> torch.Tensor:
    """Validated forget weights on the data's device, in its floating dtype (float64 data: float64 weights)."""
    dtype = data.x_train.dtype if data.x_train.is_floating_point() else torch.float32
    w = torch.as_tensor(w, dtype=dtype, device=data.device)
    if w.shape != (data.num_train,):
        raise ConfigError(f"forget weights must have shape ({data.num_train},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool(((w < 0) | (w > 1)).any()):
        raise ConfigError("forget weights must be finite and lie in [0, 1]")
    return w


class StreamSampler:
    """Endless shuffled batches over the samples a stream covers (retain: w<1, forget: w>0, all)."""

    def __init__(self, kind: str, w: torch.Tensor, batch_size: int, g: torch.Generator):
        if kind not in STREAMS:
            raise ValueError(kind)
        wd = w.detach()
        mask = {"retain": wd < 1, "forget": wd > 0, "all": torch.ones_like(wd, dtype=torch.bool)}[kind]
        self.active = torch.nonzero(mask).flatten()
        stream_w = {"retain": 1.0 - w, "forget": w, "all": torch.ones_like(w)}[kind]
        self.norm = stream_w[self.active].mean() if len(self.active) else torch.ones((), device=w.device)
        self.batch_size = batch_size
        self.g = g
        self._queue: Iterator[torch.Tensor] = iter(())

    def __len__(self) -> int:
        return len(self.active)

    def steps_per_pass(self) -> int:
        return math.ceil(len(self.active) / self.batch_size)

    def next(self) -> torch.Tensor:
        try:
            return next(self._queue)
        except StopIteration:
            perm = self.active[torch.randperm(len(self.active), generator=self.g).to(self.active.device)]
            self._queue = iter(perm.split(self.batch_size))
            return next(self._queue)


def plan_length(method: UnlearningMethod, ctx: Context, w: torch.Tensor) -> int:
    """Steps of the method's whole run under forget weights `w`: every runnable phase of every epoch of its plan,
    one pass of the phase's lead stream each (what `run_loop` takes without `max_steps`)."""
    bs = method.batch_size or 128
    total = 0
    for epoch in range(method.epochs):
        for phase in method.phases(epoch, ctx):
            sizes = [StreamSampler(s, w, bs, torch.Generator()) for s in phase.streams]
            if all(len(z) > 0 for z in sizes):
                total += sizes[0].steps_per_pass()
    return total


def run_loop(method: UnlearningMethod, stepper: Any, ctx: Context, *, progress: Progress | None = None,
             max_steps: int | None = None, total_steps: int | None = None, skip: int = 0) -> None:
    """The shared epoch/phase/stream loop; `stepper.model` is the (possibly functional) model.

    With `max_steps`, epochs repeat (the method's epoch plan cycling) until exactly that many steps ran.
    Steps count on from `ctx.step` (0 for a fresh run; a continued run passes its age), and schedules read
    `ctx.step / ctx.total_steps`: `total_steps` is the length of the whole run when this call is one piece of
    it (default: the steps of this call). `skip` starts at that position of the plan (the steps a continued run
    already took), so a run taken in pieces walks its epoch plan — phases, per-epoch lr — in order.

    Raises:
        DivergedError: a step's loss was NaN or ±inf (checked once per epoch from a device-side record, so
            the steps never wait for the host), or the parameters are not finite after the last step.
    """
    data, w = ctx.data, ctx.weights
    bs = method.batch_size or 128
    order_g, aug_g = generator(ctx.seed, "unlearn-order"), generator(ctx.seed, "unlearn-augment")
    # bf16 autocast where the command asked for it (CUDA only; a no-op on the CPU) — never while the search
    # differentiates through the steps, whose hypergradient must stay exact
    autocast = contextlib.nullcontext() if w.requires_grad else current_accel().autocast(data.device)
    samplers = {k: StreamSampler(k, w, bs, order_g) for k in STREAMS}
    plan = [method.phases(e, ctx) for e in range(method.epochs)]

    def runnable(phase: Phase) -> bool:  # e.g. a forget-only phase with an empty forget set has nothing to do
        return all(len(samplers[s]) > 0 for s in phase.streams)

    per_plan = sum(samplers[p.streams[0]].steps_per_pass() for ph in plan for p in ph if runnable(p))
    if max_steps is not None:
        if per_plan == 0:
            return
        plan = plan * math.ceil((skip + max_steps) / per_plan)
    ctx.total_steps = max(1, total_steps or (max_steps if max_steps is not None else per_plan))
    first, position = ctx.step, 0
    watch = DivergenceWatch(method.name, method.lr)
    task = (progress or NullProgress()).task(f"unlearn {method.name}", len(plan))
    try:
        for epoch, phases in enumerate(plan):
            ctx.epoch = epoch % method.epochs
            for phase in phases:
                if not runnable(phase):
                    continue
                for _ in range(samplers[phase.streams[0]].steps_per_pass()):
                    if position < skip:  # taken by an earlier piece of this run
                        position += 1
                        continue
                    if max_steps is not None and ctx.step - first >= max_steps:
                        break
                    batches = {s: _next_batch(samplers[s], data, w, aug_g if method.augment else None)
                               for s in phase.streams}
                    if phase.draw is not None:
                        batches[phase.streams[0]].drawn = phase.draw(batches, ctx)
                    stepper.set_lr(method.lr * method.lr_scale(ctx))
                    with autocast:
                        loss = phase.loss(stepper.model, batches, ctx).float()
                    watch.observe(loss)
                    stepper.step(loss, ctx)
                    ctx.step += 1
                    position += 1
            watch.check(ctx.total_steps)
            task.advance(1)
        watch.check(ctx.total_steps, params=stepper.model.parameters())
    finally:
        task.close()


def _next_batch(sampler: StreamSampler, data: Dataset, w: torch.Tensor, aug_g: torch.Generator | None) -> Batch:
    """The stream's next minibatch, augmented when a generator is given."""
    idx = sampler.next()
    x = data.x_train[idx]
    if aug_g is not None:
        x = augment_batch(x, data.augment, aug_g)
    return Batch(idx=idx, x=x, y=data.y_train[idx], w=w[idx], norm=sampler.norm)


def ce(model: nn.Module, batch: Batch, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample cross-entropy of a batch (against its own labels unless others are given)."""
    return F.cross_entropy(model(batch.x), batch.y if labels is None else labels, reduction="none")
