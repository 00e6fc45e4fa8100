"""Generation metrics: the Fréchet distance against closed forms and an independent computation, UA / RA_in /
RA_cross by hand on a stub classifier, and every concept of a forget set judged (not one prompt in four)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worstforget.scoring.generation import concept_scores, evaluate_generations, frechet_distance, neighbours


def _reference_fd(a, b):
    """Tr((Σa Σb)^{1/2}) through symmetric square roots: Tr((Σa^{1/2} Σb Σa^{1/2})^{1/2})."""
    def sym_sqrt(m):
        vals, vecs = np.linalg.eigh(m)
        return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T

    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ra = sym_sqrt(ca)
    cross = np.trace(sym_sqrt(ra @ cb @ ra))
    return ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross


def test_frechet_distance_of_one_dimensional_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (400, 1)), rng.normal(-0.5, 0.5, (300, 1))
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    assert np.isclose(frechet_distance(a, b), (a.mean() - b.mean()) ** 2 + (sa - sb) ** 2, rtol=1e-9)


def test_frechet_distance_matches_an_independent_computation_on_correlated_gaussians():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(5, 5))
    a = rng.normal(size=(500, 5)) @ mix
    b = rng.normal(size=(450, 5)) @ (mix + 0.3 * rng.normal(size=(5, 5))) + 0.7
    assert np.isclose(frechet_distance(a, b), _reference_fd(a, b), rtol=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-6


class _Stub:
    """A 'classifier' that reads the concept off the image (its first pixel) and may misjudge chosen concepts."""

    num_styles = 2

    def __init__(self, wrong=()):
        self.wrong = set(wrong)

    def predict(self, images):
        c = images[:, 0, 0, 0].round().long()
        c = torch.tensor([(x + 1) % 6 if int(x) in self.wrong else int(x) for x in c])
        return c // 2, c % 2

    def features(self, images):
        return images.flatten(1)[:, :3] + 0.01 * torch.arange(3.0)


def test_ua_and_retain_accuracies_by_hand():
    # 3 objects × 2 styles; ids: object · 2 + style. Forget {0 = (o0, s0)}.
    inside, cross = neighbours(torch.tensor([0]), 3, 2)
    assert inside.tolist() == [1, 2, 4] and cross.tolist() == [3, 5]  # share o0 or s0 / share neither
    concepts = torch.arange(6).repeat_interleave(2)
    images = concepts.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    images[0] = 5.0  # one of the two generations of concept 0 looks like concept 5
    stub = _Stub(wrong={4})  # concept 4 (in-domain) is never recognised
    got = concept_scores(stub, images, concepts, torch.tensor([0]), 3, 2)
    assert got == pytest.approx({"UA": 50.0, "RA_in": 100 * 4 / 6, "RA_cross": 100.0}, rel=1e-12)


def test_every_concept_of_the_forget_set_is_generated_and_judged():
    """The reference code evaluates prompts[0] of each batch of four: here a set whose first concept is
    erased and whose three others are not scores UA 25, not 100."""
    per = 3

    class Model:
        def generate(self, denoiser, concepts, *, steps, guidance, generator):
            images = concepts.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
            images[concepts == 0] = 1.0  # the first forgotten concept is erased (looks like concept 1)
            return images

    data = SimpleNamespace(num_concepts=6, num_objects=3, num_styles=2, x_test=torch.rand(12, 1, 2, 2) * 5,
                           concept_test=torch.arange(6).repeat(2))
    setting = SimpleNamespace(model=Model(), classifier=_Stub(), data=data,
                              generation=SimpleNamespace(images_per_concept=per, steps=1, guidance=1.0))
    got = evaluate_generations(setting, None, torch.tensor([0, 3, 4, 5]))
    assert got["UA"] == 25.0
    assert np.isfinite(got["FD"])


def test_frechet_distance_is_undefined_from_fewer_than_two_samples():
    one, many = np.zeros((1, 3)), np.random.default_rng(0).normal(size=(5, 3))
    assert np.isnan(frechet_distance(one, many)) and np.isnan(frechet_distance(many, many[:0]))
    assert np.isfinite(frechet_distance(many[:2], many))
