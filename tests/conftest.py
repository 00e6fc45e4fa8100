"""Shared fixtures and helpers: the tiny synthetic dataset, a small MLP recipe, a trained original model,
an isolated on-disk cache, a click runner, a snapshot/restore guard for the method registry, `idx_bytes` (an
IDX file's bytes), `load_script` (a repository script as a module) and `assert_clean_error` (a CLI failure is
one `Error:` line; test modules import the helpers with `from conftest import`)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    # Every tensor here is tiny: intra-op threads only add contention (several-fold slower on a busy CPU). Torch is
    # imported where tests run: under -n, not in the process that only hands tests to the workers.
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        import torch

        torch.set_num_threads(1)


def invoke(*args):
    """The CLI in this process, quiet, with every argument as a string."""
    from click.testing import CliRunner

    from worstforget.cli import cli

    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def ok(*args):
    """`invoke` that must succeed."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` as an IDX file of unsigned bytes (type code 0x08), the format of MNIST and Fashion-MNIST."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def load_script(relative: str):
    """The repository's script at `relative` (e.g. "benchmarks/gpu_check.py"), executed as a module named after its
    file, so a test calls its functions and `main` in this process."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[path.stem]
    return module


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
def synthetic():
    """3 classes × 8 features Gaussian blobs (216 train / 24 val / 120 test). Treat as read-only."""
    from worstforget.datasets import load_dataset

    return load_dataset("synthetic")


@pytest.fixture(scope="session")
def tiny_spec():
    from worstforget.training.loop import TrainConfig
    from worstforget.training.original import ModelSpec

    return ModelSpec("mlp", TrainConfig(epochs=5, lr=0.05, batch_size=32), params={"hidden": (16,)})


@pytest.fixture(scope="session")
def _trained_state(synthetic, tiny_spec):
    from worstforget.training.loop import fit

    model = fit(tiny_spec.build(synthetic), synthetic, tiny_spec.train, seed=0)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained(synthetic, tiny_spec, _trained_state):
    """The original model: tiny_spec trained on synthetic with `fit` (a fresh copy per test)."""
    model = tiny_spec.build(synthetic)
    model.load_state_dict(_trained_state)
    return model.eval()


@pytest.fixture(scope="session")
def _original_models(tmp_path_factory):
    """Trained originals' cache entries (`models/`), one per `prepare_setting` recipe, trained once a session."""
    import json

    from worstforget.setting import prepare_setting

    root, made = tmp_path_factory.mktemp("originals"), {}

    def models_of(**recipe) -> Path:
        key = json.dumps(recipe, sort_keys=True, default=str)
        if key not in made:
            folder = root / str(len(made))
            prepare_setting(device="cpu", cache_dir=str(folder), **recipe)
            made[key] = folder / "models"
        return made[key]

    return models_of


