"""The GPU path on the CPU: accelerator switches are no-ops here and wired where they act, the recipes
and their schedule, label smoothing and Nesterov in `fit`, no per-step host reads, timing helpers and
projections, and the GPU check script end to end in --tiny mode."""
from __future__ import annotations

import contextlib
import math
import re
import sys

import pytest
import torch
from conftest import load_script

from worstforget.core.errors import ConfigError
from worstforget.core.hashing import stable_hash
from worstforget.datasets import Augment, Dataset, dataset_info
from worstforget.training import accel as accel_mod
from worstforget.training.accel import Accel, current_accel, use_accel
from worstforget.training.loop import TrainConfig, fit, predict_logits
from worstforget.training.models import build_model
from worstforget.training.optim import lr_factor
from worstforget.training.recipes import RECIPES, apply_recipe, recipe_config
from worstforget.training.timing import (
    EpochClock,
    UnitCosts,
    count_host_syncs,
    project_audit_seconds,
    project_search_seconds,
    train_subset,
    training_throughput,
)


def _images(n: int = 48, seed: int = 0) -> Dataset:
    """A tiny 3×8×8 image dataset with crop/flip augmentation (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 16, 3, 8, 8, generator=g)
    y = torch.arange(n + 16) % 3
    return Dataset(name="tiny-images", x_train=x[:n], y_train=y[:n], x_val=x[n:n + 8], y_val=y[n:n + 8],
                   x_test=x[n + 8:], y_test=y[n + 8:], num_classes=3, augment=Augment(crop_pad=2, flip=True))


def _cnn(seed: int = 0) -> torch.nn.Module:
    return build_model("cnn", 3, (3, 8, 8), width=4, seed=seed)


# --- schedules and recipes ---------------------------------------------------------------------------


def test_onecycle_matches_the_hand_computed_triangle():
    # total 10 steps, warm-up 20%: the triangle read at (step + 0.5) / 10
    expected = {0: 0.05 / 0.2, 1: 0.15 / 0.2, 2: (1 - 0.25) / 0.8, 5: (1 - 0.55) / 0.8, 9: (1 - 0.95) / 0.8}
    for step, value in expected.items():
        assert lr_factor("onecycle", step, 10) == pytest.approx(value, abs=1e-12), step
    assert lr_factor("onecycle", 10, 10) == 0.0  # past the end: never negative
    with pytest.raises(ConfigError, match="onecycle"):
        lr_factor("triangle", 0, 10)


def test_paper_recipe_is_the_papers_cifar_recipe_and_the_cifar_default():
    paper = recipe_config("paper")
    assert (paper.epochs, paper.lr, paper.batch_size, paper.momentum, paper.weight_decay) == (182, 0.1, 256, 0.9, 5e-4)
    assert (paper.schedule, paper.nesterov, paper.label_smoothing) == ("step", False, 0.0)
    # the same TrainConfig (so the same cache key) as the cifar datasets' default training
    assert paper == TrainConfig.from_dict(dataset_info("cifar10").default_train)
    steps = 176  # per epoch at batch 256 on 45k images
    assert lr_factor(paper.schedule, 90 * steps, 182 * steps) == 1.0
    assert lr_factor(paper.schedule, 91 * steps, 182 * steps) == pytest.approx(0.1)
    assert lr_factor(paper.schedule, 137 * steps, 182 * steps) == pytest.approx(0.01)


def test_fast_recipe_and_apply_recipe():
    fast = recipe_config("fast")
    assert fast.schedule == "onecycle" and fast.nesterov and fast.label_smoothing > 0 and fast.epochs <= 30
    assert fast.batch_size > recipe_config("paper").batch_size
    assert stable_hash(fast.to_dict()) != stable_hash(recipe_config("paper").to_dict())
    base = TrainConfig(epochs=3, augment=False)
    assert apply_recipe(base, None) == base
    applied = apply_recipe(base, "fast")
    assert applied.epochs == fast.epochs and applied.augment is False  # what the recipe leaves alone stays
    assert applied.with_updates(epochs=5).epochs == 5  # explicit options still win afterwards
    assert {"paper", "fast"} <= set(RECIPES.names())
    with pytest.raises(ConfigError, match="Available: fast, paper"):
        apply_recipe(base, "fastest")


# --- TrainConfig: cache key stability and validation ---------------------------------------------------


def test_train_config_key_of_existing_recipes_is_unchanged():
    legacy = {"epochs": 40, "lr": 0.05, "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4,
              "schedule": "cosine", "augment": True, "select_best": True}
    assert TrainConfig().to_dict() == legacy
    assert stable_hash(TrainConfig(epochs=7).to_dict()) == stable_hash({**legacy, "epochs": 7})
    smoothed = TrainConfig(label_smoothing=0.1)
    nesterov = TrainConfig(nesterov=True)
    assert smoothed.to_dict() == {**legacy, "label_smoothing": 0.1}
    assert nesterov.to_dict() == {**legacy, "nesterov": True}
    assert len({stable_hash(c.to_dict()) for c in (TrainConfig(), smoothed, nesterov)}) == 3
    for cfg in (TrainConfig(), smoothed, nesterov):
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_train_config_rejects_bad_smoothing_and_nesterov_without_momentum():
    with pytest.raises(ConfigError, match="label smoothing"):
        TrainConfig(label_smoothing=1.0).validate()
    with pytest.raises(ConfigError, match="Nesterov"):
        TrainConfig(nesterov=True, momentum=0.0).validate()


# --- label smoothing and Nesterov reach the training step ----------------------------------------------


def _full_batch(data: Dataset, **changes) -> TrainConfig:
    """Full-batch, unaugmented, constant-lr steps: one step per epoch, in a known order-free form."""
    return TrainConfig(epochs=2, lr=0.1, batch_size=data.num_train, schedule="constant", augment=False,
                       select_best=False, **changes)


def _hand_sgd(model, data: Dataset, *, steps: int, lr: float, momentum: float, wd: float, nesterov: bool, eps: float):
    """Full-batch SGD written out: smoothed CE = (1−ε)·CE + ε·mean_c(−log p_c); torch's SGD update."""
    params = list(model.parameters())
    bufs = [None] * len(params)
    for _ in range(steps):
        logp = torch.log_softmax(model(data.x_train), 1)
        ce = -logp.gather(1, data.y_train[:, None]).squeeze(1)
        loss = ((1 - eps) * ce + eps * (-logp.mean(1))).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                d = g + wd * p
                bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
                step = d + momentum * bufs[i] if nesterov else bufs[i]
                p.sub_(lr * step)
    return model


