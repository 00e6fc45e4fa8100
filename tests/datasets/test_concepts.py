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


def test_a_folders_images_split_by_concept_in_file_order_with_its_prompts():
    from worstforget.datasets.concept_folder import ConceptImages
    from worstforget.datasets.concepts import concept_data_from_images
    from worstforget.datasets.prompt_grid import PromptGrid

    grid = PromptGrid(("cat", "dog"), ("ink", "oil"), "a {object} drawn in {style}")
    counts = [1, 3, 10, 2]  # images per concept id
    concepts = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    images = torch.arange(len(concepts), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    data = concept_data_from_images("concept-folder:x", ConceptImages(grid, images, concepts, "x", fingerprint="f"))
    # the last n // 5 images of a concept (at least one) are held out; a single image stays in training
    assert data.x_test[:, 0, 0, 0].tolist() == [3, 12, 13, 15]
    assert data.concept_test.tolist() == [1, 2, 2, 3]
    assert sorted(data.x_train[:, 0, 0, 0].tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14]
    assert data.prompts == grid.prompts and data.prompt(2) == "a dog drawn in ink"
