"""Executors (core/executor/) against the serial run: a real local Ray instance (2 CPUs, started once for
this module) and a real process pool give records identical to serial ones for compare, search and evaluate;
a worker killed mid-task is retried and the audit completes with the same numbers; two drivers sharing a
cache folder compute every unit once; failures are retried then reported with the task's label; TPE tuning
finds the grid's best and resumes its study without repeating work; the progress bar and run log come
from the driver; a missing Ray is one line naming the install command; and the benchmark's --tiny run."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from worstforget.audit.result import AttackEvaluation, SearchAudit
from worstforget.audit.tune import tune
from worstforget.audit.units import compare_methods
from worstforget.cli import cli
from worstforget.core.cache import COMPUTED
from worstforget.core.errors import ConfigError, OptionError, WorstforgetError
from worstforget.core.executor import Call, NotRebuildableError, RayExecutor, make_executor, serial
from worstforget.setting.recipe import SettingRecipe

REPO = Path(__file__).resolve().parents[2]
FAST = ["--dataset", "synthetic", "--epochs", "4", "--mia-resamples", "1"]
# wall-clock numbers and how Retrain was stacked: the only ones allowed to differ between executors
TIMING = ("RTE", "RTE_fraction", "RTE_stack", "RTE_stack_seconds")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray instance for the whole module (its start-up costs seconds)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(process_pool):
    """The session's process pool of 2 spawned workers (each worker imports torch once)."""
    return process_pool


def recipe(cache: Path) -> SettingRecipe:
    return SettingRecipe.create(dataset="synthetic", device="cpu", cache_dir=str(cache),
                                train_overrides={"epochs": 4}, mia_resamples=1)


