"""The one registry of forget-set kinds: labels and order, which kinds are baselines and selectors, and that
each one-shot kind picks what its definition says (checked by brute force on a tiny setting)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from worstforget.cli import cli
from worstforget.core.errors import ConfigError
from worstforget.forget_sets import BASELINES, KIND_LABELS, KIND_NAMES, KINDS, SELECTORS, SET_KINDS
from worstforget.setting import prepare_setting
from worstforget.training.loop import per_sample_loss


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    return prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path_factory.mktemp("c")),
                           train_overrides={"epochs": 3})


def test_every_kind_has_its_label_and_phrase_in_display_order():
    assert tuple(SET_KINDS) == ("worst_case", "lowest_loss", "heuristic", "memorization", "exposure", "random",
                                "class", "given")
    assert KIND_LABELS["worst_case"] == "worst-case" and KIND_NAMES["heuristic"] == "lowest-objective heuristic"
    assert list(KIND_LABELS) == list(SET_KINDS) and KIND_LABELS.get("schema1_kind", "x") == "x"


def test_baselines_are_the_scored_kinds_and_selectors_the_choosable_ones():
    assert BASELINES.names() == ["lowest_loss", "heuristic", "memorization", "exposure"]
    assert SELECTORS.names() == ["lowest_loss", "memorization", "exposure", "random", "class"]
    assert SELECTORS.canonical("loss_quantile") == "lowest_loss"
    assert SELECTORS.canonical("memorization_proxy") == "memorization"
    with pytest.raises(ConfigError, match="unknown selector 'worst_case'"):
        SELECTORS.canonical("worst_case")


def test_lowest_loss_picks_the_m_lowest_losses(setting):
    losses = per_sample_loss(setting.original, setting.data.x_train, setting.data.y_train).numpy()
    m = round(0.1 * setting.data.num_train)
    chosen = SELECTORS.get("lowest_loss").choose(setting, ratio=0.1)
    assert set(chosen.tolist()) == set(np.argsort(losses, kind="stable")[:m].tolist())
    scores = KINDS.get("lowest_loss").score(setting)
    assert torch.allclose(scores, -torch.as_tensor(losses, dtype=torch.float64))


def test_the_heuristic_kind_reads_the_search_objective(setting):
    objective = lambda model: torch.arange(setting.data.num_train, dtype=torch.float64)  # noqa: E731
    scores = KINDS.get("heuristic").score(setting, objective=objective)
    assert torch.equal(scores, -objective(None))
    with pytest.raises(ConfigError, match="search objective"):
        KINDS.get("heuristic").score(setting)


def test_list_and_help_read_the_registry():
    runner = CliRunner()
    listed = runner.invoke(cli, ["list", "selectors"]).output
    assert all(name in listed for name in ("exposure", "lowest_loss", "memorization", "class", "random"))
    assert "heuristic" not in listed
    baselines = runner.invoke(cli, ["list", "baselines"]).output
    assert all(name in baselines for name in BASELINES.names())
    assert "exposure" in runner.invoke(cli, ["evaluate", "--help"]).output
