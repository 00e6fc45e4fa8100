"""What the default audit costs, phase by phase, as multiples of one training of the original — with
Retrain and the method run one by one (as before stacking) and stacked (audit/units.py).

    python benchmarks/bench_audit.py                       # digits and Fashion-MNIST (10,000 samples)
    python benchmarks/bench_audit.py --datasets digits --attacks lira --num-models 16
    python benchmarks/bench_audit.py --datasets fashion_mnist --model mlp --mia-resamples 1
    python benchmarks/bench_audit.py --tiny                # synthetic data, a few seconds: a smoke test

Each (dataset, mode) runs `worstforget search`'s library call with its defaults (finetune, the warm
search, K = 16 reference models, lowest_loss/memorization/exposure baselines, 5 random sets, 2 seeds,
the stability search) in a fresh process with a fresh cache, so the original, the reference models and
every unit are computed. Phases are read from the run log (one line per executor task) and from timers
around the calls that are not tasks:

* setting — data and the original model's training; `train` is the training alone (the ratio's unit);
* reference models — the K models on random halves, once per setting (memorization and exposure baselines);
* baselines — the one-shot sets, reference models excluded;
* search, stability search — the two search tasks;
* Retrain <kind>, <method> <kind> — the units of each set kind (a stack spans kinds: a stacked method is one
  row, its first stack including the one run alone, where one is timed, that gives its RTE);
* attacks — `--attacks`: N unlearned and N retrained models per set and the scores;
* audit — the whole call.

`sequential` forces every run through the method's `apply` one at a time (the attacks' models too); `stacked`
is the library's default. Writes a Markdown table per dataset to --out (default
results/audit_cost.md) with the command that made it. Timings are wall-clock: run it on a quiet machine
(the table records the load average before and after) and read the ratios.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

MODES = ("sequential", "stacked")
TASK = re.compile(r"^task (?P<label>.*): started \S+, ended \S+, (?P<seconds>[\d.]+) s, ")
STACKED = re.compile(r"^(?P<method>[\w-]+)(\(.*?\))? ×\d+ stacked, on (?P<kind>\S+) set ")
UNIT = re.compile(r"^(?P<method>[\w-]+)(\(.*?\))? on (?P<kind>\S+) set \d+ of \d+ \(")
DATASETS = {"digits": {}, "fashion_mnist": {"train_subset": 10_000}}


def run_one(dataset: str, mode: str, cache: str, args: argparse.Namespace) -> dict:
    """One default audit in this process: {phase: seconds} plus the original's training time."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from worstforget.audit import attack_eval, units, worst_case
    from worstforget.audit.worst_case import AuditOptions, audit_worst_case
    from worstforget.search import SearchConfig
    from worstforget.setting import prepare_setting

    if mode == "sequential":  # every run one at a time, as before stacking
        units.stackable_method = lambda *a, **k: None
        attack_eval.stackable_method = lambda *a, **k: None
    phases: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("worstforget")
    logger.setLevel(logging.INFO)
    logger.addHandler(Collect())
    from worstforget.training import memorization, reference

    # every way to the reference models (cached after the first: later calls cost a read)
    reference.reference_statistics = timed("reference models", reference.reference_statistics)
    memorization.reference_statistics = reference.reference_statistics
    worst_case.baseline_units = timed("baselines", worst_case.baseline_units)
    attack_eval.evaluate_sets = timed("attacks", attack_eval.evaluate_sets)

    overrides = {"epochs": 2} if args.tiny else None
    extra = dict(DATASETS.get(dataset, {})) if not args.tiny else {}
    start = time.perf_counter()
    if args.model:
        extra["model"] = args.model
    if args.mia_resamples:
        extra["mia_resamples"] = args.mia_resamples
    setting = prepare_setting(dataset=dataset, cache_dir=cache, train_overrides=overrides, **extra)
    phases["setting"] = time.perf_counter() - start
    cfg = SearchConfig(outer_steps=2, reference_models=2) if args.tiny else SearchConfig()
    options = AuditOptions(num_random=1, seeds=1) if args.tiny else AuditOptions()
    if args.attacks:
        options.attacks, options.num_models = args.attacks.split(","), args.num_models
    start = time.perf_counter()
    audit_worst_case(setting, args.method, {}, cfg, options=options)
    phases["audit"] = time.perf_counter() - start
    phases["baselines"] = phases.get("baselines", 0.0) - phases.get("reference models", 0.0)
    for line in lines:
        task = TASK.match(line)
        if not task:
            continue
        label, seconds = task["label"], float(task["seconds"])
        if label.startswith("stability search"):
            name = "stability search"
        elif label.startswith("search"):
            name = "search"
        elif (found := STACKED.match(label)) is not None:
            name = f"{found['method']}, all kinds (stacked)"
        elif (found := UNIT.match(label)) is not None:
            name = f"{found['method']}, {found['kind']}"
        else:
            continue  # attack models: counted in `attacks`
        phases[name] = phases.get(name, 0.0) + seconds
    retrain = [k for k in phases if k.startswith("retrain,")]
    phases["retrain, all units"] = sum(phases[k] for k in retrain)
    return {"phases": phases, "train_seconds": setting.train_seconds, "threads": torch.get_num_threads()}


