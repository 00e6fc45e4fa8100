"""Benchmark: one `compare` audit run serially, on a process pool and on a local Ray instance (sharing the cache
folder, and with `--ray-cache driver`).

    python benchmarks/bench_fanout.py [--repeats 3] [--workers 2] [--out results/fanout.md]
    python benchmarks/bench_fanout.py --dataset fashion_mnist --train-subset 10000 \
        --methods finetune,neggrad_plus,scrub,l1_sparse,random_label --repeats 1 --out results/fanout_fashion_mnist.md
    python benchmarks/bench_fanout.py --tiny --out /tmp/fanout.md    (synthetic data, 2 methods: a smoke test)

The audit is `worstforget compare --methods all --num-sets 3` (digits by default; Fashion-MNIST with an MLP,
optionally on a seeded training subset): every method and Retrain on three random forget sets, all
independent units. Each run is a fresh process (`python -m worstforget ...`) on a
fresh cache folder that holds only the trained original model (trained once, before any timing), so every
run computes every unit, and the wall time includes what a user waits for: start-up, the pool's or Ray's
start, the units, writing the results. Executors run interleaved repeat by repeat, the order rotating, so
background load hits each alike; the table gives every run, the median and the speed-up serial / executor
of the medians. `serial` runs with torch's default intra-op threads (one per core, what a user gets);
`serial-1-thread` is the same run on one thread, the reference that isolates what fanning out gains from
what intra-op threads already took (each pool worker runs cores / workers threads). Ray's own start-up (a
local instance and one trivial task, in a fresh process) is timed separately, so what fanning out gains can
be told apart from what starting Ray costs. `ray-driver` is the Ray run with `--ray-cache driver`, as on a
cluster without a shared file system: the driver puts the data and the original in the object store, every
unit's entry travels back to the driver, which alone writes the cache; against `ray` it is that mode's overhead.

On 2 cores expect at most ~1.8×: the units are independent, but the driver, the workers' start (each imports
torch and loads the setting) and the longest unit do not shrink with more workers.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTORS = ("serial", "serial-1-thread", "process", "ray", "ray-driver")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RAY_STARTUP = """
import time
start = time.perf_counter()
import ray
ray.init(address="local", num_cpus={workers}, include_dashboard=False, log_to_driver=False, logging_level=40)
ray.get(ray.remote(lambda: 1).remote())
print(time.perf_counter() - start)
ray.shutdown()
"""


def audit_args(opts: argparse.Namespace) -> list[str]:
    if opts.tiny:
        return ["--dataset", "synthetic", "--epochs", "2", "--methods", "ft,ga", "--num-sets", "1",
                "--mia-resamples", "1"]
    data = ["--dataset", opts.dataset]
    if opts.dataset != "digits":
        data += ["--model", "mlp"]
    if opts.train_subset:
        data += ["--train-subset", str(opts.train_subset)]
    return [*data, "--methods", opts.methods, "--num-sets", "3"]


def executor_args(name: str, workers: int) -> list[str]:
    """The `compare` options that pick executor NAME (one of EXECUTORS)."""
    if name.startswith("serial"):
        return []
    extra = ["--executor", name.split("-")[0], "--workers", str(workers)]
    return extra + ["--ray-cache", "driver"] if name == "ray-driver" else extra


def worstforget(args: list[str], cache: Path, env: dict) -> float:
    """Wall seconds of one `python -m worstforget --quiet ARGS` in a fresh process (fails loudly)."""
    command = [sys.executable, "-m", "worstforget", "--quiet", *args, "--cache-dir", str(cache)]
    start = time.perf_counter()
    done = subprocess.run(command, env={**env, "WORSTFORGET_CACHE": str(cache)}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def ray_startup(workers: int, env: dict) -> float:
    done = subprocess.run([sys.executable, "-c", RAY_STARTUP.format(workers=workers)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"Ray did not start:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def default_threads(env: dict) -> int:
    """torch's intra-op thread count in a fresh process with `env` (the serial runs' threads)."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def fresh_cache(base: Path, root: Path, name: str) -> Path:
    """A cache folder holding only the trained original (the models folder of `base`)."""
    cache = root / name
    shutil.copytree(base / "models", cache / "models")
    return cache


def table(times: dict[str, list[float]], startup: list[float], command: str, workers: int, tiny: bool,
          threads: int) -> str:
    serial = statistics.median(times["serial"])
    lines = [f"# Fan-out: one compare audit per executor{' (--tiny smoke test)' if tiny else ''}", "",
             "```", command, "```", "",
             f"{os.cpu_count()} cores; serial on torch's default threads ({threads}), serial-1-thread on one; "
             f"process and ray with --workers {workers} (each worker {max(1, (os.cpu_count() or 1) // workers)} "
             "thread(s)); each run a fresh process on a fresh cache holding only the trained original; executors "
             "interleaved, order rotating per repeat.", "",
             "| executor | runs (s) | median (s) | serial / executor |", "|---|---|---|---|"]
    for name, runs in times.items():
        median = statistics.median(runs)
        lines.append(f"| {name} | {', '.join(f'{t:.1f}' for t in runs)} | {median:.1f} | {serial / median:.2f}× |")
    if startup:  # only when a Ray executor ran
        lines += ["", f"Ray start-up (local instance + one trivial task, fresh process): median "
                      f"{statistics.median(startup):.1f} s over {len(startup)} "
                      f"({', '.join(f'{t:.1f}' for t in startup)}); it is inside the ray runs above."]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--executors", default=",".join(EXECUTORS),
                        help="comma-separated subset of " + ",".join(EXECUTORS))
    parser.add_argument("--dataset", default="digits", help="digits or fashion_mnist (MLP)")
    parser.add_argument("--train-subset", type=int, default=0,
                        help="audit a seeded subset of this many training samples")
    parser.add_argument("--methods", default="all", help="the compare audit's --methods")
    parser.add_argument("--tiny", action="store_true", help="synthetic data and 2 methods, one repeat (a smoke test)")
    parser.add_argument("--out", default="results/fanout.md")
    opts = parser.parse_args(argv)
    executors = [e.strip() for e in opts.executors.split(",") if e.strip()]
    if "serial" not in executors:
        executors.insert(0, "serial")  # the reference of every ratio
    repeats = 1 if opts.tiny else opts.repeats
    command = "python benchmarks/bench_fanout.py " + " ".join(shlex.quote(a) for a in
                                                              (sys.argv[1:] if argv is None else argv))
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ONE_THREAD}  # torch's default threads unless asked
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    args = audit_args(opts)
    data_args = args[:args.index("--methods")]
    times: dict[str, list[float]] = {e: [] for e in executors}
    startup: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        root = Path(tmp)
        worstforget(["train", *data_args], root / "base", env)  # the original, trained once, outside the timings
        for r in range(repeats):
            order = executors[r % len(executors):] + executors[:r % len(executors)]
            for name in order:
                cache = fresh_cache(root / "base", root, f"run-{r}-{name}")
                run_env = {**env, **ONE_THREAD} if name == "serial-1-thread" else env
                times[name].append(worstforget(["compare", *args, *executor_args(name, opts.workers)], cache,
                                               run_env))
                shutil.rmtree(cache)
                print(f"repeat {r + 1}/{repeats} {name}: {times[name][-1]:.1f} s", file=sys.stderr)
            if {"ray", "ray-driver"} & set(executors):
                startup.append(ray_startup(opts.workers, env))
    text = table(times, startup, command, opts.workers, opts.tiny, default_threads(env))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
