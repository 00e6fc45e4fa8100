"""Ray without a shared file system (`--ray-cache driver`), on a real multi-node cluster of local processes
(`ray.cluster_utils.Cluster`: a head without CPUs and two worker nodes of one CPU each, started once for this
module). The worker nodes get their own WORSTFORGET_CACHE and TMPDIR; the driver's cache folder is never
theirs. An audit there gives the very numbers of a serial run, every unit is computed once and every file of
the driver's cache folder is written by the driver itself; a second run is all cache hits (the driver sends
the entries its workers ask for); a plug-in whose file only the driver's folder holds runs on the workers
from the source the driver sent; and a worker node removed mid-audit has its unit retried elsewhere, with the
same numbers."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from worstforget.audit.units import compare_methods
from worstforget.core.cache import COMPUTED, list_entries
from worstforget.core.errors import WorstforgetError
from worstforget.core.executor import RayExecutor, serial
from worstforget.core.executor.ray import nodes_not_seeing
from worstforget.methods.plugin_load import load_plugins
from worstforget.setting.recipe import SettingRecipe

TIMING = ("RTE", "RTE_fraction", "RTE_stack", "RTE_stack_seconds")

# A challenge-style plug-in that exists only in a folder of the driver's. It notes every start in $WF_TEST_STARTS
# (set on the worker nodes only) and there sleeps SLEEP seconds (so that a node can be removed while it runs), then
# fine-tunes one epoch on the retain set.
PLUGIN = '''
import os, time, uuid
import torch
import torch.nn.functional as F

SLEEP = {sleep}


def {name}(net, retain_loader, forget_loader, val_loader):
    starts = os.environ.get("WF_TEST_STARTS")
    if starts:
        open(os.path.join(starts, "%d-%s" % (os.getpid(), uuid.uuid4().hex)), "w").close()
        time.sleep(SLEEP)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    net.train()
    for x, y in retain_loader:
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (no CPUs: the driver's node runs no task) + 2 worker nodes of 1 CPU, each with a cache folder and a
    temporary folder of its own."""
    root = tmp_path_factory.mktemp("nodes")
    starts = root / "starts"
    starts.mkdir()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = []
    for i in range(2):
        (root / f"tmp{i}").mkdir()
        nodes.append(c.add_node(num_cpus=1, env_vars={"WORSTFORGET_CACHE": str(root / "worker-cache"),
                                                      "TMPDIR": str(root / f"tmp{i}"), "WF_TEST_STARTS": str(starts)}))
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    c.wait_for_nodes()
    yield {"cluster": c, "nodes": nodes, "root": root, "starts": starts}
    ray.shutdown()
    c.shutdown()


def recipe(cache: Path, mia_resamples: int = 1) -> SettingRecipe:
    return SettingRecipe.create(dataset="synthetic", device="cpu", cache_dir=str(cache),
                                train_overrides={"epochs": 4}, mia_resamples=mia_resamples)


