"""Train and evaluate many models of one architecture at once (retrained and shadow-model ensembles).

Per-example privacy scores need tens of models that differ only in their seeds and in which training
samples they see. Training them one after another wastes a small CPU or GPU on per-step Python and
tiny kernels; here M models are stacked along a leading dimension and trained in lock-step:

* parameters are stacked with `torch.func.stack_module_state` into tensors of shape (M, *shape);
* the forward pass of all M models is one `vmap(functional_call(...))` over the model dimension,
  and ordinary autograd on the sum of the M per-model losses gives every model its own gradient,
  because model i's loss depends only on model i's parameters. For the plain ReLU MLP a hand-written
  `baddbmm` forward computes the same function with less dispatch per step, on linear weights kept
  as contiguous (M, in, out) leaves during training so their gradients come out contiguous;
* SGD with momentum and weight decay is applied to the stacked tensors with the arithmetic of
  `torch.optim.SGD` (dampening 0, no Nesterov): d = g + wd·p; buf = momentum·buf + d; p = p − lr·buf,
  and a zero buffer on the first step is exactly torch's `buf = d` initialisation. It runs as torch's
  fused SGD kernel over the per-model rows (one call per distinct learning rate) where the device has
  it, else as in-place stacked tensor operations (see `StackedSGD`).

Model i is trained as `train.fit(spec.build(data, seed=init_seeds[i]), data, cfg, seed=seeds[i],
sample_weights=sample_weights[i])` would train it: the same initialisation, its own permutation of its
own active set (weight > 0) from `generator(seeds[i], "train-order")`, its own augmentation stream
`generator(seeds[i], "train-augment")` consumed batch by batch as in `fit`, its own learning-rate
schedule over its own number of steps, the same weighted loss and the same best-on-validation
selection. Results agree with sequential `fit` up to float rounding (batched kernels sum in another
order), not bit for bit.

Different active-set sizes. Model i takes ceil(n_i / batch_size) steps per epoch; the ensemble runs
the maximum over models. Each step's batch is as wide as the widest real batch among the models and
narrower ones are padded with weight-0 entries (they add nothing to the loss or its gradient; the loss
is still divided by the real batch size, as in `weighted_mean`). A model that has finished its epoch
is masked out of the update: its parameters *and* momentum buffers stay bit for bit unchanged (no
momentum drift, no weight decay) and its step counter, which drives its learning-rate schedule, does
not advance. Models with equal active-set sizes never see padding or masking at all. Models are
trained in rows sorted by their number of steps per epoch (and returned in the caller's order), so the
models that share a learning rate at a step form one block of rows for the optimiser.

BatchNorm is supported (running statistics live in stacked buffers that `functional_call` updates
under vmap) only when every model trains on the same number of samples — the plain seed ensemble and
equal-size shadow models — because padding would change its batch statistics; otherwise a
ConfigError asks for `--norm group` or `--norm none`. Dropout is refused, because `fit` draws its
masks from the global RNG, which a vmapped run cannot reproduce per model.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.errors import ConfigError
from ..core.progress import NullProgress, Progress
from ..core.seeds import generator
from ..datasets import Dataset, augment_batch
from .accel import Accel
from .loop import TrainConfig
from .models import MLP
from .optim import lr_factor

if TYPE_CHECKING:
    from .original import ModelSpec

__all__ = ["StackedModels", "StackedSGD", "check_supported", "fit_ensemble", "fit_stacked", "predict_logits_ensemble",
           "stack_capacity", "model_bytes", "chunk_sizes", "check_stackable", "has_convolutions", "memory_budget"]

MAX_STACK = 64  # models per stack at most: past a few dozen a stack gains nothing per model, and a chunk is one task
PARAM_COPIES = 8  # stacked leaves, gradients, momentum, best-epoch copy, built and unstacked modules, slack
ACTIVATION_COPIES = 3  # a batch's activations kept for backward, their gradients, and slack
MEMORY_SHARE = {"cuda": 0.5, "cpu": 0.25}  # of the free (CUDA) or available (CPU) memory a stack may take
VALIDATION_BATCH = 2048  # StackedModels.predict_logits' batch: its no-grad pass holds a layer's input and output


def check_supported(model: nn.Module, sizes: Sequence[int]) -> None:
    """Refuse layers whose training behaviour a vmapped, padded run cannot reproduce per model."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and len(set(sizes)) > 1:
            raise ConfigError(f"BatchNorm (layer {name!r}) in a model ensemble needs every model to train on the "
                              f"same number of samples (got {min(sizes)} to {max(sizes)}): padded batches would "
                              "change its batch statistics; use --norm group or --norm none for ensembles")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise ConfigError(f"model ensembles do not support dropout (layer {name!r}): its masks come from the "
                              "global RNG and cannot be reproduced per model")