@pytest.mark.parametrize("eps,nesterov", [(0.0, False), (0.2, False), (0.0, True), (0.2, True)])
def test_fit_applies_label_smoothing_and_nesterov_like_the_hand_written_step(synthetic, eps, nesterov):
    cfg = _full_batch(synthetic, label_smoothing=eps, nesterov=nesterov)
    model = build_model("mlp", 3, (8,), hidden=(6,), seed=1)
    fitted = fit(build_model("mlp", 3, (8,), hidden=(6,), seed=1), synthetic, cfg, seed=0)
    reference = _hand_sgd(model, synthetic, steps=2, lr=cfg.lr, momentum=cfg.momentum, wd=cfg.weight_decay,
                          nesterov=nesterov, eps=eps)
    for a, b in zip(fitted.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the switches matter: the plain recipe lands elsewhere
    if eps or nesterov:
        plain = fit(build_model("mlp", 3, (8,), hidden=(6,), seed=1), synthetic, _full_batch(synthetic), seed=0)
        assert max(float((a - b).abs().max())
                   for a, b in zip(fitted.state_dict().values(), plain.state_dict().values())) > 1e-4


# --- accelerator switches ------------------------------------------------------------------------------


def test_accel_switches_are_noops_on_the_cpu():
    cnn = _cnn()
    for accel in (Accel(), Accel(amp="bf16"), Accel(amp="off", channels_last=False)):
        assert accel.autocast_dtype("cpu") is None
        assert isinstance(accel.autocast(torch.device("cpu")), contextlib.nullcontext)
        assert accel.memory_format(cnn, "cpu") is None
    assert Accel().active("cpu", cnn) == {"autocast": "off", "channels_last": False, "compile": False}
    with pytest.raises(ConfigError, match="mixed-precision"):
        Accel(amp="fp8").validate()


def test_accel_decisions_on_cuda(monkeypatch):
    """Without a GPU the decisions are checked with the bf16 capability probe replaced."""
    cuda, cnn, mlp = torch.device("cuda"), _cnn(), build_model("mlp", 3, (3, 8, 8))
    monkeypatch.setattr(accel_mod, "_bf16_supported", lambda device, native: True)
    assert Accel().autocast_dtype(cuda) is torch.bfloat16
    assert Accel(amp="bf16").autocast_dtype(cuda) is torch.bfloat16
    assert Accel(amp="off").autocast_dtype(cuda) is None
    assert Accel().memory_format(cnn, cuda) is torch.channels_last
    assert Accel().memory_format(mlp, cuda) is None  # no convolutions: nothing to lay out
    assert Accel(channels_last=False).memory_format(cnn, cuda) is None
    # an older GPU: only native bf16 counts for "auto", and an explicit request is refused if not even emulated
    monkeypatch.setattr(accel_mod, "_bf16_supported", lambda device, native: not native)
    assert Accel().autocast_dtype(cuda) is None
    assert Accel(amp="bf16").autocast_dtype(cuda) is torch.bfloat16
    monkeypatch.setattr(accel_mod, "_bf16_supported", lambda device, native: False)
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        Accel(amp="bf16").autocast_dtype(cuda)


def test_fit_and_predict_are_bit_identical_with_the_switches_on_or_off_on_the_cpu():
    data = _images()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=16)
    on = fit(_cnn(), data, cfg, seed=3, accel=Accel(amp="bf16", channels_last=True))
    off = fit(_cnn(), data, cfg, seed=3, accel=Accel(amp="off", channels_last=False))
    default = fit(_cnn(), data, cfg, seed=3)
    for a, b, c in zip(on.state_dict().values(), off.state_dict().values(), default.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert a.is_contiguous()  # channels_last was not applied on the CPU
    assert torch.equal(predict_logits(on, data.x_test, accel=Accel(amp="bf16")),
                       predict_logits(on, data.x_test, accel=Accel(amp="off", channels_last=False)))


class _Probe:
    """Forward pre-hook recording the autocast state and the input layout at every forward."""

    def __init__(self, model: torch.nn.Module):
        self.seen: list[tuple[bool, torch.dtype, bool]] = []
        model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        x = args[0]
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                          x.is_contiguous(memory_format=torch.channels_last)))


