"""Metrics of concept unlearning, judged on generations by the concept classifier (UnlearnCanvas's protocol in
miniature).

- UA (unlearning accuracy): share (%) of the generations of the forgotten concepts that the classifier does
  not call that concept (its object and style both right counts as recognised).
- RA_in (in-domain retain accuracy): share of the generations of retained concepts that share an object or a
  style with a forgotten concept — the neighbours an erasure leaks into — classified as their concept.
- RA_cross (cross-domain retain accuracy): the same on retained concepts sharing neither.
  (UnlearnCanvas forgets a style and reports retain accuracy on the other styles, "in-domain", and on the
  objects, "cross-domain"; with (object, style) pairs as units, sharing an attribute is the analogue.)
- FD: Fréchet distance between the classifier's penultimate features of the retained concepts' generations
  and of real test images of the same concepts (image quality of what should remain).
Every concept of a set is generated and judged: none is skipped (the reference code evaluates one prompt of
each batch of four).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) between two feature samples (n, d), covariances with
    ddof 1 (as FID's reference code)."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:  # no covariance from fewer than two samples: the distance is undefined
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # a singular product (fewer samples than features) is handled below
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # the usual ε offset on the diagonals (FID's reference code)
            offset = np.eye(len(cov_a)) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def neighbours(forget: torch.Tensor, num_objects: int, num_styles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-domain, cross-domain) retained concept ids: sharing an object or a style with a forgotten concept,
    or sharing neither."""
    c = torch.arange(num_objects * num_styles)
    forget = forget.cpu().long()
    gone = torch.isin(c, forget)
    shares = torch.isin(c // num_styles, forget // num_styles) | torch.isin(c % num_styles, forget % num_styles)
    return c[~gone & shares], c[~gone & ~shares]


def recognised(classifier, images: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Per image: the classifier names its concept (object and style both right). (n,) bool"""
    obj, sty = classifier.predict(images)
    k = classifier.num_styles
    concepts = concepts.to(obj.device)
    return (obj == concepts // k) & (sty == concepts % k)


def concept_scores(classifier, images: torch.Tensor, concepts: torch.Tensor, forget: torch.Tensor,
                   num_objects: int, num_styles: int) -> dict:
    """UA, RA_in, RA_cross (%) of generations `images` of concept ids `concepts`; NaN where a group is empty."""
    hit = recognised(classifier, images, concepts).cpu()
    concepts = concepts.cpu()
    inside, cross = neighbours(forget, num_objects, num_styles)

    def share(group: torch.Tensor) -> float:
        rows = torch.isin(concepts, group)
        return 100 * float(hit[rows].double().mean()) if bool(rows.any()) else float("nan")

    forgotten = torch.isin(concepts, forget.cpu())
    ua = 100 * float((~hit[forgotten]).double().mean()) if bool(forgotten.any()) else float("nan")
    return {"UA": ua, "RA_in": share(inside), "RA_cross": share(cross)}


def generate_all(model, denoiser, num_concepts: int, per_concept: int, *, steps: int, guidance: float,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_concept` generations of every concept id, from one seeded stream (the same noise for every model
    judged, so two models' scores differ by the models only). (images, concept ids)"""
    from ..core.seeds import generator

    concepts = torch.arange(num_concepts).repeat_interleave(per_concept)
    images = model.generate(denoiser, concepts, steps=steps, guidance=guidance,
                            generator=generator(seed, "concept-eval"))
    return images, concepts


def evaluate_generations(setting, denoiser, forget: torch.Tensor, *, seed: int = 0,
                         keep_images: bool = False) -> dict:
    """UA, RA_in, RA_cross and FD of one denoiser on a forget set (concept ids), judged on generations of every
    concept; with `keep_images` also the images (for the report's grids)."""
    g = setting.generation
    data = setting.data
    images, concepts = generate_all(setting.model, denoiser, data.num_concepts, g.images_per_concept,
                                    steps=g.steps, guidance=g.guidance, seed=seed)
    scores = concept_scores(setting.classifier, images, concepts, forget, data.num_objects, data.num_styles)
    retained = ~torch.isin(concepts, forget.cpu())
    real = ~torch.isin(data.concept_test.cpu(), forget.cpu())
    with torch.no_grad():
        fake_f = setting.classifier.features(images[retained.to(images.device)]).cpu().numpy()
        real_f = setting.classifier.features(data.x_test[real.to(data.x_test.device)]).cpu().numpy()
    scores["FD"] = frechet_distance(fake_f, real_f)
    if keep_images:
        scores["images"] = images.cpu()
    return scores