def check_stackable(spec: ModelSpec, data: Dataset) -> None:
    """Raise ConfigError when models of `spec` cannot train in a stack at all (dropout); models that train on
    equally many samples always can. Checked once per architecture."""
    problem = _probe(spec, data).problem
    if problem is not None:
        raise ConfigError(problem)


def has_convolutions(spec: ModelSpec, data: Dataset) -> bool:
    """Whether models of `spec` on `data` hold a convolution (a stack runs it as a grouped one). Checked once per
    architecture."""
    return _probe(spec, data).convolutional


@dataclass(frozen=True)
class _Probe:
    problem: str | None  # why the architecture cannot train in a stack, or None
    convolutional: bool


def _probe(spec: ModelSpec, data: Dataset) -> _Probe:
    """What one model of the architecture says about stacking it: built once per architecture and input."""
    key = (json.dumps(spec.to_dict(), sort_keys=True, default=str), tuple(data.input_shape), data.num_classes)
    if key not in _PROBES:
        model = spec.build(data, seed=0)
        try:
            check_supported(model, [1])
            problem = None
        except ConfigError as exc:
            problem = str(exc)
        convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
        _PROBES[key] = _Probe(problem, convolutional)
    return _PROBES[key]


_PROBES: dict[tuple, _Probe] = {}


@dataclass(frozen=True)
class _LinearStep:
    weight: str  # parameter names in the stacked dict
    bias: str | None


def _mlp_plan(template: nn.Module) -> list[object] | None:
    """The MLP as a list of steps for the bmm forward, or None when it is not a plain ReLU MLP."""
    if type(template) is not MLP:
        return None
    plan: list[object] = []
    for idx, layer in enumerate(template.features):
        prefix = f"features.{idx}"
        if isinstance(layer, nn.Linear):
            plan.append(_LinearStep(f"{prefix}.weight", f"{prefix}.bias" if layer.bias is not None else None))
        elif isinstance(layer, (nn.Flatten, nn.ReLU, nn.Identity)):
            plan.append(type(layer))
        else:  # GroupNorm or anything else: the generic vmap path handles it
            return None
    cls = template.classifier
    plan.append(_LinearStep("classifier.weight", "classifier.bias" if cls.bias is not None else None))
    return plan


def _mlp_forward(plan: list[object], params: dict[str, torch.Tensor], x: torch.Tensor, *,
                 shared: bool) -> torch.Tensor:
    """The ReLU MLP with batched matrix products; linear weights are given as (M, in, out).

    Same function as vmap over the module, with less dispatch per step. Taking the weights
    transposed lets training keep them as contiguous (M, in, out) leaves, so autograd's weight
    gradients (mat2 of baddbmm) come out contiguous and the optimiser streams them at full speed.
    """
    m = next(iter(params.values())).shape[0]
    b = x.shape[0] if shared else x.shape[1]
    h = x.reshape(b, -1).expand(m, b, -1) if shared else x.reshape(m, b, -1)  # (M, B, D)
    fresh = False  # whether h is this function's own matmul output rather than a view of the input
    for step in plan:
        if isinstance(step, _LinearStep):
            w = params[step.weight]  # (M, in, out)
            if step.bias is None:
                h = torch.bmm(h, w)  # (M, B, out)
            else:
                h = torch.baddbmm(params[step.bias].unsqueeze(1), h, w)  # (M, B, out)
            fresh = True
        elif step is nn.ReLU:
            # in place on a fresh matmul output (the bmm backward does not read it; ReLU's backward
            # reads its result), saving an allocation and a pass per layer; never on the caller's input
            h = torch.relu_(h) if fresh else torch.relu(h)
        # Flatten happened on entry and Identity is a no-op
    return h  # (M, B, C)


