"""The objects × styles prompt grid and the `concept-folder:PATH` image reader: every image and every weight stays
on its own (object, style) prompt, whatever order the names or the folders come in."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worstforget.core.errors import ConfigError, DataNotFoundError, InvalidDataError
from worstforget.datasets.concept_folder import (
    discover_grid,
    folder_of,
    is_concept_folder_spec,
    load_image,
    read_concept_folder,
)
from worstforget.datasets.prompt_grid import UNLEARNCANVAS_TEMPLATE, PromptGrid

Image = pytest.importorskip("PIL.Image")

OBJECTS = ["Statues", "Towers", "Human", "Flowers"]
STYLES = ["Crayon", "Ukiyoe", "Van_Gogh"]


# --- the grid ----------------------------------------------------------------------------------------------


def test_the_grid_is_object_major_with_every_pair_recorded():
    grid = PromptGrid(tuple(OBJECTS), tuple(STYLES))
    assert grid.num_concepts == 12 and grid.template == UNLEARNCANVAS_TEMPLATE
    assert grid.prompts[0] == "A painting of a Statues in Crayon style."
    assert grid.prompts[1] == "A painting of a Statues in Ukiyoe style."  # the style moves fastest
    assert grid.prompts[3] == "A painting of a Towers in Crayon style."
    assert grid.pairs[5] == ("Towers", "Van_Gogh") == grid.pair(5) and grid.index("Towers", "Van_Gogh") == 5
    assert grid.describe()["order"].startswith("object-major")
    for i in range(grid.num_concepts):
        assert grid.index(*grid.pair(i)) == i and grid.prompt(i) == grid.prompts[i]


def test_the_reference_codes_transposed_index_is_not_ours():
    """The reference numbered combinations style-major (s·O + o) against an object-major prompt list: the
    weight it computed for one pair was read as another pair's. Here names decide the id."""
    grid = PromptGrid(tuple(OBJECTS), tuple(STYLES))
    style_major = [(o, s) for s in STYLES for o in OBJECTS]  # the order the folder walk and the reference use
    ids = grid.indices(style_major)
    transposed = list(range(grid.num_concepts))  # what the reference assumed position k meant
    assert ids != transposed
    for (obj, style), i in zip(style_major, ids):
        assert grid.prompts[i] == f"A painting of a {obj} in {style} style."


@settings(max_examples=60, deadline=None)
@given(st.permutations(OBJECTS), st.permutations(STYLES), st.randoms(use_true_random=False))
def test_weights_stay_on_their_prompts_under_any_ordering(objects, styles, rnd):
    grid = PromptGrid(tuple(objects), tuple(styles))
    truth = {(o, s): rnd.random() for o in OBJECTS for s in STYLES}  # a value per pair, by name
    listed = list(truth.items())
    rnd.shuffle(listed)  # the values arrive in any order
    w = np.full(grid.num_concepts, np.nan)
    w[grid.indices(k for k, _ in listed)] = [v for _, v in listed]
    for i, prompt in enumerate(grid.prompts):
        obj, style = grid.pair(i)
        assert prompt == UNLEARNCANVAS_TEMPLATE.format(object=obj, style=style)
        assert w[i] == truth[(obj, style)]
    assert grid.weights_by_pair(w) == truth
    assert grid.weights_from_pairs(truth) == list(w)


@pytest.mark.parametrize("objects, styles, template, words", [
    ((), ("a",), UNLEARNCANVAS_TEMPLATE, "at least one object"),
    (("cat", "cat"), ("a",), UNLEARNCANVAS_TEMPLATE, "listed twice"),
    (("cat",), ("",), UNLEARNCANVAS_TEMPLATE, "non-empty string"),
    (("cat",), ("a",), "a {object}", "exactly {object} and {style}"),
    (("cat",), ("a",), "a {object} in {style} by {artist}", "exactly {object} and {style}"),
    (("cat",), ("a",), "a {object", "not a format string"),
])
def test_a_bad_grid_is_refused(objects, styles, template, words):
    with pytest.raises(ConfigError, match=words.replace("{", r"\{").replace("}", r"\}")):
        PromptGrid(objects, styles, template)


