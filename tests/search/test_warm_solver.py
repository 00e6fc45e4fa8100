"""The warm solver: its lower level continues across outer steps (parameters and momentum carried over),
restarts when its age passes the method's own run, scores in one batched pass, is deterministic, resumes
exactly after an interruption, works per sample and per class, and runs through the CLI."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from worstforget.cli import cli
from worstforget.core.errors import ConfigError
from worstforget.methods import make_method
from worstforget.search import SearchConfig, loop, search_worst_case
from worstforget.search import checkpoint as checkpoint_module
from worstforget.search import problem as problem_module
from worstforget.search.problem import Problem
from worstforget.search.solvers import SOLVERS, solver_state
from worstforget.search.solvers import warm as warm_module
from worstforget.search.solvers.warm import WarmState, continuation_problem

WARM = SOLVERS.get("warm")
FIRST_ORDER = SOLVERS.get("first_order")


@pytest.fixture()
def setting(prepared):
    return prepared(dataset="synthetic", train_overrides={"epochs": 15})


def make_problem(setting, method="finetune", params=None, **cfg) -> Problem:
    config = SearchConfig(**{"solver": "warm", "objective": "loss", **cfg}).validate()
    return Problem(setting=setting, method=make_method(method, params or {}).resolved(32), config=config)


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def spy_lower_level(monkeypatch) -> list[dict]:
    """Record the parameters and optimiser state the lower level starts and ends each outer step with."""
    calls, real = [], warm_module.run_loop

    def recording(method, stepper, ctx, **kwargs):
        momentum = [s["momentum_buffer"].clone() for s in stepper.opt.state.values() if "momentum_buffer" in s]
        entry = {"params": flat_params(stepper.model), "momentum": momentum}
        real(method, stepper, ctx, **kwargs)
        calls.append({**entry, "exit": flat_params(stepper.model), "steps": ctx.step,
                      "exit_momentum": [s["momentum_buffer"].clone() for s in stepper.opt.state.values()]})

    monkeypatch.setattr(warm_module, "run_loop", recording)
    return calls


def test_lower_level_continues_from_the_previous_outer_step(setting, monkeypatch):
    problem = make_problem(setting, inner_steps=3)
    calls = spy_lower_level(monkeypatch)
    state = solver_state(WARM, problem)
    assert isinstance(state, WarmState) and solver_state(FIRST_ORDER, problem) is None
    n = setting.data.num_train
    w0 = torch.full((n,), 0.1, dtype=torch.float64)
    w1 = torch.linspace(0, 0.3, n, dtype=torch.float64)
    WARM(problem, w0, 11, state=state)
    WARM(problem, w1, 12, state=state)
    original = flat_params(setting.original)
    assert torch.equal(calls[0]["params"], original) and calls[0]["momentum"] == []  # a fresh run at step 0
    assert torch.equal(calls[1]["params"], calls[0]["exit"])  # step 1 starts where step 0 ended ...
    assert not torch.equal(calls[1]["params"], original)
    assert len(calls[1]["momentum"]) > 0  # ... with the optimiser's momentum carried too
    assert all(torch.equal(a, b) for a, b in zip(calls[1]["momentum"], calls[0]["exit_momentum"]))
    assert [c["steps"] for c in calls] == [3, 3] and state.run.age == 6 and state.restarts == 0
    assert problem.inner_steps == 3


def test_default_steps_are_a_fraction_of_an_epoch(setting):
    problem = make_problem(setting, warm_fraction=0.5)
    per_epoch = -(-setting.data.num_train // 32)
    assert problem.inner_steps == round(0.5 * per_epoch)
    assert make_problem(setting, warm_fraction=1e-6).inner_steps == 1
    with pytest.raises(ConfigError, match="warm-fraction"):
        SearchConfig(warm_fraction=0).validate()
    with pytest.raises(ConfigError, match="warm-restart"):
        SearchConfig(warm_restart="sometimes").validate()
    with pytest.raises(ConfigError, match="warm-refresh"):
        SearchConfig(warm_refresh=0).validate()


def test_ascent_restarts_from_the_original_after_its_own_run_length(setting, monkeypatch):
    """Gradient ascent, 1 epoch over a 10-sample forget stream (one batch): its own run is 1 step, so a run
    that already took 2 restarts from the original (fresh momentum) with `budget`, and goes on with `never`."""
    n = setting.data.num_train
    w = torch.zeros(n, dtype=torch.float64)
    w[:10] = 1.0
    original = flat_params(setting.original)
    for policy, restarted in (("budget", True), ("never", False)):
        calls = spy_lower_level(monkeypatch)
        problem = make_problem(setting, "gradient_ascent", {"epochs": 1}, inner_steps=2, warm_restart=policy)
        state = solver_state(WARM, problem)
        assert state.cold_reason is None
        WARM(problem, w, 1, state=state)
        assert state.run_length(state.run.ctx.weights) == 1
        WARM(problem, w, 2, state=state)
        assert torch.equal(calls[1]["params"], original) == restarted
        assert torch.equal(calls[1]["params"], calls[0]["exit"]) != restarted
        assert (calls[1]["momentum"] == []) == restarted
        assert state.restarts == int(restarted) and state.run.age == (2 if restarted else 4)


def test_objective_comes_from_one_batched_pass_of_the_continued_model(setting, monkeypatch):
    """One pass per outer step: over every sample at a refresh step (every `warm_refresh`), else over the
    samples with w > 0, the others keeping their last values; f(w) and the support's gradient are exact."""
    passes, real = [], problem_module.predict_logits

    def counting(model, x, **kwargs):
        passes.append(len(x))
        return real(model, x, **kwargs)

    def fresh_loss(state):
        model = state.run.stepper.model.eval()
        with torch.no_grad():
            logits = model(setting.data.x_train).double()
        return F.cross_entropy(logits, setting.data.y_train, reduction="none")

    monkeypatch.setattr(problem_module, "predict_logits", counting)
    problem = make_problem(setting, inner_steps=2, gamma=0.05, warm_refresh=2)
    state = solver_state(WARM, problem)
    n = setting.data.num_train
    w = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.4
    w[::3] = 0.0
    support = w > 0
    history = []
    for step in range(3):
        hg = WARM(problem, w, step, state=state)
        history.append((hg, fresh_loss(state)))
    assert passes == [n, int(support.sum()), n]  # refresh, support only, refresh
    for hg, loss in history[::2]:  # refresh steps: every value fresh
        torch.testing.assert_close(hg.per_sample, loss, rtol=1e-12, atol=1e-12)
    (first, _), (middle, loss) = history[:2]
    torch.testing.assert_close(middle.per_sample[support], loss[support], rtol=1e-12, atol=1e-12)
    assert torch.equal(middle.per_sample[~support], first.per_sample[~support])  # kept from the refresh
    assert not torch.allclose(loss[~support], first.per_sample[~support])  # (which the model has moved on from)
    torch.testing.assert_close(middle.grad, middle.per_sample + 2 * 0.05 * w)
    assert middle.value == pytest.approx(float((w * loss).sum() + 0.05 * (w**2).sum()), rel=1e-12)