class StackedModels:
    """M models of one architecture whose parameters are stacked along a leading model dimension.

    `params[name]` has shape (M, *shape of that parameter); `buffers` likewise. `predict_logits(x)`
    evaluates all models on the same inputs in one batched pass, `models()` unstacks them into
    ordinary `nn.Module`s.
    """

    def __init__(self, template: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 *, spare_modules: Sequence[nn.Module] = ()):
        self.template = template  # architecture only; its own tensors are never read
        self.params = params
        self.buffers = buffers
        # modules of this architecture nobody else holds (the ones an ensemble was built from): the
        # first `models()` call loads the rows into them instead of deep-copying the template M times
        self._spare = list(spare_modules)
        sizes = {t.shape[0] for t in [*params.values(), *buffers.values()]}
        if len(sizes) != 1:
            raise ConfigError(f"stacked tensors disagree on the number of models: {sorted(sizes)}")
        self.num_models = sizes.pop()
        self._plan = _mlp_plan(template)
        # vmap over the model dimension of parameters, buffers and inputs; a shared input (in_dims
        # None) is broadcast to every model without copying it M times
        self._vmapped = vmap(self._call_one, in_dims=(0, 0, 0))
        self._vmapped_shared = vmap(self._call_one, in_dims=(0, 0, None))

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> "StackedModels":
        """Stack a list of same-architecture models (copies their tensors)."""
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        kinds = {type(m) for m in models}
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
        if len(kinds) != 1 or len(shapes) != 1:
            raise ConfigError("ensemble models must share one architecture (same class and parameter shapes)")
        params, buffers = stack_module_state(list(models))
        params = {k: v.detach() for k, v in params.items()}
        return cls(copy.deepcopy(models[0]), params, buffers)

    def _call_one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def forward(self, x: torch.Tensor, *, shared: bool) -> torch.Tensor:
        """Logits (M, B, C) of every model: x is (M, B, *input) per model, or (B, *input) if `shared`."""
        if self._plan is not None:
            return _mlp_forward(self._plan, self._mlp_weights(self.params), x, shared=shared)
        if shared:
            return self._vmapped_shared(self.params, self.buffers, x)
        return self._vmapped(self.params, self.buffers, x)

    def _mlp_weights(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Module-layout parameters as the bmm forward takes them: weights (M, in, out) as views."""
        return {k: v.transpose(1, 2) if k in self._transposed else v for k, v in params.items()}

    @property
    def _transposed(self) -> set[str]:
        return {step.weight for step in self._plan or () if isinstance(step, _LinearStep)}

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, *, batch_size: int = 2048) -> torch.Tensor:
        """Eval-mode logits of every model on the same inputs x (N, *input): returns (M, N, C)."""
        was_training = self.template.training
        self.template.eval()
        try:
            if len(x) == 0:
                return torch.empty(self.num_models, 0, 0, device=x.device)
            return torch.cat([self.forward(chunk, shared=True) for chunk in x.split(batch_size)], dim=1)
        finally:
            self.template.train(was_training)

    def reordered(self, rows: Sequence[int]) -> "StackedModels":
        """The same models with row i of the result taken from row rows[i] of this stack."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=next(iter(self.params.values())).device)
        spare = [self._spare[i] for i in rows] if len(self._spare) == self.num_models else []
        return StackedModels(self.template, {k: v[index] for k, v in self.params.items()},
                             {k: v[index] for k, v in self.buffers.items()}, spare_modules=spare)

    def models(self) -> list[nn.Module]:
        """Unstack into M independent modules in eval mode (fresh copies of the template)."""
        out = []
        spare, self._spare = self._spare, []
        for i in range(self.num_models):
            model = spare[i] if len(spare) == self.num_models else copy.deepcopy(self.template)
            _load_row(model, self.params, self.buffers, i)
            out.append(model.eval())
        return out


def _load_row(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], i: int) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name][i])
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name][i])


