"""Concept sets: objects × styles with object-major ids, every source image in every style."""
from __future__ import annotations

import pytest
import torch

from worstforget.core.errors import ConfigError
from worstforget.datasets.concepts import STYLES, build_concepts, load_concepts


def test_concept_ids_are_object_major_and_prompts_name_their_pair():
    data = load_concepts("concepts-digits")
    assert (data.num_objects, data.num_styles, data.num_concepts) == (10, 4, 40)
    assert data.concept_id(3, 1) == 13 and data.object_of(13) == 3 and data.style_of(13) == 1
    assert data.prompt(13) == "a 3 in inverted style"
    assert data.prompts[data.concept_id(7, 2)] == "a 7 in thick style"
    counts = torch.bincount(data.concept_train, minlength=40)
    assert counts.min() > 100  # every concept has its images


def test_every_source_image_is_drawn_in_every_style():
    images = torch.rand(6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    data = build_concepts("t", images.numpy(), labels.numpy(), ["a", "b", "c"], test_fraction=0.5, seed=1)
    n = len(data.x_train) // 4
    plain, inverted = data.x_train[:n], data.x_train[n:2 * n]
    assert torch.allclose(inverted, 1 - plain)  # the same source images, in order, per style
    assert torch.equal(data.concept_train[n:2 * n], data.concept_train[:n] + 1)
    assert torch.equal(data.x_train[2 * n:3 * n], STYLES["thick"](plain))
    assert data.fingerprint == build_concepts("t", images.numpy(), labels.numpy(), ["a", "b", "c"],
                                              test_fraction=0.5, seed=1).fingerprint


def test_an_unknown_concept_dataset_is_refused_with_the_available_names():
    with pytest.raises(ConfigError, match="concepts-digits"):
        load_concepts("digits")
