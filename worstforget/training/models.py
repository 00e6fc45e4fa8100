"""Model registry. Every builder takes (num_classes, input_shape, norm=...) and returns an nn.Module
whose final layer is an nn.Linear reachable as `model.classifier` (EU-k, CF-k and BE edit it)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
NORMS = ("batch", "group", "none")


def norm_layer(kind: str, channels: int, *, dims: int = 2) -> nn.Module:
    """BatchNorm, GroupNorm (no running buffers: safe to differentiate through training) or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8) if channels >= 8 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; use one of {', '.join(NORMS)}")


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(self, num_classes: int, input_shape: Sequence[int], *, hidden: Sequence[int] = (256, 256),
                 norm: str = "none"):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), norm_layer(norm, h, dims=1), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ConvNet(nn.Module):
    """Small 4-layer conv net; adaptive pooling makes it work from 8×8 to 64×64 inputs."""

    def __init__(self, num_classes: int, input_shape: Sequence[int], *, width: int = 32, norm: str = "batch"):
        super().__init__()
        c = _channels(input_shape)
        w = width

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=norm == "none"), norm_layer(norm, o), nn.ReLU()]

        pool = [nn.MaxPool2d(2)] if min(input_shape[1:]) >= 16 else []
        self.features = nn.Sequential(*block(c, w), *block(w, 2 * w), *pool, *block(2 * w, 4 * w), *pool,
                                      *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), norm_layer(norm, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem, no max-pool (ResNet-18 with 4 stages, ResNet-20 with 3)."""

    def __init__(self, num_classes: int, input_shape: Sequence[int], *, widths: Sequence[int],
                 depths: Sequence[int], norm: str = "batch"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(_channels(input_shape), widths[0], 3, 1, 1, bias=False),
                                  norm_layer(norm, widths[0]), nn.ReLU())
        blocks, inp = [], widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                blocks.append(BasicBlock(inp, width, 2 if (i == 0 and stage > 0) else 1, norm))
                inp = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(inp, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.layers(self.stem(x))))


class VGG(nn.Module):
    """VGG-16 with normalisation; max-pools are skipped once the feature map is 1×1 (small inputs)."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int, input_shape: Sequence[int], *, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = _channels(input_shape), min(input_shape[1:])
        for v in self.CFG:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=norm == "none"), norm_layer(norm, v), nn.ReLU()]
            c = v
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _channels(input_shape: Sequence[int]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(f"this model needs image inputs (C, H, W), got shape {tuple(input_shape)}; use --model mlp")
    return int(input_shape[0])


@MODELS.register("mlp")
def mlp(num_classes: int, input_shape: Sequence[int], *, norm: str = "none",
        hidden: Sequence[int] = (256, 256)) -> nn.Module:
    """Multi-layer perceptron (2×256 ReLU by default); any input shape."""
    return MLP(num_classes, input_shape, hidden=tuple(hidden), norm=norm)


@MODELS.register("cnn", aliases=("convnet",))
def cnn(num_classes: int, input_shape: Sequence[int], *, norm: str = "batch", width: int = 32) -> nn.Module:
    """Small 4-layer conv net (32-64-128-128 channels)."""
    return ConvNet(num_classes, input_shape, width=width, norm=norm)


@MODELS.register("resnet18")
def resnet18(num_classes: int, input_shape: Sequence[int], *, norm: str = "batch") -> nn.Module:
    """ResNet-18, CIFAR variant (3×3 stem, no max-pool), 11M parameters."""
    return ResNet(num_classes, input_shape, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), norm=norm)


@MODELS.register("resnet20")
def resnet20(num_classes: int, input_shape: Sequence[int], *, norm: str = "batch") -> nn.Module:
    """ResNet-20 (3 stages of 16/32/64 channels), 0.27M parameters."""
    return ResNet(num_classes, input_shape, widths=(16, 32, 64), depths=(3, 3, 3), norm=norm)


@MODELS.register("vgg16_bn", aliases=("vgg16",))
def vgg16_bn(num_classes: int, input_shape: Sequence[int], *, norm: str = "batch") -> nn.Module:
    """VGG-16 with BatchNorm (or --norm group|none)."""
    return VGG(num_classes, input_shape, norm=norm)


def build_model(name: str, num_classes: int, input_shape: Sequence[int], *, norm: str | None = None,
                seed: int = 0, **params) -> nn.Module:
    """Instantiate a registered model with initial weights drawn from a seed (PyTorch default init)."""
    builder = MODELS.get(name)
    if norm is not None:
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
        params["norm"] = norm
    # models are built on the CPU and moved afterwards, so only the CPU generator matters: seeding it
    # alone (not torch.manual_seed, which also reseeds every accelerator) leaves no trace elsewhere
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        try:
            return builder(num_classes, tuple(input_shape), **params)
        except TypeError as exc:
            raise ConfigError(f"model {name}: {exc}") from None


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Linear and conv layers in definition order: 'the last k layers' for EU-k and CF-k."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