def predict_logits_ensemble(models_or_stack: StackedModels | Sequence[nn.Module], x: torch.Tensor, *,
                            batch_size: int = 2048) -> torch.Tensor:
    """Eval-mode logits of every model on x (N, *input), batched over models with vmap: (M, N, C)."""
    if isinstance(models_or_stack, StackedModels):
        stack = models_or_stack
    else:
        stack = StackedModels.from_models(models_or_stack)
    return stack.predict_logits(x, batch_size=batch_size)


# --- how many models fit in one stack ---------------------------------------------------------------------

def model_bytes(spec: ModelSpec, data: Dataset, cfg: TrainConfig | None = None) -> int:
    """Bytes one model adds to a stack that trains with `cfg` (default `spec.train`): its parameters and
    buffers PARAM_COPIES times over, plus the larger of one training batch's activations (ACTIVATION_COPIES
    times: kept for backward, their gradients) and the validation pass's widest layer (input and output at
    VALIDATION_BATCH rows). Activations are measured by one forward pass of a batch on the CPU."""
    cfg = spec.train if cfg is None else cfg
    key = (json.dumps(spec.to_dict(), sort_keys=True, default=str), tuple(data.input_shape), data.num_classes,
           cfg.batch_size)
    if key not in _MODEL_BYTES:
        model = spec.build(data, seed=0).cpu().eval()
        state = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        outputs: list[int] = []

        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                outputs.append(output.numel() * output.element_size())

        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(record) for m in leaves]
        x = data.x_train[:cfg.batch_size].cpu()
        try:
            with torch.no_grad():
                model(x)
        finally:
            for hook in hooks:
                hook.remove()
        batch = x.numel() * x.element_size() + sum(outputs)
        widest = 2 * max(outputs + [x.numel() * x.element_size()]) * math.ceil(VALIDATION_BATCH / max(1, len(x)))
        _MODEL_BYTES[key] = PARAM_COPIES * state + max(ACTIVATION_COPIES * batch, widest)
    return _MODEL_BYTES[key]


_MODEL_BYTES: dict[tuple, int] = {}