def invoke(*args, cache: Path):
    result = CliRunner().invoke(cli, ["--quiet", *map(str, args), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    return result


def assert_same_metrics(a: dict, b: dict) -> None:
    """Per-run arrays who → metric → (sets, seeds) bit for bit, timings aside."""
    assert a.keys() == b.keys()
    for who in a:
        assert a[who].keys() == b[who].keys()
        for metric in a[who]:
            if metric not in TIMING:
                np.testing.assert_array_equal(a[who][metric], b[who][metric], err_msg=f"{who} {metric}")


def csv_rows(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["metric"] not in TIMING]


# --- the same records on every executor -------------------------------------------------------------

def test_compare_on_ray_and_on_a_process_pool_equals_serial(tmp_path, pool):
    methods = [("finetune", {"epochs": 2}), ("gradient_ascent", {})]
    runs, units = {}, 2 * 2 * 3  # sets × seeds × (Retrain + 2 methods)
    for name, executor in (("serial", serial()), ("ray", RayExecutor(workers=2)), ("process", pool)):
        setting = recipe(tmp_path / name).build()  # a cache of its own: every executor computes every unit
        before, done_before = COMPUTED["unit"], executor.computed["unit"]
        runs[name] = compare_methods(setting, methods, forget_ratio=0.1, num_sets=2, seeds=[0, 1], executor=executor)
        assert executor.computed["unit"] - done_before == units
        # the parallel executors computed in their workers, not in this process
        assert COMPUTED["unit"] - before == (units if name == "serial" else 0)
    for name in ("ray", "process"):
        assert_same_metrics(runs["serial"].kinds["random"].metrics, runs[name].kinds["random"].metrics)
        for a, b in zip(runs["serial"].kinds["random"].sets, runs[name].kinds["random"].sets):
            np.testing.assert_array_equal(a, b)


SEARCH = ["search", "--method", "ft", "--objective", "loss", "--outer-steps", "2", "--inner-steps", "3",
          "--num-random", "2", "--seeds", "1", "--baselines", "none", *FAST]


def test_search_cli_on_ray_equals_serial(tmp_path):
    for name in ("serial", "ray"):
        extra = [] if name == "serial" else ["--executor", "ray", "--workers", "2"]
        invoke(*SEARCH, *extra, "--out", tmp_path / f"out-{name}", cache=tmp_path / f"cache-{name}")
    log = "".join(p.read_text() for p in tmp_path.rglob("*-search-*.log"))  # each run's log (under a cache)
    for task in ("search for finetune, seed 0", "stability search for finetune, seed 1"):
        assert re.search(rf"task {task}: .*computed 1 search \(serial pid", log)
        assert re.search(rf"task {task}: .*computed 1 search \(ray pid", log)  # the two searches ran as Ray tasks
    a, b = (SearchAudit.read(tmp_path / f"out-{name}") for name in ("serial", "ray"))
    assert a.kinds.keys() == b.kinds.keys() == {"worst_case", "random"}
    for kind in a.kinds:
        assert_same_metrics(a.kinds[kind].metrics, b.kinds[kind].metrics)
    # both searches (the audited one and its seed+1 twin, run side by side on Ray) found the same sets
    assert a.stability == b.stability and a.stability["seed_b"] == 1
    for key in a.forget_sets:
        np.testing.assert_array_equal(np.asarray(a.forget_sets[key]), np.asarray(b.forget_sets[key]), err_msg=key)
    np.testing.assert_array_equal(a.search["objective"], b.search["objective"])
    np.testing.assert_array_equal(a.search["weights"], b.search["weights"])


def test_evaluate_cli_on_ray_equals_serial(tmp_path):
    args = ["evaluate", "--method", "ft", "--param", "epochs=2", "--num-models", "3", "--attacks", "loss,ks", *FAST]
    for name in ("serial", "ray"):
        extra = [] if name == "serial" else ["--executor", "ray", "--workers", "2"]
        invoke(*args, *extra, "--out", tmp_path / f"out-{name}", cache=tmp_path / f"cache-{name}")
    a, b = (AttackEvaluation.read(tmp_path / f"out-{name}") for name in ("serial", "ray"))
    assert a.arrays.keys() == b.arrays.keys() and any(k.endswith("lsc_retrained") for k in a.arrays)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)
    timing = {"rte_seconds", "rte_fraction", "exceeds_challenge_time"}
    for kind in a.scores:
        for method in a.scores[kind]:
            for sa, sb in zip(a.scores[kind][method], b.scores[kind][method]):
                assert {k: v for k, v in sa.items() if k not in timing} == \
                       {k: v for k, v in sb.items() if k not in timing}


# --- failures -------------------------------------------------------------------------------------------

# where hang_once's first run writes its pid: a challenge-style plug-in sees nothing of the audit, and Ray's
# workers keep the environment they started with, so the path is fixed per checkout
HANG_MARKER = Path(tempfile.gettempdir()) / f"worstforget-hang_once-{os.getuid()}-{zlib.crc32(bytes(REPO)):08x}.pid"


def claim(marker: Path) -> bool:
    """Write this process's pid to `marker` if no process has (atomically: two workers starting the hanging task
    at once must not both hang, for the watcher kills one)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    return True


def hang_once(net, retain_loader, forget_loader, val_loader):
    """A challenge-style plug-in whose first run anywhere writes its pid to HANG_MARKER and hangs (to be
    killed); every later run fine-tunes one epoch on the retain set."""
    if claim(HANG_MARKER):
        time.sleep(120)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    net.train()
    for x, y in retain_loader:
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


def kill_when_written(marker: Path, killed: list[int], timeout: float = 90.0) -> threading.Thread:
    """Watch for the pid file of a hanging task and SIGKILL that process (its worker)."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                pid = int(marker.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_killed_ray_worker_is_retried_and_the_audit_completes_alike(tmp_path, monkeypatch, isolated_registry):
    monkeypatch.chdir(REPO)  # the plug-in imports as tests.test_executor, here and in the workers
    args = ["--plugin", "tests.core.test_executor:hang_once", "compare", "--methods", "hang_once,ft", "--num-sets", "2",
            *FAST]
    killed: list[int] = []
    HANG_MARKER.unlink(missing_ok=True)
    watcher = kill_when_written(HANG_MARKER, killed)
    invoke(*args, "--executor", "ray", "--workers", "2", "--out", tmp_path / "out-ray", cache=tmp_path / "ray")
    watcher.join()
    assert len(killed) == 1 and killed[0] != os.getpid()  # a Ray worker died mid-unit...
    # ...and the same audit in this process, where the plug-in runs straight away, gives the same numbers
    HANG_MARKER.write_text("0")
    try:
        invoke(*args, "--out", tmp_path / "out-serial", cache=tmp_path / "serial")
    finally:
        HANG_MARKER.unlink(missing_ok=True)
    rows = csv_rows(tmp_path / "out-ray")
    assert {r["method"] for r in rows} == {"retrain", "hang_once", "finetune"}
    assert rows == csv_rows(tmp_path / "out-serial")


def sleep_then_square(setting, x: int, marker: str, *, progress=None) -> int:
    """Writes its pid to `marker` and hangs on its first run; squares afterwards."""
    if claim(Path(marker)):
        time.sleep(120)
    return x * x


def fail_once(setting, x: int, marker: str, *, progress=None) -> int:
    path = Path(marker)
    if not path.exists():
        path.write_text("failed")
        raise RuntimeError("a transient failure")
    return x + 1


def always_fail(setting, x: int, *, progress=None) -> int:
    raise RuntimeError(f"broken on {x}")


def bad_option(setting, x: int, *, progress=None) -> int:
    with open(Path(setting.records.root, f"bad-{x}"), "a") as fh:  # one line per attempt
        fh.write("attempt\n")
    raise ConfigError("--param lr must be positive")


def environment_of_the_worker(setting, name: str, *, progress=None) -> tuple[str | None, int]:
    return os.environ.get(name), os.getpid()


def test_a_pool_worker_sees_the_drivers_environment_as_it_was_when_its_pool_started(tmp_path, pool, monkeypatch):
    from worstforget.core.executor import ProcessExecutor

    setting = recipe(tmp_path / "cache").build()
    name = "WORSTFORGET_TEST_MARK"
    monkeypatch.delenv(name, raising=False)
    assert pool.map(setting, [Call(environment_of_the_worker, (name,))])[0][0] is None  # the fork server is up
    monkeypatch.setenv(name, "set after the fork server started")
    with ProcessExecutor(workers=1) as later:
        value, pid = later.map(setting, [Call(environment_of_the_worker, (name,))])[0]
    assert value == "set after the fork server started" and pid != os.getpid()
    assert pool.map(setting, [Call(environment_of_the_worker, (name,))])[0][0] is None  # its own start's, unchanged


def square(setting, x: int, *, progress=None) -> int:
    return x * x


def test_a_killed_pool_worker_is_retried(tmp_path, pool):
    setting = recipe(tmp_path / "cache").build()
    killed: list[int] = []
    watcher = kill_when_written(tmp_path / "pid", killed)
    calls = [Call(sleep_then_square, (x, str(tmp_path / "pid")), label=f"square {x}") for x in range(4)]
    assert pool.map(setting, calls) == [0, 1, 4, 9]
    watcher.join()
    assert len(killed) == 1 and killed[0] != os.getpid()


def children(pid: int) -> list[int]:
    """PIDs of the live processes whose parent is `pid` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text()
    except OSError:
        return ""


def pool_workers(driver: int) -> list[int]:
    """The driver's pool workers: forks of its fork server (a child of the driver), or spawned children."""
    found = []
    for child in children(driver):
        if "forkserver" in _cmdline(child):
            found += children(child)
        elif "spawn_main" in _cmdline(child):
            found.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_pool_audit(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """A compare audit on a 2-worker process pool in a subprocess, once both workers have started."""
    command = [sys.executable, "-m", "worstforget", "--quiet", "compare", *FAST, "--methods", "all", "--num-sets", "3",
               "--executor", "process", "--workers", "2", "--cache-dir", str(tmp_path / "cache"),
               "--out", str(tmp_path / "out")]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        workers = pool_workers(driver.pid)
        if len(workers) == 2:
            time.sleep(1)  # let them take units
            return driver, workers
        time.sleep(0.2)
    driver.kill()
    pytest.fail(f"the pool's workers never started: {driver.communicate()}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_driver_and_its_workers_and_writes_nothing(tmp_path):
    driver, workers = start_pool_audit(tmp_path)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 1 and "interrupted" in err and "Traceback" not in err, err
    deadline = time.time() + 20
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; parent-death signals are Linux's")
def test_workers_die_with_a_driver_killed_outright(tmp_path):
    driver, workers = start_pool_audit(tmp_path)
    helpers = children(driver.pid)  # the fork server (the workers' parent) and multiprocessing's resource tracker
    driver.kill()
    driver.communicate(timeout=60)
    deadline = time.time() + 20
    while any(alive(p) for p in workers + helpers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers) and not any(alive(h) for h in helpers)


def test_failures_are_retried_then_reported_with_the_task_label(tmp_path, pool, caplog):
    setting = recipe(tmp_path / "cache").build()
    caplog.set_level("INFO", logger="worstforget")
    assert pool.map(setting, [Call(fail_once, (1, str(tmp_path / "once")), label="flaky task")]) == [2]
    assert re.search(r"flaky task failed \(attempt 1 of 3\): RuntimeError: a transient failure; retrying", caplog.text)
    with pytest.raises(WorstforgetError) as err:
        pool.map(setting, [Call(always_fail, (7,), label="finetune(lr=0.1) on random set 1 of 1, seed 0")])
    message = str(err.value)
    assert "finetune(lr=0.1) on random set 1 of 1, seed 0 failed 3 times on the process executor" in message
    assert "RuntimeError: broken on 7" in message and "\n" not in message
    assert "Traceback" in caplog.text and "broken on 7" in caplog.text  # the worker's traceback, in the run log
    # the task's own one-line errors are not retried: they stop the audit as they would in this process
    with pytest.raises(ConfigError, match="--param lr must be positive"):
        pool.map(setting, [Call(bad_option, (3,), label="bad")])
    assert Path(setting.records.root, "bad-3").read_text() == "attempt\n"


def test_two_drivers_sharing_a_cache_compute_each_unit_once(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    args = ["compare", "--methods", "ft,ga", "--num-sets", "2", "--seeds", "2", *FAST, "--cache-dir", str(shared)]
    env = {**os.environ, "WORSTFORGET_CACHE": str(shared), "PYTHONPATH": str(REPO)}
    other = subprocess.Popen([sys.executable, "-m", "worstforget", "--quiet", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    monkeypatch.setenv("WORSTFORGET_CACHE", str(shared))  # this driver's run log goes beside the other's
    invoke(*args[:-2], "--executor", "ray", "--workers", "2", cache=shared)
    assert other.wait(timeout=300) == 0, other.stderr.read()
    logs = list((shared / "logs").glob("*-compare-*.log"))
    assert len(logs) == 2
    computed = [key for log in logs for key in re.findall(r"computed unit ([0-9a-f]{16})", log.read_text())]
    assert len(computed) == 2 * 2 * 3 == len(set(computed))  # sets × seeds × (Retrain + 2): each unit once
    assert len(list((shared / "records" / "unit").glob("*.json"))) == len(computed)


def test_asking_for_ray_without_ray_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=re.escape("pip install 'worstforget[ray]'")):
        make_executor("ray")
    result = CliRunner().invoke(cli, ["compare", "--methods", "ft", *FAST, "--executor", "ray",
                                      "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --executor ray needs Ray, which is not installed: pip install 'worstforget[ray]'"]
    assert not (tmp_path / "c" / "models").exists()  # refused before any training


def test_options_of_another_executor_are_refused(tmp_path):
    with pytest.raises(OptionError, match=r"^gpus_per_task applies to executor ray only \(got executor process\)$"):
        make_executor("process", gpus_per_task=0.5)
    with pytest.raises(OptionError, match="^workers needs executor process or ray"):
        make_executor("serial", workers=4)
    # the library names its parameters, the CLI its flags
    for flags, line in ((["--executor", "process", "--gpus-per-task", "0.5"],
                         "Error: --gpus-per-task applies to --executor ray only (got --executor process)"),
                        (["--workers", "2"], "Error: --workers needs --executor process or ray (serial runs one unit "
                                             "at a time)"),
                        (["--executor", "process", "--ray-address", "h:1"],
                         "Error: --ray-address applies to --executor ray only (got --executor process)"),
                        (["--executor", "process", "--ray-cache", "driver"],
                         "Error: --ray-cache applies to --executor ray only (got --executor process)")):
        result = CliRunner().invoke(cli, ["compare", "--methods", "ft", *FAST, *flags,
                                          "--cache-dir", str(tmp_path / "c")])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [line]


def test_ray_without_an_address_starts_its_own_instance_beside_a_running_cluster(monkeypatch):
    """With no --ray-address, a local instance of its own: never the cluster `ray start` left on this machine
    (Ray joins that one when asked for no address, then refuses the CPU count we pass)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = RayExecutor(workers=2)
    asked = {}
    monkeypatch.setattr(executor.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(executor.ray, "init", lambda **kw: asked.update(kw))
    executor._start()
    assert asked["address"] == "local" and asked["num_cpus"] == 2


def test_ray_tasks_get_the_device_of_their_resources(tmp_path):
    base = recipe(tmp_path / "cache")
    with_gpu = RayExecutor(gpus_per_task=0.5)._recipe(base)
    assert with_gpu.prepare["device"] == "cuda" and RayExecutor()._recipe(base).prepare["device"] == "cpu"
    assert {k: v for k, v in with_gpu.prepare.items() if k != "device"} == \
           {k: v for k, v in base.prepare.items() if k != "device"}


def test_a_worker_refuses_to_run_on_another_original(tmp_path):
    from dataclasses import replace

    setting = recipe(tmp_path / "cache").build()
    assert setting.recipe.rebuild().original_key == setting.original_key
    with pytest.raises(WorstforgetError, match="rebuilt another original model.*same data, code and cache folder"):
        replace(setting.recipe, original_key="0" * 16).rebuild()


def test_a_setting_without_recipe_cannot_go_to_workers(tmp_path, pool):
    from worstforget.setting import prepare_setting

    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path), train_overrides={"epochs": 1})
    with pytest.raises(NotRebuildableError, match="SettingRecipe"):
        pool.map(setting, [Call(always_fail, (1,))])


# --- progress and the run log come from the driver ------------------------------------------------------

class Recording:
    def __init__(self):
        self.events: list[tuple] = []

    def task(self, description, total):
        events = self.events
        events.append(("task", description, total))

        class _Task:
            def advance(self, n=1, **info):
                events.append(("advance", n, info.get("running"), info.get("failed")))

            def close(self):
                events.append(("close",))

        return _Task()


def test_one_bar_over_the_tasks_serially(tmp_path):
    setting = recipe(tmp_path / "cache").build()
    sink = Recording()
    assert serial().map(setting, [Call(square, (x,)) for x in range(3)], progress=sink,
                        description="units") == [0, 1, 4]
    assert sink.events[0] == ("task", "units", 3) and sink.events[-1] == ("close",)
    advances = [e for e in sink.events if e[0] == "advance"]
    assert sum(e[1] for e in advances) == 3 and {e[2] for e in advances} <= {0, 1} and {e[3] for e in advances} == {0}


def test_one_bar_over_the_tasks_of_a_pool_with_running_and_failed_counts(tmp_path, pool, caplog):
    setting = recipe(tmp_path / "cache").build()
    sink = Recording()
    caplog.set_level("INFO", logger="worstforget")
    calls = [Call(fail_once, (x, str(tmp_path / f"m{x}")), label=f"task {x}") for x in range(3)]
    assert pool.map(setting, calls, progress=sink, description="units") == [1, 2, 3]
    assert sink.events[0] == ("task", "units", 3) and sink.events[-1] == ("close",)
    advances = [e for e in sink.events if e[0] == "advance"]
    assert sum(e[1] for e in advances) == 3  # every task done once, retries aside
    assert max(e[3] for e in advances) == 3  # each failed once before its retry
    assert 1 <= max(e[2] for e in advances) <= 2  # never more running than workers
    lines = [m for m in caplog.messages if m.startswith("task task ")]
    assert len(lines) == 3
    assert all(re.search(r"started \S+, ended \S+, [0-9.]+ s, cached \(process pid \d+, attempt 2\)", m) for m in lines)


def test_the_run_log_has_one_line_per_unit_with_computed_or_cached(tmp_path, caplog):
    setting = recipe(tmp_path / "cache").build()
    caplog.set_level("INFO", logger="worstforget")
    for _ in range(2):
        compare_methods(setting, [("finetune", {"epochs": 1})], forget_ratio=0.1, num_sets=1, seeds=[0])
    lines = [m for m in caplog.messages if m.startswith("task ")]
    assert len(lines) == 4
    assert ["computed 1 unit (" in m for m in lines] == [True, True, False, False]
    assert all(re.search(r"on random set 1 of 1 \(\d+ samples\), seed 0: started .*, \d+\.\d\d s, "
                         r"(computed (1 run-time, computed )?1 unit|cached) \(serial pid \d+, attempt 1\)", m)
               for m in lines)  # a stack's first task also times one run alone (its RTE)


# --- tuning ---------------------------------------------------------------------------------------------

GRID = {"epochs": [1, 2, 3], "lr": [0.001, 0.05]}


def test_tpe_finds_the_grid_best_and_resumes_without_repeating_work(tmp_path):
    setting = recipe(tmp_path / "cache").build()
    common = dict(forget_ratio=0.1, num_sets=2, seed=0)
    before = COMPUTED["unit"]
    first = tune(setting, "finetune", GRID, sampler="tpe", trials=2, **common)
    assert first["trials"] == 2 and 1 <= len(first["rows"]) <= 2
    assert COMPUTED["unit"] - before == 2 + 2 * len(first["rows"])  # Retrain per set + every new point per set
    assert Path(first["study"]).is_file() and Path(first["study"]).parent == tmp_path / "cache" / "tune"
    # resumed on Ray, asked two at a time: the study grows, and only points not seen before cost units
    on_ray = RayExecutor(workers=2)
    second = tune(setting, "finetune", GRID, sampler="tpe", trials=2, executor=on_ray, **common)
    assert second["trials"] == 4 and second["trials_run"] == 2 and second["study"] == first["study"]
    assert [r["params"] for r in second["rows"][:len(first["rows"])]] == [r["params"] for r in first["rows"]]
    assert on_ray.computed["unit"] == 2 * (len(second["rows"]) - len(first["rows"]))
    full = tune(setting, "finetune", GRID, sampler="tpe", trials=40, **common)
    assert len(full["rows"]) == 6 and full["trials"] <= 4 + 2 * 6  # every point, then it stops
    before = COMPUTED["unit"]
    grid = tune(setting, "finetune", GRID, sampler="grid", **common)
    assert COMPUTED["unit"] == before  # every point is cached: the grid reruns nothing
    assert full["best"] == grid["best"] and full["best_avg_gap"] == grid["best_avg_gap"]
    by_params = {json.dumps(r["params"], sort_keys=True): r["avg_gap"] for r in grid["rows"]}
    for row in full["rows"]:  # TPE's objective is the grid's Avg. Gap, exactly
        assert row["avg_gap"] == by_params[json.dumps(row["params"], sort_keys=True)]


def test_tune_cli_tpe_on_ray(tmp_path):
    result = invoke("tune", "--method", "ft", *FAST, "--grid", "lr=0.001,0.05", "--param", "epochs=1",
                    "--sampler", "tpe", "--trials", "4", "--num-sets", "1", "--executor", "ray", "--workers", "2",
                    "--out", tmp_path / "tune.json", cache=tmp_path / "cache")
    record = json.loads((tmp_path / "tune.json").read_text())
    assert record["sampler"] == "tpe" and len(record["rows"]) == 2 and record["trials"] <= 4
    assert "TPE:" in result.output and "best: --param epochs=1 --param lr=" in result.output


# --- run CONFIG ---------------------------------------------------------------------------------------

def test_run_forwards_executor_options_to_steps_that_run_units(tmp_path):
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"name": "x", "steps": [
        ["tune", "--method", "ft", "--grid", "lr=0.01", "--update-params", "{out}/p.json"],
        ["compare", "--methods", "ft", "--params-file", "{out}/p.json"],
        ["search", "--method", "ft", "--executor", "serial"],
        ["report", "{out}"]]}))
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "o"), "--dry-run",
                                      "--executor", "ray", "--workers", "2", "--gpus-per-task", "0.5"])
    assert result.exit_code == 0, result.output
    lines = [line.split("] ", 1)[1] for line in result.output.splitlines() if line.startswith("[")]
    forwarded = " --executor ray --workers 2 --gpus-per-task 0.5"
    assert lines[0].endswith(forwarded) and lines[1].endswith(forwarded)
    assert lines[2].endswith("--executor serial") and lines[3].endswith(str(tmp_path / "o"))  # own, or none


# --- the benchmark ---------------------------------------------------------------------------------------

def _bench_fanout():
    # imported here: Ray and pool workers import this module as a plug-in, where `conftest` is not on the path
    from conftest import load_script

    return load_script("benchmarks/bench_fanout.py")


@pytest.mark.slow
def test_fanout_benchmark_tiny(tmp_path):
    out = tmp_path / "fanout.md"
    # a second mode beside serial (the reference every ratio needs), each a fresh process: the executors
    # themselves are tested above, and the options naming them below; this checks the benchmark's own plumbing
    module = _bench_fanout()
    module.main(["--tiny", "--executors", "serial-1-thread", "--out", str(out)])  # its audits run in fresh processes
    text = out.read_text()
    assert text.splitlines()[2].startswith("```") and "bench_fanout.py --tiny" in text.splitlines()[3]
    row = re.compile(r"^\| (serial|serial-1-thread|process|ray|ray-driver) \|.*\| ([0-9.]+)× \|$", re.M)
    rows = {m.group(1): float(m.group(2)) for m in row.finditer(text)}
    assert rows.keys() == {"serial", "serial-1-thread"} and rows["serial"] == 1.0 and rows["serial-1-thread"] > 0
    assert "Ray start-up" not in text  # no Ray executor ran


def test_each_fanout_mode_runs_compare_on_its_executor():
    module = _bench_fanout()
    assert module.executor_args("serial", 2) == module.executor_args("serial-1-thread", 2) == []
    assert module.executor_args("process", 3) == ["--executor", "process", "--workers", "3"]
    assert module.executor_args("ray", 2) == ["--executor", "ray", "--workers", "2"]
    assert module.executor_args("ray-driver", 2) == ["--executor", "ray", "--workers", "2", "--ray-cache", "driver"]
    import click

    from worstforget.cli import cli

    compare = cli.get_command(click.Context(cli), "compare")
    default_ray_cache = compare.make_context("compare", []).params["ray_cache"]
    for name in module.EXECUTORS:  # `compare` parses every mode's options into that executor
        params = compare.make_context("compare", module.executor_args(name, 2)).params
        assert params["executor"] == ("serial" if name.startswith("serial") else name.split("-")[0]), name
        assert params["ray_cache"] == ("driver" if name == "ray-driver" else default_ray_cache), name


def test_the_fanout_table_times_ray_start_up_when_ray_ran():
    module = _bench_fanout()
    # skewed runs: medians (serial 5.0, ray 2.5, start-up 2.0) differ from means (7.0, 3.5, 3.0)
    text = module.table({"serial": [4.0, 12.0, 5.0], "ray-driver": [2.0, 6.0, 2.5]}, [1.0, 6.0, 2.0], "cmd", 2,
                        False, 2)
    assert "| serial | 4.0, 12.0, 5.0 | 5.0 | 1.00× |" in text
    assert "| ray-driver | 2.0, 6.0, 2.5 | 2.5 | 2.00× |" in text  # serial's median 5.0 over ray's 2.5
    assert ("Ray start-up (local instance + one trivial task, fresh process): median 2.0 s over 3 (1.0, 6.0, 2.0)"
            in text)
