"""Several runs of one iterative method from the trained model, as one stack (vmapped, in lock-step).

An audit runs each method on many (forget set, seed) pairs — every set × seed of its units, and the N unlearned
models per set an attack needs. Runs of one method on sets of one size take the same steps with the same
learning rates, so they can train as one ensemble: the parameters of M copies of the trained model stacked
along a leading dimension (training/ensemble.py), each step's per-model loss computed by the method's own
phase loss under `vmap`, one backward pass for all, and torch.optim.SGD's update on the stacked tensors.

Run i is `method.apply(original, data, weights[i], seed=seeds[i])`: the same batches (its own samplers and
augmentation stream, drawn in `run_loop`'s order), the same loss, schedule and optimiser arithmetic; it agrees
with the loop up to float rounding (batched kernels sum in another order), and a run's result does not depend
on which runs share its stack. Stackable are the methods that declare it (`UnlearningMethod.stackable`) and step
with SGD: their losses are functions of the model, the batches and the run's shared schedule alone (random
inputs come from the phase's `draw`, which each run calls with its own generator; no per-run state read by the
loss). `prepare` and `finish` run run by run, on each run's own context, and must leave every run with one
architecture; what a run keeps fixed — layers outside its `trainable`, entries outside its `grad_mask` — stays
bit for bit where `prepare` left it, as in `apply`.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..core.errors import ConfigError
from ..core.progress import NullProgress, Progress
from ..core.seeds import generator
from ..datasets import Dataset, augment_batch
from ..training.accel import current_accel
from ..training.ensemble import StackedModels, StackedSGD, check_supported
from .base import STREAMS, Batch, Context, StreamSampler, UnlearningMethod, check_weights


def stackable(method: UnlearningMethod | type[UnlearningMethod]) -> bool:
    """Whether runs of `method` (an instance with its hyper-parameters, or a class with its defaults) can train as
    one stack: its own class declares it (a subclass, say a plug-in deriving from finetune with losses of its own,
    does not inherit the promise), and it steps with SGD."""
    kind = method if isinstance(method, type) else type(method)
    return bool(vars(kind).get("stackable", False)) and kind.iterative and method.optimizer == "sgd"


class _Row:
    """One run's model inside the vmapped loss: called like the module, its parameters those of the run."""

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
        self.template, self.params, self.buffers = template, params, buffers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (self.params, self.buffers), (x,))

    def parameters(self):
        return iter(self.params.values())