def test_without_a_state_or_with_a_changing_plan_it_is_the_first_order_solver(setting):
    n = setting.data.num_train
    w = torch.full((n,), 0.1, dtype=torch.float64)
    whole = make_problem(setting, solver="first_order")
    whole.whole_run = True  # without inner_steps the fallback runs the method's whole run, not 2 epochs of it
    cold = FIRST_ORDER(whole, w, 5)
    torch.testing.assert_close(WARM(make_problem(setting), w, 5).grad, cold.grad, rtol=0, atol=0)
    assert not torch.equal(FIRST_ORDER(make_problem(setting, solver="first_order"), w, 5).grad, cold.grad)
    scrub = make_problem(setting, "scrub", inner_steps=2)
    state = solver_state(WARM, scrub)
    assert "change with the epoch" in state.cold_reason and state.run is None
    hg = WARM(scrub, w, 5, state=state)
    assert torch.equal(hg.grad, FIRST_ORDER(make_problem(setting, "scrub", solver="first_order", inner_steps=2),
                                            w, 5).grad)
    assert "not an iterative loop" in solver_state(WARM, make_problem(setting, "retrain")).cold_reason
    assert continuation_problem(*_method_and_context(setting, "unsir")) is not None
    for method in ("finetune", "gradient_ascent", "neggrad_plus", "random_label", "salun", "boundary_expand"):
        assert continuation_problem(*_method_and_context(setting, method)) is None, method


