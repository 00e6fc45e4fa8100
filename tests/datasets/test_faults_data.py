"""Bad numbers never become wrong output silently: dataset validation, divergence detection in the shared
loop, the capped-simplex projection at any magnitude, and the low-FPR and ε attack definitions.

Every user-facing fault goes through the CLI and checks the one-line error, the exit code and that no
output was written."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worstforget.cli import cli
from worstforget.core.errors import DivergedError, InvalidDataError, WorstforgetError
from worstforget.datasets import load_dataset
from worstforget.datasets.raw import RawSplits
from worstforget.datasets.validate import validate_splits
from worstforget.methods import Phase, Stepper, UnlearningMethod, make_method
from worstforget.methods.base import ce
from worstforget.scoring.privacy import DELTA, EPSILON_CAP, per_example_epsilon, tpr_at_fpr
from worstforget.scoring.privacy.lira import lira_attack_metrics
from worstforget.scoring.privacy.population import loss_threshold_attack
from worstforget.search import project_capped_simplex

FAST = ["--epochs", "3"]
SEARCH_FAST = ["--outer-steps", "2", "--num-random", "1", "--seeds", "1", "--no-stability"]


def run(runner, *args):
    return runner.invoke(cli, ["--quiet", *args])


def assert_clean_error(result, exit_code: int, *fragments: str) -> str:
    """One line starting with 'Error:', the given exit code, no traceback; returns the line."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_nothing_trained(cache: Path) -> None:
    assert not [p for p in cache.rglob("*") if p.suffix in (".pt", ".h5", ".npz")], sorted(cache.rglob("*"))


# ----------------------------------------------------------------------------- 1. dataset validation


def _arrays(n_train: int = 120, n_test: int = 30, d: int = 5, classes: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.normal(size=(n_train, d)).astype(np.float32), "y_train": np.arange(n_train) % classes,
            "x_test": rng.normal(size=(n_test, d)).astype(np.float32), "y_test": np.arange(n_test) % classes}


def _write(tmp_path: Path, arrays: dict, fmt: str = "npz") -> Path:
    path = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(path, **arrays)
    else:
        import h5py

        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle.create_dataset(key, data=value)
    return path


def test_nan_in_x_train_is_refused_before_training(cli_runner, tmp_path, isolated_cache):
    arrays = _arrays()
    arrays["x_train"][3, 2] = np.nan
    arrays["x_train"][7, 0] = np.inf
    arrays["x_train"][7, 1] = -np.inf
    path = _write(tmp_path, arrays)
    out = tmp_path / "train.json"
    result = run(cli_runner, "train", "--dataset", f"npz:{path}", *FAST, "--out", str(out))
    assert_clean_error(result, 1, str(path), "x_train holds 3 NaN or infinite values in 2 of 120 rows",
                       "first at row 3")
    assert not out.exists()
    assert_nothing_trained(isolated_cache)


def test_nan_in_x_test_is_refused_before_search(cli_runner, tmp_path, isolated_cache):
    arrays = _arrays()
    arrays["x_test"][1, 1] = np.nan
    path = _write(tmp_path, arrays)
    out = tmp_path / "search"
    result = run(cli_runner, "search", "--dataset", f"npz:{path}", *FAST, *SEARCH_FAST, "--out", str(out))
    assert_clean_error(result, 1, "x_test holds 1 NaN or infinite value in 1 of 30 rows (first at row 1)")
    assert not out.exists()
    assert_nothing_trained(isolated_cache)


def test_huge_label_is_refused_instead_of_a_million_classes(cli_runner, tmp_path, isolated_cache):
    arrays = _arrays()
    arrays["y_train"][5] = 1_000_000
    path = _write(tmp_path, arrays, "h5")  # the h5 source goes through the same validation as npz
    out = tmp_path / "run"
    result = run(cli_runner, "unlearn", "--method", "ft", "--dataset", f"h5:{path}", *FAST, "--out", str(out))
    assert_clean_error(result, 1, "y_train holds 4 distinct labels up to 1000000",
                       "999997 classes without training samples (3, 4, 5, 6, 7, …, 999999)",
                       "np.unique(y, return_inverse=True)")
    assert not out.exists()
    assert_nothing_trained(isolated_cache)


def test_test_labels_that_train_lacks_are_refused(cli_runner, tmp_path, isolated_cache):
    arrays = _arrays()
    arrays["y_test"] = np.arange(30) % 4  # class 3 only in test: 7 samples
    path = _write(tmp_path, arrays)
    out = tmp_path / "train.json"
    result = run(cli_runner, "train", "--dataset", f"npz:{path}", *FAST, "--out", str(out))
    assert_clean_error(result, 1, "y_test holds labels that y_train lacks (3; 7 samples)")
    assert not out.exists()


