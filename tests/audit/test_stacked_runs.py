"""Stacked runs (audit/units.py, audit/attack_eval.py): the Retrain units of an audit, and those of a stackable
method, train as vmapped stacks and give the records one-by-one runs give (same seeds: equal up to float
rounding), whatever the chunking and the executor; each record is cached under the unit key of the one-by-one
path; RTE is one run alone. An attack's N unlearned models of a set train as stacks too."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_script

from worstforget.audit import units as U
from worstforget.audit.units import Unit, UnitPlan, run_unit, run_units, unit_key
from worstforget.core.cache import COMPUTED
from worstforget.core.errors import ConfigError
from worstforget.forget_sets import forget_weights, random_forget_set
from worstforget.methods import make_method
from worstforget.methods.exact import Retrain
from worstforget.setting.recipe import SettingRecipe
from worstforget.training import ensemble
from worstforget.training.ensemble import chunk_sizes, fit_stacked, model_bytes, stack_capacity
from worstforget.training.original import ModelSpec

TIMING = ("RTE", "RTE_stack", "RTE_stack_seconds")




def make_setting(cache, **overrides):
    return SettingRecipe.create(dataset="synthetic", device="cpu", cache_dir=str(cache),
                                train_overrides={"epochs": 4, **overrides}, mia_resamples=2).build()


def retrain_units(setting, num_sets=3, seeds=(0, 1), first_set=0):
    n = setting.data.num_train
    return [Unit("retrain", {}, random_forget_set(n, 20, first_set + r), s, f"set {first_set + r + 1}")
            for r in range(num_sets) for s in seeds]


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def test_stacked_retrain_equals_one_by_one_retrain(tmp_path):
    setting, alone = make_setting(tmp_path / "stacked"), make_setting(tmp_path / "alone")
    units = retrain_units(setting)
    stacked = run_units(setting, units)
    sequential = [run_unit(alone, u.method, u.params, u.forget_set, seed=u.seed) for u in units]
    for s, q in zip(stacked, sequential):
        # tiny float differences in the weights (batched kernels sum in another order) change no prediction
        assert {k: s[k] for k in ("UA", "RA", "TA", "saturated")} == {k: q[k] for k in ("UA", "RA", "TA", "saturated")}
        for k in ("MIA", "MIA_logit"):
            assert abs(s[k] - q[k]) <= 100 / 20 + 1e-9  # at most one of the 20 forget samples flips the SVC
    # and the models themselves: stack row i is Retrain.apply with seed i, up to float rounding
    data, spec = setting.data, setting.spec
    retrain = make_method("retrain", {}).resolved(spec.train.batch_size)
    runs = [(u.forget_set, u.seed) for u in units[:3]]
    pairs = [Retrain.seeds(s) for _, s in runs]
    stack = fit_stacked(spec, data, seeds=[o for _, o in pairs], init_seeds=[i for i, _ in pairs],
                        sample_weights=torch.stack([1 - forget_weights(data, f) for f, _ in runs]),
                        cfg=retrain.recipe(spec))
    for model, (forget, seed) in zip(stack.models(), runs):
        reference = retrain.apply(setting.original, data, forget_weights(data, forget), seed=seed, spec=spec)
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_a_stacked_record_is_the_same_in_any_stack_and_on_any_executor(tmp_path, monkeypatch, process_pool):
    units = retrain_units(make_setting(tmp_path / "probe"))
    together = run_units(make_setting(tmp_path / "together"), units)
    alone_setting = make_setting(tmp_path / "alone")
    alone = [run_units(alone_setting, [u])[0] for u in units]  # stacks of one
    assert process_pool.workers == 2  # two stacks of three, in worker processes
    pooled = run_units(make_setting(tmp_path / "pool"), units, executor=process_pool)
    assert [r["RTE_stack"] for r in together] == [6.0] * 6
    assert [r["RTE_stack"] for r in alone] == [1.0] * 6
    assert [r["RTE_stack"] for r in pooled] == [3.0] * 6
    for a, b, c in zip(together, alone, pooled):
        assert without_timing(a) == without_timing(b) == without_timing(c)  # bit for bit
    # a stack bounded by memory: more, smaller stacks, the same records
    two_models = 2 * model_bytes(alone_setting.spec, alone_setting.data)
    monkeypatch.setattr(ensemble, "memory_budget", lambda device: two_models)
    small = run_units(make_setting(tmp_path / "small"), units)
    assert [r["RTE_stack"] for r in small] == [2.0] * 6
    assert [without_timing(r) for r in small] == [without_timing(r) for r in together]


def test_cached_units_are_not_retrained_and_keys_are_the_one_by_one_keys(tmp_path):
    setting = make_setting(tmp_path / "cache")
    units = retrain_units(setting)
    before = COMPUTED["unit"]
    # one unit computed by the one-by-one path first: the stacked plan reads it instead of training it
    first = run_unit(setting, "retrain", {}, units[0].forget_set, seed=units[0].seed)
    records = run_units(setting, units)
    assert COMPUTED["unit"] - before == 6 and records[0] == first
    assert [r["RTE_stack"] for r in records[1:]] == [5.0] * 5  # the five missing ones, as one stack
    retrain = make_method("retrain", {}).resolved(setting.spec.train.batch_size)
    for u, record in zip(units, records):
        path = setting.records.path("unit", unit_key(setting, retrain, u.forget_set, u.seed))
        assert path.is_file()
        # the one-by-one path finds every stacked record under its own key: nothing recomputed
        assert run_unit(setting, "retrain", {}, u.forget_set, seed=u.seed) == record
    assert COMPUTED["unit"] - before == 6
    # a later plan with two new units trains only those two, as one stack; the cached ones ride along
    more = units + retrain_units(setting, num_sets=1, first_set=7)
    plan = UnitPlan(setting, more)
    assert len(plan.calls) == 1
    again = run_units(setting, more)
    assert COMPUTED["unit"] - before == 8 and again[:6] == records
    assert [r["RTE_stack"] for r in again[6:]] == [2.0, 2.0]


def test_retrain_rte_is_one_run_alone_measured_once_and_methods_divide_by_it(tmp_path):
    from dataclasses import replace

    known = make_setting(tmp_path / "cache")
    before = COMPUTED["run-time"]
    # the original's recipe, timed when it was trained: Retrain's one-run time is that time over its steps
    scaled = run_units(known, retrain_units(known, num_sets=1))
    n, bs, m = known.data.num_train, known.spec.train.batch_size, len(retrain_units(known, num_sets=1)[0].forget_set)
    assert COMPUTED["run-time"] == before
    assert scaled[0]["RTE"] == pytest.approx(known.train_seconds * math.ceil((n - m) / bs) / math.ceil(n / bs))
    setting = replace(known, train_seconds=None)  # a checkpoint: no training time, one Retrain is timed
    records = run_units(setting, retrain_units(setting, num_sets=2, first_set=2))
    assert COMPUTED["run-time"] - before == 1  # one Retrain timed alone, for every stacked record
    assert len({r["RTE"] for r in records}) == 1 and records[0]["RTE"] > 0
    assert len({r["RTE_stack_seconds"] for r in records}) == 1 and records[0]["RTE_stack_seconds"] > 0
    # another audit of the setting, other sets of the same size: the timing is reused
    more = run_units(setting, retrain_units(setting, num_sets=1, first_set=5))
    assert COMPUTED["run-time"] - before == 1 and more[0]["RTE"] == records[0]["RTE"]
    # a method's RTE_fraction is its time over that one-run time (result.run_arrays)
    kinds = U.run_on_kinds(setting, [("finetune", {"epochs": 1})], {"random": [random_forget_set(
        setting.data.num_train, 20, 0)]}, seeds=[0])
    metrics = kinds["random"].metrics
    assert metrics["retrain"]["RTE"][0, 0] == scaled[0]["RTE"]  # that set's Retrain was stacked with `known`
    assert metrics["finetune"]["RTE_fraction"][0, 0] == pytest.approx(
        metrics["finetune"]["RTE"][0, 0] / scaled[0]["RTE"])


def test_units_that_cannot_be_stacked_run_one_by_one(tmp_path, monkeypatch):
    setting = make_setting(tmp_path / "cache")

    def refuse(spec, data):
        raise ConfigError("no stacking here")

    monkeypatch.setattr(U, "check_stackable", refuse)
    units = retrain_units(setting, num_sets=1)
    plan = UnitPlan(setting, units)
    assert [c.fn for c in plan.calls] == [U.unit_task, U.unit_task]
    assert all("RTE_stack" not in r for r in run_units(setting, units))
    # nor are a stackable method's units on such an architecture
    plan = UnitPlan(setting, [Unit("finetune", {}, units[0].forget_set, 0)])
    assert [c.fn for c in plan.calls] == [U.unit_task]
    monkeypatch.undo()
    # where stacks can train: a stackable method's units stack once there are MIN_STACKED_RUNS of them to
    # compute, those of a method stepping with Adam never do
    forget, enough = units[0].forget_set, U.MIN_STACKED_RUNS
    pairs = [(m, s) for m in ("finetune", "bad_teacher") for s in range(enough)]
    plan = UnitPlan(setting, [Unit(m, {}, forget, s) for m, s in pairs])
    assert [c.fn for c in plan.calls] == [U.stack_task] + [U.unit_task] * enough
    plan = UnitPlan(setting, [Unit("finetune", {}, forget, s) for s in range(enough - 1)])
    assert [c.fn for c in plan.calls] == [U.unit_task] * (enough - 1)  # too few: one by one
    plan = UnitPlan(setting, [Unit("retrain", {}, forget, s) for s in range(2)])
    assert [c.fn for c in plan.calls] == [U.stack_task]  # Retrain stacks any number
    # a conv net on a CPU: every run goes one by one (vmapped convolutions are slower there)
    assert not U.has_convolutions(setting.spec, setting.data)
    monkeypatch.setattr(U, "has_convolutions", lambda spec, data: True)
    plan = UnitPlan(setting, [Unit(m, {}, forget, s) for m in ("finetune", "retrain") for s in range(enough)])
    assert [c.fn for c in plan.calls] == [U.unit_task] * (2 * enough)


def test_chunk_sizes_and_capacity():
    assert chunk_sizes(0, 8) == []
    assert chunk_sizes(18, 64) == [18]
    assert chunk_sizes(18, 64, parallelism=2) == [9, 9]
    assert chunk_sizes(18, 5) == [5, 5, 4, 4]
    assert chunk_sizes(3, 64, parallelism=8) == [1, 1, 1]
    assert sum(chunk_sizes(101, 7, 3)) == 101 and max(chunk_sizes(101, 7, 3)) <= 7


def test_capacity_counts_parameters_and_activations(synthetic):
    spec = ModelSpec("mlp", ensemble.TrainConfig(epochs=1, lr=0.1, batch_size=32), params={"hidden": (16,)})
    params = (8 * 16 + 16) + (16 * 3 + 3)
    per_model = model_bytes(spec, synthetic)
    # 8 copies of the float32 parameters, plus activations: never less than the parameters alone
    assert per_model >= ensemble.PARAM_COPIES * 4 * params
    assert stack_capacity(spec, synthetic, budget=10 * per_model) == 10
    assert stack_capacity(spec, synthetic, budget=0) == 1
    assert stack_capacity(spec, synthetic, budget=10 ** 15) == ensemble.MAX_STACK
    bigger = ModelSpec("mlp", spec.train, params={"hidden": (512, 512)})
    assert model_bytes(bigger, synthetic) > per_model


def test_a_model_trains_bit_for_bit_alike_alone_and_in_any_stack(synthetic):
    """The property the records' independence of the chunking rests on: no ensemble row reads another's
    numbers, and no kernel rounds a row by where it sits (the fused SGD kernel finishes a tensor's last
    partial vector in scalar code, so it runs on each model's rows as tensors of their own)."""
    spec = ModelSpec("mlp", ensemble.TrainConfig(epochs=3, lr=0.1, batch_size=32), params={"hidden": (16,)})
    n = synthetic.num_train
    weights = torch.stack([1 - forget_weights(synthetic, random_forget_set(n, 20, r)) for r in range(4)])

    def trained(rows: list[int]) -> dict[str, torch.Tensor]:
        stack = fit_stacked(spec, synthetic, seeds=[10 + r for r in rows], init_seeds=[20 + r for r in rows],
                            sample_weights=weights[rows])
        return {k: v[rows.index(0)] for k, v in stack.params.items()}

    alone = trained([0])
    for rows in ([0, 1], [2, 0, 3], [3, 2, 1, 0]):
        together = trained(rows)
        for name in alone:
            assert torch.equal(alone[name], together[name]), (rows, name)


def method_units(setting, method="finetune", params=None, num_sets=3, seeds=(0, 1)):
    return [Unit(method, dict(params or {"epochs": 2}), u.forget_set, u.seed, u.where)
            for u in retrain_units(setting, num_sets=num_sets, seeds=seeds)]


def test_a_stacked_method_unit_is_its_one_by_one_unit_in_any_stack_and_on_any_executor(tmp_path, process_pool,
                                                                                         monkeypatch):
    monkeypatch.setattr(U, "MIN_STACKED_RUNS", 1)  # every group stacks, down to stacks of one
    setting = make_setting(tmp_path / "together")
    units = method_units(setting)
    before = COMPUTED["run-time"]
    together = run_units(setting, units)
    assert COMPUTED["run-time"] - before == 1  # one finetune run timed alone: every record's RTE
    finetune = make_method("finetune", {"epochs": 2}).resolved(setting.spec.train.batch_size)
    assert together[0]["RTE"] == U.run_seconds(setting, finetune, units[0].forget_set)  # read back, not timed again
    assert COMPUTED["run-time"] - before == 1
    assert [r["RTE_stack"] for r in together] == [6.0] * 6 and len({r["RTE"] for r in together}) == 1
    alone_setting = make_setting(tmp_path / "alone")
    alone = [run_units(alone_setting, [u])[0] for u in units]  # stacks of one
    pooled = run_units(make_setting(tmp_path / "pool"), units, executor=process_pool)
    assert [r["RTE_stack"] for r in pooled] == [3.0] * 6
    for a, b, c in zip(together, alone, pooled):
        assert without_timing(a) == without_timing(b) == without_timing(c)  # bit for bit
    # against the method's own loop, one unit at a time: the same predictions, MIA within one flipped sample
    sequential = make_setting(tmp_path / "sequential")
    for unit, record in zip(units, together):
        one = run_unit(sequential, unit.method, unit.params, unit.forget_set, seed=unit.seed)
        assert {k: one[k] for k in ("UA", "RA", "TA")} == {k: record[k] for k in ("UA", "RA", "TA")}
        assert abs(one["MIA"] - record["MIA"]) <= 100 / 20 + 1e-9 and "RTE_stack" not in one


def test_a_unit_that_diverges_in_a_stack_fails_as_it_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(U, "MIN_STACKED_RUNS", 2)
    setting = make_setting(tmp_path / "cache")
    units = method_units(setting, "gradient_ascent", {"lr": 1e30, "epochs": 3}, num_sets=1)
    assert [c.fn for c in UnitPlan(setting, units).calls] == [U.stack_task]
    with pytest.raises(Exception) as stacked:
        run_units(setting, units)
    with pytest.raises(Exception) as alone:
        run_unit(make_setting(tmp_path / "alone"), units[0].method, units[0].params, units[0].forget_set, seed=0)
    assert "diverged" in str(alone.value) and str(alone.value) in str(stacked.value)


def test_an_attacks_unlearned_models_train_as_one_stack_per_set(tmp_path, monkeypatch):
    from worstforget.audit import attack_eval as A

    monkeypatch.setattr(U, "MIN_STACKED_RUNS", 4)
    setting = make_setting(tmp_path / "stacked")
    forget = random_forget_set(setting.data.num_train, 20, 0)
    params = {"epochs": 2}
    calls = A.statistics_calls("finetune", params, forget, [0, 1, 2, 3])
    assert [c.fn for c in calls] == [A.stacked_statistics_task]
    assert [c.fn for c in A.statistics_calls("bad_teacher", {}, forget, [0, 1])] == [A.model_statistics_task] * 2
    before = COMPUTED["run-time"]
    stacked = A.model_statistics(setting, "finetune", params, forget, [0, 1, 2, 3])
    assert COMPUTED["run-time"] - before == 1
    assert len({float(p["seconds"]) for p in stacked}) == 1  # one run alone: the models' RTE
    alone = make_setting(tmp_path / "alone")
    for seed, arrays in enumerate(stacked):
        one = A.model_statistics_task(alone, "finetune", params, forget, seed)[0]
        np.testing.assert_allclose(arrays["lsc"], one["lsc"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(arrays["loss"], one["loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(arrays["acc"], one["acc"])
    # cached per model: a larger N trains only the new seeds (two: too few to stack, so one by one, each its own
    # time), and the first four read back unchanged
    more = A.model_statistics(setting, "finetune", params, forget, [0, 1, 2, 3, 4, 5])
    for a, b in zip(stacked, more):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert COMPUTED["run-time"] - before == 1 and float(more[4]["seconds"]) != float(more[5]["seconds"])


@pytest.mark.slow
def test_the_audit_cost_benchmark_runs(tmp_path):
    module = load_script("benchmarks/bench_audit.py")
    out = tmp_path / "audit_cost.md"
    assert module.main(["--tiny", "--out", str(out)]) == 0  # each mode's audit runs in a fresh process
    text = out.read_text()
    assert "`python benchmarks/bench_audit.py --tiny --out" in text
    for row in ("| one training of the original |", "| reference models |", "| search |", "| stability search |",
                "| retrain, all kinds (stacked) |", "| retrain, worst_case |", "| retrain, all units |",
                "| finetune, random |", "| audit |"):
        assert row in text, row


def test_the_stack_size_benchmark_runs(tmp_path, capsys):
    module = load_script("benchmarks/bench_stack_size.py")
    out = tmp_path / "sizes.md"
    assert module.main(["--dataset", "synthetic", "--sizes", "2,3", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()  # appended to --out as printed
    rows = [line for line in text.splitlines() if line.startswith("| 2 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and all(float(r.split("|")[4].strip().rstrip("×")) > 0 for r in rows)
