"""Soak round two, result folders: a rewrite never keeps a previous run's files, killed writes leave nothing
behind, and `report` refuses in one line what worstforget never writes — HDF5 links to other files, loops,
strings, arrays declared far beyond the file, an evaluation.json of an unknown schema — and escapes
what it prints into Markdown."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_clean_error, invoke, ok

from worstforget.audit.result import SearchAudit, read_attack_evaluation
from worstforget.core import io as io_module
from worstforget.report.tables import fmt_stat

FAST = ["--dataset", "synthetic", "--epochs", "2"]
SEARCH = ["search", *FAST, "--outer-steps", "2", "--inner-steps", "2", "--num-random", "1", "--seeds", "1",
          "--mia-resamples", "1", "--no-stability", "--baselines", "none"]




@pytest.fixture(scope="module")
def attacked_search(tmp_path_factory):
    """A finetune search with U-LiRA (4 models per side; its selection on 4 + 4) on the synthetic blobs, computed once
    per module."""
    root = tmp_path_factory.mktemp("attacked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORSTFORGET_CACHE", str(root / "cache"))
        mp.setenv("WORSTFORGET_DATA", str(root / "data"))
        ok(*SEARCH, "--method", "finetune", "--attacks", "lira", "--num-models", "4", "--select-models", "4",
           "--out", root / "R")
    return root


@pytest.fixture
def result_copy(attacked_search, tmp_path):
    out = tmp_path / "R"
    shutil.copytree(attacked_search / "R", out)
    return out


# --- defect 1: stale files survive a rewrite ------------------------------------------------------------------

def test_a_search_rewritten_without_attacks_drops_the_previous_runs_evaluation(attacked_search, result_copy,
                                                                               monkeypatch):
    monkeypatch.setenv("WORSTFORGET_CACHE", str(attacked_search / "cache"))
    (result_copy / "notes.txt").write_text("mine")
    assert (result_copy / "evaluation.json").is_file()
    ok(*SEARCH, "--method", "ga", "--out", result_copy)
    assert not (result_copy / "evaluation.json").exists() and not (result_copy / "evaluation.h5").exists()
    assert (result_copy / "notes.txt").read_text() == "mine"  # the user's files stay
    audit = SearchAudit.read(result_copy)
    assert audit.method == "gradient_ascent" and audit.evaluation is None
    report = json.loads(Path(ok("report", result_copy, "--format", "json").output.strip()).read_text())
    assert "lira" not in json.dumps(report).lower()


def test_write_result_folder_drops_owned_files_the_new_result_lacks(tmp_path):
    out = tmp_path / "R"
    io_module.write_result_folder(out, {"a.json": b"1", "b.json": b"2", "notes": b"n"})
    io_module.write_result_folder(out, {"a.json": b"3"}, owned=("a.json", "b.json"))
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "notes"]
    assert (out / "a.json").read_bytes() == b"3"


# --- defect 18: leftovers of killed writes; "± nan" -------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_writes_beside_out_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "R"
    io_module.write_result_folder(out, {"summary.json": b"{}"})
    tag = f"{_dead_pid()}@{io_module._writer_tag().partition('@')[2]}"
    dead_tmp = tmp_path / f".R.{tag}.abc123.tmp"
    dead_old = tmp_path / f".R.{tag}.old"
    live_tmp = tmp_path / f".R.{io_module._writer_tag()}.live.tmp"  # this process: a write in progress
    old_untagged = tmp_path / ".R.x7y8z9.tmp"  # an older version's leftover, an hour old
    fresh_untagged = tmp_path / ".R.k1l2m3.tmp"
    other = tmp_path / ".Other.1.old"
    for folder in (dead_tmp, dead_old, live_tmp, old_untagged, fresh_untagged, other):
        folder.mkdir()
        (folder / "summary.json").write_bytes(b"{}")
    hour_ago = time.time() - io_module.STALE_UNKNOWN_SECONDS - 5
    os.utime(old_untagged, (hour_ago, hour_ago))
    io_module.write_result_folder(out, {"summary.json": b"{}"})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["R", live_tmp.name, fresh_untagged.name, other.name])


def test_killed_result_writes_leave_at_most_the_newest_leftover(tmp_path):
    """kill -9 in the middle of the write, three times: each next write removes the previous one's leftovers."""
    script = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
              "from worstforget.core import io\n"
              "real = io._sync_dir\n"
              "def die(path):\n"
              "    if path.name.endswith('.tmp'): os.kill(os.getpid(), 9)\n"
              "    real(path)\n"
              "io._sync_dir = die\n"
              f"io.write_result_folder({str(tmp_path / 'R')!r}, {{'summary.json': b'new'}})\n")
    io_module.write_result_folder(tmp_path / "R", {"summary.json": b"old"})
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", script])
        assert proc.returncode == -9
        hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".R.")]
        assert len(hidden) == 1, hidden  # only the last kill's
    io_module.write_result_folder(tmp_path / "R", {"summary.json": b"final"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R"]
    assert (tmp_path / "R" / "summary.json").read_bytes() == b"final"


def test_a_single_random_set_never_prints_plus_minus_nan(result_copy):
    text = Path(ok("report", result_copy, "--format", "md").output.strip()).read_text()
    assert "± nan" not in text and "±nan" not in text
    assert "on a random set of the same size" in text
    assert fmt_stat(2.2222, float("nan"), 1) == "2.22" and fmt_stat(2.2222, float("nan"), 3) == "2.22"
    assert fmt_stat(2.2222, 0.5, 3) == "2.22 ± 0.50"


# --- defect 11: Markdown escaping --------------------------------------------------------------------------

def test_markdown_report_escapes_html_from_summary_strings(result_copy):
    summary = json.loads((result_copy / "summary.json").read_text())
    summary["dataset"] = "<script>alert(1)</script>"
    summary["model"] = '"><img src=x onerror=alert(2)>'
    summary.setdefault("config", {})["command"] = "<script>alert(3)</script>```"
    (result_copy / "summary.json").write_text(json.dumps(summary))
    text = Path(ok("report", result_copy, "--format", "md").output.strip()).read_text()
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    html_text = Path(ok("report", result_copy, "--format", "html", "--out", result_copy / "r.html")
                     .output.strip()).read_text() if _has_matplotlib() else ""
    assert "<script>alert" not in html_text


def _has_matplotlib() -> bool:
    from worstforget.report.plots import matplotlib_available

    return matplotlib_available()


# --- defect 12: evaluation.json of an unknown schema ------------------------------------------------------

def test_an_evaluation_json_of_an_unknown_schema_is_refused(result_copy):
    doc = json.loads((result_copy / "evaluation.json").read_text())
    doc["schema_version"] = 99
    (result_copy / "evaluation.json").write_text(json.dumps(doc))
    result = invoke("report", result_copy, "--format", "md")
    assert_clean_error(result, 1)
    assert "evaluation.json has schema_version 99" in result.output
    assert not (result_copy / "report.md").exists()


def test_schema_1_evaluation_json_without_a_version_is_still_read(result_copy):
    (result_copy / "evaluation.json").write_text(json.dumps({"scores": {"random": {"finetune": {"auc": 0.5}}}}))
    evaluation = read_attack_evaluation(result_copy)
    assert evaluation.scores == {"random": {"finetune": [{"auc": 0.5}]}}


# --- defects 4, 13 and the HDF5 cases of 5: what result.h5 may hold ---------------------------------------

def _edit_h5(folder: Path, edit) -> None:
    with h5py.File(folder / "result.h5", "r+") as f:
        edit(f)


def _report_refused(folder: Path, *needles: str) -> None:
    result = invoke("report", folder, "--format", "md")
    assert_clean_error(result, 1)
    for needle in needles:
        assert needle in result.output, result.output
    assert not (folder / "report.md").exists()


def test_final_weights_declared_far_beyond_the_file_are_refused_without_reading(result_copy):
    def declare(f):
        del f["search/final_weights"]
        f["search"].create_dataset("final_weights", shape=(375_000_000,), dtype="f4", chunks=(1 << 20,))
    _edit_h5(result_copy, declare)
    assert (result_copy / "result.h5").stat().st_size < 2**20
    _report_refused(result_copy, "declares", "/search/final_weights")


def test_final_weights_of_another_length_than_the_training_split_are_refused(result_copy):
    def shorten(f):
        weights = f["search/final_weights"][()]
        del f["search/final_weights"]
        f["search"].create_dataset("final_weights", data=weights[:-1])
    _edit_h5(result_copy, shorten)
    num_train = json.loads((result_copy / "summary.json").read_text())["num_train"]
    _report_refused(result_copy, f"final_weights has shape ({num_train - 1},)", f"{num_train} samples")


def test_forget_set_indices_outside_the_training_split_are_refused(result_copy):
    def corrupt(f):
        del f["forget_sets/worst_case"]
        f["forget_sets"].create_dataset("worst_case", data=np.array([0, 10**9], dtype=np.int64))
    _edit_h5(result_copy, corrupt)
    _report_refused(result_copy, "/forget_sets/worst_case is not a set of training indices")


def test_an_external_link_in_result_h5_is_refused_not_followed(result_copy, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as g:
        g.create_dataset("objective", data=np.zeros(3))

    def link(f):
        del f["search/objective"]
        f["search/objective"] = h5py.ExternalLink(str(foreign), "/objective")
    _edit_h5(result_copy, link)
    _report_refused(result_copy, "external link", "/search/objective")


def test_a_soft_link_loop_in_result_h5_is_one_line(result_copy):
    def loop(f):
        f["metrics/loop"] = h5py.SoftLink("/metrics/loop")
    _edit_h5(result_copy, loop)
    _report_refused(result_copy, "soft link", "/metrics/loop")


def test_groups_nested_too_deep_in_result_h5_are_refused(result_copy):
    from worstforget.audit.codecs import MAX_H5_DEPTH

    def nest(f):
        f.create_group("/".join(["deep"] * (MAX_H5_DEPTH + 1)))
    _edit_h5(result_copy, nest)
    _report_refused(result_copy, f"nests groups deeper than {MAX_H5_DEPTH} levels", "/deep/deep")


def test_a_hard_link_cycle_in_result_h5_ends_in_one_line(result_copy):
    # a group holding a hard link to its parent: the walk visits each object once, and the reader, finding a
    # group where a metric's array belongs, refuses the file in one line
    def cycle(f):
        f["metrics/random/retrain/parent"] = f["metrics/random"]
    _edit_h5(result_copy, cycle)
    _report_refused(result_copy, "result.h5 is incomplete or damaged")


def test_an_empty_space_dataset_in_result_h5_is_refused(result_copy):
    def empty(f):
        f["metrics/random/retrain"].create_dataset("void", shape=None, dtype="f8")
    _edit_h5(result_copy, empty)
    _report_refused(result_copy, "empty-space dataset", "/metrics/random/retrain/void")


def test_one_array_hard_linked_under_many_names_counts_once_per_name(result_copy):
    # 80 MB declared, linked under 4 names: a reader by path would read 320 MB from a file of a few hundred KB
    def links(f):
        big = f["metrics/random/retrain"].create_dataset("big", shape=(10**7,), dtype="f8", chunks=(1 << 16,))
        for i in range(3):
            f[f"metrics/random/retrain/big{i}"] = big
    _edit_h5(result_copy, links)
    _report_refused(result_copy, "result.h5 declares", "MiB of arrays")


def test_string_data_in_result_h5_is_one_line(result_copy):
    def strings(f):
        g = f["metrics/random/retrain"]
        del g["UA"]
        g.create_dataset("UA", data=np.array(["a", "b"], dtype=h5py.string_dtype()))
    _edit_h5(result_copy, strings)
    _report_refused(result_copy, "non-numeric data", "/metrics/random/retrain/UA")


def test_an_evaluation_h5_declaring_huge_arrays_is_refused(result_copy):
    with h5py.File(result_copy / "evaluation.h5", "r+") as f:
        f.create_dataset("random/0/huge", shape=(10**12,), dtype="f8", chunks=(1 << 16,))
    _report_refused(result_copy, "evaluation.h5 declares")