def test_fit_and_predict_use_autocast_and_channels_last_where_the_device_is_accelerated(monkeypatch):
    """The CUDA code path, run on the CPU by counting the CPU as an accelerated device."""
    monkeypatch.setattr(accel_mod, "ACCELERATED_DEVICE_TYPES", ("cuda", "cpu"))
    data = _images()
    model = _cnn()
    probe = _Probe(model)
    fit(model, data, TrainConfig(epochs=1, lr=0.05, batch_size=16), seed=0, accel=Accel())
    assert len(probe.seen) >= 3 + 1  # 3 training steps and the validation pass
    assert all(p == (True, torch.bfloat16, True) for p in probe.seen)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    probe.seen.clear()
    logits = predict_logits(model, data.x_test)  # scoring: full precision, channels_last kept
    assert logits.dtype == torch.float32 and [(p[0], p[2]) for p in probe.seen] == [(False, True)]
    probe.seen.clear()
    predict_logits(model, data.x_test, accel=Accel())  # asked for explicitly, as fit's validation pass does
    assert probe.seen == [(True, torch.bfloat16, True)]
    # switched off through the current settings: fit and predict_logits read `use_accel`
    probe.seen.clear()
    with use_accel(Accel(amp="off", channels_last=False)):
        assert current_accel().amp == "off"
        fit(model, data, TrainConfig(epochs=1, lr=0.05, batch_size=16), seed=0)
        predict_logits(model, data.x_test)
    assert current_accel() == Accel()
    assert probe.seen and all(p[0] is False and p[2] is False for p in probe.seen)


def test_compile_flag_compiles_the_training_forward(monkeypatch):
    """torch.compile on a tiny MLP on the CPU: dynamo traces the training forward and AOT autograd its backward.

    The recorder swaps inductor's code generation (20-30 s on two cores) for `aot_eager`, which runs the same
    traced graphs with eager kernels: what is under test is that `fit` trains through the compiled callable.
    """
    calls = []
    real_compile = torch.compile

    def recording_compile(model, *args, **kwargs):
        calls.append(model)
        return real_compile(model, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", recording_compile)
    data = _images(32)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16, select_best=False)
    model = build_model("mlp", 3, (3, 8, 8), hidden=(8,), seed=0)
    compiled = fit(model, data, cfg, seed=0, accel=Accel(compile=True))
    assert calls == [model]
    eager = fit(build_model("mlp", 3, (3, 8, 8), hidden=(8,), seed=0), data, cfg, seed=0, accel=Accel())
    for a, b in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not any(torch.equal(a, b) for a, b in zip(
        compiled.parameters(), build_model("mlp", 3, (3, 8, 8), hidden=(8,), seed=0).parameters()))