def table(dataset: str, runs: dict[str, dict]) -> str:
    names = []
    for mode in MODES:
        names += [k for k in runs[mode]["phases"] if k not in names]
    first = ["setting", "reference models", "baselines", "search", "stability search"]
    retrain = sorted(k for k in names if k.startswith("retrain,") and k != "retrain, all units")
    method = sorted(k for k in names
                    if k not in first and not k.startswith("retrain,") and k not in ("attacks", "audit"))
    order = [k for k in first if k in names] + retrain + ["retrain, all units"] + method + \
        [k for k in ("attacks", "audit") if k in names]
    base = {mode: runs[mode]["train_seconds"] or float("nan") for mode in MODES}
    out = [f"### {dataset}", "",
           "| phase | sequential s | × training | stacked s | × training | sequential / stacked |",
           "| --- | ---: | ---: | ---: | ---: | ---: |",
           f"| one training of the original | {base['sequential']:.2f} | 1 | {base['stacked']:.2f} | 1 | |"]
    for name in order:
        cells = []
        for mode in MODES:
            value = runs[mode]["phases"].get(name)
            cells += ["—", "—"] if value is None else [f"{value:.2f}", f"{value / base[mode]:.2f}"]
        seq, stk = runs["sequential"]["phases"].get(name), runs["stacked"]["phases"].get(name)
        ratio = f"{seq / stk:.2f}×" if seq and stk else ""
        out.append(f"| {name} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,fashion_mnist",
                        help="comma-separated; fashion_mnist runs on a 10,000-sample subset")
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--model", default=None, help="model (default: each dataset's, the CNN on fashion_mnist)")
    parser.add_argument("--mia-resamples", type=int, default=None,
                        help="MIA-Efficacy draws per evaluation (default: the library's, 3)")
    parser.add_argument("--attacks", default="", help="also run these attacks on every set (e.g. lira)")
    parser.add_argument("--num-models", type=int, default=16, help="models per set for --attacks")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None,
                        help="Markdown file (default results/audit_cost.md; --tiny: a temporary file)")
    parser.add_argument("--tiny", action="store_true", help="synthetic data, 2 epochs, a 2-step search: a smoke test")
    parser.add_argument("--one", nargs=3, metavar=("DATASET", "MODE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, args)))
        return 0
    datasets = ["synthetic"] if args.tiny else [d for d in args.datasets.split(",") if d]
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "worstforget-audit-cost-tiny.md" if args.tiny
                                           else Path(__file__).resolve().parent.parent / "results" / "audit_cost.md")
    command = "python benchmarks/bench_audit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()[0]
    sections = []
    for dataset in datasets:
        runs = {}
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix="wf-bench-audit-") as cache:
                forward = argv if argv is not None else sys.argv[1:]
                done = subprocess.run([sys.executable, __file__, *forward, "--one", dataset, mode, cache],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-4000:], file=sys.stderr)
                    return done.returncode
                runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{dataset} {mode}: audit {runs[mode]['phases']['audit']:.1f} s", file=sys.stderr, flush=True)
        sections.append(table(dataset, runs))
    threads = runs["stacked"]["threads"]
    text = (f"# The default audit's cost by phase, sequential vs stacked runs\n\n`{command}`\n\n"
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}; "
            f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after. Each mode: a fresh process "
            "and cache (everything computed). × training = seconds / the run's own training of the original.\n\n"
            + "\n".join(sections))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