def _method_and_context(setting, name):
    method = make_method(name, {}).resolved(32)
    ctx = method.context(setting.original, setting.data, torch.zeros(setting.data.num_train), seed=0)
    return method, ctx


def test_a_finish_that_changes_the_model_is_applied_to_a_copy(setting, monkeypatch):
    """Boundary expand trains into a shadow class and removes it in `finish`: the run keeps its wide head."""
    calls = spy_lower_level(monkeypatch)
    problem = make_problem(setting, "boundary_expand", inner_steps=2)
    state = solver_state(WARM, problem)
    w = torch.full((setting.data.num_train,), 0.1, dtype=torch.float64)
    hg = WARM(problem, w, 0, state=state)
    WARM(problem, w, 1, state=state)
    c = setting.data.num_classes
    assert state.run.stepper.model.classifier.out_features == c + 1
    assert torch.equal(calls[1]["params"], calls[0]["exit"])
    assert torch.isfinite(hg.per_sample).all() and hg.per_sample.shape == (setting.data.num_train,)


def test_search_is_deterministic_and_resumes_exactly(setting, tmp_path, monkeypatch):
    cfg = SearchConfig(solver="warm", outer_steps=5, inner_steps=3, objective="loss", warm_refresh=4)
    a = search_worst_case(setting, "finetune", {}, cfg, seed=3, state_dir=tmp_path / "a")
    b = search_worst_case(setting, "finetune", {}, cfg, seed=3, state_dir=tmp_path / "b")
    assert torch.equal(a.weights, b.weights) and torch.equal(a.indices, b.indices)
    other = search_worst_case(setting, "finetune", {}, cfg, seed=4, state_dir=tmp_path / "o")
    assert not torch.equal(a.weights, other.weights)
    assert a.history["overlap_with_initial"][-1] < 0.6  # the set left its start

    def interrupt_at_third_step(tmp):
        calls = []

        def interrupted(problem, w, seed, state=None):
            calls.append(seed)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return WARM(problem, w, seed, state=state)

        interrupted.new_state = WarmState
        monkeypatch.setattr(loop, "SOLVERS", _Only(interrupted))
        with pytest.raises(KeyboardInterrupt):
            search_worst_case(setting, "finetune", {}, cfg, seed=3, state_dir=tmp)
        monkeypatch.setattr(loop, "SOLVERS", SOLVERS)
        state = torch.load(next(tmp.glob("search-*.pt")), weights_only=True)
        assert state["step"] == 2 and state["solver_state"]["age"] == 6 and "model" in state["solver_state"]

    interrupt_at_third_step(tmp_path / "c")
    resumed = search_worst_case(setting, "finetune", {}, cfg, seed=3, state_dir=tmp_path / "c", resume=True)
    assert torch.equal(resumed.weights, a.weights) and torch.equal(resumed.indices, a.indices)
    assert torch.equal(resumed.weight_history, a.weight_history) and resumed.history == a.history
    # the checkpointed state is what makes it exact: dropping the momentum, the whole run, the count of steps
    # (which decides the refresh) or the stale objective values changes the result
    for broken in ("optimizer", "run", "steps", "values"):
        tmp = tmp_path / f"broken-{broken}"
        interrupt_at_third_step(tmp)
        real_load = WarmState.load_state_dict

        def lossy(self, state, broken=broken):
            if broken == "run":
                return real_load(self, {})
            real_load(self, state)
            if broken == "optimizer":
                self.run.stepper.opt.state.clear()
            elif broken == "steps":
                self.steps = 0
            else:
                self.values = self.values.flip(0)

        monkeypatch.setattr(WarmState, "load_state_dict", lossy)
        wrong = search_worst_case(setting, "finetune", {}, cfg, seed=3, state_dir=tmp, resume=True)
        monkeypatch.setattr(WarmState, "load_state_dict", real_load)
        assert not torch.equal(wrong.weights, a.weights), broken


