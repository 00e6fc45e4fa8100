"""The tiny concept diffusion model: the regression target is ε (not ε/1000), the forward process, ESD's
parameter groups, deterministic sampling."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from concept_cases import tiny_generative_setting  # noqa: E402

from worstforget.training.diffusion import diffusion_loss, select_parameters  # noqa: E402


class _Echo(torch.nn.Module):
    """A denoiser that predicts `scale` × the noise it is handed (set before the call)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.noise = scale, None

    def forward(self, x_t, t, encoder_hidden_states):
        class Out:
            sample = self.scale * self.noise

        return Out()


def test_the_regression_target_is_the_noise_itself_not_a_thousandth_of_it():
    s = tiny_generative_setting()
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    noise = torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 100, 300, 600, 900])
    cond = s.model.condition(torch.arange(5))
    exact = _Echo(1.0)
    exact.noise = noise
    assert torch.allclose(diffusion_loss(s.model, exact, x0, cond, noise, t), torch.zeros(5))
    thousandth = _Echo(1 / 1000)  # what a model fitted to the reference code's target predicts
    thousandth.noise = noise
    expected = ((1 - 1 / 1000) * noise).pow(2).flatten(1).mean(1)
    assert torch.allclose(diffusion_loss(s.model, thousandth, x0, cond, noise, t), expected)


def test_add_noise_is_the_forward_process_of_the_training_scheduler():
    s = tiny_generative_setting()
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    abar = s.model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(s.model.add_noise(x0, noise, t), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    assert torch.allclose(s.model.add_noise(x0, noise, t), s.model.scheduler.add_noise(x0, noise, t), atol=1e-6)


def test_esd_parameter_groups_split_cross_attention_from_the_rest():
    s = tiny_generative_setting()
    names = {id(p): n for n, p in s.original.named_parameters()}
    xattn = [names[id(p)] for p in select_parameters(s.original, "xattn")]
    rest = [names[id(p)] for p in select_parameters(s.original, "noxattn")]
    assert xattn and all("attn2" in n for n in xattn)
    assert rest and not set(xattn) & set(rest)
    assert len(select_parameters(s.original, "all")) == len(names)


def test_generation_is_deterministic_given_the_generator_and_lies_in_the_unit_range():
    s = tiny_generative_setting()
    c = torch.tensor([0, 5, 39])
    a = s.model.generate(s.original, c, steps=2, guidance=2.0, generator=torch.Generator().manual_seed(3))
    b = s.model.generate(s.original, c, steps=2, guidance=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1


def test_the_tiny_model_is_a_concept_diffusion():
    from worstforget.training.concept_model import ConceptDiffusion

    s = tiny_generative_setting()
    assert isinstance(s.model, ConceptDiffusion)
    assert s.model.concepts[13] == "a 3 in inverted style" and s.device == torch.device("cpu")