def run_stacked(method: UnlearningMethod, original: nn.Module, data: Dataset, weights: torch.Tensor,
                seeds: Sequence[int], *, spec=None,
                progress: Progress | None = None) -> tuple[StackedModels, list[bool]]:
    """Run `method` (resolved: its batch size set) with forget weights `weights[i]` and seed `seeds[i]` for every
    i, as one stack. Returns the stacked eval-mode models and, per run, whether it stayed finite (a run that did
    not is to be run alone, where `run_loop` raises its divergence error with the step and learning rate)."""
    if not stackable(method):
        raise ConfigError(f"{method.name} runs cannot train as a stack; run them one by one")
    seeds = [int(s) for s in seeds]
    m = len(seeds)
    if m == 0 or weights.shape[0] != m:
        raise ConfigError(f"a stacked run needs one weight vector per seed (got {weights.shape[0]} for {m} seeds)")
    if m == 1:
        # vmap over one row takes other kernels than over several, which round differently: a lone run trains
        # beside a copy of itself, so its result is the same in any stack
        stack, finite = run_stacked(method, original, data, weights.expand(2, -1), seeds * 2, spec=spec,
                                    progress=progress)
        return stack.reordered([0]), finite[:1]
    ws = [check_weights(weights[i], data).detach() for i in range(m)]
    # one context for the loop: its teacher copy and its schedule (epoch, step, total_steps), the runs moving in
    # lock-step; stackable losses read nothing else of it
    ctx = method.context(original, data, ws[0], seed=seeds[0], spec=spec)
    # each run's own context, for `prepare` (its mask, its re-initialised layers), `finish` and a phase's `draw`
    # (its random inputs from its own generator), as `apply` gives them
    own = [replace(ctx, weights=w, seed=s, rng=generator(s, f"unlearn-{method.name}"), extra={})
           for w, s in zip(ws, seeds)]
    bs = method.batch_size or 128
    order_gs = [generator(s, "unlearn-order") for s in seeds]
    aug_gs = [generator(s, "unlearn-augment") for s in seeds] if method.augment else None
    samplers = [{k: StreamSampler(k, w, bs, g) for k in STREAMS} for w, g in zip(ws, order_gs)]
    for k in STREAMS:
        if len({len(s[k]) for s in samplers}) > 1:
            raise ConfigError(f"stacked runs need forget sets of one size and 0/1 weights (the {k} streams hold "
                              f"{sorted({len(s[k]) for s in samplers})} samples)")

    models = [method.prepare(copy.deepcopy(original).to(data.device).train(), run) for run in own]
    template = copy.deepcopy(models[0])
    check_supported(template, [len(samplers[0]["all"])])
    # linear weights train as (M, in, out) leaves, handed to the module transposed: their gradients then come out
    # contiguous, which the optimiser's fused per-row kernel needs (one pass over the tensors instead of four)
    transposed = {f"{name}.weight" for name, mod in template.named_modules() if isinstance(mod, nn.Linear)}

    def stacked(tensors: list[torch.Tensor], name: str) -> torch.Tensor:
        return torch.stack([t.detach().t() if name in transposed else t.detach() for t in tensors]).contiguous()

    named = [dict(model.named_parameters()) for model in models]
    params = {k: stacked([n[k] for n in named], k).requires_grad_() for k in named[0]}
    buffers = {k: torch.stack([dict(model.named_buffers())[k] for model in models]) for k, _ in
               template.named_buffers()}
    fixed = _fixed_masks(method, models, own, transposed)
    del named
    leaves = list(params.values())
    sgd = StackedSGD(leaves, [torch.zeros_like(p) for p in leaves], momentum=method.momentum,
                     weight_decay=method.weight_decay)
    plan = [method.phases(e, ctx) for e in range(method.epochs)]
    first = samplers[0]

    def runnable(phase) -> bool:
        return all(len(first[s]) > 0 for s in phase.streams)

    ctx.total_steps = max(1, sum(first[p.streams[0]].steps_per_pass() for ph in plan for p in ph if runnable(p)))
    autocast = current_accel().autocast(data.device)
    finite = torch.ones(m, dtype=torch.bool, device=data.device)
    task = (progress or NullProgress()).task(f"unlearn {method.name} ×{m}", len(plan))
    try:
        for epoch, phases in enumerate(plan):
            ctx.epoch = epoch
            for phase in phases:
                if not runnable(phase):
                    continue

                def row_loss(p, b, batch_fields, phase=phase):
                    batches = {s: Batch(*fields) for s, fields in zip(phase.streams, batch_fields)}
                    layout = {k: v.t() if k in transposed else v for k, v in p.items()}  # the module's layout
                    return phase.loss(_Row(template, layout, b), batches, ctx).float()

                vmapped = vmap(row_loss, in_dims=(0, 0, 0), randomness="error")
                for _ in range(first[phase.streams[0]].steps_per_pass()):
                    fields = [_stacked_batch([s[k] for s in samplers], data, ws, aug_gs) for k in phase.streams]
                    if phase.draw is not None:
                        fields[0] = (*fields[0], _draw(phase, fields, own, ctx))
                    lr = method.lr * method.lr_scale(ctx)
                    with autocast:
                        losses = vmapped(params, buffers, fields)  # (M,)
                    finite &= torch.isfinite(losses.detach())
                    # contiguous gradients take the optimiser's fused per-row kernel (a conv weight's may not be)
                    grads = [g.contiguous() for g in torch.autograd.grad(losses.sum(), leaves)]
                    if fixed:  # entries a run keeps where they are: no gradient, and put back after the step
                        kept = {k: params[k].detach().clone() for k in fixed}
                        grads = [g * fixed[k] if k in fixed else g for k, g in zip(params, grads)]
                    sgd.step(grads, [lr] * m, [True] * m)
                    if fixed:
                        with torch.no_grad():
                            for k, mask in fixed.items():
                                params[k].copy_(torch.where(mask.bool(), params[k], kept[k]))
                    ctx.step += 1
            task.advance(1)
    finally:
        task.close()
    for p in leaves:
        finite &= torch.isfinite(p.detach().flatten(1)).all(1)
    final = {k: v.detach().transpose(1, 2).contiguous() if k in transposed else v.detach() for k, v in params.items()}
    # the prepared copies' own tensors were copied into the stack and are no longer read: unstack into them
    stack = StackedModels(template.eval(), final, buffers, spare_modules=models)
    if type(method).finish is not UnlearningMethod.finish:  # e.g. a shadow neuron removed: run by run
        finished = [method.finish(model.train(), run).eval() for model, run in zip(stack.models(), own)]
        stack = StackedModels.from_models(finished)
    return stack, [bool(f) for f in finite]


