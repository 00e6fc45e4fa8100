"""Reference models, the exposure objective, the method's own lower level and the exposure selector.

Checked here: every sample is held out by exactly half of the reference models and the per-model outputs
are the models' own; OUT/IN summaries equal a per-sample transcription; the cache and the setting's memo
are reused and keyed by models, seed and data; the memorization proxy is IN − OUT of the same models;
the exposure objective against a hand computation on both sides of the OUT mean; `lower_level` picks the
optimiser and lr the inner steps run; the exposure selector finds planted memorised (flipped-label)
samples; the unrolled hypergradient with the exposure objective matches central finite differences.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypergradients import assert_matches_finite_differences

import worstforget.training.ensemble as ensemble_module
from worstforget.core.cache import ArrayCache
from worstforget.core.errors import ConfigError
from worstforget.forget_sets import SELECTORS, exposure_scores
from worstforget.methods import make_method
from worstforget.search import SearchConfig
from worstforget.search.objectives import OBJECTIVES, per_sample_objective, uses_references
from worstforget.search.problem import Problem
from worstforget.search.solvers import SOLVERS
from worstforget.search.solvers.first_order import lower_method
from worstforget.setting import prepare_setting
from worstforget.training.loop import fit
from worstforget.training.memorization import memorization_scores
from worstforget.training.reference import ReferenceStats, SampleReferences, exposure, reference_statistics


@pytest.fixture()
def watched(monkeypatch):
    """Records every ensemble training (number of models, masks) and keeps the trained models."""
    calls = []
    real = ensemble_module.fit_ensemble

    def watch(*args, **kwargs):
        models = real(*args, **kwargs)
        calls.append({"models": models, "masks": kwargs["sample_weights"].bool().cpu()})
        return models

    monkeypatch.setattr(ensemble_module, "fit_ensemble", watch)
    return calls


@pytest.fixture()
def setting(prepared):
    return prepared(dataset="synthetic", train_overrides={"epochs": 15})


def test_reference_outputs_are_the_models_and_every_sample_is_out_of_exactly_half(watched, synthetic, tiny_spec,
                                                                                    tmp_path):
    stats = reference_statistics(tiny_spec, synthetic, num_models=6, seed=0, cache=ArrayCache(tmp_path))
    assert stats.inside.shape == stats.prob.shape == stats.lsc.shape == (6, synthetic.num_train)
    assert np.array_equal(stats.inside.sum(0), np.full(synthetic.num_train, 3))  # OUT of exactly K/2
    assert np.array_equal(stats.inside, watched[0]["masks"].numpy())  # the masks the models trained with
    assert len({tuple(col) for col in stats.inside.T}) > 1  # the halves differ between samples
    x, y = synthetic.x_train, synthetic.y_train
    for k, model in enumerate(watched[0]["models"]):
        with torch.no_grad():
            p = torch.softmax(model(x).double(), 1)
        p_y = p[torch.arange(len(y)), y]
        np.testing.assert_allclose(stats.prob[k], p_y.numpy(), rtol=1e-5, atol=1e-6)
        # the logit-scaled confidence by its definition log p_y − log(1 − p_y), where that is well conditioned
        fine = (p_y > 1e-6) & (p_y < 1 - 1e-6)
        np.testing.assert_allclose(stats.lsc[k][fine.numpy()], torch.log(p_y / (1 - p_y))[fine].numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_out_and_in_summaries_equal_a_per_sample_transcription():
    rng = np.random.default_rng(0)
    inside = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 0, 1]], dtype=bool)  # (K=4, N=4)
    stats = ReferenceStats(inside=inside, prob=rng.uniform(size=(4, 4)).astype(np.float32),
                           lsc=rng.normal(size=(4, 4)) * 3)
    for unit in ("prob", "lsc"):
        values = stats.values(unit)
        for i in range(4):
            out = [values[k, i] for k in range(4) if not inside[k, i]]
            inn = [values[k, i] for k in range(4) if inside[k, i]]
            assert stats.out_mean(unit)[i] == pytest.approx(sum(out) / len(out), rel=1e-6)
            assert stats.out_std(unit)[i] == pytest.approx(
                math.sqrt(sum((v - np.mean(out))**2 for v in out) / len(out)), rel=1e-5, abs=1e-7)
            assert stats.in_mean(unit)[i] == pytest.approx(sum(inn) / len(inn), rel=1e-6)
    refs = SampleReferences.from_stats(stats, device="cpu")
    assert refs.lsc_mean.dtype == torch.float64
    np.testing.assert_allclose(refs.prob_std.numpy(), stats.out_std("prob"), rtol=1e-7)
    with pytest.raises(ConfigError, match="unit"):
        stats.values("loss")


def test_reference_cache_is_reused_and_keyed_by_models_seed_and_data(watched, synthetic, tiny_spec, tmp_path):
    cache = ArrayCache(tmp_path)
    first = reference_statistics(tiny_spec, synthetic, num_models=4, seed=0, cache=cache)
    again = reference_statistics(tiny_spec, synthetic, num_models=4, seed=0, cache=cache)
    assert len(watched) == 1
    for name in ("inside", "prob", "lsc"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    reference_statistics(tiny_spec, synthetic, num_models=4, seed=1, cache=cache)
    reference_statistics(tiny_spec, synthetic, num_models=6, seed=0, cache=cache)
    reference_statistics(tiny_spec, replace(synthetic, fingerprint=synthetic.fingerprint + "-other"), num_models=4,
                         seed=0, cache=cache)
    assert [len(c["models"]) for c in watched] == [4, 4, 6, 4]
    # the memorization proxy reads the same models: IN − OUT mean probability, no training of its own
    mem = memorization_scores(tiny_spec, synthetic, num_models=4, seed=0, cache=cache)
    assert len(watched) == 4
    np.testing.assert_array_equal(mem, first.in_mean("prob") - first.out_mean("prob"))
    with pytest.raises(ConfigError, match="at least 2"):
        reference_statistics(tiny_spec, synthetic, num_models=1, cache=cache)


def test_setting_keeps_its_references_in_memory_and_on_disk(watched, setting, tmp_path):
    a = setting.references(4)
    assert setting.references(4) is a and len(watched) == 1
    assert list((tmp_path / "arrays" / "reference").glob("*.npz"))
    fresh = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path), train_overrides={"epochs": 15})
    assert np.array_equal(fresh.references(4).lsc, a.lsc) and len(watched) == 1  # read from the cache folder
    data = setting.data
    flipped = replace(setting, data=replace(data, y_train=(data.y_train + 1) % data.num_classes,
                                            fingerprint=data.fingerprint + "-flip"))
    assert not np.array_equal(flipped.references(4).lsc, a.lsc) and len(watched) == 2  # no stale memo


def hand_lsc(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, 1)
    p_y = p[torch.arange(len(y)), y]
    return torch.log(p_y) - torch.log(1 - p_y)


def test_exposure_objective_against_a_hand_computation_on_both_sides():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0, 2, 0, 2])
    lsc = hand_lsc(logits, y)
    # OUT means placed 1.5 below (under-forgotten), 1.5 above (over-forgotten), at, and 0.5 below the model
    mean = lsc - torch.tensor([1.5, -1.5, 0.0, 0.5], dtype=torch.float64)
    refs = SampleReferences(prob_mean=torch.zeros(4), prob_std=torch.ones(4), lsc_mean=mean,
                            lsc_std=torch.tensor([0.1, 5.0, 1.0, 1.0], dtype=torch.float64))
    values = per_sample_objective(logits, y, "exposure", refs)
    torch.testing.assert_close(values, -torch.tensor([1.5, 1.5, 0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(exposure(logits, y, refs), (lsc - mean).abs())
    assert uses_references("exposure") and not uses_references("loss") and not uses_references("margin")
    with pytest.raises(ValueError, match="reference"):
        OBJECTIVES.get("exposure")(logits, y, None)


def test_search_config_validates_lower_level_reference_models_and_objective():
    default = SearchConfig()  # the audit's defaults: the measured strongest search
    assert (default.objective, default.lower_level, default.reference_models) == ("confidence", "method", 16)
    assert default.warm_fraction is None  # the outer steps span the method's run
    SearchConfig(objective="exposure", lower_level="method", reference_models=2).validate()
    with pytest.raises(ConfigError, match="--lower-level"):
        SearchConfig(lower_level="adam").validate()
    with pytest.raises(ConfigError, match="--reference-models"):
        SearchConfig(reference_models=1).validate()
    with pytest.raises(ConfigError, match="--objective.*exposure"):
        SearchConfig(objective="distance").validate()


def test_lower_level_method_runs_the_methods_own_optimizer_and_lr(watched, setting):
    method = make_method("finetune", {"lr": 0.07, "momentum": 0.5, "weight_decay": 1e-3}).resolved(32)
    base = dict(objective="exposure", reference_models=4, inner_steps=5, outer_steps=1)
    own = Problem(setting=setting, method=method, config=SearchConfig(lower_level="method", **base).validate())
    sign = Problem(setting=setting, method=method, config=SearchConfig(lower_level="sign", **base).validate())
    assert lower_method(own) == method  # the method itself: sgd, lr 0.07, momentum 0.5
    assert (lower_method(sign).optimizer, lower_method(sign).lr, lower_method(sign).momentum) == ("sign", 1e-3, 0.0)
    lr_set = Problem(setting=setting, method=method,
                     config=SearchConfig(lower_level="method", inner_lr=0.2, **base).validate())
    assert lower_method(lr_set) == replace(method, lr=0.2)
    w = torch.full((setting.data.num_train,), 0.1, dtype=torch.float64)
    w[:20] = 0.9
    hg = SOLVERS.get("first_order")(own, w, 3)
    model = method.apply(setting.original, setting.data, w.float(), seed=3, spec=setting.spec, max_steps=5)
    torch.testing.assert_close(hg.per_sample, own.values(model))  # exactly the method's own 5 steps
    torch.testing.assert_close(hg.grad, hg.per_sample + 2 * own.config.gamma * w)
    signed = SOLVERS.get("first_order")(sign, w, 3)
    assert float((signed.per_sample - hg.per_sample).abs().max()) > 1e-3  # the two lower levels differ
    # the exposure constants: the setting's 4 reference models, trained once for both problems
    assert [len(c["models"]) for c in watched] == [4]
    torch.testing.assert_close(own.references().lsc_mean, torch.as_tensor(setting.references(4).out_mean("lsc")))


def test_exposure_selector_finds_memorised_flipped_labels(tmp_path):
    """A flipped label is fitted only by memorising it: models that never saw it disagree with the original."""
    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path),
                              train_overrides={"epochs": 60, "select_best": False})
    data = setting.data
    y = data.y_train.clone()
    flipped = torch.arange(0, 200, 20)  # 10 samples spread over the split
    y[flipped] = (y[flipped] + 1) % data.num_classes
    noisy_data = replace(data, y_train=y, fingerprint=data.fingerprint + "-flip")
    original = fit(setting.spec.build(noisy_data), noisy_data, setting.spec.train, seed=0).eval()
    noisy = replace(setting, data=noisy_data, original=original)
    with torch.no_grad():
        fitted = noisy.original(noisy.data.x_train[flipped]).argmax(1)
    assert int((fitted == y[flipped]).sum()) >= 8  # the planted samples are memorised by the original
    chosen = SELECTORS.get("exposure").choose(noisy, ratio=10 / data.num_train, num_models=8)
    assert len(chosen) == 10
    assert int(torch.isin(chosen, flipped).sum()) >= 7
    scores = exposure_scores(noisy, 8)
    problem = Problem(setting=noisy, method=make_method("finetune", {}).resolved(32),
                      config=SearchConfig(objective="exposure", reference_models=8).validate())
    np.testing.assert_allclose(scores, -problem.values(noisy.original).numpy())  # the objective's own form


def small_double_problem(setting, backend: str, n: int = 40) -> Problem:
    """A float64 copy of the first n samples (as in test_unrolled) with the exposure objective; its reference
    constants are those of the full setting's reference models, restricted to the n samples."""
    stats = setting.references(4)
    data = setting.data
    small = replace(data, x_train=data.x_train[:n].double(), y_train=data.y_train[:n],
                    x_val=data.x_val.double(), x_test=data.x_test.double())
    local = replace(setting, data=small, original=copy.deepcopy(setting.original).double())
    part = ReferenceStats(inside=stats.inside[:, :n], prob=stats.prob[:, :n], lsc=stats.lsc[:, :n])
    def references(num_models, **_):  # the accessor the problem reads, asked for config.reference_models
        assert num_models == 4
        return part

    local.references = references
    config = SearchConfig(solver="unrolled", unroll_backend=backend, inner_steps=3, gamma=1e-3, objective="exposure",
                          reference_models=4).validate()
    method = make_method("neggrad_plus", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}).resolved(16)
    return Problem(setting=local, method=method, config=config)