def test_unknown_names_and_ids_are_refused():
    grid = PromptGrid(("cat",), ("ink", "oil"))
    with pytest.raises(ConfigError, match="unknown object 'dog'"):
        grid.index("dog", "ink")
    with pytest.raises(ConfigError, match="unknown style 'Ink'"):
        grid.index("cat", "Ink")
    with pytest.raises(ConfigError, match="outside"):
        grid.pair(2)
    with pytest.raises(ConfigError, match="3 weights for a grid of 2"):
        grid.weights_by_pair([0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="no value for 1 pair"):
        grid.weights_from_pairs({("cat", "ink"): 1.0})


# --- the folder --------------------------------------------------------------------------------------------


def _level(o: int, s: int) -> int:
    return 20 * o + 70 * s + 5  # a grey level that says which pair an image belongs to


def _canvas(root, objects=OBJECTS, styles=STYLES, per_pair=2, size=(24, 20)):
    for s, style in enumerate(styles):
        for o, obj in enumerate(objects):
            folder = root / style / obj
            folder.mkdir(parents=True)
            for k in range(per_pair):
                array = np.full((size[1], size[0], 3), _level(o, s), np.uint8)
                Image.fromarray(array).save(folder / f"{k}.{'png' if k % 2 == 0 else 'jpg'}", quality=100)
    return root


def test_the_folder_is_read_by_name_into_object_major_ids(tmp_path):
    root = _canvas(tmp_path / "canvas")
    data = read_concept_folder(root, 8)
    assert data.grid.objects == tuple(sorted(OBJECTS)) and data.grid.styles == tuple(sorted(STYLES))
    assert data.images.shape == (24, 3, 8, 8) and data.counts() == [2] * 12
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    for img, concept, path in zip(data.images, data.concepts.tolist(), data.files):
        obj, style = data.grid.pair(concept)
        assert f"/{style}/{obj}/" in path
        want = _level(OBJECTS.index(obj), STYLES.index(style)) / 255
        assert abs(float(img.mean()) - want) < 2 / 255  # JPEG may move a flat grey by a level
    assert data.source == f"concept-folder:{root}" and data.fingerprint
    assert read_concept_folder(root, 8).fingerprint == data.fingerprint
    one = data.of(data.grid.index("Human", "Ukiyoe"))
    assert one.shape == (2, 3, 8, 8)


def test_a_given_grid_reads_its_pairs_only_in_its_order(tmp_path):
    root = _canvas(tmp_path / "canvas")
    grid = PromptGrid(("Towers", "Statues"), ("Van_Gogh",))
    data = read_concept_folder(root, 4, grid, per_concept=1)
    assert data.grid is grid and data.concepts.tolist() == [0, 1] and data.images.shape == (2, 3, 4, 4)
    assert abs(float(data.images[0].mean()) - _level(1, 2) / 255) < 2 / 255  # Towers in Van_Gogh
    assert abs(float(data.images[1].mean()) - _level(0, 2) / 255) < 2 / 255  # Statues in Van_Gogh


def test_images_are_centre_cropped_then_resized(tmp_path):
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, 10:20] = 255  # the centre square is white, the sides black
    Image.fromarray(array).save(tmp_path / "wide.png")
    img = load_image(tmp_path / "wide.png", 5)
    assert img.shape == (3, 5, 5) and torch.all(img == 1.0)


def test_folder_problems_are_named_before_any_image_is_read(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_concept_folder(tmp_path / "nowhere", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no style folders"):
        read_concept_folder(tmp_path / "empty", 8)
    root = _canvas(tmp_path / "canvas")
    (root / "Crayon" / "Towers" / "0.png").unlink()
    (root / "Crayon" / "Towers" / "1.jpg").unlink()
    with pytest.raises(DataNotFoundError, match=r"1 pair folder\(s\) .* no \.jpg/\.jpeg/\.png image: Crayon/Towers"):
        read_concept_folder(root, 8)
    with pytest.raises(DataNotFoundError, match="no folder for 3 .*Crayon/Dogs"):
        read_concept_folder(root, 8, PromptGrid(("Dogs",), ("Crayon", "Ukiyoe", "Van_Gogh")))
    with pytest.raises(ConfigError, match="per_concept"):
        read_concept_folder(root, 8, per_concept=0)


def test_an_unreadable_image_is_named(tmp_path):
    root = _canvas(tmp_path / "canvas", objects=["cat"], styles=["ink"], per_pair=1)
    (root / "ink" / "cat" / "1.png").write_bytes(b"not an image")
    with pytest.raises(InvalidDataError, match=r"cannot read image .*1\.png"):
        read_concept_folder(root, 8)


def test_specs_and_discovery():
    assert is_concept_folder_spec("concept-folder:/data/canvas") and not is_concept_folder_spec("/data/canvas")
    assert str(folder_of("concept-folder:/data/canvas")) == "/data/canvas"
    with pytest.raises(ConfigError, match="concept-folder:PATH"):
        folder_of("concept-folder:")


def test_discover_grid_takes_the_template(tmp_path):
    root = _canvas(tmp_path / "canvas", objects=["cat"], styles=["ink"], per_pair=1)
    grid = discover_grid(root, "{object} / {style}")
    assert grid.prompts == ["cat / ink"]
