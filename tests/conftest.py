"""Shared fixtures and helpers: the tiny synthetic dataset, a small MLP recipe, a trained original model,
an isolated on-disk cache, a click runner, a snapshot/restore guard for the method registry, and
`assert_clean_error` (a CLI failure is one `Error:` line; test modules import it with `from conftest import`)."""
from __future__ import annotations

import pytest
import torch

from worstforget.datasets import Dataset, load_dataset
from worstforget.training.loop import TrainConfig, fit
from worstforget.training.original import ModelSpec

# Every tensor here is tiny: intra-op threads only add contention (several-fold slower on a busy CPU).
torch.set_num_threads(1)


def assert_clean_error(result, exit_code: int | None = None):
    """Exited through click with a message, not an uncaught exception or a traceback."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test caches models and records under its own tmp dir, never in ~/.cache."""
    cache = tmp_path / "wf-cache"
    monkeypatch.setenv("WORSTFORGET_CACHE", str(cache))
    monkeypatch.setenv("WORSTFORGET_DATA", str(tmp_path / "wf-data"))
    return cache


@pytest.fixture(scope="session")
def synthetic() -> Dataset:
    """3 classes × 8 features Gaussian blobs (216 train / 24 val / 120 test). Treat as read-only."""
    return load_dataset("synthetic")


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    return ModelSpec("mlp", TrainConfig(epochs=5, lr=0.05, batch_size=32), params={"hidden": (16,)})


@pytest.fixture(scope="session")
def _trained_state(synthetic, tiny_spec) -> dict[str, torch.Tensor]:
    model = fit(tiny_spec.build(synthetic), synthetic, tiny_spec.train, seed=0)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained(synthetic, tiny_spec, _trained_state) -> torch.nn.Module:
    """The original model: tiny_spec trained on synthetic with `fit` (a fresh copy per test)."""
    model = tiny_spec.build(synthetic)
    model.load_state_dict(_trained_state)
    return model.eval()


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def isolated_registry():
    """Registrations made during the test (plugins, temporary methods) are undone afterwards."""
    from worstforget.methods import METHODS

    state = METHODS.snapshot()
    try:
        yield METHODS
    finally:
        METHODS.restore(state)