def memory_budget(device: torch.device) -> int:
    """Bytes a stack may take on `device`: a share of the free GPU memory, else of the available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE["cuda"])
    return int(_available_ram() * MEMORY_SHARE["cpu"])


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # no way to ask: assume a small machine


def stack_capacity(spec: ModelSpec, data: Dataset, cfg: TrainConfig | None = None, *,
                   budget: int | None = None) -> int:
    """How many models of `spec` one `fit_stacked` call may train at once on `data`'s device: the memory
    budget (`memory_budget` unless given) over `model_bytes`, between 1 and MAX_STACK."""
    budget = memory_budget(data.device) if budget is None else budget
    return max(1, min(MAX_STACK, budget // max(1, model_bytes(spec, data, cfg))))


def chunk_sizes(count: int, capacity: int, parallelism: int = 1) -> list[int]:
    """Sizes of the stacks `count` runs are split into: as few as `capacity` allows, but at least one per
    worker (`parallelism`) while runs last, and as equal as possible."""
    if count <= 0:
        return []
    chunks = max(math.ceil(count / max(1, capacity)), min(max(1, parallelism), count))
    base, extra = divmod(count, chunks)
    return [base + (i < extra) for i in range(chunks)]


@dataclass
class _EpochPlan:
    index: torch.Tensor  # (M, S, B) long: training rows of each model's batches, padded with row 0
    weight: torch.Tensor  # (M, S, B) float32: per-sample loss weight, 0 on padding
    denom: torch.Tensor  # (M, S) float32: real batch size × mean active weight (1 where a model idles)
    size: list[list[int]]  # [M][S]: real batch sizes, 0 once a model has finished its epoch


def fit_stacked(spec: ModelSpec, data: Dataset, *, seeds: Sequence[int], sample_weights: torch.Tensor | None = None,
                cfg: TrainConfig | None = None, init_seeds: Sequence[int] | None = None,
                progress: Progress | None = None, description: str = "train ensemble",
                accel: Accel | None = None) -> StackedModels:
    """Train len(seeds) models of `spec`'s architecture at once; return them stacked.

    Model i equals `train.fit(spec.build(data, seed=init_seeds[i]), data, cfg, seed=seeds[i],
    sample_weights=sample_weights[i])` up to float rounding. `init_seeds` defaults to `seeds` (the
    original-model convention of `original.original_model`); `cfg` defaults to `spec.train`;
    `sample_weights` is (M, num_train) or None (every model on the whole training set). With `accel`,
    the forward pass, the loss and validation run under its autocast, as `fit` runs them (bf16 on a
    GPU; nothing changes on a CPU); None keeps full precision.
    """
    cfg = (spec.train if cfg is None else cfg).validate()
    seeds = [int(s) for s in seeds]
    m = len(seeds)
    if m == 0:
        raise ConfigError("an ensemble needs at least one seed")
    init_seeds = seeds if init_seeds is None else [int(s) for s in init_seeds]
    if len(init_seeds) != m:
        raise ConfigError(f"got {len(init_seeds)} init seeds for {m} models; give one per model")
    device, n, bsz = data.device, data.num_train, cfg.batch_size
    if sample_weights is not None:
        sample_weights = torch.as_tensor(sample_weights).to(device=device, dtype=torch.float32)
        if sample_weights.shape != (m, n):
            raise ConfigError(f"sample_weights must have shape (models, num_train) = ({m}, {n}), "
                              f"got {tuple(sample_weights.shape)}")
        # Models that take the same number of steps per epoch share their learning rate at every step.
        # Training them in adjacent rows makes each lr group a contiguous block of the stacked tensors,
        # which the optimiser updates in one pass instead of row by row; rows are put back at the end.
        counts = (sample_weights > 0).sum(1).tolist()
        if 0 in counts:
            raise ConfigError(f"nothing to train on for model {counts.index(0)}: every training sample has weight 0")
        steps_per_epoch = [math.ceil(c / bsz) for c in counts]
        order = sorted(range(m), key=steps_per_epoch.__getitem__)
        if order != list(range(m)):
            stack = fit_stacked(spec, data, seeds=[seeds[i] for i in order], sample_weights=sample_weights[order],
                                cfg=cfg, init_seeds=[init_seeds[i] for i in order], progress=progress,
                                description=description, accel=accel)
            return stack.reordered([order.index(i) for i in range(m)])

    # per-model active sets, loss weights and normalisers, exactly as fit computes them
    actives, weights, norms = [], [], []
    for i in range(m):
        if sample_weights is None:
            active, w, norm = torch.arange(n, device=device), None, torch.tensor(1.0, device=device)
        else:
            w = sample_weights[i]
            active = torch.nonzero(w > 0).flatten()  # not empty: checked above
            norm = w[active].mean()
        actives.append(active)
        weights.append(w)
        norms.append(norm)
    models = [spec.build(data, seed=s).to(device).train() for s in init_seeds]
    check_supported(models[0], [len(a) for a in actives])
    params, buffers = stack_module_state(models)  # {name: (M, *shape)}, leaves requiring grad
    stack = StackedModels(copy.deepcopy(models[0]).train(), params, buffers)
    names = list(params)
    transposed = stack._transposed  # MLP fast path: linear weights train as (M, in, out) leaves
    leaves = {k: v.detach().transpose(1, 2).contiguous().requires_grad_() if k in transposed else v
              for k, v in params.items()}
    plist = [leaves[k] for k in names]
    momentum_bufs = [torch.zeros_like(p) for p in plist]  # zero start == torch's buf = d on step one
    sgd = StackedSGD(plist, momentum_bufs, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)

    def module_layout() -> dict[str, torch.Tensor]:  # views of the leaves in nn.Module layout
        return {k: v.transpose(1, 2) if k in transposed else v for k, v in leaves.items()}

    stack.params = module_layout()  # validation reads the training leaves through these views

    if stack._plan is not None:
        def forward(x: torch.Tensor) -> torch.Tensor:  # (M, W, *input) -> (M, W, C)
            return _mlp_forward(stack._plan, leaves, x, shared=False)
    else:
        forward = functools.partial(stack.forward, shared=False)

    steps = [math.ceil(len(a) / bsz) for a in actives]
    totals = [cfg.epochs * s for s in steps]
    max_steps = max(steps)
    order_gs = [generator(s, "train-order") for s in seeds]
    aug_gs = [generator(s, "train-augment") for s in seeds]
    augment = cfg.augment and data.augment.enabled and data.x_train.dim() == 4
    select = cfg.select_best and len(data.y_val) > 0

    def autocast() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if accel is None else accel.autocast(device)

    best_acc = [-1.0] * m
    best = {k: v.detach().clone() for k, v in leaves.items()}
    best_buffers = {k: v.clone() for k, v in buffers.items()}
    step_of = [0] * m  # each model's own optimiser step count, which drives its lr schedule
    task = (progress or NullProgress()).task(description, cfg.epochs)
    last_loss = torch.zeros(m, device=device)
    for _ in range(cfg.epochs):
        plan = _epoch_plan(actives, weights, norms, order_gs, max_steps, bsz, device)
        for s in range(max_steps):
            sizes = [plan.size[i][s] for i in range(m)]
            live = [size > 0 for size in sizes]
            lrs = []
            for i in range(m):
                lrs.append(cfg.lr * lr_factor(cfg.schedule, step_of[i], totals[i]) if live[i] else 0.0)
                step_of[i] += live[i]
            # only as wide as the widest real batch: no padding at all when sizes agree (BatchNorm)
            width = max(sizes)
            idx = plan.index[:, s, :width]  # (M, W)
            x = data.x_train[idx]  # (M, W, *input)
            if augment:
                # each model draws from its own stream on its real (unpadded) batch, as fit does
                for i in range(m):
                    if live[i]:
                        x[i, :sizes[i]] = augment_batch(x[i, :sizes[i]], data.augment, aug_gs[i])
            with autocast():
                logits = forward(x)  # (M, W, C)
                losses = F.cross_entropy(logits.flatten(0, 1), data.y_train[idx].flatten(), reduction="none",
                                         label_smoothing=cfg.label_smoothing).float()
            per_model = (losses.view(m, width) * plan.weight[:, s, :width]).sum(1) / plan.denom[:, s]  # (M,)
            grads = torch.autograd.grad(per_model.sum(), plist)
            sgd.step(grads, lrs, live)
            if all(live):
                last_loss = per_model.detach()
            else:
                last_loss = torch.where(torch.tensor(live, device=device), per_model.detach(), last_loss)
        val_acc = None
        if select:
            with autocast():
                logits = stack.predict_logits(data.x_val)  # (M, N_val, C)
            val_acc = [float(v) for v in (logits.argmax(2) == data.y_val).float().mean(1) * 100]
            better = [v > b for v, b in zip(val_acc, best_acc)]
            if all(better):  # the usual case early in training: one straight copy per tensor
                for k in names:
                    best[k].copy_(leaves[k].detach())
                for k in buffers:
                    best_buffers[k].copy_(buffers[k])
            elif any(better):
                rows = torch.tensor(better, device=device)
                for k in names:
                    best[k][rows] = leaves[k].detach()[rows]
                for k in buffers:
                    best_buffers[k][rows] = buffers[k][rows]
            best_acc = [max(v, b) for v, b in zip(val_acc, best_acc)]
        task.advance(1, loss=float(last_loss.mean()),
                     val_acc=None if val_acc is None else sum(val_acc) / len(val_acc))
    task.close()
    if select:  # every model has a best epoch: its first validation accuracy beats the initial -1
        with torch.no_grad():
            for k in names:
                leaves[k].copy_(best[k])
            for k in buffers:
                buffers[k].copy_(best_buffers[k])
    final = {k: v.detach().contiguous() for k, v in module_layout().items()}  # (M, *shape), untracked
    # the built modules' own tensors were copied into the stack and are no longer read: reuse them
    return StackedModels(stack.template.eval(), final, buffers, spare_modules=models)


def _epoch_plan(actives: list[torch.Tensor], weights: list[torch.Tensor | None], norms: list[torch.Tensor],
                order_gs: list[torch.Generator], max_steps: int, bsz: int, device: torch.device) -> _EpochPlan:
    """Draw every model's permutation of its active set for one epoch and pad it to (S, B) batches."""
    m = len(actives)
    index = torch.zeros(m, max_steps * bsz, dtype=torch.long, device=device)  # (M, S·B)
    weight = torch.zeros(m, max_steps * bsz, dtype=torch.float32, device=device)  # (M, S·B)
    denom = torch.ones(m, max_steps, dtype=torch.float32, device=device)  # (M, S)
    size: list[list[int]] = []
    for i, active in enumerate(actives):
        k = len(active)
        perm = active[torch.randperm(k, generator=order_gs[i]).to(device)]  # the same draw fit makes
        index[i, :k] = perm
        weight[i, :k] = 1.0 if weights[i] is None else weights[i][perm]
        sizes = [max(0, min(bsz, k - s * bsz)) for s in range(max_steps)]
        size.append(sizes)
        # fit divides the weighted sum by (real batch size × mean active weight), a float32 product
        real = torch.tensor(sizes, dtype=torch.float32, device=device)  # (S,)
        denom[i] = torch.where(real > 0, real * norms[i], torch.ones_like(real))
    return _EpochPlan(index.view(m, max_steps, bsz), weight.view(m, max_steps, bsz), denom, size)


