"""GPU check: ResNet-18 on CIFAR-10-shaped data, every piece of an audit once, and the projected cost
of the paper's main table. Prints ONE Markdown table and writes it to --out.

    python benchmarks/gpu_check.py [--data-dir DIR] [--out PATH] [--budget-s 400] [--epochs 30]
    python benchmarks/gpu_check.py --tiny      # everything on the CPU in seconds (a smoke test)

Data: the real CIFAR-10 files when they are found (--data-dir, else the library's data folder),
otherwise uniform random images and labels of the same shape and size (45k/5k/10k, 3×32×32, 10
classes); the table says which. Phases, in order, each under its own time limit inside --budget-s:
throughput calibration, host syncs per step, one original training with the fast recipe (epochs capped
so it fits), one short search with every registered solver, one finetune unlearning run with its
evaluation, a vmapped ensemble, stacked Retrain and stacked finetune (an audit's runs as one stack, per model
against one run alone), Stable Diffusion (an SD-v1-shaped UNet with random weights: one ESD-x step and one
50-step guided sampling of a batch, fp16; a tiny UNet with --tiny, skipped on a CPU otherwise or without
diffusers), torch.compile (when time is left), and the projection: every phase as a multiple
of one training of the original, and the main table in GPU-hours with Retrain one by one and stacked. A phase that
fails or runs out of time leaves its row saying so; the table is rewritten after every phase, so
whatever was measured survives a later failure or a kill.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from worstforget.core.cache import RecordCache  # noqa: E402
from worstforget.core.errors import WorstforgetError  # noqa: E402
from worstforget.core.io import atomic_path  # noqa: E402
from worstforget.core.runtime import resolve_device  # noqa: E402
from worstforget.datasets import build_dataset, dataset_info, load_dataset  # noqa: E402
from worstforget.datasets.raw import RawSplits  # noqa: E402
from worstforget.forget_sets import forget_size, forget_weights, random_forget_set  # noqa: E402
from worstforget.methods import make_method  # noqa: E402
from worstforget.methods.stacked import run_stacked  # noqa: E402
from worstforget.scoring.metrics import evaluate  # noqa: E402
from worstforget.search import SOLVERS, SearchConfig, search_worst_case  # noqa: E402
from worstforget.setting import Setting  # noqa: E402
from worstforget.training.accel import Accel, current_accel  # noqa: E402
from worstforget.training.ensemble import fit_ensemble, fit_stacked, stack_capacity  # noqa: E402
from worstforget.training.loop import accuracy, fit  # noqa: E402
from worstforget.training.models import build_model  # noqa: E402
from worstforget.training.original import ModelSpec  # noqa: E402
from worstforget.training.recipes import recipe_config  # noqa: E402
from worstforget.training.timing import (  # noqa: E402
    AUDIT_FORMULA,
    EpochClock,
    UnitCosts,
    count_host_syncs,
    inference_throughput,
    project_audit_seconds,
    project_search_seconds,
    timed,
    train_subset,
    training_throughput,
)

FORGET_RATIO = 0.1  # the paper's 10% forget sets
FT_EPOCHS = 10  # every method's default epochs: the per-method cost is projected from FT's epoch time
SEARCH_OUTER, SEARCH_INNER_EPOCHS = 20, 2  # the library's default search (first-order lower level: 2 epochs)
REFERENCE_MODELS = 16  # the exposure objective's reference models (the search's --reference-models)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run: the real GPU check, or --tiny."""

    shape: tuple[int, int, int]
    num_train: int  # before the 10% validation hold-out
    num_test: int
    calibrate_images: int  # per calibration epoch (two epochs: warm-up + timed)
    sync_images: int
    search_inner_steps: int
    unrolled_images: int  # the unrolled solver's subset (it keeps every inner step's graph)
    unrolled_inner_steps: int
    unrolled_batch: int
    ensemble_images: int
    compile_images: int


GPU_SCALE = Scale((3, 32, 32), 50_000, 10_000, calibrate_images=20_480, sync_images=2_048, search_inner_steps=20,
                  unrolled_images=2_048, unrolled_inner_steps=3, unrolled_batch=128, ensemble_images=2_048,
                  compile_images=20_480)
TINY_SCALE = Scale((3, 8, 8), 96, 32, calibrate_images=32, sync_images=32, search_inner_steps=2,
                   unrolled_images=32, unrolled_inner_steps=2, unrolled_batch=16, ensemble_images=32,
                   compile_images=64)


# ----------------------------------------------------------------------------------------------------
# The table