@pytest.mark.parametrize("method", ["random_label", "salun", "boundary_shrink", "boundary_expand"])
def test_state_round_trip_continues_bit_for_bit(setting, method):
    """A state rebuilt from `state_dict` (the checkpoint's copy) takes the next step exactly as the live one:
    random labels draw from the run's stream, SalUn's mask, the shrink targets and the added neuron come from
    `prepare` on the run's starting weights, replayed."""
    n = setting.data.num_train
    g = torch.Generator().manual_seed(1)
    ws = [torch.rand(n, generator=g, dtype=torch.float64) * 0.3 for _ in range(3)]
    problem = make_problem(setting, method, inner_steps=3)
    live = solver_state(WARM, problem)
    WARM(problem, ws[0], 0, state=live)
    WARM(problem, ws[1], 1, state=live)
    saved = live.state_dict()
    rebuilt = solver_state(WARM, make_problem(setting, method, inner_steps=3))
    rebuilt.load_state_dict(saved)
    a, b = WARM(problem, ws[2], 2, state=live), WARM(problem, ws[2], 2, state=rebuilt)
    assert torch.equal(a.per_sample, b.per_sample)
    assert all(torch.equal(p, q) for p, q in zip(live.run.stepper.model.parameters(),
                                                  rebuilt.run.stepper.model.parameters()))
    fresh = solver_state(WARM, make_problem(setting, method, inner_steps=3))  # the control: a run started anew
    assert not torch.equal(WARM(problem, ws[2], 2, state=fresh).per_sample, a.per_sample)


def test_a_checkpoint_without_the_solver_state_is_not_trusted(setting, tmp_path):
    cfg = SearchConfig(solver="warm", outer_steps=2, inner_steps=2, objective="loss")
    done = search_worst_case(setting, "finetune", {}, cfg, seed=0, state_dir=tmp_path)
    path = next(tmp_path.glob("search-*.pt"))
    checkpoint = checkpoint_module.SearchCheckpoint(tmp_path, done.key, setting.data.num_train, stateful=True)
    assert checkpoint.load(2) is not None
    state = torch.load(path, weights_only=True)
    body = {k: v for k, v in state.items() if k not in ("digest", "solver_state")}
    torch.save({**body, "digest": checkpoint_module.content_digest(body)}, path)
    assert checkpoint.load(2) is None  # inconsistent: the search would start again


def test_class_granularity(setting):
    cfg = SearchConfig(solver="warm", outer_steps=3, inner_steps=2, objective="loss", granularity="class",
                       forget_ratio=0.34, gamma=0.01)
    found = search_worst_case(setting, "finetune", {}, cfg, seed=0, state_dir=None)
    data = setting.data
    assert found.weights.shape == (data.num_classes,) and len(found.units) == 1
    assert torch.equal(found.indices, torch.nonzero(data.y_train == found.units[0]).flatten())
    problem = make_problem(setting, granularity="class", forget_ratio=0.34, inner_steps=2, gamma=0.01)
    state = solver_state(WARM, problem)
    w_var = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    hg = WARM(problem, w_var, 0, state=state)
    assert torch.equal(state.run.ctx.weights, w_var[data.y_train].float())  # each sample gets its class's weight
    means = torch.stack([hg.per_sample[data.y_train == c].mean() for c in range(data.num_classes)])
    torch.testing.assert_close(hg.grad, means + 2 * 0.01 * w_var)


def test_search_keys_read_the_warm_fields_only_for_the_warm_solver(setting):
    base = SearchConfig(solver="first_order")
    assert "warm_fraction" not in base.key_dict() and "warm_fraction" in SearchConfig(solver="warm").key_dict()
    key = lambda cfg: loop.search_key(setting, "finetune", {}, cfg, 0)  # noqa: E731
    assert key(base) == key(SearchConfig(solver="first_order", warm_fraction=0.3))
    assert key(SearchConfig(solver="warm")) != key(SearchConfig(solver="warm", warm_fraction=0.3))
    assert key(SearchConfig(solver="warm")) != key(SearchConfig(solver="warm", warm_restart="never"))
    assert key(SearchConfig(solver="warm")) != key(SearchConfig(solver="warm", warm_refresh=3))