def test_validation_labels_that_train_lacks_are_refused(tmp_path):
    arrays = _arrays()
    arrays["x_val"] = np.zeros((4, 5), np.float32)
    arrays["y_val"] = np.array([0, 1, 5, 5])
    with pytest.raises(InvalidDataError, match=r"y_val holds labels that y_train lacks \(5; 2 samples\)"):
        load_dataset(f"npz:{_write(tmp_path, arrays)}")


def test_class_without_training_samples_cannot_win_the_class_wise_search(cli_runner, tmp_path, isolated_cache):
    arrays = _arrays()
    arrays["y_train"] = np.arange(120) % 3 * 2  # labels 0, 2, 4: classes 1 and 3 have no samples
    arrays["y_test"] = np.arange(30) % 3 * 2
    path = _write(tmp_path, arrays)
    out = tmp_path / "search"
    result = run(cli_runner, "search", "--dataset", f"npz:{path}", "--granularity", "class", *FAST, *SEARCH_FAST,
                 "--out", str(out))
    assert_clean_error(result, 1, "leaving 2 classes without training samples (1, 3)")
    assert not out.exists()
    assert_nothing_trained(isolated_cache)


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.update(y_train=np.zeros(120, np.int64), y_test=np.zeros(30, np.int64)),
     "y_train holds a single class (0)"),
    (lambda a: a.update(y_train=np.where(np.arange(120) == 0, 1e30, np.arange(120) % 3)), "huge labels"),
    (lambda a: a.update(y_train=np.where(np.arange(120) == 0, 0.5, np.arange(120) % 3)), "non-integer"),
    (lambda a: a.update(y_test=-(np.arange(30) % 2)), "y_test holds negative labels (-1)"),
    (lambda a: a.update(y_train=np.arange(120).reshape(60, 2) % 3), "y_train must be a 1-D array"),
    (lambda a: a.update(x_val=np.full((2, 5), np.nan, np.float32), y_val=np.array([0, 1])),
     "x_val holds 10 NaN or infinite values in 2 of 2 rows"),
    (lambda a: a.update(classes=("a", "b")), "2 class names for 3 classes"),
])
def test_validate_splits_refuses_in_one_line(change, message):
    arrays = _arrays()
    change(arrays)
    with pytest.raises(InvalidDataError) as err:
        validate_splits(RawSplits(**arrays), "mine")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validate_splits_returns_the_class_count_and_accepts_float_integer_labels():
    arrays = _arrays(classes=4)
    arrays["y_test"] = arrays["y_test"].astype(np.float64)
    assert validate_splits(RawSplits(**arrays), "mine") == 4


def test_inputs_that_overflow_float32_are_refused(tmp_path):
    arrays = _arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float64) * 1e300  # finite in float64, inf in float32
    with pytest.raises(InvalidDataError, match="x_train overflows float32 once standardised"):
        load_dataset(f"npz:{_write(tmp_path, arrays)}")


def test_builtin_datasets_pass_validation(synthetic):
    digits = load_dataset("digits")
    assert digits.num_classes == 10 and synthetic.num_classes == 3
    for data in (digits, synthetic):
        for y in (data.y_train, data.y_val, data.y_test):
            assert int(y.max()) < data.num_classes
        assert torch.equal(torch.unique(data.y_train), torch.arange(data.num_classes))


# ----------------------------------------------------------------------------- 2. divergence


@pytest.mark.parametrize(("method", "lr"), [("gradient_ascent", "1e6"), ("finetune", "1e9")])
def test_divergent_unlearning_stops_with_the_method_and_step(cli_runner, tmp_path, method, lr):
    out = tmp_path / "run"
    result = run(cli_runner, "unlearn", "--method", method, "--param", f"lr={lr}", "--dataset", "synthetic", *FAST,
                 "--out", str(out))
    line = assert_clean_error(result, 1, f"{method} diverged at step ", "(loss is ", "--param lr=")
    assert "lr=" + f"{float(lr):g}" in line
    assert not out.exists()


@pytest.mark.parametrize("backend", ["higher", "torch.func"])
def test_unrolled_search_with_a_divergent_lower_level_stops_cleanly(cli_runner, tmp_path, backend):
    out = tmp_path / "search"
    result = run(cli_runner, "search", "--dataset", "synthetic", *FAST, "--solver", "unrolled", "--unroll-backend",
                 backend, "--inner-lr", "1e9", *SEARCH_FAST, "--out", str(out))
    assert_clean_error(result, 1, "finetune diverged at step ", "of 10 (loss is NaN)", "--inner-lr")
    assert not out.exists()


