"""Soak round two, inputs: typed but absurd hyper-parameters, tiny or complex data, unusable HDF5 datasets,
LiRA with too few models and broken `run` configs — each refused in one line before any work (no model
trained, nothing written), or run correctly."""
from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_clean_error

from worstforget.cli import cli
from worstforget.methods import make_method
from worstforget.methods.base import MAX_EPOCHS

FAST = ["--dataset", "synthetic", "--epochs", "2"]


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def trained_models(cache: Path) -> list[Path]:
    return sorted((cache / "models").glob("*.pt"))


# --- defects 2, 9 and the hyper-parameter cases of 5 ----------------------------------------------------------

@pytest.mark.parametrize("param, message", [
    ("epochs=1000000000000", "epochs=1000000000000: must lie in [1, 10,000]"),
    ("epochs=-1", "epochs=-1: must lie in [1, 10,000]"),
    ("epochs=0", "epochs=0: must lie in [1, 10,000]"),
    ("batch_size=0", "batch_size=0: must be at least 1"),
    ("batch_size=-5", "batch_size=-5: must be at least 1"),
    ("lr=-1", "lr=-1.0: a learning rate must be positive"),
    ("lr=1e308", "lr=1e+308: is beyond float32's range"),
    ("momentum=-0.5", "momentum=-0.5: must be zero or positive"),
])
def test_absurd_hyper_parameters_are_refused_in_one_line_before_training(param, message, tmp_path, isolated_cache):
    result = invoke("unlearn", "--method", "finetune", *FAST, "--param", param, "--out", tmp_path / "o")
    assert_clean_error(result, 2)
    assert f"finetune hyper-parameter {message}" in result.output
    assert "unexpected" not in result.output
    assert trained_models(isolated_cache) == [] and not (tmp_path / "o").exists()


def test_epoch_counts_of_every_method_are_bounded():
    assert make_method("unsir", {"impair_epochs": 0}).impair_epochs == 0  # zero extra epochs is a choice
    for name, params in (("unsir", {"impair_epochs": MAX_EPOCHS + 1}), ("retrain", {"epochs": 10**12}),
                         ("scrub", {"max_epochs": -1}), ("unsir", {"noise_steps": 10**12})):
        with pytest.raises(Exception, match="must lie in"):
            make_method(name, params)


def test_the_largest_allowed_epoch_count_starts_without_building_a_huge_plan(synthetic, trained):
    """The soak's `epochs=10^12` grew memory by 60 MB/s building the epoch plan; the ceiling bounds it: the
    whole plan of MAX_EPOCHS epochs takes well under 50 MB, and the run starts its first step promptly."""
    import torch

    method = make_method("finetune", {"epochs": MAX_EPOCHS, "batch_size": 512})
    stepped = threading.Event()

    class Stop(Exception):
        pass

    class OneStep:
        differentiable = False

        def __init__(self, model, params, method):
            self.model = model

        def set_lr(self, lr):
            pass

        def step(self, loss, ctx):
            stepped.set()
            raise Stop

    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            method.apply(trained, synthetic, torch.zeros(synthetic.num_train), stepper=OneStep)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stepped.is_set() and peak < 50 * 2**20


# --- defect 6: tiny data without x_val --------------------------------------------------------------------

def _blobs(path: Path, per_class: int, classes: int, *, val: bool = False) -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class)
    x = (rng.normal(size=(len(y), 4)) + y[:, None]).astype(np.float32)
    arrays = {"x_train": x, "y_train": y, "x_test": x.copy(), "y_test": y.copy()}
    if val:
        arrays.update(x_val=x.copy(), y_val=y.copy())
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("per_class, classes", [(3, 200), (2, 3)])
def test_tiny_data_without_x_val_holds_out_one_validation_sample_and_runs(per_class, classes, tmp_path):
    from worstforget.datasets import load_dataset

    path = _blobs(tmp_path / "tiny.npz", per_class, classes)
    data = load_dataset(f"npz:{path}")
    assert len(data.y_val) == 1 and data.num_train == per_class * classes - 1
    result = invoke("unlearn", "--method", "finetune", "--dataset", f"npz:{path}", "--epochs", "1",
                    "--forget-ratio", "0.4", "--json")
    assert result.exit_code == 0, result.output


def test_tiny_data_with_one_sample_per_class_asks_for_x_val(tmp_path, isolated_cache):
    path = _blobs(tmp_path / "single.npz", 1, 2)
    result = invoke("unlearn", "--method", "finetune", "--dataset", f"npz:{path}", "--epochs", "1", "--json")
    assert_clean_error(result, 1)
    assert "no validation split is given and none can be held out" in result.output
    assert "add x_val and y_val" in result.output
    assert trained_models(isolated_cache) == []
    ok = _blobs(tmp_path / "single_val.npz", 1, 2, val=True)
    assert invoke("train", "--dataset", f"npz:{ok}", "--epochs", "1").exit_code == 0


def test_the_holdout_of_larger_data_is_unchanged():
    from worstforget.datasets.bundle import stratified_holdout

    y = np.repeat(np.arange(3), 20)
    keep, held = stratified_holdout(y, 0.1, 0, "val-split")
    assert len(held) == 6 and np.bincount(y[held]).tolist() == [2, 2, 2]


# --- defect 17: complex features ---------------------------------------------------------------------------