def _fixed_masks(method: UnlearningMethod, models: list[nn.Module], own: list[Context],
                 transposed: set[str]) -> dict[str, torch.Tensor]:
    """Per parameter that some run keeps (partly) in place, a stacked 0/1 mask of the entries each run may move:
    0 for a parameter outside the run's `trainable` (frozen layers, which its optimiser never holds) and where
    the run's `grad_mask` (SalUn) is 0. `apply` leaves those entries exactly as `prepare` left them."""
    masks: dict[str, list[torch.Tensor]] = {}
    for model, run in zip(models, own):
        moving = {id(p) for p in method.trainable(model, run)}
        for name, p in model.named_parameters():
            mask = torch.ones_like(p) if id(p) in moving else torch.zeros_like(p)
            if run.grad_mask is not None and name in run.grad_mask:
                mask = mask * run.grad_mask[name].to(mask.dtype)
            masks.setdefault(name, []).append(mask.t() if name in transposed else mask)
    return {name: torch.stack(rows) for name, rows in masks.items() if not all(bool((r == 1).all()) for r in rows)}


def _draw(phase, fields: list[tuple[torch.Tensor, ...]], own: list[Context], ctx: Context) -> dict[str, torch.Tensor]:
    """The phase's random inputs of this step, each run's drawn from its own generator in the order of its runs
    (what `run_loop` draws for it alone), stacked along the run dimension."""
    drawn = []
    for i, run in enumerate(own):
        run.epoch, run.step, run.total_steps = ctx.epoch, ctx.step, ctx.total_steps
        batches = {s: Batch(*(t[i] for t in f)) for s, f in zip(phase.streams, fields)}
        drawn.append(phase.draw(batches, run))
    return {k: torch.stack([d[k] for d in drawn]) for k in drawn[0]}


def _stacked_batch(samplers: list[StreamSampler], data: Dataset, ws: list[torch.Tensor],
                   aug_gs: list[torch.Generator] | None) -> tuple[torch.Tensor, ...]:
    """Every run's next minibatch of one stream, stacked: (idx, x, y, w, norm), each with a leading run dimension.
    Each run draws from its own sampler and augmentation stream, as `run_loop` would."""
    idx, xs = [], []
    for i, sampler in enumerate(samplers):
        rows = sampler.next()
        x = data.x_train[rows]
        if aug_gs is not None:
            x = augment_batch(x, data.augment, aug_gs[i])
        idx.append(rows)
        xs.append(x)
    index = torch.stack(idx)
    return (index, torch.stack(xs), data.y_train[index], torch.stack([w[r] for w, r in zip(ws, idx)]),
            torch.stack([s.norm for s in samplers]))


__all__ = ["run_stacked", "stackable"]