class StackedSGD:
    """torch.optim.SGD (dampening 0) on stacked (M, *shape) tensors with per-model lrs.

    Per step and model i: d = g + wd·p; buf = momentum·buf + d; p = p − lr_i·buf (Nesterov: p − lr_i·(d +
    momentum·buf)). A zero initial
    buffer gives exactly torch's first-step `buf = d`. Models with live[i] False take no step: their
    parameters and momentum buffers stay bit for bit as they are.

    Fast path: torch's fused SGD kernel (one pass over p, g and buf) called once per run of adjacent
    live rows with one lr, on those rows as tensors of their own — idle models are simply left
    out (`fit_stacked` orders the models so that such runs are few). The stacked tensors
    are several MB and do not stay in cache, so one pass instead of four matters more than the
    arithmetic. Row by row, each model's update is bit for bit the same whichever models share its
    stack (tests/audit/test_stacked_runs.py). Fallback (no fused kernel for the device or torch version, or a
    non-contiguous gradient): the same update written as in-place stacked tensor operations.
    """

    def __init__(self, params: list[torch.Tensor], bufs: list[torch.Tensor], *, momentum: float,
                 weight_decay: float, nesterov: bool = False):
        self.params, self.bufs = [p.detach() for p in params], bufs  # updated in place, outside autograd
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.fused = _has_fused_sgd(params[0].device)
        # per-model rows as tensors of their own, for the fused kernel (views: updated in place)
        self.param_rows = [p.unbind(0) for p in self.params]
        self.buf_rows = [b.unbind(0) for b in bufs]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lrs: list[float], live: list[bool]) -> None:
        if self.fused and all(g.is_contiguous() for g in grads):
            self._fused_step(grads, lrs, live)
        else:
            self._stacked_step(grads, lrs, live)

    def _fused_step(self, grads: Sequence[torch.Tensor], lrs: list[float], live: list[bool]) -> None:
        # One kernel call per run of adjacent live rows sharing an lr, on the rows of those models as
        # separate tensors. Not on one (rows, *shape) block: the CPU kernel finishes each tensor's last
        # partial vector in scalar code, which rounds the momentum differently, so with blocks a model's
        # update would depend on how many models share its stack (a 10-element bias is all tail alone).
        grad_rows = [g.unbind(0) for g in grads]
        start = 0
        while start < len(lrs):
            if not live[start]:
                start += 1
                continue
            stop = start + 1
            while stop < len(lrs) and live[stop] and lrs[stop] == lrs[start]:
                stop += 1
            torch._fused_sgd_(
                [r for rows in self.param_rows for r in rows[start:stop]],
                [r for rows in grad_rows for r in rows[start:stop]],
                [r for rows in self.buf_rows for r in rows[start:stop]] if self.momentum else [],
                weight_decay=self.weight_decay, momentum=self.momentum, lr=lrs[start], dampening=0.0,
                nesterov=self.nesterov, maximize=False, is_first_step=False)
            start = stop

    def _stacked_step(self, grads: Sequence[torch.Tensor], lrs: list[float], live: list[bool]) -> None:
        momentum, weight_decay = self.momentum, self.weight_decay
        device = self.params[0].device
        uniform = all(live) and len(set(lrs)) == 1  # the usual case: one scalar lr, nothing masked
        if not uniform:
            neg_lr = torch.tensor([-lr for lr in lrs], dtype=torch.float32, device=device)  # (M,), 0 when idle
        if not all(live):
            keep = torch.tensor(live, dtype=torch.float32, device=device)  # (M,) 1 = step, 0 = idle
            # idle rows: buf·1 + d·0 = buf exactly; live rows: buf·momentum + d·1, torch's update
            decay = torch.tensor([momentum if on else 1.0 for on in live], dtype=torch.float32, device=device)
        for p, g, buf in zip(self.params, grads, self.bufs):
            view = (-1,) + (1,) * (p.dim() - 1)  # broadcast (M,) over (M, *shape)
            if 0 in g.stride():  # autograd's gradients are fresh tensors, but never write into a broadcast
                g = g.clone()
            d = g.add_(p, alpha=weight_decay) if weight_decay else g  # torch: grad.add(param, alpha=wd)
            if momentum:
                if all(live):
                    buf.mul_(momentum).add_(d)
                else:
                    buf.mul_(decay.view(view)).addcmul_(d, keep.view(view))
                d = d.add(buf, alpha=momentum) if self.nesterov else buf
            if uniform:
                p.add_(d, alpha=-lrs[0])  # exactly torch's param.add_(buf, alpha=-lr)
            else:
                p.addcmul_(d, neg_lr.view(view))  # idle rows add d·(−0) = 0


