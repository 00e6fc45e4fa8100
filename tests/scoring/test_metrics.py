"""Metrics and forget-set helpers: the SVC MIA-Efficacy on constructed confidences, Avg. Gap, `evaluate`
on models with known predictions, `random_forget_set`, and input validation of forget sets and ratios."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worstforget.core.errors import ConfigError, WorstforgetError
from worstforget.forget_sets import check_forget_set, forget_size, random_forget_set
from worstforget.scoring.metrics import avg_gap, evaluate, svc_mia_efficacy

# ----------------------------------------------------------------------------- MIA-Efficacy


def member_conf(rng, n):
    """Confidences of training members: saturated near 1."""
    return np.clip(1 - np.abs(rng.normal(0, 0.01, n)), 0, 1)


def nonmember_conf(rng, n):
    """Confidences of unseen test samples: around 0.3."""
    return np.clip(rng.normal(0.3, 0.05, n), 0, 1)


def test_mia_efficacy_is_high_when_forget_set_looks_like_non_members():
    rng = np.random.default_rng(0)
    eff = svc_mia_efficacy(member_conf(rng, 500), nonmember_conf(rng, 500), nonmember_conf(rng, 200))
    assert eff > 80


def test_mia_efficacy_is_low_when_forget_set_looks_like_members():
    rng = np.random.default_rng(0)
    eff = svc_mia_efficacy(member_conf(rng, 500), nonmember_conf(rng, 500), member_conf(rng, 200))
    assert eff < 20


def test_mia_efficacy_is_near_chance_for_identical_distributions():
    # With no membership signal a single SVC's decision regions are arbitrary (one draw can land anywhere
    # in ~[20, 80]); the efficacy is at chance on average over independent draws of the data.
    values = []
    for s in range(20):
        rng = np.random.default_rng(s)
        eff = svc_mia_efficacy(rng.uniform(0, 1, 300), rng.uniform(0, 1, 300), rng.uniform(0, 1, 1000), seed=s)
        assert 0 <= eff <= 100
        values.append(eff)
    assert abs(np.mean(values) - 50) < 15


def test_mia_efficacy_is_deterministic_per_seed_and_nan_for_empty_forget_set():
    rng = np.random.default_rng(1)
    members, nonmembers, forget = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300), rng.uniform(0, 1, 100)
    first = svc_mia_efficacy(members, nonmembers, forget, seed=4)
    assert first == svc_mia_efficacy(members, nonmembers, forget, seed=4)
    assert np.isnan(svc_mia_efficacy(members, nonmembers, np.zeros(0)))


# ----------------------------------------------------------------------------- Avg. Gap


def test_avg_gap_is_mean_absolute_difference_over_ua_mia_ra_ta():
    method = {"UA": 10.0, "MIA": 20.0, "RA": 90.0, "TA": 80.0, "RTE": 1.0}
    retrain = {"UA": 12.0, "MIA": 16.0, "RA": 95.0, "TA": 80.0, "RTE": 50.0}
    assert avg_gap(method, retrain) == pytest.approx((2 + 4 + 5 + 0) / 4)  # RTE is not part of the gap
    assert avg_gap(retrain, retrain) == 0.0


# ----------------------------------------------------------------------------- evaluate


class LookupModel(nn.Module):
    """Predicts the label of the nearest training point, optionally with a wrong label for chosen rows."""

    def __init__(self, data, wrong: torch.Tensor | None = None):
        super().__init__()
        self.x = data.x_train.flatten(1)
        self.y = data.y_train.clone()
        self.num_classes = data.num_classes
        if wrong is not None:
            self.y[wrong] = (self.y[wrong] + 1) % self.num_classes

    def forward(self, x):
        nearest = torch.cdist(x.flatten(1), self.x).argmin(1)
        return nn.functional.one_hot(self.y[nearest], self.num_classes).float() * 10.0


def test_evaluate_perfect_train_predictor_has_zero_ua_and_full_ra(synthetic):
    forget = random_forget_set(synthetic.num_train, 20, 0)
    metrics = evaluate(LookupModel(synthetic), synthetic, forget)
    assert metrics["UA"] == 0.0
    assert metrics["RA"] == 100.0
    assert 0 <= metrics["TA"] <= 100 and 0 <= metrics["MIA"] <= 100


def test_evaluate_counts_errors_on_the_forget_set_as_unlearning_accuracy(synthetic):
    forget = random_forget_set(synthetic.num_train, 20, 0)
    metrics = evaluate(LookupModel(synthetic, wrong=forget[:5]), synthetic, forget)
    assert metrics["UA"] == pytest.approx(25.0)  # 5 of 20 forget samples misclassified
    assert metrics["RA"] == 100.0


def test_evaluate_mia_numbers_are_those_of_one_fit_after_another_at_any_thread_count(synthetic, trained):
    """The SVC fits share the process's threads; each is still the fit `svc_mia_efficacy` gives alone."""
    from worstforget.scoring.metrics import model_outputs, true_label_confidence
    from worstforget.training.outputs import logit_scaled_confidence

    forget = random_forget_set(synthetic.num_train, 20, 0)
    model = trained
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got.append(evaluate(model, synthetic, forget, mia_seed=5, mia_resamples=3))
    finally:
        torch.set_num_threads(before)
    assert got[0] == got[1]
    out = model_outputs(model, synthetic)
    f = np.zeros(synthetic.num_train, bool)
    f[forget.numpy()] = True
    conf = true_label_confidence(out["train"], synthetic.y_train)
    conf_test = true_label_confidence(out["test"], synthetic.y_test)
    lsc = logit_scaled_confidence(out["train"].double(), synthetic.y_train).numpy()
    lsc_test = logit_scaled_confidence(out["test"].double(), synthetic.y_test).numpy()
    mia = [svc_mia_efficacy(conf[~f], conf_test, conf[f], seed=5 + r) for r in range(3)]
    mia_l = [svc_mia_efficacy(lsc[~f], lsc_test, lsc[f], seed=5 + r, standardize=True) for r in range(3)]
    assert got[0]["MIA"] == pytest.approx(np.mean(mia), abs=1e-12)
    assert got[0]["MIA_std"] == pytest.approx(np.std(mia, ddof=1), abs=1e-12)
    assert got[0]["MIA_logit"] == pytest.approx(np.mean(mia_l), abs=1e-12)


