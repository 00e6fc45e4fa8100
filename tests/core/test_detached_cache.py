"""The cache's side of workers without the driver's folder (core/cache.py): a detached worker asks for the
driver's entries it lacks instead of computing them, reports the entries it read that the driver does not hold,
and the driver stores only entries whose digests check out, never over a sound one. (The whole path, on a
multi-node Ray cluster: test_ray_no_shared_fs.py.)"""
from __future__ import annotations

import pytest
import torch

from worstforget.core.cache import (
    ArrayCache,
    EntryNeeded,
    ModelCache,
    RecordCache,
    detach_reads,
    entry_problem,
    list_entries,
    read_unknown,
    store_entry,
)

RECORD = {"UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 0.5, "MIA_std": 0.0, "RTE": 0.1}


@pytest.fixture
def detached():
    yield detach_reads
    detach_reads(None)


def entries_of(tmp_path):
    """One entry of each kind in a driver's folder: relpath → bytes."""
    root = tmp_path / "driver"
    RecordCache(root).get_or_compute("unit", "r1", lambda: RECORD)
    ArrayCache(root).put("model-stats", "a1", {"x": [1.0, 2.0]})
    ModelCache(root).save("m1", torch.nn.Linear(2, 2), meta={"train_seconds": 1.0})
    return root, {rel: (root / rel).read_bytes() for rel in list_entries(root)}


def test_a_detached_worker_asks_for_what_the_driver_holds_and_computes_the_rest(tmp_path, detached):
    root = tmp_path / "worker"
    detached(root, {"records/unit/held.json", "arrays/model-stats/held.npz", "models/held.pt"})
    records, arrays, models = RecordCache(root), ArrayCache(root), ModelCache(root)
    with pytest.raises(EntryNeeded) as asked:
        records.get_or_compute("unit", "held", lambda: pytest.fail("computed what the driver holds"))
    assert asked.value.relpaths == ["records/unit/held.json"]
    with pytest.raises(EntryNeeded, match="arrays/model-stats/held.npz"):
        arrays.get("model-stats", "held")
    with pytest.raises(EntryNeeded, match="models/held.pt"):
        models.load("held", torch.nn.Linear(2, 2))
    assert not isinstance(asked.value, Exception)  # no `except Exception` in a task computes it instead
    # what the driver does not hold is computed here; read again, it is reported as the driver's to store
    assert records.get_or_compute("unit", "new", lambda: RECORD) == RECORD
    read_unknown()
    assert records.get("unit", "new") == RECORD
    assert read_unknown() == {"records/unit/new.json"} and read_unknown() == set()
    detached(None)
    assert records.get("unit", "held") is None  # attached again: a plain miss


def test_the_driver_stores_sound_entries_once_and_refuses_damaged_ones(tmp_path):
    _, entries = entries_of(tmp_path)
    assert sorted(entries) == ["arrays/model-stats/a1.npz", "models/m1.pt", "records/unit/r1.json"]
    target = tmp_path / "target"
    for rel, data in entries.items():
        assert entry_problem(rel, data) is None
        assert store_entry(target, rel, data) is True
        assert store_entry(target, rel, data) is False  # already held, sound: left alone
        assert (target / rel).read_bytes() == data
        damaged = data[:len(data) // 2]  # truncated in transit
        with pytest.raises(ValueError, match=f"cache entry {rel} sent by a worker"):
            store_entry(target, rel, damaged)
        (target / rel).write_bytes(damaged)  # a damaged copy held here is replaced by a sound one
        assert store_entry(target, rel, data) is True and (target / rel).read_bytes() == data
    assert RecordCache(target).get("unit", "r1") == RECORD
    forged = entries["records/unit/r1.json"].replace(b'"UA": 1.0', b'"UA": 9.0')  # content not its digest's
    assert forged != entries["records/unit/r1.json"]
    assert entry_problem("records/unit/r1.json", forged) == "fails its checksum"
    with pytest.raises(ValueError, match="is not a cache entry"):
        store_entry(target, "../outside.json", entries["records/unit/r1.json"])


def test_entries_leave_out_locks_and_temporary_files(tmp_path):
    root, entries = entries_of(tmp_path)
    (root / "records" / "unit" / "r1.json.lock").touch()
    (root / "records" / "unit" / ".r1.json.123.tmp").touch()
    (root / "logs").mkdir()
    (root / "logs" / "run.log").touch()
    assert sorted(list_entries(root)) == sorted(entries)


def test_a_failed_rebuild_does_not_leave_the_old_key_without_its_setting(monkeypatch):
    from worstforget.core.executor import pool

    monkeypatch.setattr(pool, "_WORKER", {})
    assert pool._worker_setting("a", lambda: "setting a") == "setting a"

    def broken():
        raise RuntimeError("no data here")

    with pytest.raises(RuntimeError):
        pool._worker_setting("b", broken)
    # a's setting was dropped for b: a's next task rebuilds it instead of finding nothing under its key
    assert pool._worker_setting("a", lambda: "setting a, again") == "setting a, again"
