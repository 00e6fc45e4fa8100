"""`search --task generation --model sd:PATH`: the prompt-wise audit on a local Stable Diffusion folder (here a
tiny random pipeline built from configs: nothing is downloaded), its concepts and images from a concept folder,
ESD-x updating the cross-attention only, and no Retrain (a loaded model cannot be retrained here)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from conftest import assert_clean_error, invoke  # noqa: E402
from sd_cases import tiny_pipeline  # noqa: E402

OBJECTS, STYLES = ("cat", "dog", "tree"), ("ink", "oil")


def _concept_folder(root, per_pair=3):
    """ROOT/<style>/<object>/*.png, each pair a colour of its own (UnlearnCanvas's layout)."""
    from PIL import Image

    for s, style in enumerate(STYLES):
        for o, obj in enumerate(OBJECTS):
            folder = root / style / obj
            folder.mkdir(parents=True)
            for k in range(per_pair):
                rgb = np.zeros((16, 16, 3), np.uint8)
                rgb[..., 0], rgb[..., 1], rgb[..., 2] = 80 * o + 20, 200 * s + 20, 10 * k
                Image.fromarray(rgb).save(folder / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-audit")
    return tiny_pipeline(root / "pipeline"), _concept_folder(root / "canvas")


def test_esd_x_on_a_stable_diffusion_folder_updates_only_its_cross_attention(folders, tmp_path):
    from worstforget.methods.concepts import make_concept_method
    from worstforget.setting.generative import prepare_generative_setting

    pipeline, canvas = folders
    setting = prepare_generative_setting(dataset=f"concept-folder:{canvas}", model=f"sd:{pipeline}", device="cpu",
                                         cache_dir=str(tmp_path / "cache"))
    # concept ids are the grid's object-major ids, whatever order the folder is walked in
    assert setting.data.prompts == setting.model.concepts
    assert setting.data.prompts[1] == "A painting of a cat in oil style."
    assert setting.recipe is None  # Stable Diffusion cannot be retrained here
    w = torch.zeros(setting.num_concepts)
    w[[1, 4]] = 1.0
    unlearned = make_concept_method("esd", {"steps": 2}).apply(setting, w, seed=0)
    before = dict(setting.original.named_parameters())
    moved = {n for n, p in unlearned.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".attn2." in n for n in moved), sorted(moved)[:5]


def test_the_search_runs_on_a_stable_diffusion_folder_without_retrain(folders, tmp_path):
    pipeline, canvas = folders
    out = tmp_path / "out"
    result = invoke("search", "--task", "generation", "--model", f"sd:{pipeline}", "--dataset",
                    f"concept-folder:{canvas}", "--method", "esd", "--param", "steps=2", "--outer-steps", "2",
                    "--num-random", "1", "--num-seeds", "1", "--sample-steps", "3", "--images-per-concept", "2",
                    "--device", "cpu", "--cache-dir", tmp_path / "cache", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    generation = summary["setting"]["generation"]
    assert generation["steps"] == 3 and generation["images_per_concept"] == 2
    assert summary["model"] == "stable-diffusion" and "cannot be retrained" in summary["retrain_note"]
    assert summary["forget_size"] == 1 and summary["num_concepts"] == 6
    for kind in ("worst_case", "random"):
        assert set(summary["sets"][kind]["methods"]) == {"original", "esd"}  # no Retrain rows
    # the searched concepts are named by their own prompts (the grid's object-major ids)
    ids, prompts = summary["sets"]["worst_case"]["concepts"][0], summary["sets"]["worst_case"]["prompts"][0]
    assert prompts == [f"A painting of a {OBJECTS[c // 2]} in {STYLES[c % 2]} style." for c in ids]


def test_a_stable_diffusion_model_without_a_concept_folder_is_one_line(folders, tmp_path):
    pipeline, _ = folders
    result = invoke("search", "--task", "generation", "--model", f"sd:{pipeline}", "--out", tmp_path / "out")
    assert_clean_error(result)
    assert "concept-folder:ROOT" in result.output and not (tmp_path / "out").exists()