# --- no host reads inside the step loop ----------------------------------------------------------------


HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


def _count_host_reads(monkeypatch, fn) -> int:
    count = [0]
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return count[0]


@pytest.mark.parametrize("weighted", [False, True])
def test_fit_reads_nothing_back_to_the_host_per_step(monkeypatch, weighted):
    data = _images(64)  # 8 steps per epoch at batch 8
    weights = (torch.arange(64) % 4 != 0).float() * 0.5 + 0.25 if weighted else None

    def run(epochs: int):
        cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=8, select_best=False)
        return lambda: fit(_cnn(), data, cfg, seed=0, sample_weights=weights)

    assert _count_host_reads(monkeypatch, lambda: float(torch.ones(())) + 0) == 1  # the counter counts
    one, three = _count_host_reads(monkeypatch, run(1)), _count_host_reads(monkeypatch, run(3))
    assert three - one <= 2  # at most the per-epoch progress read for each extra epoch, never one per step


# --- timing helpers and projections --------------------------------------------------------------------


def test_project_audit_seconds_is_the_stated_formula():
    costs = UnitCosts(original=100, search=50, method=3, retrain=90, evaluate=2)
    # T_orig + W·T_search + (W + R)·S·(M·(T_method + T_eval) + T_retrain + T_eval)
    assert project_audit_seconds(costs) == 100 + 50 + 6 * 2 * (10 * 5 + 90 + 2)
    assert project_audit_seconds(costs, methods=1, random_sets=0, seeds=1) == 100 + 50 + (5 + 92)
    with_refs = UnitCosts(original=100, search=50, method=3, retrain=90, evaluate=2, references=800)
    assert project_audit_seconds(with_refs) == project_audit_seconds(costs) + 800  # once per setting


def test_project_search_seconds_from_a_short_run():
    # 2 outer steps in 10 s with 1 s of values pass each: (5 − 1) s for 400 images → 0.01 s per image
    assert project_search_seconds(10.0, outer=2, inner_images=400, values_s=1.0, full_outer=20,
                                  full_inner_images=1000) == pytest.approx(20 * (1000 * 0.01 + 1.0))
    assert project_search_seconds(10.0, outer=2, inner_images=400, values_s=1.0, full_outer=20,
                                  full_inner_images=1000, per_image_scale=2.0) == pytest.approx(20 * (20 + 1.0))
    assert project_search_seconds(1.0, outer=1, inner_images=10, values_s=5.0, full_outer=3,
                                  full_inner_images=10) == 15.0  # values pass longer than the run: no negative
    with pytest.raises(ConfigError):
        project_search_seconds(1.0, outer=0, inner_images=1, values_s=0, full_outer=1, full_inner_images=1)


def test_epoch_clock_training_throughput_and_subsets(synthetic):
    clock = EpochClock("cpu")
    fit(build_model("mlp", 3, (8,), hidden=(4,)), synthetic, TrainConfig(epochs=3, batch_size=64), seed=0,
        progress=clock)
    assert len(clock.epoch_seconds) == 3 and all(t > 0 for t in clock.epoch_seconds)
    assert clock.steady_epoch_seconds() == pytest.approx(sum(clock.epoch_seconds[1:]) / 2)
    assert [i["val_acc"] is not None for i in clock.info] == [True] * 3
    tp = training_throughput(build_model("mlp", 3, (8,), hidden=(4,)), synthetic, TrainConfig(batch_size=32),
                             images=100)
    assert tp.images == 100 and tp.images_per_s == pytest.approx(100 / tp.seconds) and tp.warmup_s > 0
    sub = train_subset(synthetic, 10)
    assert torch.equal(sub.x_train, synthetic.x_train[:10]) and torch.equal(sub.x_test, synthetic.x_test)
    with pytest.raises(ConfigError):
        train_subset(synthetic, 0)
    ran = []
    assert count_host_syncs(lambda: ran.append(1), "cpu") is None and ran == [1]


# --- the GPU check script ------------------------------------------------------------------------------


def _gpu_check():
    return load_script("benchmarks/gpu_check.py")