class Table:
    """Rows keyed by name, rendered in a fixed order; written to `path` after every change."""

    def __init__(self, order: list[tuple[str, str]], path: Path | None):
        self.labels = dict(order)
        self.rows: dict[str, tuple[str, str]] = {key: ("not run", "") for key, _ in order}
        self.path = path

    def set(self, key: str, value: Any, detail: str = "") -> None:
        self.rows[key] = (_fmt(value), detail)
        self.write()

    def fail(self, keys: list[str], status: str, reason: str) -> None:
        for key in keys:
            if self.rows[key][0] == "not run":
                self.rows[key] = (status, reason)
        self.write()

    def render(self) -> str:
        lines = ["| measurement | value | detail |", "| --- | --- | --- |"]
        for key, label in self.labels.items():
            value, detail = self.rows[key]
            lines.append(f"| {label} | {value} | {detail.replace('|', '/')} |")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            tmp.write_text(self.render())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


# ----------------------------------------------------------------------------------------------------
# Phases under time limits


class PhaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PhaseTimeout in this (main) thread after `seconds`; no limit where SIGALRM is unavailable."""
    usable = hasattr(signal, "setitimer") and seconds > 0 and _main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise PhaseTimeout(f"time limit of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Runner:
    """Runs phases against one overall deadline and records failures in the table."""

    def __init__(self, table: Table, budget_s: float, device: torch.device):
        self.table, self.device = table, device
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, name: str, keys: list[str], fn: Callable[[float], Any], *, cap_s: float,
            reserve_s: float = 0.0, min_s: float = 1.0) -> Any:
        """fn(limit_s) under a limit of min(cap_s, time left − reserve_s); None when it failed."""
        limit = min(cap_s, self.remaining() - reserve_s)
        if limit < min_s:
            log(f"[{self.elapsed():6.1f}s] skip {name}: {limit:.0f} s left for it, needs {min_s:.0f} s")
            self.table.fail(keys, "skipped", f"out of budget ({max(limit, 0):.0f} s left, needs {min_s:.0f} s)")
            return None
        log(f"[{self.elapsed():6.1f}s] {name} (limit {limit:.0f} s)")
        try:
            with time_limit(limit):
                return fn(limit)
        except PhaseTimeout as exc:
            self.table.fail(keys, "timed out", str(exc))
        except Exception as exc:  # noqa: BLE001 — every phase failure is reported, none stops the table
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            self.table.fail(keys, "failed", f"{type(exc).__name__}: {first}")
            traceback.print_exc(file=sys.stderr)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Data


def cifar10_or_random(data_dir: str | None, scale: Scale, device: torch.device, tiny: bool):
    """(dataset, description): the real CIFAR-10 when its files are found, else random data of its shape."""
    if not tiny:
        try:
            data = load_dataset("cifar10", data_dir=data_dir, device=str(device))
            return data, "real CIFAR-10"
        except WorstforgetError as exc:
            log(f"no CIFAR-10 files ({str(exc).splitlines()[0][:160]}); using random data")
    g = np.random.default_rng(0)
    c, h, w = scale.shape
    raw = RawSplits(x_train=g.integers(0, 256, (scale.num_train, c, h, w), dtype=np.uint8),
                    y_train=g.integers(0, 10, scale.num_train).astype(np.int64),
                    x_test=g.integers(0, 256, (scale.num_test, c, h, w), dtype=np.uint8),
                    y_test=g.integers(0, 10, scale.num_test).astype(np.int64))
    data = build_dataset("random-cifar10-shape", raw, augment=dataset_info("cifar10").augment).to(device)
    return data, "random images and labels, CIFAR-10-shaped (accuracies are chance level by design)"


# ----------------------------------------------------------------------------------------------------
# The check


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = TINY_SCALE if args.tiny else GPU_SCALE
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors: more threads only add contention
    device = torch.device("cpu") if args.tiny else resolve_device(args.device)
    out = Path(args.out) if args.out else default_out(args.tiny)
    accel = current_accel()
    fast = recipe_config("fast").with_updates(epochs=args.epochs)
    paper = recipe_config("paper")
    if args.tiny:  # tiny shapes: batches small enough that every phase takes a few steps
        fast, paper = fast.with_updates(batch_size=32), paper.with_updates(batch_size=16)
    solver_rows = solver_variants()
    order = [("device", "device"), ("data", "data"), ("train_fast", f"train images/s (batch {fast.batch_size})"),
             ("train_paper", f"train images/s (batch {paper.batch_size})"), ("infer", "inference images/s"),
             ("syncs", "host syncs per training step"), ("epoch", "seconds per epoch (fast recipe)"),
             ("original", "original training, fast recipe (s)"),
             *[(f"search:{label}", f"search, {label} (s)") for label, _ in solver_rows],
             ("finetune", "unlearning: finetune, 1 epoch (s)"), ("evaluate", "evaluation of one model (s)"),
             ("ensemble", f"ensemble of {args.ensemble_models} models, 1 epoch (s)"),
             ("retrain_stack", f"stacked Retrain: {args.ensemble_models} runs, per run / one run alone"),
             ("method_stack", f"stacked finetune: {args.ensemble_models} runs, per run / one run alone"),
             ("sd_esd", "Stable Diffusion v1 UNet: one ESD-x step (s)"),
             ("sd_sample", f"Stable Diffusion v1 UNet: {SD_STEPS}-step guided sampling, batch {SD_BATCH} (s)"),
             ("compile", "train images/s with torch.compile"),
             ("ratios", "phases × one training of the original (fast recipe)"),
             ("proj_fast", "projected main table, fast recipe (h)"),
             ("proj_paper", "projected main table, paper recipe (h)"),
             ("proj_fast_stacked", "projected main table, fast recipe, Retrain stacked (h)"),
             ("proj_paper_stacked", "projected main table, paper recipe, Retrain stacked (h)"),
             ("total", "wall time of this check (s)")]
    table = Table(order, out)
    runner = Runner(table, args.budget_s, device)
    try:
        check(args, scale, device, accel, fast, paper, solver_rows, table, runner)
    except KeyboardInterrupt:  # the shell wrapper's hard limit: keep and print what was measured
        table.fail(list(table.labels), "interrupted", "the wall-clock limit of the wrapper was reached")
    return finish(table, runner)


def check(args, scale: Scale, device: torch.device, accel: Accel, fast, paper, solver_rows, table: Table,
          runner: Runner) -> None:
    m: dict[str, Any] = {}  # measurements the projection needs
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    probe = build_model("resnet18", 10, scale.shape)
    table.set("device", name, f"torch {torch.__version__}{cuda}; {_describe(accel.active(device, probe))}")

    data = runner.run("data", ["data"], lambda _: cifar10_or_random(args.data_dir, scale, device, args.tiny),
                      cap_s=120)
    if data is None:
        return
    data, what = data
    table.set("data", what, f"{data.num_train:,}/{len(data.y_val):,}/{len(data.y_test):,} train/val/test, "
                            f"{'×'.join(map(str, data.input_shape))}, {data.num_classes} classes")

    def spec(cfg, name="resnet18", norm=None):
        return ModelSpec(name, cfg, seed=args.seed, norm=norm)

    def calibrate(_):
        for key, cfg in (("train_fast", fast), ("train_paper", paper)):
            tp = training_throughput(spec(cfg).build(data), data, cfg, images=scale.calibrate_images, accel=accel)
            m[key] = tp.images_per_s
            table.set(key, tp.images_per_s, f"resnet18, {tp.images:,} images timed after a {tp.warmup_s:.1f} s "
                                            "warm-up epoch; augmentation included")
        ip = inference_throughput(spec(fast).build(data), data.x_train, accel=accel)
        m["infer"] = ip.images_per_s
        table.set("infer", ip.images_per_s, f"predict_logits over the {ip.images:,} training images")

    runner.run("calibration", ["train_fast", "train_paper", "infer"], calibrate, cap_s=90, reserve_s=240, min_s=10)

    def syncs(_):
        subset = train_subset(data, min(scale.sync_images, data.num_train))
        cfg = fast.with_updates(epochs=1, select_best=False)
        steps = math.ceil(subset.num_train / cfg.batch_size)
        fit(spec(cfg).build(data), subset, cfg, seed=0, accel=accel)  # warm-up outside the count
        model = spec(cfg).build(data)  # built (copied to the device) outside the count too
        count = count_host_syncs(lambda: fit(model, subset, cfg, seed=0, accel=accel), device)
        if count is None:
            table.set("syncs", "n/a", "CPU: the host never waits for a device")
        else:
            table.set("syncs", count / steps, f"{count} in one epoch of {steps} steps (torch sync debug mode); "
                                              "per-epoch reads included")

    runner.run("host syncs", ["syncs"], syncs, cap_s=30, reserve_s=230, min_s=5)

    def original(limit):
        cfg = fast
        if "train_fast" in m and "infer" in m:
            epoch_est = data.num_train / m["train_fast"] + len(data.y_val) / m["infer"]
            fits = max(1, int((0.85 * limit - 10) / epoch_est))
            if fits < cfg.epochs:
                log(f"original: {cfg.epochs} epochs do not fit in {limit:.0f} s (≈{epoch_est:.1f} s each); "
                    f"running {fits}")
                cfg = cfg.with_updates(epochs=fits)
        model = spec(cfg).build(data)
        m["model"] = model  # usable by later phases even if this one is cut short
        clock = EpochClock(device)
        try:
            _, seconds = timed(lambda: fit(model, data, cfg, seed=args.seed, progress=clock, accel=accel), device)
        finally:
            done = len(clock.epoch_seconds)
            if done:
                m["epoch_fast"] = clock.steady_epoch_seconds()
                table.set("epoch", m["epoch_fast"], f"{data.num_train:,} images + validation pass; mean of "
                                                    f"{max(done - 1, 1)} epoch(s) after the first "
                                                    f"({clock.epoch_seconds[0]:.1f} s)")
        test_acc = accuracy(model, data.x_test, data.y_test, accel=accel)
        capped = f" (asked {args.epochs}, capped by the time budget)" if cfg.epochs < args.epochs else ""
        table.set("original", seconds, f"{cfg.epochs} epoch(s){capped}; test accuracy {test_acc:.1f}%; "
                                       f"recipe: lr {cfg.lr} {cfg.schedule}, batch {cfg.batch_size}, "
                                       f"nesterov {cfg.nesterov}, label smoothing {cfg.label_smoothing}")

    n_solvers = len(solver_rows)
    runner.run("original training", ["original", "epoch"], original, cap_s=0.5 * args.budget_s,
               reserve_s=60 + 30 * n_solvers + 60, min_s=15)
    trained = m.get("model")
    if trained is None:
        trained = spec(fast).build(data)
        log("no trained original model: later phases use an untrained ResNet-18")
    trained.eval()
    setting = Setting(data=data, spec=spec(fast), original=trained, original_key="gpu-check",
                      records=RecordCache(Path(tempfile.gettempdir()) / "worstforget-gpu-check", enabled=False))

    for i, (label, variant) in enumerate(solver_rows):
        def search(_, label=label, variant=variant):
            unrolled = variant["solver"] == "unrolled"
            sub = train_subset(data, min(scale.unrolled_images, data.num_train)) if unrolled else data
            here = dataclasses.replace(setting, data=sub)
            inner = scale.unrolled_inner_steps if unrolled else scale.search_inner_steps
            outer = 1 if unrolled else 2
            extra = {"inner_batch_size": scale.unrolled_batch} if unrolled else {}
            # the loss objective times the outer steps alone; the exposure objective's one-off reference models
            # are projected separately (T_refs), and its steps cost the same
            cfg = SearchConfig(outer_steps=outer, inner_steps=inner, objective="loss", **variant, **extra)
            result, seconds = timed(lambda: search_worst_case(here, "finetune", {}, cfg, seed=args.seed), device)
            batch = cfg.inner_batch_size or fast.batch_size
            detail = (f"{outer} outer × {inner} inner steps (batch {batch}) on {sub.num_train:,} samples, "
                      f"{seconds / outer:.2f} s per outer step; "
                      f"moved {1 - result.history['overlap_with_initial'][-1]:.2f}")
            if unrolled:
                detail += "; a subset: this solver keeps every inner step's graph and the values pass's"
            else:
                m["search"] = (seconds, outer, inner * batch)
            table.set(f"search:{label}", seconds, detail)

        runner.run(f"search {label}", [f"search:{label}"], search, cap_s=60,
                   reserve_s=30 * (n_solvers - i - 1) + 60, min_s=5)

    def finetune(_):
        n = data.num_train
        forget = random_forget_set(n, forget_size(n, FORGET_RATIO), args.seed)
        method = make_method("finetune", {"epochs": 1}).resolved(fast.batch_size)
        weights = forget_weights(data, forget)
        model, seconds = timed(lambda: method.apply(trained, data, weights, seed=args.seed, spec=setting.spec),
                               device)
        m["ft_epoch"] = seconds
        retain = n - len(forget)
        table.set("finetune", seconds, f"{retain:,} retain images, batch {method.batch_size}: "
                                       f"{retain / seconds:,.0f} images/s")
        metrics, eval_s = timed(lambda: evaluate(model, data, forget), device)
        m["evaluate"] = eval_s
        shown = ", ".join(f"{k} {metrics[k]:.1f}" for k in ("UA", "RA", "TA", "MIA") if k in metrics)
        table.set("evaluate", eval_s, f"{shown} (predictions on train + test, SVC attack on the CPU)")

    runner.run("finetune", ["finetune", "evaluate"], finetune, cap_s=90, reserve_s=60, min_s=10)

    def ensemble(_):
        cfg = paper.with_updates(epochs=1, select_best=False)  # plain SGD: what the stacked trainer implements
        sub = train_subset(data, min(scale.ensemble_images, data.num_train))
        seeds = list(range(args.ensemble_models))
        chosen, note, failure = spec(cfg), "resnet18 with BatchNorm", None
        warmup = train_subset(sub, min(cfg.batch_size, sub.num_train))
        try:
            fit_ensemble(chosen, warmup, seeds=seeds, cfg=cfg)
        except (WorstforgetError, RuntimeError) as exc:  # cannot be stacked, or out of memory
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if failure is not None:  # outside the except block, so the failed attempt's tensors are freed
            log(f"ensemble: resnet18 failed ({failure}); using cnn with GroupNorm")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            chosen = spec(cfg, "cnn", "group")
            note = f"cnn with GroupNorm, because resnet18 could not be stacked ({failure})"
            fit_ensemble(chosen, warmup, seeds=seeds, cfg=cfg)
        _, seconds = timed(lambda: fit_ensemble(chosen, sub, seeds=seeds, cfg=cfg), device)
        rate = len(seeds) * sub.num_train / seconds
        detail = f"{note}; {sub.num_train:,} images per model, batch {cfg.batch_size}: {rate:,.0f} images/s"
        if "train_paper" in m and chosen.name == "resnet18":
            detail += f" vs {m['train_paper']:,.0f} for one model trained alone ({rate / m['train_paper']:.2f}×)"
        table.set("ensemble", seconds, detail + "; warm-up run untimed")

    runner.run("ensemble", ["ensemble"], ensemble, cap_s=90, reserve_s=5, min_s=10)

    def stacked_retrain(_):
        # an audit's Retrain units: one recipe, equal retain sizes (so BatchNorm stacks), own seeds and sets
        cfg = fast.with_updates(epochs=1, select_best=False)
        sub = train_subset(data, min(scale.ensemble_images, data.num_train))
        k, n = args.ensemble_models, sub.num_train
        weights = torch.stack([1 - forget_weights(sub, random_forget_set(n, forget_size(n, FORGET_RATIO), r))
                               for r in range(k)])
        warm = fit_stacked(spec(cfg), sub, seeds=list(range(k)), sample_weights=weights, cfg=cfg, accel=accel)
        del warm  # the warm-up run (kernels, allocator) is untimed
        _, alone = timed(lambda: fit(spec(cfg).build(sub), sub, cfg, seed=0, sample_weights=weights[0],
                                     accel=accel), device)
        _, stacked = timed(lambda: fit_stacked(spec(cfg), sub, seeds=list(range(k)), sample_weights=weights,
                                               cfg=cfg, accel=accel), device)
        m["stack_ratio"] = stacked / (k * alone)
        capacity = stack_capacity(spec(fast), data, fast)
        table.set("retrain_stack", m["stack_ratio"], (
            f"resnet18, 1 epoch on {n:,} samples less a {FORGET_RATIO:.0%} forget set each: {k} stacked in "
            f"{stacked:.2f} s, one alone {alone:.2f} s ({1 / m['stack_ratio']:.2f}× faster per run); "
            f"stack_capacity at the full data: {capacity} models"))

    runner.run("stacked retrain", ["retrain_stack"], stacked_retrain, cap_s=90, reserve_s=5, min_s=10)

    def stacked_finetune(_):
        # an attack's unlearned models of one set, or an audit's finetune units: one method, equal forget sizes
        sub = train_subset(data, min(scale.ensemble_images, data.num_train))
        k, n = args.ensemble_models, sub.num_train
        method = make_method("finetune", {"epochs": 1}).resolved(fast.batch_size)
        weights = torch.stack([forget_weights(sub, random_forget_set(n, forget_size(n, FORGET_RATIO), r))
                               for r in range(k)])
        run_stacked(method, trained, sub, weights, list(range(k)))  # warm-up (kernels, allocator), untimed
        _, alone = timed(lambda: method.apply(trained, sub, weights[0], seed=0), device)
        _, stacked = timed(lambda: run_stacked(method, trained, sub, weights, list(range(k))), device)
        m["method_stack_ratio"] = stacked / (k * alone)
        table.set("method_stack", m["method_stack_ratio"], (
            f"the original resnet18, 1 epoch of finetune on {n:,} samples less a {FORGET_RATIO:.0%} forget set "
            f"each: {k} stacked in {stacked:.2f} s, one alone {alone:.2f} s "
            f"({1 / m['method_stack_ratio']:.2f}× faster per run)"))

    runner.run("stacked finetune", ["method_stack"], stacked_finetune, cap_s=90, reserve_s=5, min_s=10)

    if device.type != "cuda" and not args.tiny:
        table.fail(["sd_esd", "sd_sample"], "skipped", "needs CUDA (an SD v1 UNet step takes minutes on a CPU); "
                                                       "--tiny runs a tiny UNet through the same code")
    else:
        runner.run("stable diffusion", ["sd_esd", "sd_sample"],
                   lambda _: stable_diffusion_phase(table, m, data, device, args.tiny), cap_s=150, reserve_s=3,
                   min_s=30 if not args.tiny else 5)

    def compiled(_):
        tp = training_throughput(spec(fast).build(data), data, fast, images=scale.compile_images,
                                 accel=dataclasses.replace(accel, compile=True))
        eager = f" vs {m['train_fast']:,.0f} eager" if "train_fast" in m else ""
        table.set("compile", tp.images_per_s, f"batch {fast.batch_size}{eager}; first epoch (compiling) "
                                              f"{tp.warmup_s:.0f} s")

    if args.compile is False or (args.compile is None and (args.tiny or device.type != "cuda")):
        table.set("compile", "skipped", "--no-compile" if args.compile is False else
                  "off the GPU by default (compiling costs tens of seconds); --compile runs it")
    else:
        runner.run("torch.compile", ["compile"], compiled, cap_s=240, reserve_s=3, min_s=60)

    project(table, m, data, recipe_config("fast").with_updates(batch_size=fast.batch_size), paper)


# ----------------------------------------------------------------------------------------------------
# Stable Diffusion (the prompt-wise half): an SD-v1-shaped UNet from its config, random weights, no download

SD_STEPS, SD_BATCH, SD_TOKENS = 50, 4, 77
# stable-diffusion-v1-5's unet/config.json (the fields that shape the network)
SD_V1_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
              "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
              "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
              "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
              "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu"}
SD_TINY_UNET = {**SD_V1_UNET, "sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 64),
                "cross_attention_dim": 32, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def stable_diffusion_phase(table: Table, m: dict, data, device: torch.device, tiny: bool) -> None:
    """One ESD-x step (batch 1, as ESD trains) and one SD_STEPS-step DDIM sampling with classifier-free guidance of
    SD_BATCH images, on the UNet alone (the text encoder's embeddings are random, the VAE is left out), each as a
    multiple of one fast-recipe ResNet-18 epoch measured above."""
    try:
        from diffusers import DDIMScheduler, UNet2DConditionModel
    except ImportError:
        table.fail(["sd_esd", "sd_sample"], "skipped", "diffusers is not installed (pip install "
                                                       "'worstforget[generative]')")
        return
    from diffusers.utils import logging as diffusers_logging

    from worstforget.training.stable_diffusion import select_parameter_names

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # no "modules to keep in float32: []" note when casting the copy
    try:
        _stable_diffusion(table, m, data, device, tiny, UNet2DConditionModel, DDIMScheduler, select_parameter_names)
    finally:
        diffusers_logging.set_verbosity(level)


def _stable_diffusion(table: Table, m: dict, data, device: torch.device, tiny: bool, UNet2DConditionModel,
                      DDIMScheduler, select_parameter_names) -> None:
    config = SD_TINY_UNET if tiny else SD_V1_UNET
    cuda = device.type == "cuda"
    half = torch.float16 if cuda else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    side, dim = config["sample_size"], config["cross_attention_dim"]

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    cond, null = randn(1, SD_TOKENS, dim), randn(1, SD_TOKENS, dim)
    with torch.device(device):  # built on the device: initialising 860M parameters on the host takes long
        student = UNet2DConditionModel(**config)
    original = UNet2DConditionModel.from_config(student.config).to(device, half)
    original.load_state_dict(student.state_dict())
    original.requires_grad_(False).eval()
    xattn = select_parameter_names(student, "xattn")
    repeats = 2 if tiny else 5
    esd_s = _time_esd_x(student, original, xattn, cond, null, randn, repeats, device) / repeats
    del student  # its fp32 weights and Adam state leave room for sampling

    def sample(steps):
        scheduler = DDIMScheduler(**SD_SCHEDULE)
        scheduler.set_timesteps(steps, device=device)
        x = randn(SD_BATCH, 4, side, side).to(half)
        embeddings = torch.cat([null.expand(SD_BATCH, -1, -1), cond.expand(SD_BATCH, -1, -1)]).to(half)
        with torch.no_grad():
            for t in scheduler.timesteps:
                e_null, e_c = original(torch.cat([x, x]), t, encoder_hidden_states=embeddings).sample.chunk(2)
                x = scheduler.step(e_null + 7.5 * (e_c - e_null), t, x).prev_sample
        return x

    sample(2)  # warm-up
    steps = 5 if tiny else SD_STEPS
    _, sample_s = timed(lambda: sample(steps), device)
    sample_s *= SD_STEPS / steps

    if "epoch_fast" in m:
        unit, unit_note = m["epoch_fast"], "one fast-recipe ResNet-18 epoch"
    elif "train_fast" in m and "infer" in m:
        unit = data.num_train / m["train_fast"] + len(data.y_val) / m["infer"]
        unit_note = "one fast-recipe ResNet-18 epoch, estimated from the calibration"
    else:
        unit, unit_note = math.nan, "no ResNet-18 epoch measured"
    shape = "tiny UNet (--tiny)" if tiny else "SD-v1.5-shaped UNet"
    n_params = sum(p.numel() for p in original.parameters()) / 1e6
    where = "fp16 original, student fp32 under fp16 autocast" if cuda else "float32 on the CPU"
    table.set("sd_esd", esd_s, (
        f"{shape} ({n_params:,.0f}M parameters, {len(xattn)} attn2 tensors updated, Adam), {side}×{side} latents, "
        f"batch 1, {where}: two frozen passes + one trained pass; mean of {repeats} after a warm-up; "
        f"{esd_s / unit:.3g}× {unit_note}; 1000 steps (the paper's ESD iterations) ≈ {1000 * esd_s:,.0f} s, not "
        "counting the partial sampling of x_t that ESD adds to each step"))
    scaled = "" if steps == SD_STEPS else f" ({steps} steps timed, scaled to {SD_STEPS})"
    table.set("sd_sample", sample_s, (
        f"DDIM, guidance 7.5, {SD_BATCH} images × 2 (conditional + null) per UNet pass{scaled}; UNet only (no text "
        f"encoder, no VAE decode); {sample_s / unit:.3g}× {unit_note}"))


def _time_esd_x(student, original, xattn: list[str], cond, null, randn, repeats: int, device: torch.device) -> float:
    """Seconds of `repeats` ESD-x steps after an untimed warm-up: the frozen original's two passes (ε(x_t, ∅),
    ε(x_t, c)), the student's pass on the cross-attention only, Adam at ESD's lr."""
    cuda = device.type == "cuda"
    half = next(original.parameters()).dtype
    chosen = set(xattn)
    for n, p in student.named_parameters():
        p.requires_grad_(n in chosen)  # no gradient for the frozen rest (ESD-x trains attn2 alone)
    opt = torch.optim.Adam([p for n, p in student.named_parameters() if n in chosen], lr=1e-5)
    side = student.config.sample_size

    def step():
        x_t, t = randn(1, 4, side, side), torch.tensor([500], device=device)
        with torch.no_grad():
            e_null = original(x_t.to(half), t, encoder_hidden_states=null.to(half)).sample.float()
            e_c = original(x_t.to(half), t, encoder_hidden_states=cond.to(half)).sample.float()
        target = e_null - 1.0 * (e_c - e_null)  # ESD: ε(∅) − η(ε(c) − ε(∅)), η = 1
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            pred = student(x_t, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (kernels, allocator), untimed
    return timed(lambda: [step() for _ in range(repeats)], device)[1]


def project(table: Table, m: dict, data, fast, paper) -> None:
    """The main-table projections (AUDIT_FORMULA) for the fast and the paper recipe."""
    need = [k for k in ("train_fast", "train_paper", "infer", "ft_epoch", "search") if k not in m]
    if need:
        for key in ("ratios", "proj_fast", "proj_paper", "proj_fast_stacked", "proj_paper_stacked"):
            table.set(key, "n/a", f"missing measurements: {', '.join(need)}")
        return
    n, n_val = data.num_train, len(data.y_val)
    notes = []
    if "epoch_fast" not in m:  # the original training did not finish an epoch: estimate it from the calibration
        m["epoch_fast"] = n / m["train_fast"] + n_val / m["infer"]
        notes.append("epoch time estimated from the calibration")
    if "evaluate" not in m:
        notes.append("evaluation not measured (counted as 0)")
    retain_share = 1 - FORGET_RATIO
    slow = m["train_fast"] / m["train_paper"]  # per-image cost of the paper's batch relative to the fast one
    values_s = n / m["infer"]
    searched, outer, inner_images = m["search"]
    for key, cfg, epoch_s, scale in (
            ("proj_fast", fast, m["epoch_fast"], 1.0),
            ("proj_paper", paper, n / m["train_paper"] + n_val / m["infer"], slow)):
        full_epochs = cfg.epochs
        search_s = project_search_seconds(searched, outer=outer, inner_images=inner_images, values_s=values_s,
                                          full_outer=SEARCH_OUTER, full_inner_images=SEARCH_INNER_EPOCHS * n,
                                          per_image_scale=scale)
        costs = UnitCosts(original=full_epochs * epoch_s, search=search_s, method=FT_EPOCHS * m["ft_epoch"] * scale,
                          retrain=retain_share * full_epochs * epoch_s, evaluate=m.get("evaluate", 0.0),
                          references=REFERENCE_MODELS * 0.5 * full_epochs * epoch_s)
        total = project_audit_seconds(costs)
        if key == "proj_fast":
            phase_ratios(table, m, costs, total)
        stacked_key = f"{key}_stacked"
        if "stack_ratio" in m:
            # Retrain units and the reference models train stacked: each costs stack_ratio of a run alone
            stacked = dataclasses.replace(costs, retrain=costs.retrain * m["stack_ratio"],
                                          references=costs.references * m["stack_ratio"])
            table.set(stacked_key, project_audit_seconds(stacked) / 3600, (
                f"as '{table.labels[key]}' with T_retrain and T_refs × {m['stack_ratio']:.2f} (stacked Retrain "
                f"per run / one run alone, measured above): T_retrain={stacked.retrain:,.0f} s, "
                f"T_refs={stacked.references:,.0f} s"))
        else:
            table.set(stacked_key, "n/a", "stacked Retrain not measured")
        table.set(key, total / 3600, (
            f"{AUDIT_FORMULA} with W=1 searched set, R=5 random sets, S=2 seeds, M=10 methods; "
            f"T_orig={costs.original:,.0f} s ({full_epochs} epochs × {epoch_s:.1f} s), "
            f"T_refs={costs.references:,.0f} s ({REFERENCE_MODELS} reference models on half the data each, trained one "
            "after another: the exposure objective's one-off), "
            f"T_search={costs.search:,.0f} s ({SEARCH_OUTER} outer × {SEARCH_INNER_EPOCHS} epochs of lower-level "
            "steps), "
            f"T_method={costs.method:,.0f} s (FT, {FT_EPOCHS} epochs: an upper bound for GA/BS/BE, which touch "
            f"only the forget set), T_retrain={costs.retrain:,.0f} s ({retain_share:.0%} of T_orig), "
            f"T_eval={costs.evaluate:.1f} s; one device, units one after another"
            + ("" if scale == 1.0 else f"; lower-level and method images cost {scale:.2f}× (the fit throughput ratio "
                                       f"of batch {fast.batch_size} to batch {paper.batch_size})")
            + "".join(f"; {note}" for note in notes)))


def phase_ratios(table: Table, m: dict, costs: UnitCosts, total: float) -> None:
    """Every phase of the main-table audit as a multiple of one training of the original (fast recipe), so
    other settings can be projected from one measured training."""
    unit = costs.original
    parts = [f"reference models {costs.references / unit:.2f}", f"one search {costs.search / unit:.3f}",
             f"one Retrain {costs.retrain / unit:.3f}"]
    if "stack_ratio" in m:
        parts.append(f"one stacked Retrain {costs.retrain * m['stack_ratio'] / unit:.3f}")
    parts += [f"one method run (FT) {costs.method / unit:.3f}", f"one evaluation {costs.evaluate / unit:.4f}",
              f"main table {total / unit:.1f} (Retrain one by one)"]
    table.set("ratios", f"T_orig = {unit:,.0f} s", "; ".join(parts))


def finish(table: Table, runner: Runner) -> int:
    table.set("total", runner.elapsed(), f"budget {runner.deadline - runner.start:.0f} s")
    print(table.render(), end="")
    if table.path is not None:
        log(f"table written to {table.path}")
    return 0


def solver_variants() -> list[tuple[str, dict]]:
    """(label, SearchConfig fields) for every registered solver, and every unroll backend where there are several."""
    backends = [f.name for f in dataclasses.fields(SearchConfig) if f.name == "unroll_backend"]
    out = []
    for name in SOLVERS.names():
        if name == "unrolled" and backends:
            from worstforget.search.config import UNROLL_BACKENDS

            out += [(f"unrolled ({b})", {"solver": name, "unroll_backend": b}) for b in UNROLL_BACKENDS]
        else:
            out.append((name, {"solver": name}))
    return out


def _describe(active: dict) -> str:
    return (f"autocast {active['autocast']}, channels_last {'on' if active['channels_last'] else 'off'}, "
            f"compile {'on' if active['compile'] else 'off'}")


def default_out(tiny: bool) -> Path:
    """$OUT/gpu.md on the device machine; results/gpu.md for a real run here; a temporary file for --tiny
    (a smoke test must never replace the committed measurement)."""
    env = os.environ.get("OUT")
    if env:
        return Path(env) / "gpu.md"
    if tiny:
        return Path(tempfile.gettempdir()) / "worstforget-gpu-check-tiny.md"
    return Path(__file__).resolve().parent.parent / "results" / "gpu.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with the CIFAR-10 python batches")
    parser.add_argument("--out", default=None, help="where to write the table (default $OUT/gpu.md, else "
                                                     "results/gpu.md; --tiny: a temporary file)")
    parser.add_argument("--budget-s", type=float, default=400.0, help="wall-clock budget of all phases (seconds)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the original training (default: the fast recipe's; capped to fit)")
    parser.add_argument("--ensemble-models", type=int, default=None, help="models in the ensemble (default 16)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="also time torch.compile (default: on CUDA only, when time is left)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU, 1 epoch, a few steps")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.tiny else recipe_config("fast").epochs
    if args.ensemble_models is None:
        args.ensemble_models = 2 if args.tiny else 16
    if args.epochs < 1 or args.ensemble_models < 1 or args.budget_s <= 0:
        parser.error("--epochs and --ensemble-models must be at least 1 and --budget-s positive")
    return args


if __name__ == "__main__":
    sys.exit(main())