@functools.lru_cache(maxsize=None)
def _has_fused_sgd(device: torch.device) -> bool:
    """Whether torch's fused SGD kernel exists for this device (a private op: probe, never assume)."""
    fused = getattr(torch, "_fused_sgd_", None)
    if fused is None:
        return False
    p, g, b = (torch.ones(2, device=device) for _ in range(3))
    try:
        fused([p], [g], [b], weight_decay=0.5, momentum=0.5, lr=0.5, dampening=0.0, nesterov=False,
              maximize=False, is_first_step=False)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    # same arithmetic as torch.optim.SGD: d = 1.5, buf = 0.5 + 1.5 = 2, p = 1 − 0.5·2 = 0
    return bool(torch.all(p == 0.0)) and bool(torch.all(b == 2.0))


def fit_ensemble(spec: ModelSpec, data: Dataset, *, seeds: Sequence[int], sample_weights: torch.Tensor | None = None,
                 cfg: TrainConfig | None = None, init_seeds: Sequence[int] | None = None,
                 progress: Progress | None = None, description: str = "train ensemble") -> list[nn.Module]:
    """Train len(seeds) models at once (see `fit_stacked`) and return them as eval-mode modules.

    Model i matches `train.fit(spec.build(data, seed=init_seeds[i]), data, cfg, seed=seeds[i],
    sample_weights=sample_weights[i])` up to float rounding; `init_seeds` defaults to `seeds`.
    """
    return fit_stacked(spec, data, seeds=seeds, sample_weights=sample_weights, cfg=cfg, init_seeds=init_seeds,
                       progress=progress, description=description).models()
