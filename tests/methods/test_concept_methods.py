"""Concept unlearning methods: ESD's target by hand, per-concept weights (w_c = 0 is exactly leaving c out),
the ablation anchors, gradient ascent's sign, and Retrain's refusal of relaxed weights."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from concept_cases import tiny_generative_setting  # noqa: E402

from worstforget.core.errors import ConfigError  # noqa: E402
from worstforget.core.seeds import generator  # noqa: E402
from worstforget.methods.concepts import make_concept_method, parse_concept_params  # noqa: E402
from worstforget.methods.concepts.ablation import anchors  # noqa: E402
from worstforget.methods.concepts.base import Draws, flat  # noqa: E402
from worstforget.methods.concepts.esd import esd_target  # noqa: E402


def test_esd_loss_is_the_distance_to_the_negatively_guided_original_by_hand():
    s = tiny_generative_setting()
    esd = make_concept_method("esd", {"negative_guidance": 2.0, "per_concept": 2})
    draws = esd.draw(s, generator(0, "t"))
    concepts = torch.tensor([3, 17])
    sub = Draws(draws.x0[concepts], draws.noise[concepts], draws.t[concepts])
    student = make_concept_method("esd").start(s).denoiser
    with torch.no_grad():  # perturb the student so that it differs from the original
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    got = esd.concept_losses(s, student, concepts, sub)
    x0, noise, t, c = flat(sub, concepts)
    x_t = s.model.add_noise(x0, noise, t)
    with torch.no_grad():
        e_c = s.model.predict_noise(s.original, x_t, t, s.model.condition(c))
        e_0 = s.model.predict_noise(s.original, x_t, t, s.model.unconditional(len(c)))
        pred = s.model.predict_noise(student, x_t, t, s.model.condition(c))
    target = e_0 - 2.0 * (e_c - e_0)
    assert torch.allclose(esd_target(e_c, e_0, 2.0), target)
    by_hand = (pred - target).pow(2).flatten(1).mean(1).view(2, 2).mean(1)
    assert torch.allclose(got, by_hand, atol=1e-6)


@pytest.mark.parametrize("name", ["esd", "ablation", "gradient_ascent"])
def test_a_zero_weight_is_exactly_leaving_the_concept_out(name):
    s = tiny_generative_setting()
    method = make_concept_method(name, {"per_concept": 2})
    draws = method.draw(s, generator(1, "t"))
    den = method.start(s).denoiser
    w = torch.zeros(s.num_concepts)
    w[[2, 9, 30]] = torch.tensor([0.3, 0.5, 0.7])

    def grads(loss):
        den.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in den.parameters() if p.grad is not None]

    with_zero = grads(method.weighted_loss(s, den, w, draws))
    keep = torch.tensor([2, 30])  # concept 9 left out by hand
    w_left = torch.tensor([0.3, 0.7])
    w9 = w.clone()
    w9[9] = 0.0
    zeroed = grads(method.weighted_loss(s, den, w9, draws))
    losses = method.concept_losses(s, den, keep, Draws(draws.x0[keep], draws.noise[keep], draws.t[keep]))
    by_hand = grads((w_left * losses).sum() / w_left.sum())
    assert all(torch.equal(a, b) for a, b in zip(zeroed, by_hand))
    assert not all(torch.equal(a, b) for a, b in zip(with_zero, by_hand))  # and concept 9 does count when w > 0


def test_a_run_draws_the_same_randomness_whatever_the_weights():
    s = tiny_generative_setting()
    esd = make_concept_method("esd", {"steps": 2, "per_concept": 1})
    w = torch.zeros(s.num_concepts)
    w[[4, 11]] = 1.0
    a = esd.apply(s, w, seed=5)
    b = esd.apply(s, w, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    moved = [n for (n, p), q in zip(a.named_parameters(), s.original.parameters()) if not torch.equal(p, q)]
    assert moved and all("attn2" in n for n in moved)  # ESD-x moves cross-attention only


def test_ablation_anchors_map_a_style_to_the_same_object_in_the_anchor_style():
    got = anchors(2, 3, 0)  # ids: object · 3 + style
    assert got.tolist() == [1, 0, 0, 4, 3, 3]


def test_gradient_ascent_raises_the_diffusion_loss():
    s = tiny_generative_setting()
    ga = make_concept_method("gradient_ascent", {"per_concept": 2})
    draws = ga.draw(s, generator(2, "t"))
    c = torch.tensor([5])
    sub = Draws(draws.x0[c], draws.noise[c], draws.t[c])
    x0, noise, t, cc = flat(sub, c)
    with torch.no_grad():
        pred = s.model.predict_noise(s.original, s.model.add_noise(x0, noise, t), t, s.model.condition(cc))
        loss = ga.concept_losses(s, s.original, c, sub)
    assert torch.allclose(loss, -(pred - noise).pow(2).mean().view(1), atol=1e-6)


def test_retrain_refuses_relaxed_weights_and_bad_hyperparameters_are_refused():
    s = tiny_generative_setting()
    with pytest.raises(ConfigError, match="binary"):
        make_concept_method("retrain").apply(s, torch.full((s.num_concepts,), 0.1), seed=0)
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        parse_concept_params("esd", ["nope=1"])
    with pytest.raises(ConfigError, match="params must be"):
        make_concept_method("esd", {"params": "attn"})
    with pytest.raises(ConfigError, match="expected float"):
        parse_concept_params("esd", ["lr=fast"])
    assert parse_concept_params("esd", ["lr=1", "params=all"]) == {"lr": 1.0, "params": "all"}
