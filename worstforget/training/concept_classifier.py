"""The concept classifier that judges generations: a small CNN with an object head and a style head, trained on
the real images of a concept set. Its penultimate features are the space of the Fréchet distance."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.seeds import generator


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    feature_dim: int = 64
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class ConceptClassifier(nn.Module):
    """(B, C, H, W) images in [0, 1] → object logits, style logits; `features` is the shared penultimate layer."""

    def __init__(self, in_channels: int, image_size: int, num_objects: int, num_styles: int, feature_dim: int = 64):
        super().__init__()
        self.num_objects, self.num_styles = num_objects, num_styles
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * ((image_size + 1) // 2) ** 2, feature_dim), nn.ReLU())
        self.object_head = nn.Linear(feature_dim, num_objects)
        self.style_head = nn.Linear(feature_dim, num_styles)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.object_head(h), self.style_head(h)

    @torch.no_grad()
    def concept_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """P(concept) = P(object) · P(style), (B, objects · styles) in the concept ids' object-major order."""
        obj, sty = self(x)
        return (obj.softmax(1)[:, :, None] * sty.softmax(1)[:, None, :]).flatten(1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obj, sty = self(x)
        return obj.argmax(1), sty.argmax(1)


def train_concept_classifier(x: torch.Tensor, concepts: torch.Tensor, *, num_objects: int, num_styles: int,
                             cfg: ClassifierConfig = ClassifierConfig(), device: str | torch.device = "cpu"
                             ) -> ConceptClassifier:
    """Cross-entropy on both heads; light noise augmentation so generated images (never exactly the training
    distribution) are judged by shape and texture rather than by pixel-perfect statistics."""
    torch.manual_seed(cfg.seed)
    model = ConceptClassifier(x.shape[1], x.shape[-1], num_objects, num_styles, cfg.feature_dim).to(device)
    g = generator(cfg.seed, "concept-classifier")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x, concepts = x.to(device), concepts.to(device)
    obj, sty = concepts // num_styles, concepts % num_styles
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=g).to(device)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            noisy = (x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g).to(device)).clamp(0, 1)
            lo, ls = model(noisy)
            loss = F.cross_entropy(lo, obj[idx]) + F.cross_entropy(ls, sty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classifier_accuracy(model: ConceptClassifier, x: torch.Tensor, concepts: torch.Tensor) -> dict:
    """Object, style and concept (both right) accuracy in %, on real images."""
    po, ps = model.predict(x)
    obj, sty = concepts // model.num_styles, concepts % model.num_styles
    return {"object": 100 * float((po == obj).float().mean()), "style": 100 * float((ps == sty).float().mean()),
            "concept": 100 * float(((po == obj) & (ps == sty)).float().mean())}
