"""`sd:PATH`: a local Stable Diffusion folder as a ConceptDiffusion model, checked against the diffusers
pipeline itself on a tiny randomly initialised pipeline built here from configs (nothing is downloaded)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sd_cases import MAX_TOKENS, tiny_pipeline  # noqa: E402

from worstforget.core.errors import ConfigError, DataNotFoundError, WorstforgetError  # noqa: E402
from worstforget.datasets.prompt_grid import PromptGrid  # noqa: E402
from worstforget.training import stable_diffusion as sd  # noqa: E402
from worstforget.training.concept_model import ConceptDiffusion  # noqa: E402

GRID = PromptGrid(("cat", "dog", "tree"), ("ink", "oil"), "a painting of a {object} in {style} style.")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def model(folder):
    return sd.StableDiffusionConcepts.from_grid(folder, GRID, device="cpu")


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def _latents(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *model.latent_shape, generator=g)


# --- the adapter is the pipeline -----------------------------------------------------------------------------


def test_the_model_implements_the_protocol_and_records_its_shape(model):
    assert isinstance(model, ConceptDiffusion)
    assert model.concepts == GRID.prompts and model.num_train_timesteps == 1000
    assert model.image_size == 16 and model.latent_shape == (4, 8, 8)
    info = model.describe()
    assert info["kind"] == "stable-diffusion" and info["num_concepts"] == 6 and 0 < info["xattn_parameters"] \
        < info["unet_parameters"]


def test_conditioning_is_the_pipelines_prompt_encoding_exactly(model, pipe):
    for i in (0, 3, 5):
        cond, null = pipe.encode_prompt(GRID.prompts[i], "cpu", 1, True)
        assert torch.equal(model.condition(torch.tensor([i])), cond)
        assert torch.equal(model.unconditional(2), torch.cat([null, null]))
    # a batch of ids is the same rows, in the order asked
    both = model.condition(torch.tensor([4, 1]))
    assert torch.equal(both[0], model.condition(torch.tensor([4]))[0])
    assert torch.equal(both[1], model.condition(torch.tensor([1]))[0])
    assert not torch.equal(both[0], both[1])
    with pytest.raises(ConfigError, match="0..5"):
        model.condition(torch.tensor([6]))


def test_a_prompt_longer_than_the_text_encoder_takes_warns(model):
    with pytest.warns(UserWarning, match="its end is cut off"):
        model._encode_prompt("a " * MAX_TOKENS)


def test_noise_prediction_is_the_pipelines_unet_exactly(model, pipe):
    x = _latents(model, 2)
    t = torch.tensor([999, 250])
    # the model encodes one prompt at a time, so a concept's embedding never depends on the other prompts
    cond = torch.cat([pipe.encode_prompt(GRID.prompts[i], "cpu", 1, False)[0] for i in (2, 5)])
    with torch.no_grad():
        ours = model.predict_noise(model.denoiser, x, t, model.condition(torch.tensor([2, 5])))
        theirs = pipe.unet(x, t, encoder_hidden_states=cond).sample
    assert torch.equal(ours, theirs)


def test_a_v_prediction_unet_gives_epsilon(folder, model, tmp_path):
    copy_ = _copy(folder, tmp_path)
    path = copy_ / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    v_model = sd.StableDiffusionConcepts(copy_, GRID.prompts, device="cpu")
    x, t = _latents(model, 2), torch.tensor([10, 900])
    cond = model.condition(torch.tensor([0, 1]))
    with torch.no_grad():
        v = model.denoiser(x, t, encoder_hidden_states=cond).sample  # the same weights, read as v
        eps = v_model.predict_noise(v_model.denoiser, x, t, cond)
    abar = model.train_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    # x_t = a x0 + s ε and v = a ε − s x0 with a² + s² = 1, so ε = a v + s x_t
    torch.testing.assert_close(eps, abar.sqrt() * v + (1 - abar).sqrt() * x, rtol=1e-6, atol=1e-6)
    path.write_text(json.dumps({**config, "prediction_type": "sample"}))
    with pytest.raises(ConfigError, match="epsilon or v_prediction"):
        sd.StableDiffusionConcepts(copy_, GRID.prompts, device="cpu")


def test_add_noise_is_the_ddpm_forward_process_of_the_folders_schedule(model):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear
    abar = torch.cumprod(1 - betas, 0)
    x0, noise = _latents(model, 3, 1), _latents(model, 3, 2)
    t = torch.tensor([0, 500, 999])
    want = abar[t].sqrt().view(-1, 1, 1, 1) * x0.double() + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * noise.double()
    torch.testing.assert_close(model.add_noise(x0, noise, t), want.float(), rtol=1e-5, atol=1e-5)


def test_encode_decode_use_the_vae_and_its_scaling_factor(model):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 16, 16, generator=g)
    z = model.encode(images)
    with torch.no_grad():
        want = model.vae.encode(images * 2 - 1).latent_dist.mean * 0.18215
        pixels = model.vae.decode(z / 0.18215).sample
    assert z.shape == (3, 4, 8, 8) and torch.equal(z, want) and torch.equal(model.encode(images), z)
    out = model.decode(z)
    assert out.shape == (3, 3, 16, 16) and torch.equal(out, (pixels / 2 + 0.5).clamp(0, 1))
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ConfigError, match=r"\(B, 3, 16, 16\)"):
        model.encode(torch.rand(1, 3, 32, 32))


def test_generation_is_the_pipelines_ddim_sampling(model, pipe):
    from diffusers import DDIMScheduler

    ddim = copy.copy(pipe)
    ddim.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompts = [GRID.prompts[0], GRID.prompts[4]]
    theirs = ddim(prompts, num_inference_steps=3, guidance_scale=5.0, output_type="pt",
                  generator=torch.Generator().manual_seed(7)).images
    ours = model.generate(model.denoiser, torch.tensor([0, 4]), steps=3, guidance=5.0,
                          generator=torch.Generator().manual_seed(7))
    assert ours.shape == (2, 3, 16, 16)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_generation_is_deterministic_per_generator_and_changes_with_the_concept(model):
    def gen(ids, seed=1, batch_size=None):
        return model.generate(model.denoiser, torch.tensor(ids), steps=2, guidance=7.5,
                              generator=torch.Generator().manual_seed(seed), batch_size=batch_size)

    a = gen([0, 1, 2])
    assert torch.equal(a, gen([0, 1, 2]))
    torch.testing.assert_close(gen([0, 1, 2], batch_size=1), a, rtol=0, atol=1e-5)  # batching does not matter
    assert not torch.allclose(gen([0, 1, 2], seed=2), a)
    same_noise = gen([3, 1, 2])  # only the first concept differs; its latent noise is the same
    assert not torch.allclose(same_noise[0], a[0], atol=1e-4)
    torch.testing.assert_close(same_noise[1:], a[1:], rtol=0, atol=1e-5)


def test_the_folder_sampler_uses_the_folders_scheduler_class(folder):
    other = sd.StableDiffusionConcepts(folder, ["a cat"], device="cpu", sampler="folder")
    assert type(other.sampling_scheduler()).__name__ == "DDPMScheduler"
    with pytest.raises(ConfigError, match="unknown sampler"):
        sd.StableDiffusionConcepts(folder, ["a cat"], device="cpu", sampler="lms")


# --- ESD-x on the cross-attention ----------------------------------------------------------------------------


def test_parameter_sets_are_the_cross_attention_and_the_rest(model):
    names = dict(model.denoiser.named_parameters())
    xattn = model.parameter_names_for("xattn")
    rest = model.parameter_names_for("noxattn")
    assert xattn and all(".attn2." in n for n in xattn)
    assert {n for n in names if ".attn2." in n} == set(xattn)
    assert set(xattn).isdisjoint(rest) and set(xattn) | set(rest) == set(names)
    assert {n.split(".attn2.")[1].split(".")[0] for n in xattn} == {"to_q", "to_k", "to_v", "to_out"}
    assert [id(p) for p in model.parameters_for("xattn")] == [id(names[n]) for n in xattn]
    assert len(model.parameters_for("all")) == len(names)
    twin = copy.deepcopy(model.denoiser)
    assert all(any(p is q for q in twin.parameters()) for p in model.parameters_for("xattn", twin))
    with pytest.raises(ConfigError, match="choose one of all, xattn, noxattn"):
        model.parameters_for("selfattn")


def _esd_loss(model, student, x_t, t, concept, eta=1.0):
    """The ESD objective written out: ε_θ(x_t, c) regressed onto ε*(x_t, ∅) − η(ε*(x_t, c) − ε*(x_t, ∅))."""
    cond, null = model.condition(concept), model.unconditional(len(concept))
    with torch.no_grad():
        e_null = model.predict_noise(model.denoiser, x_t, t, null)
        e_c = model.predict_noise(model.denoiser, x_t, t, cond)
    target = e_null - eta * (e_c - e_null)
    return ((model.predict_noise(student, x_t, t, cond) - target) ** 2).mean()


def test_one_esd_x_step_changes_only_the_cross_attention_and_lowers_the_esd_loss(model):
    student = copy.deepcopy(model.denoiser).train()
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    g = torch.Generator().manual_seed(5)
    x0 = model.encode(torch.rand(2, 3, 16, 16, generator=g))
    t = torch.tensor([300, 700])
    x_t = model.add_noise(x0, torch.randn(x0.shape, generator=g), t)
    concept = torch.tensor([1, 1])
    loss0 = _esd_loss(model, student, x_t, t, concept)
    opt = torch.optim.SGD(model.parameters_for("xattn", student), lr=0.05)
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = _esd_loss(model, student, x_t, t, concept)
    assert float(loss1) < float(loss0.detach())
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(model.parameter_names_for("xattn"))
    assert any(n.endswith("to_k.weight") for n in changed) and any(n.endswith("to_v.weight") for n in changed)
    for n, p in model.denoiser.named_parameters():  # the original is untouched
        assert torch.equal(p, before[n]), n


# --- loading: only local folders, refused in one line --------------------------------------------------------


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def test_a_folder_without_a_tokenizer_is_refused_naming_it(folder, tmp_path):
    broken = _copy(folder, tmp_path)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(DataNotFoundError) as exc:
        sd.StableDiffusionConcepts(broken, ["a cat"], device="cpu")
    assert "missing tokenizer/" in _one_line(exc) and "save_pretrained" in str(exc.value)


@pytest.mark.parametrize("damage, kind, words", [
    (lambda f: (f / "unet" / "config.json").write_text('{"in_channels": 4,'), ConfigError,
     "unet/config.json is not valid JSON"),
    (lambda f: (f / "scheduler" / "scheduler_config.json").unlink(), DataNotFoundError,
     "missing scheduler/scheduler_config.json"),
    (lambda f: (f / "tokenizer" / "merges.txt").unlink(), DataNotFoundError, "tokenizer/vocab.json+merges.txt"),
    (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").unlink(), DataNotFoundError, "holds no weights"),
    (lambda f: (f / "text_encoder" / "model.safetensors").write_bytes(b"not a safetensors file"), WorstforgetError,
     "cannot load text_encoder/"),
])
def test_a_damaged_folder_is_refused_in_one_line(folder, tmp_path, damage, kind, words):
    broken = _copy(folder, tmp_path)
    damage(broken)
    with pytest.raises(kind) as exc:
        sd.StableDiffusionConcepts(broken, ["a cat"], device="cpu")
    assert words in _one_line(exc)


def test_safetensors_are_preferred_and_a_variant_only_folder_loads_its_variant(folder, tmp_path):
    copy_ = _copy(folder, tmp_path)
    (copy_ / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never read")
    assert sd.check_folder(copy_)["unet"] == (None, True)
    (copy_ / "unet" / "diffusion_pytorch_model.bin").unlink()
    vae = copy_ / "vae"
    (vae / "diffusion_pytorch_model.safetensors").rename(vae / "diffusion_pytorch_model.fp16.safetensors")
    assert sd.check_folder(copy_)["vae"] == ("fp16", True)
    loaded = sd.StableDiffusionConcepts(copy_, ["a cat"], device="cpu")
    original = sd.StableDiffusionConcepts(folder, ["a cat"], device="cpu")
    for (n, p), (_, q) in zip(loaded.vae.named_parameters(), original.vae.named_parameters()):
        assert torch.equal(p, q), n


def test_a_lower_precision_keeps_the_callers_dtype(folder, model):
    half = sd.StableDiffusionConcepts(folder, GRID.prompts, device="cpu", dtype="bfloat16")
    assert next(half.denoiser.parameters()).dtype == torch.bfloat16 and half.condition(torch.tensor([0])).dtype \
        == torch.bfloat16
    x, t = _latents(model, 1), torch.tensor([400])
    with torch.no_grad():
        low = half.predict_noise(half.denoiser, x, t, half.condition(torch.tensor([1])))
        full = model.predict_noise(model.denoiser, x, t, model.condition(torch.tensor([1])))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=0.1, atol=0.05)


def test_missing_and_non_folder_paths_are_refused(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist; .*nothing is downloaded") as exc:
        sd.load_concept_model(f"sd:{tmp_path / 'nowhere'}", concepts=["a cat"], device="cpu")
    _one_line(exc)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        sd.check_folder(tmp_path / "file")


def test_loading_never_touches_the_network(folder, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = {}
    real = sd._libraries

    def libraries():
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        return real()

    monkeypatch.setattr(sd, "_libraries", libraries)
    loaded = sd.load_concept_model(f"sd:{folder}", grid=GRID, device="cpu")
    loaded.condition(torch.tensor([0]))
    assert attempts == [] and seen["offline"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ  # restored after loading


def test_load_concept_model_reads_sd_specs_only(folder):
    loaded = sd.load_concept_model(f"sd:{folder}", concepts=["a cat", "a dog"], device="cpu")
    assert loaded.concepts == ["a cat", "a dog"] and loaded.grid is None
    with pytest.raises(ConfigError, match="sd:PATH"):
        sd.load_concept_model("unet-tiny", concepts=["a cat"])
    with pytest.raises(ConfigError, match="either"):
        sd.load_concept_model(f"sd:{folder}", concepts=["a cat"], grid=GRID)
    with pytest.raises(ConfigError, match="listed twice"):
        sd.load_concept_model(f"sd:{folder}", concepts=["a cat", "a cat"])
    with pytest.raises(ConfigError, match="CUDA only"):
        sd.load_concept_model(f"sd:{folder}", concepts=["a cat"], device="cpu", dtype="float16")
    with pytest.raises(ConfigError, match="from_grid"):
        sd.StableDiffusionConcepts(folder, list(reversed(GRID.prompts)), grid=GRID, device="cpu")


# --- images for the search's upper objective -----------------------------------------------------------------


def test_generated_concept_images_are_seeded_and_labelled_by_concept(model):
    images = sd.concept_images(model, None, per_concept=2, steps=2, seed=3)
    assert images.images.shape == (12, 3, 16, 16) and images.counts() == [2] * 6
    assert images.concepts.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert "generated by the original model" in images.source
    again = sd.generated_concept_images(model, 2, steps=2, seed=3)
    assert torch.equal(again.images, images.images)
    one = model.generate(model.denoiser, torch.tensor([0]), steps=2, guidance=7.5,
                         generator=torch.Generator().manual_seed(0))
    assert one.shape == (1, 3, 16, 16)


def test_a_concept_folder_feeds_each_prompt_its_own_images(model, tmp_path):
    from PIL import Image

    root = tmp_path / "canvas"
    for s, style in enumerate(GRID.styles):
        for o, obj in enumerate(GRID.objects):
            (root / style / obj).mkdir(parents=True)
            level = 40 * o + 100 * s  # a colour that says which pair the image belongs to
            Image.fromarray(np.full((40, 32, 3), level, np.uint8)).save(root / style / obj / "0.png")
    images = sd.concept_images(model, f"concept-folder:{root}")
    assert images.images.shape == (6, 3, 16, 16)
    for img, concept in zip(images.images, images.concepts.tolist()):
        obj, style = GRID.pair(concept)
        want = (40 * GRID.objects.index(obj) + 100 * GRID.styles.index(style)) / 255
        assert abs(float(img.mean()) - want) < 1e-6
        assert obj in GRID.prompts[concept] and style in GRID.prompts[concept]
    listed = sd.StableDiffusionConcepts(model.path, ["a cat"], device="cpu")
    with pytest.raises(ConfigError, match="from_grid"):
        sd.concept_images(listed, f"concept-folder:{root}")
    with pytest.raises(ConfigError, match="concept-folder:PATH"):
        sd.concept_images(model, str(root))
