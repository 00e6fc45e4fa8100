"""Faults of storage and of the user's files: audited checkpoints, damaged cache entries, two processes on one
cache, a full disk, unusable output paths, and the search's per-step checkpoint.

Every user-facing fault goes through the CLI: a one-line error, its exit code, no partial output and, where
the fault is detectable up front, no work done (the cache holds no trained model).
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_clean_error, invoke, ok

from worstforget.cli import cli
from worstforget.core import cache as cache_module
from worstforget.core import io as io_module
from worstforget.core.cache import ArrayCache, ModelCache, RecordCache, content_digest
from worstforget.datasets import dataset_info
from worstforget.search import SOLVERS, SearchConfig, search_worst_case
from worstforget.search import checkpoint as checkpoint_module
from worstforget.search import loop as loop_module
from worstforget.setting import prepare_setting
from worstforget.training import original as original_module
from worstforget.training.models import build_model
from worstforget.training.original import obtain_original

FAST = ["--dataset", "synthetic", "--epochs", "3"]
SEARCH = ["search", "--method", "ft", *FAST, "--outer-steps", "2", "--inner-steps", "2", "--num-random", "1",
          "--seeds", "1", "--mia-resamples", "1", "--no-stability"]
REPO = Path(__file__).resolve().parents[2]
# wall-clock numbers, and how many Retrain runs trained together, differ between runs
TIMED = ("RTE", "RTE_fraction", "RTE_stack", "RTE_stack_seconds", "rte_seconds", "rte_fraction")




def untimed_values(folder: Path) -> dict:
    """(set kind, set, method, seed, metric) → value from results.csv, timings left out."""
    with open(folder / "results.csv", newline="") as fh:
        return {(r["set_kind"], r["set_index"], r["method"], r["seed"], r["metric"]): r["value"]
                for r in csv.DictReader(fh) if r["metric"] not in TIMED}


def trained_models(cache: Path) -> list[Path]:
    return sorted((cache / "models").glob("*.pt"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tensor_spans(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every tensor storage inside a torch.save file (a zip whose entries are stored raw)."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if "/data/" in i.filename]
    spans = []
    for info in infos:
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        spans.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return spans


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def default_model(**kwargs) -> torch.nn.Module:
    info = dataset_info("synthetic")
    return build_model(info.default_model, 3, (8,), **kwargs)


# --- 1. audited checkpoints --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hand_built(tmp_path_factory) -> Path:
    """A state_dict of the synthetic dataset's default architecture, random init, never trained or cached."""
    path = tmp_path_factory.mktemp("ckpt") / "random-init.pt"
    torch.save(default_model(seed=123).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def checkpoint_search(tmp_path_factory, hand_built) -> Path:
    """One `search --checkpoint` of the hand-built model (module-wide: several tests read its folder)."""
    root = tmp_path_factory.mktemp("ckpt-search")
    result = ok(*SEARCH, "--checkpoint", hand_built, "--cache-dir", root / "cache", "--out", root / "out")
    (root / "stdout.txt").write_text(result.output)
    return root


def test_a_checkpoint_of_the_cached_model_audits_like_the_cached_model(tmp_path):
    cache = tmp_path / "cache"
    ok("unlearn", "--method", "ft", *FAST, "--cache-dir", cache, "--out", tmp_path / "cached")
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(cache), train_overrides={"epochs": 3})
    state = setting.original.state_dict()
    files = {"bare": state, "wrapped": {"state_dict": state, "epoch": 3},
             "data_parallel": {"module." + k: v for k, v in state.items()},
             "wrapped_data_parallel": {"state_dict": {"module." + k: v for k, v in state.items()}}}
    computed, keys = {}, set()
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        before = cache_module.COMPUTED["unit"]
        ok("unlearn", "--method", "ft", *FAST, "--checkpoint", tmp_path / f"{name}.pt", "--cache-dir", cache,
           "--out", tmp_path / name)
        computed[name] = cache_module.COMPUTED["unit"] - before
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        setting_doc = summary["setting"]
        assert setting_doc["original_source"] == "checkpoint" and setting_doc["original_train_seconds"] is None
        keys.add(setting_doc["original_key"])
        # same weights as the cached model: the same numbers, whatever the file's wrapping
        assert untimed_values(tmp_path / name) == untimed_values(tmp_path / "cached")
    # four different files: four keys, and no file reused another's units (Retrain and the method each time)
    assert len(keys) == 4 and computed == dict.fromkeys(files, 2)
    before = cache_module.COMPUTED["unit"]
    ok("unlearn", "--method", "ft", *FAST, "--checkpoint", tmp_path / "bare.pt", "--cache-dir", cache)
    assert cache_module.COMPUTED["unit"] == before  # the same file again: every unit from the cache
    assert len(trained_models(cache)) == 1  # only the recipe's model; checkpoints are never cached as models


