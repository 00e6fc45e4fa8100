"""Training from scratch (original models and Retrain) and batched inference helpers."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.io import from_checked_dict
from ..core.progress import NullProgress, Progress
from ..core.seeds import generator
from ..datasets import Dataset, augment_batch
from .accel import Accel, current_accel, prepare_input, prepare_model
from .divergence import TRAIN_HINT, DivergenceWatch
from .optim import lr_factor, sgd

# Fields added after cache keys were first written: `to_dict` leaves them out while they hold these
# defaults, so every recipe that existed before them keeps its key (and its cached models).
_KEY_OPTIONAL = {"label_smoothing": 0.0, "nesterov": False}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of supervised training (the original model and exact Retrain).

    Every field changes what is trained, so every field is part of the cache key (`to_dict`). How fast
    it runs (bf16 autocast, channels_last, torch.compile) is `accel.Accel`, which is not.
    """

    epochs: int = 40  # passes over the (retain) training set
    lr: float = 0.05  # peak SGD learning rate
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step (×0.1 at 50% and 75%) | constant | onecycle (warm-up, linear decay)
    augment: bool = True  # dataset's crop/flip augmentation, when it has one
    select_best: bool = True  # keep the epoch with the best validation accuracy
    label_smoothing: float = 0.0  # ε of the smoothed cross-entropy targets (1 − ε on the label, ε/C spread)
    nesterov: bool = False  # Nesterov momentum

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return from_checked_dict(cls, values, "training")

    def with_updates(self, **values) -> "TrainConfig":
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict:
        values = asdict(self)
        return {k: v for k, v in values.items() if k not in _KEY_OPTIONAL or v != _KEY_OPTIONAL[k]}

    def validate(self) -> "TrainConfig":
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("training needs epochs ≥ 1, batch size ≥ 1 and a positive learning rate")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("Nesterov momentum needs a positive momentum; set momentum (e.g. 0.9) or drop nesterov")
        lr_factor(self.schedule, 0, 1)
        return self


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None,
                  norm: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Σ v_i ℓ_i / (B · norm): with 0/1 weights and norm = mean weight this is the plain subset mean."""
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / (per_sample.numel() * norm)


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, *, seed: int,
        sample_weights: torch.Tensor | None = None, progress: Progress | None = None,
        description: str = "train", accel: Accel | None = None) -> nn.Module:
    """Train `model` in place with SGD on the samples whose weight is positive and return it.

    Samples with weight 0 never enter a batch (Retrain on D∖S iterates D∖S exactly); other weights
    scale each sample's loss. Batch order and augmentation come from generators seeded by `seed`.
    `accel` (default: `current_accel()`) sets bf16 autocast, channels_last and torch.compile; on a CPU
    only compile has an effect. The steps never read a value back to the host: on a GPU the Python
    loop runs ahead of the device until the once-per-epoch loss and validation read-out.
    """
    cfg.validate()
    accel = (accel or current_accel()).validate()
    device = data.device
    model.to(device).train()
    fmt = accel.memory_format(model, device)
    prepare_model(model, fmt)
    forward = accel.compiled(model)
    active = torch.arange(data.num_train, device=device)
    weights = None
    if sample_weights is not None:
        sample_weights = sample_weights.to(device=device, dtype=torch.float32)
        active = torch.nonzero(sample_weights > 0).flatten()
        weights = sample_weights
    if len(active) == 0:
        raise ConfigError("nothing to train on: every training sample has weight 0")
    norm = weights[active].mean() if weights is not None else 1.0
    opt = _sgd([p for p in model.parameters() if p.requires_grad], cfg, device)
    order_g, aug_g = generator(seed, "train-order"), generator(seed, "train-augment")
    steps_per_epoch = math.ceil(len(active) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    best_acc, best_state = -1.0, None
    task = (progress or NullProgress()).task(description, cfg.epochs)
    watch = DivergenceWatch(description, cfg.lr, TRAIN_HINT)  # no host sync per step; read once per epoch
    step = 0
    for _ in range(cfg.epochs):
        perm = active[torch.randperm(len(active), generator=order_g).to(device)]
        for batch in perm.split(cfg.batch_size):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total)
            x = data.x_train[batch]
            if cfg.augment:
                x = augment_batch(x, data.augment, aug_g)
            with accel.autocast(device):
                logits = forward(prepare_input(x, fmt))
                losses = F.cross_entropy(logits, data.y_train[batch], reduction="none",
                                         label_smoothing=cfg.label_smoothing)
            loss = weighted_mean(losses.float(), None if weights is None else weights[batch], norm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            watch.observe(loss)
            step += 1
        last_loss = watch.check(total, also=loss)
        val_acc = accuracy(model, data.x_val, data.y_val, accel=accel) if cfg.select_best and len(data.y_val) else None
        if val_acc is not None and val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
        task.advance(1, loss=last_loss, val_acc=val_acc)
    task.close()
    watch.check(total, model.parameters())
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def _sgd(params: list[nn.Parameter], cfg: TrainConfig, device: torch.device):
    """SGD for `cfg`: on CUDA torch's fused kernel (the same update in one pass) where it exists, elsewhere the
    registry's `sgd` (the library's class on a CPU, torch's on other accelerators)."""
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if device.type == "cuda":
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            pass  # a torch build or device without the fused kernel: the default implementation below
    return sgd(params, **kwargs)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 2048,
                   accel: Accel | None = None) -> torch.Tensor:
    """Logits in eval mode without augmentation, batched; returns (N, C) float32 on x's device.

    Logits feed the metrics and the privacy scores, where bf16's three significant digits would blur
    confidences near 1, so they are computed in full precision unless an `accel` is passed explicitly
    (training's validation pass does); the current layout setting (channels_last) still applies.
    """
    accel = (accel or replace(current_accel(), amp="off")).validate()
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            return torch.empty(0, 0, device=x.device)
        fmt = accel.memory_format(model, x.device)
        with accel.autocast(x.device):
            return torch.cat([model(prepare_input(chunk, fmt)).float() for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)


def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample (eval mode, no augmentation): (N,)."""
    return F.cross_entropy(predict_logits(model, x), y, reduction="none")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, accel: Accel | None = None) -> float:
    """Top-1 accuracy in percent; NaN for an empty set."""
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(model, x, accel=accel).argmax(1) == y).float().mean() * 100)


def split_accuracies(model: nn.Module, data: Dataset) -> dict[str, float]:
    """Accuracy (percent) on the train, validation and test splits."""
    return {"train": accuracy(model, data.x_train, data.y_train), "val": accuracy(model, data.x_val, data.y_val),
            "test": accuracy(model, data.x_test, data.y_test)}