@pytest.fixture
def prepared(tmp_path, _original_models):
    """`prepared(**recipe)`: `prepare_setting(device="cpu", cache_dir=tmp_path, **recipe)` whose original model is
    already in the test's own cache folder (trained once a session, its cache entry copied in), so tests that only
    use the original don't each retrain the same model; the setting reads `original_source == "cache"`."""
    import shutil

    from worstforget.setting import prepare_setting

    def make(**recipe):
        shutil.copytree(_original_models(**recipe), tmp_path / "models", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.lock"))
        return prepare_setting(device="cpu", cache_dir=str(tmp_path), **recipe)

    return make


@pytest.fixture(scope="session")
def process_pool():
    """One process pool of 2 workers for the session (forks of a server that imported torch once), for the tests that
    check what a pool computes; a test that kills a worker leaves the executor to start a new pool, as for users."""
    from worstforget.core.executor import ProcessExecutor

    with ProcessExecutor(workers=2) as executor:
        yield executor


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


# The fast lane, `pytest -m "not slow"`: everything but these (each takes seconds, or starts worker processes
# or a Ray instance). Listed here, by module and test name, rather than marked in each file.
SLOW = {
    "core/test_executor.py": "*",  # process pools and a Ray instance
    "core/test_ray_no_shared_fs.py": "*",  # a multi-node Ray cluster of local processes
    "core/test_faults_io.py": {"test_two_processes_asking_for_one_unit_compute_it_once",
                               "test_a_cached_model_with_overwritten_tensor_bytes_is_retrained_not_used",
                               "test_a_checkpoint_of_the_cached_model_audits_like_the_cached_model",
                               "test_a_disk_full_midway_leaves_the_previous_unlearn_result_byte_identical"},
    "datasets/test_formats.py": {"test_fashion_mnist_fingerprint_does_not_depend_on_torch_threads"},
    "datasets/test_faults_data.py": {"test_raw_search_step_of_1e20_keeps_the_budget_end_to_end"},
    "training/test_gpu_path.py": {"test_compile_flag_compiles_the_training_forward",
                                  "test_gpu_check_tiny_prints_and_writes_one_complete_table",
                                  "test_gpu_check_keeps_the_table_when_phases_fail"},
    "audit/test_audit_pipeline.py": {"test_a_search_killed_midway_resumes_to_the_uninterrupted_set",
                                     "test_search_with_attacks_stores_the_evaluation_in_every_file",
                                     "test_eval_methods_run_on_every_set_and_reach_every_file",
                                     "test_init_heuristic_starts_from_the_baseline_with_the_lowest_objective"},
    "audit/test_evaluation.py": {"test_bounded_quality_calls_retrain_a_perfect_unlearner",
                                 "test_lira_on_original_beats_population_attack_at_low_fpr",
                                 "test_memorization_proxy_ranks_mislabelled_points_high"},
    "scoring/test_privacy_epsilon.py": {"test_bounded_matches_brute_force_on_random_small_cases"},
    "scoring/test_privacy_rmia.py": {"test_exposure_anatomy_script_reads_an_audit_and_its_scores",
                                     "test_rmia_vs_lira_script_on_tiny_setting"},
    "report/test_report.py": {"test_markdown_report_has_method_and_retrain_side_by_side",
                              "test_html_report_is_self_contained_with_legible_pngs"},
    "cli/test_cli_workflows.py": {"test_search_cli_writes_all_outputs_and_resumes"},
    "cli/test_generation_cli.py": {"test_a_tiny_generative_audit_writes_its_result_and_verdict"},
    "cli/test_generation_sd.py": {"test_the_search_runs_on_a_stable_diffusion_folder_without_retrain"},
    "audit/test_generative_threads.py": "*",  # two tiny generative audits
    "methods/test_plugins.py": {"test_kaggle_submission_runs_in_place_with_dict_batches_through_unlearn_and_search"},
    "search/test_search.py": {"test_search_moves_is_deterministic_and_resumes"},
    "audit/test_exposure.py": {"test_exposure_selector_finds_memorised_flipped_labels"},
    "audit/test_stacked_runs.py": {"test_the_audit_cost_benchmark_runs",
                                   "test_a_stacked_record_is_the_same_in_any_stack_and_on_any_executor"},
    "audit/test_selection.py": {"test_search_with_selection_reports_the_chosen_set_with_fresh_models"},
    "audit/test_cost_line.py": {"test_the_cost_line_adds_up_what_the_command_ran"},
    "audit/test_thread_independence.py": "*",  # two audits in two fresh processes
    "audit/test_reliability_results.py": {"test_a_search_rewritten_without_attacks_drops_the_previous_runs_evaluation",
                                          "test_killed_result_writes_leave_at_most_the_newest_leftover"},
    "core/test_reliability_cache.py": {"test_an_unexpected_error_shows_one_line_and_logs_its_traceback",
                                       "test_an_immutable_cache_holding_the_model_gives_one_line_not_tracebacks"},
    "methods/test_reliability_plugins.py": {"test_a_plugin_leaving_a_non_daemon_thread_does_not_hang_the_cli"},
    "report/test_committed_results_render.py": {"test_the_tables_script_reads_every_committed_result"},
}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    module_of = {item.nodeid: Path(str(item.fspath)).relative_to(root).as_posix() for item in items}
    slow_in_module: dict[str, int] = {}
    for item in items:
        module = module_of[item.nodeid]
        names = SLOW.get(module, ())
        if names == "*" or item.originalname in names:
            item.add_marker(pytest.mark.slow)
            slow_in_module[module] = slow_in_module.get(module, 0) + 1
    # Modules with the most slow tests run first, each module still in one piece (module fixtures are built once):
    # pytest-xdist hands the tests out in this order, so the last ones, which decide when the run ends on whichever
    # worker gets them, are quick ones.
    items.sort(key=lambda item: -slow_in_module.get(module_of[item.nodeid], 0))