def test_complex_features_are_refused_instead_of_dropping_the_imaginary_part(tmp_path, isolated_cache):
    path = tmp_path / "complex.npz"
    x = np.ones((12, 3), dtype=np.complex64) * (1 + 2j)
    y = np.arange(12) % 2
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    result = invoke("train", "--dataset", f"npz:{path}", "--epochs", "1")
    assert_clean_error(result, 1)
    assert "x_train has complex dtype complex64" in result.output
    assert trained_models(isolated_cache) == []


# --- defect 5: an h5: dataset with a huge, linked or string x_train ------------------------------------------

def _h5_data(path: Path, edit) -> Path:
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    with h5py.File(path, "w") as f:
        for key, value in (("y_train", y), ("x_test", x), ("y_test", y)):
            f.create_dataset(key, data=value)
        edit(f, x)
    return path


@pytest.mark.parametrize("case, needle", [
    ("huge", "'x_train' declares"),
    ("external", "'x_train' is an external link"),
    ("dangling", "'x_train' cannot be resolved"),
    ("strings", "'x_train' holds"),
])
def test_an_unusable_h5_x_train_is_one_line(case, needle, tmp_path, isolated_cache):
    def edit(f, x):
        if case == "huge":
            f.create_dataset("x_train", shape=(10**9, 4), dtype="f4", chunks=(1024, 4))
        elif case == "external":
            f["x_train"] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/x")
        elif case == "dangling":
            f["x_train"] = h5py.SoftLink("/nowhere")
        else:
            f.create_dataset("x_train", data=np.array(["a"] * 30, dtype=h5py.string_dtype()))
    path = _h5_data(tmp_path / "data.h5", edit)
    result = invoke("train", "--dataset", f"h5:{path}", "--epochs", "1")
    assert_clean_error(result, 1)
    assert needle in result.output and "unexpected" not in result.output
    assert trained_models(isolated_cache) == []


# --- defect 10: LiRA with too few models -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "search"])
def test_lira_with_fewer_than_four_models_is_refused_not_left_out(command, tmp_path, isolated_cache):
    result = invoke(command, "--method", "finetune", *FAST, "--attacks", "lira,epsilon", "--num-models", "3",
                    "--out", tmp_path / "o")
    assert_clean_error(result, 2)
    assert "--attacks lira needs --num-models 4 or more" in result.output
    assert trained_models(isolated_cache) == [] and not (tmp_path / "o").exists()


# --- defect 14 and the config cases of 5: `run` configs ----------------------------------------------------

def _config(tmp_path: Path, content) -> Path:
    path = tmp_path / "exp.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("content, needle", [
    ([], "its root is a JSON list, not an object"),
    ("steps", "its root is a JSON str, not an object"),
    (b'{"name": "\xff", "steps": []}', "not UTF-8 text"),
    ({"steps": [["train"], []]}, "step 2 is not a non-empty list of strings"),
    ({"steps": [["train", {"epochs": 1}]]}, "step 1 is not a non-empty list of strings"),
    ({"steps": "train"}, "no `steps` list"),
    (b'[' * 100000, "not JSON"),
])
def test_a_malformed_run_config_is_one_line(content, needle, tmp_path):
    result = invoke("run", _config(tmp_path, content), "--out", tmp_path / "out")
    assert_clean_error(result, 1)
    assert needle in result.output and "unexpected" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_self_referencing_run_config_is_refused_before_it_recurses(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"name": "loop", "steps": [["run", str(path)]]}))
    result = invoke("run", path, "--out", tmp_path / "out")
    assert_clean_error(result, 2)
    assert "step 1 (run " in result.output and "runs another config" in result.output
    assert not (tmp_path / "out").exists()


def test_a_bad_option_in_a_later_step_is_found_before_the_first_step_runs(tmp_path, isolated_cache):
    path = _config(tmp_path, {"name": "late", "steps": [["train", *FAST], ["unlearn", "--method", "finetune",
                                                                          "--bogus", "1"]]})
    result = invoke("run", path, "--out", tmp_path / "out")
    assert_clean_error(result, 2)
    assert "step 2 (unlearn --method finetune --bogus 1)" in result.output and "--bogus" in result.output
    assert trained_models(isolated_cache) == [] and not (tmp_path / "out").exists()


def test_commands_txt_never_lists_a_step_that_failed(tmp_path, isolated_cache):
    path = _config(tmp_path, {"name": "fails", "steps": [["train", *FAST],
                                                         ["unlearn", "--method", "finetune", *FAST,
                                                          "--forget-set", str(tmp_path / "absent.npy")]]})
    result = invoke("run", path, "--out", tmp_path / "out")
    assert result.exit_code != 0
    lines = (tmp_path / "out" / "commands.txt").read_text().splitlines()
    assert lines == [f"worstforget train {' '.join(FAST)}"]


def test_a_step_may_read_a_file_an_earlier_step_writes(tmp_path):
    """Paths that must exist are left to the step: tune's --update-params feeds a later --params-file."""
    params = tmp_path / "params.json"
    path = _config(tmp_path, {"name": "chain", "steps": [
        ["train", *FAST, "--out", str(params)],
        ["evaluate", "--method", "finetune", *FAST, "--forget-set", str(tmp_path / "later.npy")]]})
    result = invoke("run", path, "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
