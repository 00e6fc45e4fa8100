"""A tiny generative setting shared by the concept tests (built once per session, in its own cache folder)."""
from __future__ import annotations

import functools
import tempfile

import pytest

pytest.importorskip("diffusers")


@functools.lru_cache(maxsize=1)
def tiny_generative_setting():
    from worstforget.setting.generative import prepare_generative_setting
    from worstforget.training.concept_classifier import ClassifierConfig

    root = tempfile.mkdtemp(prefix="wf-concepts-")
    return prepare_generative_setting(recipe=TINY_RECIPE(), classifier=ClassifierConfig(epochs=1),
                                      generation=TINY_GENERATION(), device="cpu", cache_dir=root)


def TINY_RECIPE():
    from worstforget.training.diffusion import DiffusionConfig

    return DiffusionConfig(channels=(8, 16), token_dim=16, steps=8, batch_size=16)


def TINY_GENERATION():
    from worstforget.setting.generative import GenerationConfig

    return GenerationConfig(images_per_concept=2, steps=2, pool_per_concept=2)


def tiny_search(**changes):
    from worstforget.search.concepts import ConceptSearchConfig

    values = dict(outer_steps=3, images_per_concept=2, timesteps=2, generations_per_concept=1)
    values.update(changes)
    return ConceptSearchConfig(**values)
