"""A user's Stable Diffusion folder as a `ConceptDiffusion` model (`--model sd:PATH`): concept unlearning (ESD-x
updates the UNet's cross-attention) and the prompt-wise search run on it unchanged.

The folder is what `StableDiffusionPipeline.save_pretrained` writes: unet/, vae/, text_encoder/, tokenizer/,
scheduler/ (safety_checker/ and feature_extractor/ are ignored). It is read with `local_files_only=True` and
HF_HUB_OFFLINE=1: nothing is downloaded, and a folder that is missing a part is refused, naming the part, before
anything is loaded. diffusers and transformers are imported only here and only when a folder is loaded
(`pip install 'worstforget[generative]'`).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from ..core.errors import ConfigError, DataNotFoundError, WorstforgetError
from ..core.runtime import resolve_device
from ..core.seeds import generator as seeded_generator
from ..datasets.concept_folder import ConceptImages, folder_of, is_concept_folder_spec, read_concept_folder
from ..datasets.prompt_grid import PromptGrid

PREFIX = "sd:"
SAMPLERS = ("ddim", "folder")
PARAMETER_SETS = ("all", "xattn", "noxattn")
CROSS_ATTENTION = "attn2"  # diffusers' name for a transformer block's cross-attention (ESD-x's parameters)

_CONFIGS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
            "scheduler": "scheduler_config.json"}
# weight file names: diffusers' diffusion_pytorch_model.*, transformers' model.safetensors or pytorch_model.bin
_WEIGHTS = {"unet": ("diffusion_pytorch_model",), "vae": ("diffusion_pytorch_model",),
            "text_encoder": ("model", "pytorch_model")}
_FOLDER_HINT = "unet/, vae/, text_encoder/, tokenizer/, scheduler/ as StableDiffusionPipeline.save_pretrained writes"


def is_stable_diffusion_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{path} is not valid JSON{where}; restore the file or save the pipeline again") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}, not an object; restore the file or save the "
                          "pipeline again")
    return value


def _weights(component: str, folder: Path) -> tuple[str | None, bool]:
    """(variant, use_safetensors) for a component's weights: plain files first, safetensors first; a folder with
    only a variant (e.g. diffusion_pytorch_model.fp16.safetensors) loads that variant."""
    stems = _WEIGHTS[component]
    names = [p.name for p in folder.iterdir() if p.is_file()]
    candidates = []  # (variant, suffix)
    for name in names:
        for s in stems:
            for suffix in (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json"):
                if not name.startswith(s) or not name.endswith(suffix):
                    continue
                middle = name[len(s):-len(suffix)]
                if middle == "":
                    candidates.append((None, suffix))
                elif middle.startswith(".") and "." not in middle[1:]:
                    candidates.append((middle[1:], suffix))
    if not candidates:
        raise DataNotFoundError(f"{folder} holds no weights ({stems[0]}.safetensors or .bin); copy the component's "
                                "weights there or save the pipeline again")
    rank = sorted(candidates, key=lambda c: (c[0] is not None, c[0] or "", not c[1].startswith(".safetensors")))
    variant, suffix = rank[0]
    return variant, suffix.startswith(".safetensors")


def check_folder(path: str | Path) -> dict[str, tuple[str | None, bool]]:
    """Refuse a folder that is not a complete Stable Diffusion pipeline, in one line naming what is missing;
    returns each weighted component's (variant, use_safetensors)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataNotFoundError(f"Stable Diffusion folder {root} does not exist; give a local pipeline folder "
                                f"({_FOLDER_HINT}); nothing is downloaded")
    if not root.is_dir():
        raise ConfigError(f"{root} is a file; --model sd:PATH needs a pipeline folder ({_FOLDER_HINT})")
    parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    absent = [p for p in parts if not (root / p).is_dir()]
    if absent:
        raise DataNotFoundError(f"{root} is missing {', '.join(p + '/' for p in absent)}; a Stable Diffusion folder "
                                f"needs {_FOLDER_HINT}")
    missing = [f"{c}/{name}" for c, name in _CONFIGS.items() if not (root / c / name).is_file()]
    tok = root / "tokenizer"
    bpe_files = (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
    if not (tok / "tokenizer.json").is_file() and not bpe_files:
        missing.append("tokenizer/vocab.json+merges.txt (or tokenizer.json)")
    if missing:
        raise DataNotFoundError(f"{root} is missing {', '.join(missing)}; restore them or save the pipeline again")
    for c, name in _CONFIGS.items():
        _read_json(root / c / name)
    for name in ("model_index.json", "tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json",
                 "tokenizer/vocab.json"):
        if (root / name).is_file():
            _read_json(root / name)
    return {c: _weights(c, root / c) for c in _WEIGHTS}


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE (and transformers' own switch) on while loading, then restored; diffusers and transformers
    read them when first imported, and `local_files_only=True` keeps every later load local too."""
    keys = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _libraries():
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise ConfigError(f"--model sd:PATH needs diffusers and transformers ({exc.name} is not installed); "
                          "pip install 'worstforget[generative]'") from None
    return diffusers, transformers


@contextlib.contextmanager
def _quiet(diffusers, transformers) -> Iterator[None]:
    """No progress bars or info logs from the two libraries while loading (their settings are restored)."""
    saved = [(lib.utils.logging, lib.utils.logging.get_verbosity(), lib.utils.logging.is_progress_bar_enabled())
             for lib in (diffusers, transformers)]
    for log, _, _ in saved:
        log.set_verbosity_error()
        log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # diffusers' "outdated scheduler config" notes
            yield
    finally:
        for log, level, bars in saved:
            log.set_verbosity(level)
            if bars:
                log.enable_progress_bar()


class StableDiffusionConcepts:
    """`ConceptDiffusion` over a local Stable Diffusion folder; one concept per prompt.

    `denoiser` is the UNet (the only module unlearning updates); the text encoder and the VAE are frozen, so
    every concept's text embedding is computed once (one prompt at a time, exactly as the pipeline encodes it)
    and `encode`/`decode` carry no gradient. `dtype=torch.float16` (CUDA only) casts the whole pipeline, as for
    sampling; unlearning with an optimiser wants float32 weights (the default)."""

    def __init__(self, path: str | Path, concepts: list[str], *, device: str | torch.device = "auto",
                 dtype: torch.dtype | str | None = None, sampler: str = "ddim", batch_size: int = 8,
                 grid: PromptGrid | None = None):
        concepts = list(concepts)
        if not concepts or not all(isinstance(c, str) for c in concepts):
            raise ConfigError("a Stable Diffusion concept model needs a non-empty list of prompt strings")
        if len(set(concepts)) != len(concepts):
            dup = next(c for c in concepts if concepts.count(c) > 1)
            raise ConfigError(f"prompt {dup!r} is listed twice; each concept needs its own prompt")
        if grid is not None and grid.prompts != concepts:
            raise ConfigError("the prompts do not match the grid's (object-major) prompts; build the model with "
                              "StableDiffusionConcepts.from_grid")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype = _dtype(dtype, self.device)
        self.path = Path(path).expanduser()
        self.concepts, self.grid, self.sampler, self.batch_size = concepts, grid, sampler, int(batch_size)
        weights = check_folder(self.path)  # before the slow imports: a bad folder fails in a moment
        self._load(weights)
        self._embeddings: torch.Tensor | None = None
        self._null: torch.Tensor | None = None

    @classmethod
    def from_grid(cls, path: str | Path, grid: PromptGrid, **kwargs) -> "StableDiffusionConcepts":
        """One concept per (object, style) pair of `grid`, object-major; `grid.pair(i)` names concept i."""
        return cls(path, grid.prompts, grid=grid, **kwargs)

    # --- loading ---------------------------------------------------------------------------------------------

    def _load(self, weights: dict[str, tuple[str | None, bool]]) -> None:
        with _offline():
            diffusers, transformers = _libraries()
            with _quiet(diffusers, transformers):
                root = str(self.path)

                def load(component: str, cls, **kw):
                    variant, safetensors = weights.get(component, (None, None))
                    extra = {} if component in ("tokenizer", "scheduler") else {
                        "variant": variant, "use_safetensors": safetensors}
                    try:
                        return cls.from_pretrained(root, subfolder=component, local_files_only=True, **extra, **kw)
                    except Exception as exc:  # noqa: BLE001 — any unreadable file (e.g. SafetensorError) → one line
                        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                        raise WorstforgetError(f"cannot load {component}/ of {root} ({type(exc).__name__}: {first}); "
                                               "check that folder's files or save the pipeline again") from None

                self.denoiser = load("unet", diffusers.UNet2DConditionModel)
                self.vae = load("vae", diffusers.AutoencoderKL)
                self.text_encoder = load("text_encoder", transformers.CLIPTextModel)
                self.tokenizer = load("tokenizer", transformers.CLIPTokenizer)
                config = load("scheduler", diffusers.DDPMScheduler).config
        self._scheduler_config = dict(config)
        self._diffusers = diffusers
        # the training process (x_t = √ᾱ x0 + √(1−ᾱ) ε) is DDPM's for every SD scheduler config
        self.train_scheduler = diffusers.DDPMScheduler.from_config(config)
        self.num_train_timesteps = int(self.train_scheduler.config.num_train_timesteps)
        self.prediction_type = self.train_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"the scheduler in {self.path} says the UNet predicts {self.prediction_type!r}; "
                              "concept unlearning here needs an epsilon or v_prediction model")
        if getattr(self.denoiser.config, "addition_embed_type", None) is not None:
            raise ConfigError(f"the UNet in {self.path} takes extra conditioning "
                              f"({self.denoiser.config.addition_embed_type}, as SDXL's does); use a Stable Diffusion "
                              "1.x or 2.x folder")
        hidden, xdim = self.text_encoder.config.hidden_size, self.denoiser.config.cross_attention_dim
        if hidden != xdim:
            raise ConfigError(f"the text encoder's hidden size {hidden} is not the UNet's cross_attention_dim "
                              f"{xdim} in {self.path}; the components come from different models")
        if self.denoiser.config.in_channels != self.vae.config.latent_channels:
            raise ConfigError(f"the UNet takes {self.denoiser.config.in_channels} channels but the VAE's latents have "
                              f"{self.vae.config.latent_channels} in {self.path}; the components come from different "
                              "models")
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample = self.denoiser.config.sample_size
        self.latent_shape = (self.denoiser.config.in_channels, *((sample, sample) if isinstance(sample, int)
                                                                   else tuple(sample)))
        self.image_size = self.latent_shape[1] * self.vae_scale
        with _quiet(diffusers, transformers):  # diffusers notes which modules it would keep in float32
            for module in (self.denoiser, self.vae, self.text_encoder):
                module.to(self.device, self.dtype)
        self.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(False).eval()
        self.denoiser.eval()  # no dropout in the UNet's forward either way; unlearning sets train() itself

    # --- conditioning ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """The text embedding the pipeline's encode_prompt gives one prompt, (1, tokens, hidden)."""
        tok = self.tokenizer
        inputs = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                     return_tensors="pt")
        if len(tok([prompt]).input_ids[0]) > tok.model_max_length:
            warnings.warn(f"prompt {prompt!r} is longer than the text encoder's {tok.model_max_length} tokens; "
                          "its end is cut off", stacklevel=3)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = inputs.attention_mask.to(self.device)
        return self.text_encoder(inputs.input_ids.to(self.device), attention_mask=mask)[0].to(self.dtype)

    def _ensure_embeddings(self) -> None:
        if self._embeddings is None:
            self._embeddings = torch.cat([self._encode_prompt(p) for p in self.concepts])
            self._null = self._encode_prompt("")

    def condition(self, concepts: torch.Tensor) -> torch.Tensor:
        """Text embeddings (B, tokens, hidden) of the concepts' prompts."""
        self._ensure_embeddings()
        ids = torch.as_tensor(concepts, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.concepts)):
            raise ConfigError(f"concept ids must lie in 0..{len(self.concepts) - 1}")
        return self._embeddings[ids.to(self._embeddings.device)]

    def unconditional(self, batch: int) -> torch.Tensor:
        """The empty prompt's embedding, `batch` copies (classifier-free guidance's null)."""
        self._ensure_embeddings()
        return self._null.expand(int(batch), *self._null.shape[1:])

    # --- the diffusion process -------------------------------------------------------------------------------

    def predict_noise(self, denoiser: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """ε̂(x_t, t, c). A v-prediction UNet's output (v = √ᾱ ε − √(1−ᾱ) x0, Stable Diffusion 2.x at 768 px) is
        turned into ε̂ = √ᾱ v + √(1−ᾱ) x_t, so ESD's targets and the search's losses are in ε either way."""
        dtype = next(denoiser.parameters()).dtype
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(len(x_t))
        out = denoiser(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.to(x_t.dtype)
        if self.prediction_type == "v_prediction":
            abar = self.train_scheduler.alphas_cumprod.to(x_t.device)[t].to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
            out = abar.sqrt() * out + (1 - abar).sqrt() * x_t
        return out

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.train_scheduler.add_noise(x0, noise, torch.as_tensor(t, device=x0.device))

    def parameter_names_for(self, which: str, denoiser: torch.nn.Module | None = None) -> list[str]:
        """Names of the parameters `parameters_for(which)` returns."""
        return select_parameter_names(denoiser or self.denoiser, which)

    def parameters_for(self, which: str, denoiser: torch.nn.Module | None = None) -> list[torch.nn.Parameter]:
        """"xattn": every cross-attention (attn2: to_q, to_k, to_v, to_out) parameter — ESD-x; "noxattn": every
        other UNet parameter — ESD-u; "all": the whole UNet. From `denoiser` (e.g. an unlearned copy) when given."""
        net = denoiser or self.denoiser
        params = dict(net.named_parameters())
        return [params[n] for n in self.parameter_names_for(which, net)]

    # --- images ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, image_size, image_size) → scaled latents (the posterior's mean, so the same
        images always give the same latents)."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ConfigError(f"images of shape {tuple(images.shape)} do not fit this model; it takes "
                              f"(B, 3, {self.image_size}, {self.image_size}) in [0, 1]")
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device, self.dtype) * 2 - 1
            z = self.vae.encode(x).latent_dist.mode()
            out.append((z - shift) * cfg.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [0, 1] (as the pipeline post-processes them)."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        out = []
        for chunk in latents.split(self.batch_size):
            x = self.vae.decode(chunk.to(self.device, self.dtype) / cfg.scaling_factor + shift).sample
            out.append((x / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    def sampling_scheduler(self):
        """A fresh sampling scheduler: DDIM (default) or the folder's own class, from the folder's config."""
        if self.sampler == "ddim":
            cls = self._diffusers.DDIMScheduler
        else:
            name = self._scheduler_config.get("_class_name", "")
            cls = getattr(self._diffusers, name, None)
            if cls is None:
                raise ConfigError(f"the folder's scheduler {name!r} is not a diffusers scheduler; use sampler='ddim'")
        return cls.from_config(self._scheduler_config)

    @torch.no_grad()
    def generate(self, denoiser: torch.nn.Module, concepts: torch.Tensor, *, steps: int, guidance: float,
                 generator: torch.Generator, batch_size: int | None = None) -> torch.Tensor:
        """Images in [0, 1], one per concept id, sampled from `denoiser` with classifier-free guidance
        ε̂ = ε(∅) + guidance·(ε(c) − ε(∅)). All initial latents are drawn from `generator` at once (as the
        pipeline draws them), so the images do not depend on `batch_size`."""
        if int(steps) < 1:
            raise ConfigError(f"steps must be at least 1, got {steps}")
        ids = torch.as_tensor(concepts, dtype=torch.long).reshape(-1)
        dtype = next(denoiser.parameters()).dtype
        latents = torch.randn((len(ids), *self.latent_shape), generator=generator, device=generator.device,
                              dtype=dtype).to(self.device)
        images = []
        for chunk_ids, x in zip(ids.split(batch_size or self.batch_size), latents.split(batch_size or self.batch_size)):
            scheduler = self.sampling_scheduler()
            scheduler.set_timesteps(int(steps), device=self.device)
            x = x * scheduler.init_noise_sigma
            cond = torch.cat([self.unconditional(len(chunk_ids)), self.condition(chunk_ids)]).to(dtype)
            for t in scheduler.timesteps:
                inp = scheduler.scale_model_input(torch.cat([x, x]), t)
                eps_null, eps_cond = denoiser(inp, t, encoder_hidden_states=cond).sample.chunk(2)
                eps = eps_null + guidance * (eps_cond - eps_null)
                x = scheduler.step(eps, t, x, **_step_kwargs(scheduler, generator)).prev_sample
            images.append(self.decode(x))
        return torch.cat(images).float() if images else torch.empty(0, 3, self.image_size, self.image_size)

    def describe(self) -> dict:
        """What a result records about the model."""
        return {"kind": "stable-diffusion", "path": str(self.path), "num_concepts": len(self.concepts),
                "grid": self.grid.describe() if self.grid else None, "image_size": self.image_size,
                "latent_shape": list(self.latent_shape), "num_train_timesteps": self.num_train_timesteps,
                "unet_parameters": sum(p.numel() for p in self.denoiser.parameters()),
                "xattn_parameters": sum(p.numel() for p in self.parameters_for("xattn")),
                "sampler": self.sampler, "dtype": str(self.dtype).replace("torch.", "")}


def select_parameter_names(unet: torch.nn.Module, which: str) -> list[str]:
    """A diffusers UNet's parameter names for a parameter set: "xattn" = every cross-attention (attn2) parameter
    (ESD-x), "noxattn" = every other one (ESD-u), "all"."""
    if which not in PARAMETER_SETS:
        raise ConfigError(f"unknown parameter set {which!r}; choose one of {', '.join(PARAMETER_SETS)}")
    names = [n for n, _ in unet.named_parameters()]
    if which == "all":
        return names
    cross = {n for n in names if CROSS_ATTENTION in n.split(".")}
    if not cross:
        raise ConfigError(f"the UNet has no cross-attention ({CROSS_ATTENTION}) layers, so {which!r} selects "
                          "nothing sensible; use 'all'")
    return [n for n in names if (n in cross) == (which == "xattn")]


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    """eta = 0 (deterministic DDIM) and the generator, for the schedulers whose step takes them."""
    import inspect

    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def _dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ConfigError(f"unknown dtype {dtype!r}; choose float32, float16 or bfloat16")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"dtype {dtype} is not supported; choose float32, float16 or bfloat16")
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("float16 Stable Diffusion runs on CUDA only; use float32 (the default) on the CPU")
    return dtype


def load_concept_model(spec: str, *, concepts: list[str] | None = None, grid: PromptGrid | None = None,
                       **kwargs) -> StableDiffusionConcepts:
    """`sd:PATH` → the Stable Diffusion folder at PATH as a concept model, over `grid` (objects × styles,
    recommended: the image folder and the reports find each concept by name) or a list of prompts."""
    if not is_stable_diffusion_spec(spec):
        raise ConfigError(f"{spec!r} is not a Stable Diffusion model; write sd:PATH with PATH a local pipeline "
                          "folder")
    path = spec[len(PREFIX):].strip()
    if not path:
        raise ConfigError("sd: needs a folder after the colon, e.g. sd:~/models/stable-diffusion-v1-5")
    if (concepts is None) == (grid is None):
        raise ConfigError("give the concepts either as a prompt grid (objects × styles) or as a list of prompts")
    if grid is not None:
        return StableDiffusionConcepts.from_grid(path, grid, **kwargs)
    return StableDiffusionConcepts(path, concepts, **kwargs)


def generated_concept_images(model: StableDiffusionConcepts, per_concept: int, *, steps: int = 50,
                             guidance: float = 7.5, seed: int = 0) -> ConceptImages:
    """`per_concept` images of every concept sampled from the ORIGINAL model (before any unlearning), for the
    search's per-concept diffusion loss when no image folder is given: they measure how far unlearning moves the
    model from what it generated for each prompt. Seeded: the same seed gives the same images."""
    if model.grid is None:
        raise ConfigError("generated concept images need the model's objects × styles grid; build it with "
                          "StableDiffusionConcepts.from_grid")
    if int(per_concept) < 1:
        raise ConfigError(f"per_concept must be at least 1, got {per_concept}")
    ids = torch.arange(len(model.concepts)).repeat_interleave(int(per_concept))
    g = seeded_generator(seed, "sd-concept-images")
    images = model.generate(model.denoiser, ids, steps=steps, guidance=guidance, generator=g).cpu()
    return ConceptImages(model.grid, images, ids, f"generated by the original model ({steps} steps, guidance "
                                                   f"{guidance}, seed {seed})")


def concept_images(model: StableDiffusionConcepts, source: str | None, *, per_concept: int | None = None,
                   steps: int = 50, guidance: float = 7.5, seed: int = 0) -> ConceptImages:
    """Each concept's images for the search's upper objective: from `concept-folder:PATH` (resized to the model's
    resolution, matched to the prompts by (object, style) name) or, with no source, generated by the original
    model (`generated_concept_images`, `per_concept` images each, default 4)."""
    if source is None:
        return generated_concept_images(model, per_concept or 4, steps=steps, guidance=guidance, seed=seed)
    if not is_concept_folder_spec(source):
        raise ConfigError(f"unknown concept image source {source!r}; write concept-folder:PATH or leave it out to "
                          "generate the images with the original model")
    if model.grid is None:
        raise ConfigError("a concept folder needs the model's objects × styles grid to match images to prompts; "
                          "build it with StableDiffusionConcepts.from_grid")
    return read_concept_folder(folder_of(source), model.image_size, model.grid, per_concept=per_concept)