def plugin(folder: Path, name: str, sleep: float, monkeypatch) -> str:
    """Write the plug-in into `folder` (the driver's working folder, which no worker has on its path) and load it."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}_mod.py").write_text(PLUGIN.format(name=name, sleep=sleep))
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    load_plugins([f"{name}_mod:{name}"])
    return name


def assert_same_metrics(a, b, timing=TIMING) -> None:
    ma, mb = a.kinds["random"].metrics, b.kinds["random"].metrics
    assert ma.keys() == mb.keys()
    for who in ma:
        for metric in ma[who]:
            if metric not in timing:
                np.testing.assert_array_equal(ma[who][metric], mb[who][metric], err_msg=f"{who} {metric}")
    for x, y in zip(a.kinds["random"].sets, b.kinds["random"].sets):
        np.testing.assert_array_equal(x, y)


def written_here(monkeypatch) -> set[str]:
    """The destinations of this process's atomic writes (every cache entry is renamed into place)."""
    done: set[str] = set()
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        done.add(os.path.abspath(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return done


def computed_units(text: str) -> list[str]:
    return re.findall(r"computed unit ([0-9a-f]{16})", text)


def test_every_node_sees_a_local_folder_so_auto_shares_it(cluster, tmp_path):
    assert nodes_not_seeing(ray, str(tmp_path)) == []  # all nodes are this machine
    executor = RayExecutor(address=cluster["cluster"].address, ray_cache="auto")
    executor._start()
    assert executor._mode(recipe(tmp_path / "cache")) == "shared"
    assert RayExecutor(ray_cache="driver")._mode(recipe(tmp_path / "cache")) == "driver"
    with pytest.raises(WorstforgetError, match=r"ray_cache must be one of auto\|shared\|driver"):
        RayExecutor(ray_cache="nfs")


def test_an_audit_without_a_shared_cache_equals_serial_and_computes_each_unit_once(
        cluster, tmp_path, monkeypatch, isolated_registry, caplog):
    name = plugin(tmp_path / "driver-folder", "driver_only_ft", 0.0, monkeypatch)
    methods = [(name, {}), ("finetune", {"epochs": 2})]
    units = 2 * 2 * 3  # sets × seeds × (Retrain + 2 methods)
    run = dict(forget_ratio=0.1, num_sets=2, seeds=[0, 1])
    expected = compare_methods(recipe(tmp_path / "serial").build(), methods, executor=serial(), **run)

    driver_cache = tmp_path / "driver-cache"
    mine = written_here(monkeypatch)
    caplog.set_level("INFO", logger="worstforget")
    caplog.clear()  # this driver's run alone
    executor = RayExecutor(address=cluster["cluster"].address, ray_cache="driver", workers=2)
    before = COMPUTED["unit"]
    got = compare_methods(recipe(driver_cache).build(), methods, executor=executor, **run)
    assert_same_metrics(expected, got)
    # every unit computed once, in the workers (none in this process)
    keys = computed_units(caplog.text)
    assert len(keys) == len(set(keys)) == units and executor.computed["unit"] == units
    assert COMPUTED["unit"] == before
    assert len(list((driver_cache / "records" / "unit").glob("*.json"))) == units
    # the driver alone wrote its cache folder; the workers cached into private folders of their own nodes
    files = {str(p) for p in driver_cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert files and files <= mine
    private = [d for i in range(2) for d in (cluster["root"] / f"tmp{i}").glob("worstforget-worker-*")]
    assert private and all(list_entries(d) for d in private)
    assert not (cluster["root"] / "worker-cache").exists()  # nor the nodes' default cache folder
    # the driver's cache answers a second run: all hits (the workers ask for the entries they lack)
    caplog.clear()
    again = compare_methods(recipe(driver_cache).build(), methods, executor=executor, **run)
    assert_same_metrics(expected, again)
    assert computed_units(caplog.text) == [] and executor.computed["unit"] == units
    lines = [m for m in caplog.messages if m.startswith("task ")]
    assert lines and all(m.split(", ")[-2].endswith("cached (ray pid") or " cached (ray pid " in m for m in lines)


def test_a_plugin_without_a_source_file_cannot_travel(cluster, tmp_path, isolated_registry):
    import sys
    import types

    module = types.ModuleType("wf_no_source_plugin")
    module.no_source = lambda net, retain, forget, val: net
    sys.modules["wf_no_source_plugin"] = module
    try:
        load_plugins(["wf_no_source_plugin:no_source"])
        setting = recipe(tmp_path / "cache").build()
        executor = RayExecutor(address=cluster["cluster"].address, ray_cache="driver", workers=2)
        with pytest.raises(WorstforgetError, match=r"^plug-in wf_no_source_plugin:no_source has no source file to "
                                                   r"send to the Ray workers"):
            compare_methods(setting, [("no_source", {})], forget_ratio=0.1, num_sets=1, seeds=[0], executor=executor)
    finally:
        del sys.modules["wf_no_source_plugin"]


def test_the_cli_runs_an_audit_on_a_cluster_without_a_shared_cache_like_serially(cluster, tmp_path):
    import csv

    from click.testing import CliRunner

    from worstforget.cli import cli

    args = ["compare", "--methods", "ft", "--num-sets", "1", "--dataset", "synthetic", "--epochs", "4",
            "--mia-resamples", "1"]
    ray_args = ["--executor", "ray", "--ray-address", cluster["cluster"].address, "--ray-cache", "driver"]
    rows = {}
    for name, extra in (("serial", []), ("ray", ray_args)):
        result = CliRunner().invoke(cli, ["--quiet", *args, *extra, "--out", str(tmp_path / name),
                                          "--cache-dir", str(tmp_path / f"cache-{name}")])
        assert result.exit_code == 0, result.output
        with open(tmp_path / name / "results.csv", newline="") as fh:
            rows[name] = [r for r in csv.DictReader(fh) if r["metric"] not in TIMING]
    assert rows["serial"] and rows["serial"] == rows["ray"]
    assert len(list((tmp_path / "cache-ray" / "records" / "unit").glob("*.json"))) == 2  # Retrain and ft, one seed


def test_a_search_reads_the_drivers_reference_models_and_matches_serial(cluster, tmp_path, caplog):
    from click.testing import CliRunner

    from worstforget.audit.result import SearchAudit
    from worstforget.cli import cli

    args = ["search", "--method", "ft", "--outer-steps", "2", "--inner-steps", "3", "--num-random", "1", "--seeds", "1",
            "--baselines", "none", "--reference-models", "4", "--dataset", "synthetic", "--epochs", "4",
            "--mia-resamples", "1"]  # the default objective reads reference models
    ray_args = ["--executor", "ray", "--ray-address", cluster["cluster"].address, "--ray-cache", "driver"]
    caplog.set_level("INFO", logger="worstforget")
    for name, extra in (("serial", []), ("ray", ray_args), ("ray-again", ray_args)):
        caplog.clear()
        result = CliRunner().invoke(cli, ["--quiet", *args, *extra, "--out", str(tmp_path / name),
                                          "--cache-dir", str(tmp_path / f"cache-{name.split('-')[0]}")])
        assert result.exit_code == 0, result.output
        if name == "ray":  # both searches ran on the workers, after the driver trained the reference models once
            searched = re.findall(r"task (?:stability )?search for finetune.*computed 1 search \(ray pid", caplog.text)
            assert len(searched) == 2
            assert len(list((tmp_path / "cache-ray" / "arrays" / "reference").glob("*.npz"))) == 1
            assert len(list((tmp_path / "cache-ray" / "search").glob("search-*.pt"))) == 2  # their checkpoints
        if name == "ray-again":
            assert computed_units(caplog.text) == []
    a, b, c = (SearchAudit.read(tmp_path / name) for name in ("serial", "ray", "ray-again"))
    for other in (b, c):
        for key in a.forget_sets:
            np.testing.assert_array_equal(np.asarray(a.forget_sets[key]), np.asarray(other.forget_sets[key]))
        np.testing.assert_array_equal(a.search["objective"], other.search["objective"])
        assert a.stability == other.stability
        for kind in a.kinds:
            for who, metrics in a.kinds[kind].metrics.items():
                for metric, values in metrics.items():
                    if metric not in TIMING:
                        np.testing.assert_array_equal(values, other.kinds[kind].metrics[who][metric])


def test_sisa_shards_built_by_a_worker_travel_to_the_other_workers_through_the_driver(cluster, tmp_path, caplog):
    sisa, cache = [("sisa", {"shards": 2, "slices": 1})], tmp_path / "driver-cache"
    executor = RayExecutor(address=cluster["cluster"].address, ray_cache="driver", workers=2)
    first = compare_methods(recipe(cache).build(), sisa, forget_ratio=0.1, num_sets=1, seeds=[0], executor=executor)
    grid = [p for p in (cache / "models").glob("*.pt")]
    assert len(grid) == 2  # the original and the shards' checkpoint grid, both written here
    built = first.kinds["random"].metrics["sisa"]["original_train_seconds"][0, 0]
    # another setting of the same data and model (other attacker resamples: new workers' folders, new unit keys)
    caplog.set_level("INFO", logger="worstforget")
    caplog.clear()
    run = dict(forget_ratio=0.1, num_sets=1, seeds=[0, 1])
    got = compare_methods(recipe(cache, 2).build(), sisa, executor=executor, **run)
    assert len(computed_units(caplog.text)) == 2 * 2  # Retrain and sisa, two seeds
    expected = compare_methods(recipe(tmp_path / "serial", 2).build(), sisa, executor=serial(), **run)
    assert_same_metrics(expected, got, TIMING + ("original_train_seconds", "unlearn_seconds"))
    # both units read the grid the first run built (the time it took to train travels with it), none rebuilt it
    np.testing.assert_array_equal(got.kinds["random"].metrics["sisa"]["original_train_seconds"], built)
    assert sorted((cache / "models").glob("*.pt")) == sorted(grid)


# last: it removes a worker node from the module's cluster
def test_a_worker_node_removed_mid_audit_has_its_unit_retried_with_the_same_numbers(
        cluster, tmp_path, monkeypatch, isolated_registry, caplog):
    name = plugin(tmp_path / "driver-folder", "slow_ft", 3.0, monkeypatch)
    methods, run = [(name, {})], dict(forget_ratio=0.1, num_sets=2, seeds=[0])
    expected = compare_methods(recipe(tmp_path / "serial").build(), methods, executor=serial(), **run)

    starts, removed = cluster["starts"], []
    for old in starts.iterdir():
        old.unlink()

    def remove_when_both_run() -> None:  # each node runs one task at a time: two starts = one unit on each node
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(starts.iterdir())) < 2:
            time.sleep(0.05)
        cluster["cluster"].remove_node(cluster["nodes"][0])
        removed.append(time.monotonic())

    caplog.set_level("INFO", logger="worstforget")
    executor = RayExecutor(address=cluster["cluster"].address, ray_cache="driver", workers=2)
    setting = recipe(tmp_path / "driver-cache").build()
    killer = threading.Thread(target=remove_when_both_run, daemon=True)
    killer.start()
    caplog.clear()  # this driver's run alone
    got = compare_methods(setting, methods, executor=executor, **run)
    killer.join()
    assert removed
    assert_same_metrics(expected, got)
    assert len(list(starts.iterdir())) == 3  # two plug-in units, one of them started again on the other node
    keys = computed_units(caplog.text)
    assert len(keys) == len(set(keys)) == 2 * 2  # each unit computed once: Retrain's and the plug-in's
    assert len(list((tmp_path / "driver-cache" / "records" / "unit").glob("*.json"))) == 2 * 2  # all came back