@pytest.mark.parametrize("backend", ("higher", "torch.func"))
def test_unrolled_hypergradient_with_exposure_matches_finite_differences(setting, backend):
    problem = small_double_problem(setting, backend)
    refs = problem.references()
    assert torch.equal(refs.lsc_mean, torch.as_tensor(setting.references(4).out_mean("lsc")[:40]).double())
    w = torch.full((40,), 0.25, dtype=torch.float64)
    w[::3] = 0.6
    assert_matches_finite_differences(problem, w, 5, gamma=1e-3)


def test_search_cli_passes_lower_level_and_reference_models(monkeypatch, cli_runner, tmp_path):
    import worstforget.audit.worst_case as worst_case
    from worstforget.cli import cli

    seen = {}

    def capture(setting, method, params, cfg, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(worst_case, "audit_worst_case", capture)
    result = cli_runner.invoke(cli, ["search", "--dataset", "synthetic", "--epochs", "1", "--objective", "exposure",
                                     "--lower-level", "method", "--reference-models", "6", "--cache-dir",
                                     str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.objective, cfg.lower_level, cfg.reference_models) == ("exposure", "method", 6)
    bad = cli_runner.invoke(cli, ["search", "--dataset", "synthetic", "--lower-level", "adam"])
    assert bad.exit_code != 0 and "--lower-level" in bad.output


@pytest.mark.parametrize("objective", ("exposure", "loss"))
def test_objective_on_some_rows_is_the_full_objective_at_those_rows(setting, objective):
    """The warm solver scores only the support between refreshes: on training indices `rows` the objective must
    read those samples' labels and reference statistics, giving exactly the full pass's values there."""
    problem = Problem(setting=setting, method=make_method("finetune").resolved(32),
                      config=SearchConfig(objective=objective, reference_models=4).validate())
    full = problem.values(setting.original)
    rows = torch.tensor([7, 0, 31, 2, 19])  # unsorted, as any index set may be
    torch.testing.assert_close(problem.values(setting.original, rows), full[rows], rtol=0, atol=0)
    refs = problem.references()
    if objective == "exposure":
        part = refs.rows(rows)
        for name in ("prob_mean", "prob_std", "lsc_mean", "lsc_std"):
            assert torch.equal(getattr(part, name), getattr(refs, name)[rows])
    else:
        assert refs is None  # the loss reads no references


def test_confidence_objective_is_minus_the_two_sided_true_label_probability_gap():
    from worstforget.search.objectives import per_sample_objective
    from worstforget.training.reference import SampleReferences

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 2])
    e = math.e
    p = torch.tensor([e**2 / (e**2 + 2), 1 / (2 + e), e**-3 / (2 + e**-3)], dtype=torch.float64)  # by hand
    refs = SampleReferences(prob_mean=torch.tensor([0.5, 0.5, 0.01], dtype=torch.float64),
                            prob_std=torch.ones(3, dtype=torch.float64), lsc_mean=torch.zeros(3, dtype=torch.float64),
                            lsc_std=torch.ones(3, dtype=torch.float64))
    got = per_sample_objective(logits, y, "confidence", refs)
    torch.testing.assert_close(got, -(p - refs.prob_mean).abs(), rtol=1e-12, atol=1e-12)
    assert got[0] < 0 and got[1] < 0  # above and below the held-out mean both count
    with pytest.raises(ValueError, match="reference statistics"):
        per_sample_objective(logits, y, "confidence", None)