@dataclass(kw_only=True)
class _PoisonedAt(UnlearningMethod):
    """Finetune whose loss turns `value` at 0-based step `at` (a hook reading ctx.step, no synchronisation)."""

    at: int = 4
    value: float = math.nan
    name = "poisoned"

    def phases(self, epoch, ctx):
        def loss(model, batches, ctx):
            b = batches["retain"]
            scale = self.value if ctx.step == self.at else 1.0
            return b.retain_mean(ce(model, b)) * scale

        return [Phase(("retain",), loss)]


def _forget_weights(data) -> torch.Tensor:
    w = torch.zeros(data.num_train)
    w[:20] = 1
    return w


@pytest.mark.parametrize(("value", "kind"), [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_the_first_bad_step_is_reported_exactly(trained, synthetic, value, kind):
    method = _PoisonedAt(at=30, value=value, epochs=3, lr=0.01, batch_size=32)  # 7 steps per epoch: epoch 5
    with pytest.raises(DivergedError) as err:
        method.apply(trained, synthetic, _forget_weights(synthetic), seed=0, max_steps=40)
    assert str(err.value) == (f"poisoned diverged at step 31 of 40 (loss is {kind}) with lr=0.01; lower its "
                              "learning rate (--param lr=..., or --inner-lr in a search)")
    assert err.value.step == 31 and err.value.method == "poisoned"


def test_a_finite_run_is_untouched_by_the_watch(trained, synthetic):
    method = _PoisonedAt(at=10_000, epochs=2, lr=0.01, batch_size=32)
    model = method.apply(trained, synthetic, _forget_weights(synthetic), seed=0)
    reference = make_method("finetune", {"epochs": 2, "lr": 0.01, "batch_size": 32}).apply(
        trained, synthetic, _forget_weights(synthetic), seed=0)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


class _PoisoningStepper(Stepper):
    """Steps normally, then sets one weight to inf: only the end-of-run parameter check can see it."""

    def step(self, loss, ctx):
        super().step(loss, ctx)
        with torch.no_grad():
            self.params[0].view(-1)[0] = math.inf


def test_parameters_that_turn_non_finite_on_the_last_step_are_caught(trained, synthetic):
    method = make_method("finetune", {"epochs": 1, "lr": 0.01, "batch_size": 32})
    with pytest.raises(DivergedError, match="finetune diverged: its parameters hold NaN or inf after the last "
                                            "of 1 steps"):
        method.apply(trained, synthetic, _forget_weights(synthetic), seed=0, max_steps=1, stepper=_PoisoningStepper)


def test_detection_adds_no_host_synchronisation_per_step(trained, synthetic, monkeypatch):
    """Reading a tensor on the host (item, bool, int, float, tolist) is what would stall a GPU every step.
    Runs of 1 and 4 epochs (7 steps each) may differ by one read per extra epoch, not per step."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def host_reads(epochs: int) -> int:
        reads.clear()
        make_method("finetune", {"epochs": epochs, "batch_size": 32}).apply(
            trained, synthetic, _forget_weights(synthetic), seed=0)
        return len(reads)

    one, four = host_reads(1), host_reads(4)
    assert four - one == 3, (one, four)


# ----------------------------------------------------------------------------- 3. projection


def exact_projection(a: list[float], m: float) -> list[Fraction]:
    """Reference in exact rational arithmetic: the breakpoint μ with φ(μ) = m, found by bisection over
    the sorted breakpoints {a_i, a_i − 1} (φ is exact, so no precision is lost at any magnitude)."""
    xs = [Fraction(v) for v in a]
    target = Fraction(m)

    def phi(mu: Fraction) -> Fraction:
        return sum((min(max(x - mu, Fraction(0)), Fraction(1)) for x in xs), Fraction(0))

    breaks = sorted(set(xs) | {x - 1 for x in xs})
    lo, hi = 0, len(breaks) - 1  # φ(breaks[lo]) = n ≥ m > 0 = φ(breaks[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if phi(breaks[mid]) >= target:
            lo = mid
        else:
            hi = mid
    v0, v1 = phi(breaks[lo]), phi(breaks[hi])
    mu = breaks[lo] + (v0 - target) * (breaks[hi] - breaks[lo]) / (v0 - v1)
    return [min(max(x - mu, Fraction(0)), Fraction(1)) for x in xs]


def assert_exact_projection(a: torch.Tensor, m: float) -> torch.Tensor:
    w = project_capped_simplex(a, m)
    assert abs(float(w.sum()) - m) <= 1e-9 * max(1.0, m)
    assert float(w.min()) >= 0 and float(w.max()) <= 1
    expected = np.array([float(v) for v in exact_projection(a.tolist(), m)])
    np.testing.assert_allclose(w.numpy(), expected, rtol=0, atol=1e-9)
    return w


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False), min_size=2, max_size=25),
       st.floats(0.01, 0.99))
def test_projection_is_exact_at_any_magnitude(values, frac):
    assert_exact_projection(torch.tensor(values, dtype=torch.float64), frac * len(values))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=25), st.lists(st.floats(-1, 1), min_size=25, max_size=25),
       st.sampled_from([1.0, 1e8, 1e16, 1e20, 1e100, 1e300]), st.floats(0.05, 0.95))
def test_projection_of_huge_upper_steps_is_exact(w, grad, step, frac):
    """The search's update w − step·g with the soak's step sizes (--raw-step --upper-lr 1e20 and beyond)."""
    w = torch.tensor(w, dtype=torch.float64)
    m = frac * len(w)
    a = w - step * torch.tensor(grad[: len(w)], dtype=torch.float64)
    assert_exact_projection(a, m)


def test_soak_step_keeps_the_budget():
    g = torch.Generator().manual_seed(0)
    w = project_capped_simplex(torch.rand(1300, generator=g, dtype=torch.float64), 130)
    grad = torch.randn(1300, generator=g, dtype=torch.float64) * 1e-3
    for step in (1e20, 1e100, 1e300):
        a = w - step * grad
        out = project_capped_simplex(a, 130)
        assert float(out.sum()) == pytest.approx(130, abs=1e-9)
        # the 130 largest entries of a are far apart from the rest at this scale: the projection is their indicator
        top = torch.topk(a, 130).indices
        assert torch.equal(out[top], torch.ones(130, dtype=torch.float64)) and float(out.sum()) == 130.0


def test_projection_keeps_ties_at_huge_magnitude():
    a = torch.tensor([1e20, 1e20, 1e20, 3.0, -1e20], dtype=torch.float64)  # three equal leaders share m = 1.5
    torch.testing.assert_close(project_capped_simplex(a, 1.5), torch.tensor([0.5, 0.5, 0.5, 0, 0], dtype=torch.float64))
    b = torch.tensor([1.7e308, -1.7e308, 0.3, 0.2], dtype=torch.float64)  # a − c overflows: still clipped right
    torch.testing.assert_close(project_capped_simplex(b, 2.0), torch.tensor([1, 0, 0.55, 0.45], dtype=torch.float64))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_projection_refuses_non_finite_input_in_one_line(bad):
    a = torch.zeros(10, dtype=torch.float64)
    a[3] = bad
    with pytest.raises(WorstforgetError) as err:
        project_capped_simplex(a, 2)
    assert str(err.value) == ("the search step holds NaN or inf in 1 of 10 weights: the hypergradient diverged in "
                              "the lower level (lower --inner-lr) or the upper step overflowed (lower --upper-lr)")


def test_raw_search_step_of_1e20_keeps_the_budget_end_to_end(cli_runner, tmp_path):
    import h5py

    out = tmp_path / "search"
    result = run(cli_runner, "search", "--dataset", "synthetic", *FAST, "--raw-step", "--upper-lr", "1e20",
                 *SEARCH_FAST, "--out", str(out))
    assert result.exit_code == 0, result.output
    with h5py.File(out / "result.h5", "r") as handle:
        weights = handle["search/weights"][()]  # (outer steps + 1, N), stored as float32
    m = round(0.1 * weights.shape[1])
    np.testing.assert_allclose(weights.sum(axis=1), m, atol=1e-3)
    assert weights.min() >= 0 and weights.max() <= 1


# ----------------------------------------------------------------------------- 4. attack definitions


def test_tpr_at_fpr_is_strict_like_lira_where_the_rules_differ():
    # 1,000 non-members scored 0 … 999 and 10 members. Four members score above every non-member (TPR 0.4
    # at FP = 0); the threshold 998.2 adds non-member 999 (FP = 1, FPR exactly 0.001) and members 998.7,
    # 998.5, 998.2 (TPR 0.7); the next non-member, 998, makes FPR 0.002.
    nonmembers = np.arange(1000.0)
    members = np.array([2000.0, 1500.0, 1200.0, 1000.5, 998.7, 998.5, 998.2, 10.0, 5.0, 1.0])
    assert tpr_at_fpr(members, nonmembers, 0.001) == 0.4  # FPR < 0.001: no false positive allowed
    assert tpr_at_fpr(members, nonmembers, 0.001, strict=False) == 0.7  # FPR ≤ 0.001 admits one
    assert tpr_at_fpr(members, nonmembers, 0.0011) == 0.7  # just above 1/1000 both rules agree
    # The attack reports use the same rule: LiRA's metrics and the loss-threshold attack (score = −loss).
    assert lira_attack_metrics(members, nonmembers)["tpr_at_0.1pct_fpr"] == 0.4
    assert loss_threshold_attack(-members, -nonmembers)["tpr_at_0.1pct_fpr"] == 0.4
    # 1%: FP < 10 reaches down to 991 and FP ≤ 10 to 990; no member lies in between, so both give 0.7.
    assert lira_attack_metrics(members, nonmembers)["tpr_at_1pct_fpr"] == 0.7
    assert tpr_at_fpr(members, nonmembers, 0.01, strict=False) == 0.7


def _released_style_epsilon(retrain: np.ndarray, unlearn: np.ndarray) -> float:
    """The released single-threshold family with torch.linspace's real float32 grid (band family in float64,
    as there), with the challenge's special rules, for one example."""
    pos, neg = (retrain, unlearn) if np.median(retrain) > np.median(unlearn) else (unlearn, retrain)
    pd, nd = np.ptp(pos), np.ptp(neg)
    p, n = (neg, pos) if pd >= nd else (pos, neg)
    w = min(pd, nd)
    lo, hi = p.min() + w - 2.0, p.max() + 2.0
    rights = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
    left = np.concatenate([np.linspace(r - w - 2.0, r - w + 2.0, 400) for r in rights])
    right = np.repeat(rights, 400)
    inside = lambda v: (left[None] <= v[:, None]) & (v[:, None] <= right[None])  # noqa: E731
    pooled = torch.from_numpy(np.concatenate([pos, neg]))
    grid = torch.linspace(pooled.min(), pooled.max(), int(torch.ceil((pooled.max() - pooled.min()) * 100)))
    t = grid.numpy().astype(np.float64)  # float32 thresholds, compared with float64 values
    fpr = np.concatenate([inside(n).mean(0), (neg[:, None] >= t[None]).mean(0)])
    fnr = np.concatenate([1 - inside(p).mean(0), (pos[:, None] < t[None]).mean(0)])
    if np.any((fpr == 0) & (fnr == 0)):
        return EPSILON_CAP
    keep = (fpr > 0) & (fnr > 0)
    with np.errstate(invalid="ignore"):
        terms = np.stack([np.log(1 - DELTA - fpr[keep]) - np.log(fnr[keep]),
                          np.log(1 - DELTA - fnr[keep]) - np.log(fpr[keep])])
    terms = terms[np.isfinite(terms)]
    return max(0.0, float(terms.max())) if terms.size else 0.0


def test_epsilon_on_a_grid_point_can_differ_from_the_released_float32_grid_up_to_the_cap():
    """The docstring's worst case: a perfect separation whose only separating threshold is a float64 grid
    point that torch's float32 grid moves past the smallest unlearned value."""
    lo, hi = 0.0, 2.5
    num = int(math.ceil((hi - lo) * 100))
    k = np.arange(num)
    step = (hi - lo) / (num - 1)
    grid64 = np.where(k < num // 2, lo + step * k, hi - step * (num - 1 - k))
    grid32 = torch.linspace(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64),
                            num).numpy().astype(np.float64)
    j = next(i for i in range(num) if 0.9 < grid64[i] < 1.5 and grid32[i] > grid64[i])
    retrain = np.array([0.0, 0.4, 0.8, np.nextafter(grid64[j], -np.inf)])
    unlearn = np.array([grid64[j], 1.6, 2.0, 2.5])
    ours = float(per_example_epsilon(retrain[:, None], unlearn[:, None])[0])
    released = _released_style_epsilon(retrain, unlearn)
    assert ours == EPSILON_CAP
    assert released == pytest.approx(math.log(3 * (1 - DELTA) / 1), abs=1e-3)  # 1.10, from the band family


def test_training_that_diverges_stops_with_one_line_and_writes_nothing(cli_runner, tmp_path):
    out = tmp_path / "train.json"
    result = cli_runner.invoke(cli, ["--quiet", "train", "--dataset", "synthetic", "--epochs", "3", "--lr", "1e9",
                                     "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "train original diverged at step" in lines[0] and "--lr" in lines[0], result.output
    assert not out.exists() and not list((tmp_path / "cache").glob("models/*.pt"))