def test_checkpoints_with_the_same_weights_in_other_bytes_never_share_units(tmp_path):
    """The key is the file's content: re-saving a model (another name inside the zip) starts afresh."""
    setting_a = prepare_setting(dataset="synthetic", device="cpu", checkpoint=None, cache_dir=str(tmp_path / "c"),
                                train_overrides={"epochs": 3})
    torch.save(setting_a.original.state_dict(), tmp_path / "a.pt")
    torch.save(setting_a.original.state_dict(), tmp_path / "b.pt")
    keys = [prepare_setting(dataset="synthetic", device="cpu", checkpoint=str(tmp_path / f"{n}.pt"),
                            cache_dir=str(tmp_path / "c")).original_key for n in ("a", "b", "a")]
    assert keys[0] == keys[2] != keys[1] and setting_a.original_key not in keys
    digest = hashlib.sha256((tmp_path / "a.pt").read_bytes()).hexdigest()
    assert original_module.load_checkpoint(default_model(), tmp_path / "a.pt") == digest


def test_a_hand_built_checkpoint_is_audited_by_train_unlearn_and_evaluate(tmp_path, hand_built):
    cache = tmp_path / "cache"
    result = ok("train", *FAST, "--checkpoint", hand_built, "--cache-dir", cache, "--out", tmp_path / "train.json")
    assert "original: checkpoint, training time unknown" in result.output
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["original_source"] == "checkpoint" and record["single_model_train_seconds"] is None
    ok("unlearn", "--method", "ft", *FAST, "--checkpoint", hand_built, "--cache-dir", cache, "--out", tmp_path / "u")
    np.save(tmp_path / "forget.npy", np.arange(0, 40, 2))
    ok("evaluate", "--method", "ft", *FAST, "--checkpoint", hand_built, "--forget-set", tmp_path / "forget.npy",
       "--attacks", "loss", "--num-models", "2", "--cache-dir", cache, "--out", tmp_path / "e")
    assert (tmp_path / "e" / "evaluation.json").is_file()
    assert trained_models(cache) == []  # the audited model is the checkpoint: no original was trained
    # the audited model is the random one: near-chance accuracy, as measured here directly
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["setting"]["original_source"] == "checkpoint"
    model = default_model()
    model.load_state_dict(torch.load(hand_built, weights_only=True))
    setting = prepare_setting(dataset="synthetic", device="cpu", checkpoint=str(hand_built), cache_dir=str(cache))
    x = setting.data.x_test
    with torch.no_grad():
        torch.testing.assert_close(setting.original(x), model.eval()(x))