def _table(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("measurement", "---"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def _number(value: str) -> float:
    return float(value.replace(",", ""))


NUMERIC_ROWS = ("train images/s (batch 32)", "train images/s (batch 16)", "inference images/s",
                "seconds per epoch (fast recipe)", "original training, fast recipe (s)", "search, first_order (s)",
                "unlearning: finetune, 1 epoch (s)", "evaluation of one model (s)", "ensemble of 2 models, 1 epoch (s)",
                "projected main table, fast recipe (h)", "projected main table, paper recipe (h)",
                "wall time of this check (s)")


def test_gpu_check_tiny_prints_and_writes_one_complete_table(tmp_path, capsys):
    module = _gpu_check()
    out = tmp_path / "gpu.md"
    assert module.main(["--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert printed.count("| measurement | value | detail |") == 1
    rows = _table(printed)
    for label in NUMERIC_ROWS:
        assert label in rows, label
        assert math.isfinite(_number(rows[label][0])) and _number(rows[label][0]) > 0, (label, rows[label])
    solvers = [label for label in rows if label.startswith("search, ")]
    assert len(solvers) >= 2 and all(math.isfinite(_number(rows[s][0])) for s in solvers)  # every solver ran
    assert rows["data"][0].startswith("random") and "3×8×8" in rows["data"][1]
    assert rows["device"][0].startswith("CPU") and "autocast off" in rows["device"][1]
    assert rows["host syncs per training step"][0] == "n/a"
    assert rows["train images/s with torch.compile"][0] == "skipped"
    assert "resnet18 with BatchNorm" in rows["ensemble of 2 models, 1 epoch (s)"][1]
    stacked = rows["stacked finetune: 2 runs, per run / one run alone"]
    assert _number(stacked[0]) > 0 and "2 stacked in" in stacked[1] and "one alone" in stacked[1]
    assert "T = T_orig + T_refs + W·T_search" in rows["projected main table, paper recipe (h)"][1]
    assert (_number(rows["projected main table, paper recipe (h)"][0])
            > _number(rows["projected main table, fast recipe (h)"][0]))


def test_gpu_check_keeps_the_table_when_phases_fail(tmp_path, capsys, monkeypatch):
    module = _gpu_check()
    real_fit_ensemble = module.fit_ensemble

    class BrokenClock:  # the original training dies before its first epoch ends
        def __init__(self, device):
            self.epoch_seconds = []

        def task(self, description, total):
            return self

        def advance(self, n=1, **info):
            raise RuntimeError("simulated failure\nsecond line")

    def failing_evaluate(*args, **kwargs):
        raise ValueError("no attacker today")

    def resnet_cannot_stack(spec, *args, **kwargs):
        if spec.name == "resnet18":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_fit_ensemble(spec, *args, **kwargs)

    def sd_fails(*args, **kwargs):  # the Stable Diffusion phase dies too (and the check costs seconds less)
        raise RuntimeError("no UNet today")

    real_search = module.search_worst_case

    def only_first_order(setting, method, params, cfg, **kwargs):  # the other solvers' phases die
        if cfg.solver != "first_order":
            raise RuntimeError(f"no {cfg.solver} today")
        return real_search(setting, method, params, cfg, **kwargs)

    monkeypatch.setattr(module, "EpochClock", BrokenClock)
    monkeypatch.setattr(module, "evaluate", failing_evaluate)
    monkeypatch.setattr(module, "stable_diffusion_phase", sd_fails)
    monkeypatch.setattr(module, "search_worst_case", only_first_order)
    monkeypatch.setattr(module, "fit_ensemble", resnet_cannot_stack)
    out = tmp_path / "gpu.md"
    assert module.main(["--tiny", "--out", str(out), "--no-compile"]) == 0
    rows = _table(out.read_text())
    assert rows["original training, fast recipe (s)"] == ("failed", "RuntimeError: simulated failure")
    assert rows["seconds per epoch (fast recipe)"][0] == "failed"
    assert rows["evaluation of one model (s)"] == ("failed", "ValueError: no attacker today")
    for label in ("Stable Diffusion v1 UNet: one ESD-x step (s)", "Stable Diffusion v1 UNet: 50-step guided sampling, "
                  "batch 4 (s)"):
        assert rows[label] == ("failed", "RuntimeError: no UNet today"), label
    for label in ("search, unrolled (higher) (s)", "search, warm (s)"):
        assert rows[label][0] == "failed" and rows[label][1].startswith("RuntimeError: no "), label
    for label in ("search, first_order (s)", "unlearning: finetune, 1 epoch (s)"):  # later phases still ran
        assert _number(rows[label][0]) > 0, label
    ensemble = rows["ensemble of 2 models, 1 epoch (s)"]
    assert _number(ensemble[0]) > 0 and "cnn with GroupNorm" in ensemble[1] and "out of memory" in ensemble[1]
    projected = rows["projected main table, fast recipe (h)"]
    assert _number(projected[0]) > 0
    assert "epoch time estimated from the calibration" in projected[1] and "evaluation not measured" in projected[1]
    assert rows["train images/s with torch.compile"] == ("skipped", "--no-compile")


def test_gpu_check_projection_says_what_is_missing(tmp_path, synthetic):
    module = _gpu_check()
    table = module.Table([("proj_fast", "F"), ("proj_paper", "P")], tmp_path / "t.md")
    module.project(table, {"train_fast": 10.0, "infer": 20.0}, synthetic, recipe_config("fast"), recipe_config("paper"))
    for key in ("proj_fast", "proj_paper"):
        assert table.rows[key] == ("n/a", "missing measurements: train_paper, ft_epoch, search")


def test_gpu_check_phase_time_limit_interrupts_a_phase(tmp_path):
    module = _gpu_check()
    table = module.Table([("a", "A"), ("b", "B")], tmp_path / "t.md")
    runner = module.Runner(table, budget_s=60, device=torch.device("cpu"))

    def slow(limit):
        while True:
            pass

    assert runner.run("slow", ["a"], slow, cap_s=0.3, min_s=0.1) is None
    assert table.rows["a"][0] == "timed out" and table.rows["b"][0] == "not run"
    assert runner.run("fast", ["b"], lambda limit: 7, cap_s=5) == 7
    runner.deadline = runner.start  # no time left: later phases are skipped, not started
    assert runner.run("late", ["b"], lambda limit: 1 / 0, cap_s=5) is None
    assert re.search(r"\| B \| skipped \| out of budget", (tmp_path / "t.md").read_text())


def test_unlearning_steps_use_autocast_where_asked_but_never_while_differentiated(monkeypatch):
    """The methods' shared loop runs its forward under the command's bf16 autocast (CUDA path, run on the CPU
    here), except when the search differentiates through the steps (forget weights with a graph)."""
    from worstforget.methods import make_method

    monkeypatch.setattr(accel_mod, "ACCELERATED_DEVICE_TYPES", ("cuda", "cpu"))
    data = _images()
    original = _cnn().eval()
    method = make_method("finetune", {"epochs": 1, "lr": 0.01}).resolved(16)
    w = torch.zeros(data.num_train)
    w[:8] = 1.0
    from torch.nn.modules.module import register_module_forward_pre_hook

    from worstforget.search.solvers.unrolled import Unroll

    seen = []
    handle = register_module_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        with use_accel(Accel(amp="bf16")):
            method.apply(original, data, w, seed=0, max_steps=2)
            plain = list(seen)
            seen.clear()
            method.apply(original, data, w.requires_grad_(), seed=0, max_steps=2, stepper=Unroll("torch.func"))
    finally:
        handle.remove()
    assert plain and all(plain)  # every forward of the plain run under autocast
    assert seen and not any(seen)  # the differentiated run in full precision


def test_gpu_check_stable_diffusion_phase_times_esd_x_and_sampling_on_a_tiny_unet(tmp_path, synthetic):
    pytest.importorskip("diffusers")
    module = _gpu_check()
    table = module.Table([("sd_esd", "E"), ("sd_sample", "S")], tmp_path / "t.md")
    module.stable_diffusion_phase(table, {"epoch_fast": 2.0}, synthetic, torch.device("cpu"), tiny=True)
    esd, sample = table.rows["sd_esd"], table.rows["sd_sample"]
    assert _number(esd[0]) > 0 and _number(sample[0]) > 0
    assert "tiny UNet" in esd[1] and "attn2 tensors updated" in esd[1] and "one fast-recipe ResNet-18 epoch" in esd[1]
    ratio = float(re.search(r"; ([0-9.e+-]+)× one fast-recipe", esd[1]).group(1))
    assert ratio == pytest.approx(_number(esd[0]) / 2.0, rel=0.01, abs=1e-3)
    assert "5 steps timed, scaled to 50" in sample[1]


def test_gpu_check_stable_diffusion_phase_says_when_diffusers_is_missing(tmp_path, synthetic, monkeypatch):
    module = _gpu_check()
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    table = module.Table([("sd_esd", "E"), ("sd_sample", "S")], tmp_path / "t.md")
    module.stable_diffusion_phase(table, {}, synthetic, torch.device("cpu"), tiny=True)
    assert table.rows["sd_esd"] == ("skipped", "diffusers is not installed (pip install 'worstforget[generative]')")
    assert table.rows["sd_sample"][0] == "skipped"
