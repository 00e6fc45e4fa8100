"""The generative setting: a concept set, the original concept-conditional diffusion model, the concept
classifier that judges generations, and the caches — the prompt-wise search's counterpart of `Setting`.

The original, the classifier, exact Retrain (the original's recipe on the images of the retained concepts)
and the original's own generations (the images ESD and concept ablation noise) are cached under keys of
their recipe and data, like the classifier task's originals (core/cache.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..core.cache import ArrayCache, ModelCache, RecordCache
from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.progress import Progress
from ..core.runtime import Timer, one_intra_op_thread, resolve_device
from ..core.seeds import derive_seed, generator
from ..datasets.concept_folder import discover_grid, folder_of, is_concept_folder_spec, read_concept_folder
from ..datasets.concepts import ConceptData, concept_data_from_images, load_concepts
from ..training.concept_classifier import (
    ClassifierConfig,
    ConceptClassifier,
    classifier_accuracy,
    train_concept_classifier,
)
from ..training.diffusion import (
    DiffusionConfig,
    TinyConceptDiffusion,
    build_denoiser,
    train_concept_diffusion,
)
from ..training.stable_diffusion import is_stable_diffusion_spec, load_concept_model


@dataclass(frozen=True)
class GenerationConfig:
    """How generations are sampled for the metrics and for the methods' own-sample pools."""

    images_per_concept: int = 6
    steps: int = 20  # DDIM steps
    # classifier-free guidance scale; above 1 the tiny model's generations get less recognisable (results/generative)
    guidance: float = 1.0
    pool_per_concept: int = 8  # the original's generations per concept that ESD / ablation noise

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerativeSetting:
    data: ConceptData
    model: TinyConceptDiffusion  # any ConceptDiffusion; its `denoiser` is the original
    classifier: ConceptClassifier
    recipe: DiffusionConfig | None  # None: a model that cannot be retrained here (Retrain is then unavailable)
    original_key: str
    records: RecordCache
    models: ModelCache
    arrays: ArrayCache
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train_seconds: float | None = None
    classifier_seconds: float | None = None
    classifier_accuracy: dict = field(default_factory=dict)
    original_source: str = "trained"
    classifier_source: str = "trained"
    _pool: torch.Tensor | None = field(default=None, repr=False)

    @property
    def original(self) -> nn.Module:
        return self.model.denoiser

    @property
    def device(self) -> torch.device:
        """Where the denoiser lives (read off its parameters: `ConceptDiffusion` has no device of its own)."""
        return next(self.original.parameters()).device

    @property
    def num_concepts(self) -> int:
        return self.data.num_concepts

    def budget(self, ratio: float) -> int:
        return max(1, int(round(ratio * self.num_concepts)))

    def pool(self) -> torch.Tensor:
        """The original's own generations, (concepts, pool_per_concept, C, H, W) in the denoiser's space:
        what ESD and concept ablation noise (ESD is data-free: it erases what the model itself generates)."""
        if self._pool is None:
            g = self.generation
            key = stable_hash({"original": self.original_key, "pool": g.pool_per_concept, "steps": g.steps,
                               "guidance": g.guidance})
            found = self.arrays.get("concept_pool", key)
            if found is not None:
                self._pool = torch.as_tensor(found["pool"]).to(self.device)
            else:
                concepts = torch.arange(self.num_concepts).repeat_interleave(g.pool_per_concept)
                images = self.model.generate(self.original, concepts, steps=g.steps, guidance=g.guidance,
                                             generator=generator(0, "concept-pool"))
                latents = self.model.encode(images)  # the denoiser's space: latents for Stable Diffusion
                self._pool = latents.reshape(self.num_concepts, g.pool_per_concept, *latents.shape[1:])
                self.arrays.put("concept_pool", key, {"pool": self._pool.cpu().numpy()})
        return self._pool

    def retrain(self, forget_units: torch.Tensor, seed: int, progress: Progress | None = None
                ) -> tuple[nn.Module, float]:
        """Exact Retrain: the original's recipe, from scratch, on the images of the retained concepts only.
        (denoiser, seconds it took when trained — read back from the cache when it was)."""
        if self.recipe is None:
            raise ConfigError("Retrain needs a model trained here from a recipe; this setting's model was loaded")
        units = sorted(int(u) for u in forget_units)
        key = stable_hash({"original": self.original_key, "retrain_without": units, "seed": seed})
        keep = ~torch.isin(self.data.concept_train, torch.tensor(units, dtype=torch.long, device=self.device))
        denoiser = build_denoiser(self.data.image_shape, self.recipe, 0)
        with self.models.lock(key):
            meta = self.models.load_with_meta(key, denoiser)
            if meta is None:
                with Timer() as timer:
                    denoiser = train_concept_diffusion(
                        self.data.x_train[keep], self.data.concept_train[keep], num_objects=self.data.num_objects,
                        num_styles=self.data.num_styles, prompts=self.data.prompts, cfg=self.recipe,
                        seed=derive_seed(self.recipe.seed, "retrain", seed), device=self.device, progress=progress,
                        description=f"retrain without {len(units)} concepts").denoiser
                meta = {"train_seconds": timer.seconds}
                self.models.save(key, denoiser, meta=meta)
        return denoiser.to(self.device).eval(), float(meta["train_seconds"])

    def describe(self) -> dict:
        model = "tiny-unet" if self.recipe is not None else getattr(self.model, "describe", lambda: "loaded")()
        return {"dataset": self.data.describe(), "model": model,
                "recipe": None if self.recipe is None else self.recipe.to_dict(), "original_key": self.original_key,
                "original_source": self.original_source, "original_train_seconds": self.train_seconds,
                "classifier_accuracy": self.classifier_accuracy, "classifier_seconds": self.classifier_seconds,
                "generation": self.generation.to_dict()}