def test_cli_search_with_the_warm_solver(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--quiet", "search", "--method", "ft", "--dataset", "synthetic", "--epochs", "4",
                                      "--solver", "warm", "--outer-steps", "3", "--inner-steps", "3",
                                      "--reference-models", "2", "--num-random", "1", "--seeds", "1",
                                      "--mia-resamples", "1", "--no-stability", "--baselines", "none",
                                      "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["solver"] == "warm" and summary["forget_size"] == round(0.1 * summary["num_train"])
    assert len(summary["search"]["objective"]) == 3


class _Only:
    """A solver registry holding one solver, whatever name is asked for."""

    def __init__(self, solver):
        self.solver = solver

    def get(self, name):
        return self.solver


def test_by_default_the_outer_steps_span_the_methods_own_run(setting):
    """k = ⌈epochs × passes of the lead stream on a set of m samples / outer steps⌉, so the search scores the
    model the method leaves at the end of its run (not after a fraction of its first epoch)."""
    import math

    problem = make_problem(setting, "finetune", {"epochs": 3}, outer_steps=4)
    n, m = setting.data.num_train, problem.budget
    run_length = 3 * math.ceil((n - m) / 32)  # finetune leads with its retain stream, batch 32
    assert problem.inner_steps == math.ceil(run_length / 4)
    ga = make_problem(setting, "gradient_ascent", {"epochs": 2}, outer_steps=4)  # leads with the forget stream
    assert ga.inner_steps == max(1, math.ceil(2 * math.ceil(m / 32) / 4))
    fixed = make_problem(setting, "finetune", {"epochs": 3}, outer_steps=4, warm_fraction=0.5)
    assert fixed.inner_steps == round(0.5 * math.ceil(n / 32))


def test_a_spanning_run_counts_its_steps_on_so_schedules_see_one_run(setting, monkeypatch):
    """Across outer steps the lower level's step counter goes on and its run length stays the method's, so a
    schedule (an lr schedule, ℓ1-sparse's decaying penalty) runs once over the search, not once per outer step."""
    seen = []
    method_cls = type(make_method("l1_sparse", {}))
    real = method_cls.lr_scale

    def spy(self, ctx):
        seen.append((ctx.step, ctx.total_steps))
        return real(self, ctx)

    monkeypatch.setattr(method_cls, "lr_scale", spy)
    problem = make_problem(setting, "l1_sparse", {"epochs": 2, "schedule": "cosine"}, outer_steps=3)
    state = solver_state(WARM, problem)
    w = torch.zeros(setting.data.num_train, dtype=torch.float64)
    w[: problem.budget] = 1.0
    for step in range(3):
        WARM(problem, w, step, state=state)
    k = problem.inner_steps
    assert [s for s, _ in seen] == list(range(3 * k))  # one counter across the outer steps
    totals = {t for _, t in seen}
    assert totals == {max(problem.inner_steps * 3, state.run_length(w))}  # the whole run's length, not k
    assert state.restarts == 0 and state.run.age == 3 * k


def test_a_spanning_run_walks_an_epoch_dependent_plan_in_order(setting, monkeypatch):
    """SCRUB's plan changes with the epoch (max phases, then min phases, lr decays by epoch): spanned over the
    outer steps, the pieces take the plan's steps in the order one run of the method takes them."""
    from worstforget.methods.base import plan_length

    seen = []
    method_cls = type(make_method("scrub", {}))
    real = method_cls.lr_scale
    monkeypatch.setattr(method_cls, "lr_scale", lambda self, ctx: seen.append(ctx.epoch) or real(self, ctx))
    problem = make_problem(setting, "scrub", {"epochs": 3}, outer_steps=4)
    w = torch.zeros(setting.data.num_train, dtype=torch.float64)
    w[: problem.budget] = 1.0
    method = problem.method
    ctx = method.context(setting.original, setting.data, w.float(), seed=0)
    length = plan_length(method, ctx, w.float())
    method.apply(setting.original, setting.data, w.float(), seed=0)
    one_run, seen[:] = list(seen), []
    state = solver_state(WARM, problem)
    assert state.cold_reason is None  # spanning, an epoch-dependent plan is continued, not run from the original
    for step in range(4):
        WARM(problem, w, step, state=state)
    assert len(one_run) == length and seen[:length] == one_run
    assert state.restarts == 0
