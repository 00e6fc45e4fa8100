"""The prompt-wise search: per-concept values land on their own concept's weight under any ordering of the
(object, style) grid, the objective regresses on ε, the search moves, and a resumed search gives the same set."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from concept_cases import tiny_generative_setting, tiny_search  # noqa: E402

from worstforget.core.errors import ConfigError  # noqa: E402
from worstforget.methods.concepts import make_concept_method  # noqa: E402
from worstforget.search import concepts as cs  # noqa: E402


def test_per_concept_values_land_on_their_own_concept_under_any_row_order():
    ids = torch.arange(12).repeat_interleave(3)
    values = ids.double() * 10 + torch.tensor([-1.0, 0.0, 1.0]).repeat(12)  # mean of concept c: 10c
    for seed in range(3):
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(cs.per_concept(values[perm], ids[perm], 12), torch.arange(12).double() * 10)


def test_a_concepts_objective_reads_its_own_images_and_prompt_whatever_the_grid_order():
    """The reference code's dataset index is style-major and its prompt list object-major, so each prompt's
    gradient went to its transpose. Here: shuffle the rows (any grid order), and each concept's value equals
    the loss of its own images under its own prompt, computed alone."""
    s = tiny_generative_setting()
    problem = cs.ConceptProblem(s, make_concept_method("esd"), tiny_search())
    values = cs.diffusion_losses(problem, s.original)
    x0, concepts, t, noise = problem.loss_batch()
    for c in (0, 7, 13, 39):  # object 0 style 0, object 1 style 3, object 3 style 1, object 9 style 3
        rows = concepts == c
        pred = s.model.predict_noise(s.original, s.model.add_noise(x0[rows], noise[rows], t[rows]), t[rows],
                                     s.model.condition(concepts[rows]))
        assert torch.isclose(values[c], (pred - noise[rows]).pow(2).mean().double(), rtol=1e-5)
    perm = torch.randperm(len(x0), generator=torch.Generator().manual_seed(0))
    problem._memo["loss_batch"] = (x0[perm], concepts[perm], t[perm], noise[perm])
    assert torch.allclose(cs.diffusion_losses(problem, s.original), values, rtol=1e-5)


def test_the_timestep_grid_is_the_papers():
    s = tiny_generative_setting()
    problem = cs.ConceptProblem(s, make_concept_method("esd"), tiny_search(timesteps=10))
    assert problem.timestep_grid().tolist() == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]


@pytest.mark.parametrize("solver", ["warm", "first_order"])
def test_the_search_is_deterministic_and_a_resumed_search_gives_the_same_set(solver, tmp_path, monkeypatch):
    s = tiny_generative_setting()
    esd = make_concept_method("esd", {"steps": 3, "per_concept": 1})
    cfg = tiny_search(solver=solver)
    whole = cs.search_concepts(s, esd, None, cfg, seed=0, state_dir=tmp_path / "a")
    assert len(whole.units) == 4 and whole.weight_history.shape == (4, 40)
    assert abs(float(whole.weights.sum()) - 4) < 1e-9
    assert whole.history["overlap_with_initial"][-1] < 1  # it moved away from its tie-broken start

    real, calls = cs.upper_value_and_grad, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cs, "upper_value_and_grad", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cs.search_concepts(s, esd, None, cfg, seed=0, state_dir=tmp_path / "b")
    monkeypatch.setattr(cs, "upper_value_and_grad", real)
    resumed = cs.search_concepts(s, esd, None, cfg, seed=0, state_dir=tmp_path / "b", resume=True)
    assert torch.equal(resumed.units, whole.units)
    assert torch.equal(resumed.weight_history, whole.weight_history)


def test_search_refuses_what_it_cannot_run():
    s = tiny_generative_setting()
    with pytest.raises(ConfigError, match="lower level"):
        cs.search_concepts(s, "retrain", None, tiny_search())
    with pytest.raises(ConfigError, match="objective"):
        tiny_search(objective="confidence").validate()
    with pytest.raises(ConfigError, match="solver"):
        tiny_search(solver="unrolled").validate()