def test_search_on_a_checkpoint_costs_against_retrain_and_says_so(checkpoint_search):
    summary = json.loads((checkpoint_search / "out" / "summary.json").read_text())
    search = summary["search"]
    assert search["train_seconds"] is None and search["cost_reference"] == "one Retrain"
    retrain = []
    with open(checkpoint_search / "out" / "results.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["set_kind"] == "random" and r["method"] == "retrain" and r["metric"] == "RTE":
                retrain.append(float(r["value"]))
    assert search["cost_ratio"] == pytest.approx(search["seconds"] / np.median(retrain))
    output = " ".join((checkpoint_search / "stdout.txt").read_text().split())
    assert "training time of the original unknown: cost against one Retrain" in output
    assert trained_models(checkpoint_search / "cache") == []


@pytest.mark.parametrize("command", [
    ["train"],
    ["unlearn", "--method", "ft"],
    ["search", "--method", "ft", "--outer-steps", "2"],
    ["evaluate", "--method", "ft", "--attacks", "loss", "--num-models", "2"],
])
def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(tmp_path, command):
    torch.save(default_model(hidden=(16,)).state_dict(), tmp_path / "small.pt")
    result = invoke(*command, *FAST, "--checkpoint", tmp_path / "small.pt", "--cache-dir", tmp_path / "cache",
                    "--out", tmp_path / ("out.json" if command == ["train"] else "out"))
    assert_clean_error(result, 1)
    assert "does not match the chosen architecture" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()
    assert trained_models(tmp_path / "cache") == []


def test_a_checkpoint_holding_something_else_than_tensors_is_refused(tmp_path):
    torch.save({"weight": [1.0, 2.0], "bias": 3}, tmp_path / "odd.pt")
    result = invoke("unlearn", "--method", "ft", *FAST, "--checkpoint", tmp_path / "odd.pt",
                    "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, 1)
    assert "not a state_dict" in result.output and "bias" in result.output


# --- 2. damaged cache entries ------------------------------------------------------------------------------

def test_a_cached_model_with_overwritten_tensor_bytes_is_retrained_not_used(tmp_path, caplog):
    cache = tmp_path / "cache"
    ok("unlearn", "--method", "ft", *FAST, "--cache-dir", cache)
    (path,) = trained_models(cache)
    clean = torch.load(path, weights_only=True)["state_dict"]
    offset, size = max(tensor_spans(path), key=lambda span: span[1])
    overwrite(path, offset + size // 4, b"\x40" * (size // 2))  # float32 3.0 over half of the largest tensor
    damaged = torch.load(path, weights_only=True)["state_dict"]  # torch loads it without complaint
    assert any(not torch.equal(clean[k], damaged[k]) for k in clean)
    with caplog.at_level(logging.WARNING, logger="worstforget"):
        # seed 1 is a new unit: it must start from the retrained model, not from the damaged one
        ok("unlearn", "--method", "ft", *FAST, "--seeds", "2", "--cache-dir", cache, "--out", tmp_path / "after")
    ok("unlearn", "--method", "ft", *FAST, "--seeds", "2", "--cache-dir", tmp_path / "fresh",
       "--out", tmp_path / "clean")
    assert untimed_values(tmp_path / "after") == untimed_values(tmp_path / "clean")
    assert [r.message for r in caplog.records if "fails its checksum" in r.message] != []
    restored = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(clean[k], restored[k]) for k in clean)


def _bad_utf8(path: Path) -> None:
    overwrite(path, path.stat().st_size // 2, b"\xff\xfe")


def _changed_number(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["record"]["TA"] = 54.9  # a valid file, a different number, the old checksum
    path.write_text(json.dumps(doc))


def _wrong_schema(path: Path) -> None:
    record = json.loads(path.read_text())["record"]
    del record["RTE"]
    record["TA"] = "98.9"
    canonical = json.dumps(record, sort_keys=True)  # the checksum matches: only the schema check can refuse it
    path.write_text(json.dumps({"sha256": hashlib.sha256(canonical.encode()).hexdigest(), "record": record}))


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _older_format(path: Path) -> None:
    path.write_text(json.dumps(json.loads(path.read_text())["record"]))


@pytest.mark.parametrize("damage", [_bad_utf8, _changed_number, _wrong_schema, _truncated, _older_format],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_unit_record_is_recomputed(tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    ok("unlearn", "--method", "ft", *FAST, "--cache-dir", cache, "--out", tmp_path / "clean")
    records = sorted((cache / "records" / "unit").glob("*.json"))
    assert len(records) == 2  # Retrain and finetune
    for path in records:
        damage(path)
    before = cache_module.COMPUTED["unit"]
    with caplog.at_level(logging.WARNING, logger="worstforget"):
        ok("unlearn", "--method", "ft", *FAST, "--cache-dir", cache, "--out", tmp_path / "again")
    assert cache_module.COMPUTED["unit"] - before == 2
    assert untimed_values(tmp_path / "again") == untimed_values(tmp_path / "clean")
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING and "recomputing" in r.message]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)


def test_record_validation_is_per_kind_or_given(tmp_path):
    records = RecordCache(tmp_path)
    assert records.get_or_compute("unit", "k", lambda: {"UA": 1, "RA": 2.0, "TA": 3.0, "MIA": 0.5, "MIA_std": 0.0,
                                                        "RTE": 0.1, "retrained_fraction": 0.25})["UA"] == 1
    computed = []

    def compute():
        computed.append(1)
        return {"UA": 5.0, "RA": 2.0, "TA": 3.0, "MIA": 0.5, "MIA_std": 0.0, "RTE": 0.1}

    assert records.get_or_compute("unit", "k", compute)["UA"] == 1 and computed == []  # a valid hit
    assert records.get_or_compute("unit", "k", compute,
                                  validate=lambda r: "too old" if r["UA"] < 2 else None)["UA"] == 5
    assert cache_module.record_problem("unit", {"UA": 1.0}) == "lacks RA, TA, MIA, MIA_std, RTE"
    assert "non-numeric" in cache_module.record_problem("unit", dict.fromkeys(cache_module.RECORD_FIELDS["unit"], True))
    assert cache_module.record_problem("unit", [1, 2]) == "is a list, not a record"
    assert cache_module.record_problem("other", {"anything": "goes"}) is None


def test_a_damaged_array_entry_is_recomputed(tmp_path, caplog, monkeypatch, synthetic, tiny_spec):
    from worstforget.training.memorization import CACHE_KIND, memorization_scores

    cache = ArrayCache(tmp_path)
    computed = []
    real_put = cache.put
    monkeypatch.setattr(cache, "put", lambda kind, key, arrays: (kind == CACHE_KIND and computed.append(key))
                        or real_put(kind, key, arrays))
    first = memorization_scores(tiny_spec, synthetic, num_models=2, seed=0, cache=cache)
    (path,) = (tmp_path / "arrays" / CACHE_KIND).glob("*.npz")

    def flip_bytes():  # inside the stored array: the zip's CRC no longer matches
        overwrite(path, path.stat().st_size // 3, b"\x7f" * 8)

    def forged():  # a well-formed file with other numbers under the old checksum
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["scores"] = arrays["scores"] + 1
        np.savez(path, **arrays)

    def older():  # no checksum at all
        with np.load(path) as f:
            np.savez(path, scores=f["scores"])

    with caplog.at_level(logging.WARNING, logger="worstforget"):
        for damage in (flip_bytes, forged, older):
            damage()
            assert np.array_equal(memorization_scores(tiny_spec, synthetic, num_models=2, seed=0, cache=cache), first)
    assert len(computed) == 4  # the first run and one per damaged file
    assert len([r for r in caplog.records if "recomputing" in r.message]) == 3
    with pytest.raises(ValueError, match="reserved"):
        cache.put("k", "x", {cache_module.DIGEST_ARRAY: np.zeros(1)})


def test_content_digest_tells_apart_what_the_cache_must():
    base = {"w": torch.zeros(3), "n": 1, "f": 0.5, "s": "x", "l": [1, 2]}
    assert content_digest(base) == content_digest(dict(reversed(list(base.items()))))  # key order
    variants = [{**base, "w": torch.zeros(3, dtype=torch.float64)}, {**base, "w": torch.zeros(1, 3)},
                {**base, "w": torch.tensor([0.0, 0.0, 1e-45])}, {**base, "n": 1.0}, {**base, "n": True},
                {**base, "f": 0.5000000000000001}, {**base, "s": "y"}, {**base, "l": [1, 2, 3]},
                {**base, "l": [[1], 2]}, {**base, "w": np.zeros(3, dtype=np.float32)}]
    digests = {content_digest(v) for v in variants} | {content_digest(base)}
    assert len(digests) == len(variants) + 1


# --- 3. two processes, one cache ---------------------------------------------------------------------------

UNIT_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import worstforget.audit.units as units
from worstforget.core import cache
from worstforget.forget_sets import random_forget_set
from worstforget.setting import prepare_setting

root, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=root, train_overrides={"epochs": 3})
real = units.evaluate

def slow(*args, **kwargs):  # keeps the unit busy long enough for the other process to ask for it too
    time.sleep(1.0)
    return real(*args, **kwargs)

units.evaluate = slow
ready.touch()
while not go.exists():
    time.sleep(0.01)
record = units.run_unit(setting, "finetune", {}, random_forget_set(setting.data.num_train, 20, 0), seed=0)
print(json.dumps({"computed": cache.COMPUTED["unit"], "record": record}))
"""


def test_two_processes_asking_for_one_unit_compute_it_once(tmp_path):
    cache = tmp_path / "cache"
    prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(cache), train_overrides={"epochs": 3})
    script = tmp_path / "unit.py"
    script.write_text(UNIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(cache), str(tmp_path / f"ready{i}"),
                               str(tmp_path / "go")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    docs = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(d["computed"] for d in docs) == [0, 1]  # one computed it, the other waited and read it
    assert docs[0]["record"] == docs[1]["record"]


def test_two_threads_asking_for_one_original_train_it_once(tmp_path, monkeypatch, synthetic, tiny_spec):
    trainings = []
    real = original_module.fit

    def slow_fit(*args, **kwargs):
        trainings.append(1)
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(original_module, "fit", slow_fit)
    results = [None, None]

    def obtain(i):
        results[i] = obtain_original(tiny_spec, synthetic, cache=ModelCache(tmp_path))

    threads = [threading.Thread(target=obtain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trainings) == 1
    assert sorted(r.source for r in results) == ["cache", "trained"]
    a, b = (r.model.state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results[0].train_seconds == pytest.approx(results[1].train_seconds)


def test_cache_writes_are_synced_before_they_replace_the_entry(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    RecordCache(tmp_path).get_or_compute("any", "k", lambda: {"x": 1.0})
    path = str(tmp_path / "records" / "any" / "k.json")
    i = events.index(("replace", path))
    assert events[i - 1][0] == "fsync" and Path(events[i - 1][1]).name.startswith(".k.json.")  # the new content
    assert ("fsync", str(tmp_path / "records" / "any")) in events[i + 1:]  # the rename itself


# --- 4. a full disk ----------------------------------------------------------------------------------------

REAL_WRITE = io_module._write_synced


def failing_result_writes(monkeypatch, out: Path, after: int = 1) -> None:
    """The low-level write of `write_result_folder` fails with ENOSPC once `after` files of the new set
    have been written into its temporary folder (other writes, e.g. the cache's, go through)."""
    real = REAL_WRITE
    written = []

    def write(path: Path, data: bytes) -> None:
        if path.parent.name.startswith(f".{out.name}.") and path.parent.name.endswith(".tmp"):
            if len(written) >= after:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(path.name)
        real(path, data)

    monkeypatch.setattr(io_module, "_write_synced", write)


def test_a_disk_full_midway_leaves_the_previous_unlearn_result_byte_identical(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ok("unlearn", "--method", "ft", *FAST, "--cache-dir", tmp_path / "cache", "--out", out)
    (out / "notes.txt").write_text("the user's notes\n")
    before = snapshot(out)
    failing_result_writes(monkeypatch, out)
    result = invoke("unlearn", "--method", "ft", *FAST, "--seeds", "2", "--cache-dir", tmp_path / "cache",
                    "--out", out)
    assert_clean_error(result, 1)
    assert "the disk is full" in result.output and "unchanged" in result.output
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary or old folder


def test_a_disk_full_midway_leaves_a_search_folder_whole(checkpoint_search, tmp_path, monkeypatch):
    """The h5py segfault and the half-replaced folder: result.h5 is built in memory, the folder as a unit."""
    import h5py

    from worstforget.audit.result import SearchAudit

    out = tmp_path / "search"
    shutil.copytree(checkpoint_search / "out", out)
    before = snapshot(out)
    audit = SearchAudit.read(out)
    audit.header["params"] = {"lr": 0.5}  # something new to write
    opened = []
    real_file = h5py.File
    monkeypatch.setattr(h5py, "File", lambda target, *a, **k: opened.append(target) or real_file(target, *a, **k))
    for after in (1, 2, 3):
        failing_result_writes(monkeypatch, out, after=after)
        with pytest.raises(io_module.WorstforgetError, match="the disk is full"):
            audit.write(out)
        assert snapshot(out) == before
        assert [p.name for p in tmp_path.iterdir()] == ["search"]
    assert opened and all(not isinstance(t, (str, Path)) for t in opened)  # never an HDF5 file on disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (needs the right to mount: root in a sandbox)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode}): the real "
                    "full-disk run needs mount rights; the injected ENOSPC tests cover the same code")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_real_full_disk_refuses_before_work_then_fails_cleanly_when_writing(tmp_path, tiny_disk, monkeypatch):
    cache = tmp_path / "cache"
    result = invoke("unlearn", "--method", "ft", *FAST, "--cache-dir", cache, "--out", tiny_disk / "out")
    assert_clean_error(result, 1)
    assert "MiB free" in result.output and trained_models(cache) == []  # refused before training
    monkeypatch.setattr(io_module, "MIN_FREE_BYTES", 0)  # let it through, to meet the full disk when writing
    ok("unlearn", "--method", "ft", *FAST, "--cache-dir", cache, "--out", tiny_disk / "out")
    before = snapshot(tiny_disk / "out")
    fill(tiny_disk)
    result = invoke("unlearn", "--method", "ft", *FAST, "--seeds", "2", "--cache-dir", cache,
                    "--out", tiny_disk / "out")
    assert_clean_error(result, 1)
    assert "the disk is full" in result.output
    assert snapshot(tiny_disk / "out") == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "out"]


DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.mark.parametrize("command", [["unlearn", "--method", "ft"], ["search", "--method", "ft"],
                                     ["compare", "--methods", "ft"], ["evaluate", "--method", "ft"]])
def test_too_little_free_space_is_refused_before_any_work(tmp_path, monkeypatch, command):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**30, 2**30 - 2**20, 2**20))
    result = invoke(*command, *FAST, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out")
    assert_clean_error(result, 1)
    assert "only 1.0 MiB free" in result.output
    assert not (tmp_path / "out").exists() and trained_models(tmp_path / "cache") == []


# --- 5. output paths ---------------------------------------------------------------------------------------

FOLDER_OUTPUTS = {"search": ["search", "--method", "ft", *FAST, "--out"],
                  "unlearn": ["unlearn", "--method", "ft", *FAST, "--out"],
                  "compare": ["compare", "--methods", "ft", *FAST, "--out"],
                  "evaluate": ["evaluate", "--method", "ft", *FAST, "--out"]}
FILE_OUTPUTS = {"train": ["train", *FAST, "--out"],
                "tune-out": ["tune", "--method", "ft", "--grid", "lr=0.1", *FAST, "--out"],
                "tune-update-params": ["tune", "--method", "ft", "--grid", "lr=0.1", *FAST, "--update-params"]}


def _bad_target(tmp_path: Path, kind: str) -> Path:
    (tmp_path / "afile").write_text("not a folder\n")
    return {"under_a_file": tmp_path / "afile" / "sub", "unwritable": Path("/proc/wf-out")}[kind]


@pytest.mark.parametrize("kind", ["under_a_file", "unwritable"])
@pytest.mark.parametrize("name", [*FOLDER_OUTPUTS, *FILE_OUTPUTS])
def test_an_unusable_output_path_fails_in_one_line_before_training(tmp_path, name, kind):
    target = _bad_target(tmp_path, kind)
    args = {**FOLDER_OUTPUTS, **FILE_OUTPUTS}[name]
    result = invoke(*args, target, "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, 1)
    assert str(target.parent if name in FILE_OUTPUTS else target) in result.output
    assert trained_models(tmp_path / "cache") == [] and not target.exists()


@pytest.mark.parametrize("name", list(FOLDER_OUTPUTS))
def test_a_folder_output_that_is_a_file_is_refused_before_training(tmp_path, name):
    (tmp_path / "afile").write_text("keep me\n")
    result = invoke(*FOLDER_OUTPUTS[name], tmp_path / "afile", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and "Traceback" not in result.output  # click's own check of the option
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is a file" in errors[0]
    assert (tmp_path / "afile").read_text() == "keep me\n" and trained_models(tmp_path / "cache") == []


@pytest.mark.parametrize("name", list(FILE_OUTPUTS))
def test_a_file_output_that_is_a_folder_is_refused_before_training(tmp_path, name):
    (tmp_path / "adir").mkdir()
    result = invoke(*FILE_OUTPUTS[name], tmp_path / "adir", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and "Traceback" not in result.output  # click's own check of the option
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is a directory" in errors[0]
    assert trained_models(tmp_path / "cache") == []


def test_check_output_file_refuses_what_cannot_take_the_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for target, words in ((tmp_path / "adir", "is a folder"), (tmp_path / "afile" / "r.json", "which is a file"),
                          (Path("/proc/wf-out/r.json"), "cannot be written")):
        with pytest.raises(io_module.WorstforgetError, match=words) as info:
            io_module.check_output_file(target)
        assert "\n" not in str(info.value)
    assert io_module.check_output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert not (tmp_path / "new").exists()  # creates nothing


# --- 6. the search's checkpoint ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def search_setting(tmp_path_factory):
    return prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path_factory.mktemp("s")),
                           train_overrides={"epochs": 3})


CFG = SearchConfig(solver="first_order", outer_steps=3, inner_steps=2)  # stateless: the rows alone resume it


class CountingSolvers:
    """The first-order solver, counted (and optionally replaced by `fake(t, hg)`)."""

    def __init__(self, fake=None):
        self.calls, self.fake = 0, fake

    def get(self, name):
        real = SOLVERS.get("first_order")

        def solve(problem, w, seed):
            self.calls += 1
            hg = real(problem, w, seed)
            return self.fake(self.calls, hg) if self.fake else hg

        return solve


@pytest.fixture(scope="module")
def clean_search(search_setting, tmp_path_factory):
    return search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path_factory.mktemp("clean"))


def _state_tensor(folder: Path) -> None:
    path = next(folder.glob("search-*.pt"))
    offset, size = max(tensor_spans(path), key=lambda span: span[1])
    overwrite(path, offset + size // 2, b"\x7f" * 8)


def _state_truncated(folder: Path) -> None:
    path = next(folder.glob("search-*.pt"))
    os.truncate(path, path.stat().st_size // 2)


def _rows_flipped(folder: Path) -> None:
    path = next(folder.glob("search-*.rows"))
    overwrite(path, path.stat().st_size // 2, b"\x3f\xf0" + b"\0" * 6)  # one weight of row 2 changes


def _rows_truncated(folder: Path) -> None:
    path = next(folder.glob("search-*.rows"))
    os.truncate(path, path.stat().st_size - 8)


def _rows_missing(folder: Path) -> None:
    next(folder.glob("search-*.rows")).unlink()


@pytest.mark.parametrize("damage", [_state_tensor, _state_truncated, _rows_flipped, _rows_truncated, _rows_missing],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_search_checkpoint_is_never_trusted(search_setting, clean_search, tmp_path, monkeypatch, caplog,
                                                      damage):
    search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path)
    damage(tmp_path)
    solvers = CountingSolvers()
    monkeypatch.setattr(loop_module, "SOLVERS", solvers)
    with caplog.at_level(logging.WARNING, logger="worstforget"):
        again = search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path, resume=True)
    assert solvers.calls == CFG.outer_steps  # from scratch, not from the damaged state
    assert torch.equal(again.weight_history, clean_search.weight_history)
    assert torch.equal(again.indices, clean_search.indices) and again.history == clean_search.history
    assert len([r for r in caplog.records if "starting the search from its first step" in r.message]) == 1


def test_a_row_written_by_a_step_whose_state_was_lost_is_dropped_on_resume(search_setting, clean_search, tmp_path,
                                                                            monkeypatch):
    """Killed between appending step 2's weights and saving step 2's state: the resume starts at step 2."""
    def stop_at_third(calls, hg):
        if calls == 3:
            raise KeyboardInterrupt
        return hg

    monkeypatch.setattr(loop_module, "SOLVERS", CountingSolvers(stop_at_third))
    with pytest.raises(KeyboardInterrupt):
        search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path)
    rows = next(tmp_path.glob("search-*.rows"))
    with open(rows, "ab") as fh:  # a row and a half that no saved state counts
        fh.write(np.full(search_setting.data.num_train * 3 // 2, 0.5).tobytes())
    solvers = CountingSolvers()
    monkeypatch.setattr(loop_module, "SOLVERS", solvers)
    resumed = search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path, resume=True)
    assert solvers.calls == 1
    assert torch.equal(resumed.weight_history, clean_search.weight_history)
    assert rows.stat().st_size == (CFG.outer_steps + 1) * 8 * search_setting.data.num_train


def test_checkpoint_bytes_per_outer_step_do_not_grow_with_the_step(search_setting, tmp_path, monkeypatch):
    states, rows = [], []
    real = checkpoint_module.write_bytes_atomic

    def record(path, data):
        states.append(len(data))
        rows.append(next(tmp_path.glob("search-*.rows")).stat().st_size)
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "write_bytes_atomic", record)
    n = search_setting.data.num_train
    search_worst_case(search_setting, "finetune", {}, SearchConfig(solver="first_order", outer_steps=6, inner_steps=1),
                      seed=0, state_dir=tmp_path)
    assert rows == [(t + 2) * 8 * n for t in range(6)]  # one row of N float64 appended per step
    assert max(states) < 8 * n + 16_000  # the state: the last gradient and a small history
    assert max(states) - min(states) < 2_000  # (a few bytes of history and one digest per step)


def test_without_the_cache_a_search_writes_no_checkpoint(search_setting, tmp_path):
    from dataclasses import replace

    setting = replace(search_setting, records=RecordCache(tmp_path, enabled=False))
    search_worst_case(setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_resume_without_the_cache_is_refused_before_any_work(tmp_path):
    result = invoke(*SEARCH, "--resume", "--no-cache", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out")
    assert_clean_error(result, 2)
    assert "--resume needs the cache (drop --no-cache)" in result.output
    assert not (tmp_path / "cache").exists() or trained_models(tmp_path / "cache") == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_hypergradient_stops_the_search_naming_its_step(search_setting, tmp_path, monkeypatch, bad):
    def poison_second(calls, hg):
        if calls == 2:
            hg.grad[3] = bad
        return hg

    monkeypatch.setattr(loop_module, "SOLVERS", CountingSolvers(poison_second))
    with pytest.raises(loop_module.WorstforgetError, match="outer step 2 of 3") as info:
        search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path)
    assert "\n" not in str(info.value) and "NaN or inf" in str(info.value)


def test_two_runs_of_one_search_take_turns(search_setting, tmp_path, monkeypatch):
    """The second waits for the first (the search's lock), then finds the search done."""
    solvers = CountingSolvers()
    monkeypatch.setattr(loop_module, "SOLVERS", solvers)
    results = [None, None]

    def run(i):
        results[i] = search_worst_case(search_setting, "finetune", {}, CFG, seed=0, state_dir=tmp_path)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert solvers.calls == CFG.outer_steps
    assert torch.equal(results[0].weight_history, results[1].weight_history)


# --- left to the commands that own these outputs (see the reasons) ------------------------------------------

@pytest.mark.parametrize("kind", ["under_a_file", "unwritable"])
def test_report_refuses_an_unusable_out_in_one_line(checkpoint_search, tmp_path, kind):
    target = _bad_target(tmp_path, kind)
    result = CliRunner().invoke(cli, ["report", str(checkpoint_search / "out"), "--format", "md", "--out", str(target)])
    assert_clean_error(result, 1)
    assert "unexpected" not in result.output and str(target) in result.output


def test_tune_refuses_an_update_params_file_it_cannot_merge_before_tuning(tmp_path):
    (tmp_path / "notes.txt").write_text("not JSON\n")
    result = invoke(*FILE_OUTPUTS["tune-update-params"], tmp_path / "notes.txt", "--cache-dir", tmp_path / "cache")
    assert_clean_error(result, 1)
    assert trained_models(tmp_path / "cache") == []


def test_an_out_folder_containing_the_working_folder_is_refused(tmp_path, monkeypatch):
    from worstforget.core.errors import WorstforgetError
    from worstforget.core.io import check_output_dir

    work = tmp_path / "project" / "src"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path / "project")):
        with pytest.raises(WorstforgetError, match="contains the working folder"):
            check_output_dir(out)
    assert check_output_dir("results") == work / "results"  # a new folder below is fine