def test_thread_map_keeps_the_order_of_a_loop():
    from worstforget.core.runtime import thread_map

    items = list(range(23))
    assert thread_map(lambda x: x * x, items, workers=4) == [x * x for x in items]
    assert thread_map(lambda x: -x, items, workers=1) == [-x for x in items]
    assert thread_map(str, [], workers=3) == []


# ----------------------------------------------------------------------------- forget sets


def test_random_forget_set_is_deterministic_sorted_unique_and_sized():
    a = random_forget_set(500, 37, seed=3)
    assert torch.equal(a, random_forget_set(500, 37, seed=3))
    assert not torch.equal(a, random_forget_set(500, 37, seed=4))
    assert len(a) == 37
    assert a.dtype == torch.long
    assert torch.equal(a, a.sort().values)
    assert len(torch.unique(a)) == 37
    assert int(a.min()) >= 0 and int(a.max()) < 500


@pytest.mark.parametrize("indices", [
    pytest.param(np.array([], dtype=np.int64), id="empty"),
    pytest.param(np.array([[1, 2], [3, 4]]), id="2-D"),
    pytest.param(np.array([1.0, 2.0]), id="float"),
    pytest.param(np.array([1, 100]), id="too-large"),
    pytest.param(np.array([-1, 3]), id="negative"),
    pytest.param(np.array([4, 2, 4]), id="duplicate"),
    pytest.param(np.arange(100), id="whole-set"),
])
def test_check_forget_set_rejects_invalid_indices(indices):
    with pytest.raises(WorstforgetError):
        check_forget_set(indices, 100)


def test_check_forget_set_returns_sorted_long_tensor():
    out = check_forget_set(np.array([9, 2, 5], dtype=np.int32), 10)
    assert out.dtype == torch.long
    assert out.tolist() == [2, 5, 9]


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5])
def test_forget_size_rejects_ratios_outside_open_unit_interval(ratio):
    with pytest.raises(ConfigError, match="forget-ratio"):
        forget_size(100, ratio)


def test_forget_size_rounds_and_keeps_at_least_one_sample():
    assert forget_size(216, 0.1) == 22
    assert forget_size(10, 0.01) == 1


def test_class_wise_forgetting_measures_test_accuracy_on_remaining_classes(synthetic, trained):
    """Forgetting a whole class: TA counts only test samples of the other classes."""
    from worstforget.scoring.metrics import evaluate, forgotten_classes
    from worstforget.training.loop import accuracy

    forget = torch.nonzero(synthetic.y_train == 0).flatten()
    mask = torch.zeros(synthetic.num_train, dtype=torch.bool)
    mask[forget] = True
    assert forgotten_classes(synthetic, mask).tolist() == [0]
    keep = synthetic.y_test != 0
    expected = accuracy(trained, synthetic.x_test[keep], synthetic.y_test[keep])
    assert evaluate(trained, synthetic, forget)["TA"] == pytest.approx(expected)
    partial = forget[:-1]  # one sample of the class stays: ordinary sample-wise protocol
    assert evaluate(trained, synthetic, partial)["TA"] == pytest.approx(
        accuracy(trained, synthetic.x_test, synthetic.y_test))