@one_intra_op_thread()
def prepare_generative_setting(*, dataset: str = "concepts-digits", model: str | None = None,
                               data_dir: str | None = None, device: str = "auto",
                               recipe: DiffusionConfig | None = None, classifier: ClassifierConfig | None = None,
                               generation: GenerationConfig | None = None, cache: bool = True,
                               cache_dir: str | None = None, progress: Progress | None = None) -> GenerativeSetting:
    """Load the concept set, then the original diffusion model and the concept classifier (cached, or trained
    now and timed). `model="sd:PATH"` loads a local Stable Diffusion folder instead of the tiny UNet trained
    here; its concepts and images then come from `dataset="concept-folder:ROOT"`, and Retrain is unavailable
    (a Stable Diffusion model cannot be retrained here)."""
    dev = resolve_device(device)
    models = ModelCache(cache_dir, enabled=cache)
    if model is not None and is_stable_diffusion_spec(model):
        data, concept_model, original_key = _stable_diffusion(model, dataset, dev)
        recipe, source, train_seconds = None, "loaded", None
    else:
        if model is not None and model not in ("tiny-unet", "tiny_unet"):
            raise ConfigError(f"model {model!r} is not a concept diffusion model; use tiny-unet (trained here) or "
                              "sd:PATH (a local Stable Diffusion folder)")
        data = load_concepts(dataset, data_dir=data_dir, device=dev)
        recipe = recipe or DiffusionConfig()
        original_key = stable_hash({"concept_diffusion": recipe.to_dict(), "data": data.fingerprint})
        denoiser = build_denoiser(data.image_shape, recipe, recipe.seed)
        source = "cache"
        with models.lock(original_key):
            meta = models.load_with_meta(original_key, denoiser)
            if meta is None:
                with Timer() as timer:
                    denoiser = train_concept_diffusion(data.x_train, data.concept_train, num_objects=data.num_objects,
                                                       num_styles=data.num_styles, prompts=data.prompts, cfg=recipe,
                                                       device=dev, progress=progress,
                                                       description="train original diffusion").denoiser
                meta = {"train_seconds": timer.seconds}
                models.save(original_key, denoiser, meta=meta)
                source = "trained"
        train_seconds = float(meta["train_seconds"])
        concept_model = TinyConceptDiffusion(denoiser.to(dev).eval(), data.prompts, data.image_shape,
                                             num_objects=data.num_objects, num_styles=data.num_styles,
                                             token_dim=recipe.token_dim)
    classifier = classifier or ClassifierConfig()
    clf_key = stable_hash({"concept_classifier": classifier.to_dict(), "data": data.fingerprint})
    clf = ConceptClassifier(data.image_shape[0], data.image_shape[-1], data.num_objects, data.num_styles,
                            classifier.feature_dim)
    with models.lock(clf_key):
        clf_meta = models.load_with_meta(clf_key, clf)
        clf_source = "cache" if clf_meta is not None else "trained"
        if clf_meta is None:
            with Timer() as timer:
                clf = train_concept_classifier(data.x_train, data.concept_train, num_objects=data.num_objects,
                                               num_styles=data.num_styles, cfg=classifier, device=dev)
            clf_meta = {"train_seconds": timer.seconds}
            models.save(clf_key, clf, meta=clf_meta)
    clf = clf.to(dev).eval().requires_grad_(False)
    return GenerativeSetting(data=data, model=concept_model, classifier=clf, recipe=recipe, original_key=original_key,
                             records=RecordCache(cache_dir, enabled=cache), models=models,
                             arrays=ArrayCache(cache_dir, enabled=cache), generation=generation or GenerationConfig(),
                             train_seconds=train_seconds, classifier_seconds=float(clf_meta["train_seconds"]),
                             classifier_accuracy=classifier_accuracy(clf, data.x_test, data.concept_test),
                             original_source=source, classifier_source=clf_source)


def _stable_diffusion(spec: str, dataset: str, device: torch.device):
    """(concept data, the loaded model, its key) for `sd:PATH` with the concepts and images of a concept folder."""
    if not is_concept_folder_spec(dataset):
        raise ConfigError(f"a Stable Diffusion model ({spec}) takes its concepts and their images from a folder: "
                          f"give dataset concept-folder:ROOT (ROOT/<style>/<object>/*.png), not {dataset!r}")
    root = folder_of(dataset)
    grid = discover_grid(root)
    model = load_concept_model(spec, grid=grid, device=device)
    images = read_concept_folder(root, model.image_size, grid)
    data = concept_data_from_images(dataset, images).to(device)
    # the folder's weights by name, size and modification time: new weights at the same path are a new model
    files = sorted((str(p.relative_to(model.path)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in model.path.rglob("*") if p.is_file())
    return data, model, stable_hash({"stable_diffusion": files, "model": model.describe(), "data": data.fingerprint})
