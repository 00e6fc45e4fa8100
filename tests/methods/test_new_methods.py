"""Defining properties of SSD, Fisher forgetting, bad teaching, UNSIR and RUM, each against a brute-force
transcription, a hand computation or a statistical law (the generic contract lives in test_methods.py)."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import worstforget.methods.fisher as fisher_module
import worstforget.methods.rum as rum_module
import worstforget.training.ensemble as ensemble_module
from worstforget.core.cache import ArrayCache
from worstforget.core.errors import ConfigError
from worstforget.core.seeds import generator
from worstforget.forget_sets import random_forget_set
from worstforget.methods import METHODS, make_method, parse_params
from worstforget.methods.bad_teacher import bad_teacher_per_sample, incompetent_teacher
from worstforget.methods.base import Batch
from worstforget.methods.fisher import noise_variance, retain_fisher
from worstforget.methods.unsir import error_maximising_noise, impair_loss
from worstforget.training.memorization import memorization_scores

BATCH = 32


def zero_one(data, idx) -> torch.Tensor:
    w = torch.zeros(data.num_train)
    w[idx] = 1.0
    return w


def fractional(data, seed: int = 0) -> torch.Tensor:
    """Random weights in [0, 1] with exact zeros and ones mixed in."""
    w = torch.rand(data.num_train, generator=torch.Generator().manual_seed(seed))
    w[: data.num_train // 3] = 0.0
    w[data.num_train // 3: data.num_train // 3 + 10] = 1.0
    return w


def brute_grads(model, x, y, label=None) -> list[dict[str, torch.Tensor]]:
    """Per-sample gradients one sample at a time with plain autograd (of CE against `label` or y_i)."""
    out = []
    for i in range(len(y)):
        model.zero_grad()
        target = y[i:i + 1] if label is None else torch.tensor([label])
        F.cross_entropy(model(x[i:i + 1]), target).backward()
        out.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    return out


# ----------------------------------------------------------------------------- SSD


@pytest.mark.parametrize("weights, alpha, lam", [("zero_one", 2.0, 0.7), ("fractional", 2.0, 0.7),
                                                 ("zero_one", 0.5, 3.0)])  # λ > α: the bound at 1 bites
def test_ssd_matches_per_parameter_brute_force(weights, alpha, lam, synthetic, trained):
    """Paper: α = 10, λ = 1; other values here so the tiny model has parameters on both sides."""
    data = synthetic
    w = zero_one(data, random_forget_set(data.num_train, 30, 0))
    if weights == "fractional":  # the same forget side, each sample with its own weight in (0.2, 1]
        w = w * (0.2 + 0.8 * torch.rand(data.num_train, generator=torch.Generator().manual_seed(2)))
    method = make_method("ssd", {"alpha": alpha, "dampening": lam})
    out = method.apply(trained, data, w, seed=0)

    model = copy.deepcopy(trained).eval()
    grads = brute_grads(model, data.x_train, data.y_train)
    selected = total = 0
    for (n, p0), (_, p1) in zip(trained.named_parameters(), out.named_parameters()):
        g_all = sum(g[n] ** 2 for g in grads) / data.num_train
        g_f = sum(float(w[i]) * grads[i][n] ** 2 for i in range(data.num_train)) / float(w.sum())
        flat0, flat1 = p0.detach().flatten().tolist(), p1.detach().flatten()
        for j, (d, f) in enumerate(zip(g_all.flatten().tolist(), g_f.flatten().tolist())):
            total += 1
            # no knife-edge case the summation order could flip (a parameter no sample moves is never selected)
            assert f == d == 0 or abs(f - alpha * d) > 1e-6 * (f + alpha * d)
            if f > alpha * d:  # selected: scaled by exactly min(λ·global/forget, 1)
                selected += 1
                expected = flat0[j] * min(lam * d / f, 1.0)
                assert math.isclose(float(flat1[j]), expected, rel_tol=1e-4, abs_tol=1e-9), (n, j)
            else:  # below the threshold: the very same bits
                assert torch.equal(flat1[j], p0.detach().flatten()[j]), (n, j)
    assert 0 < selected < total
    assert method.last_report["dampened_fraction"] == pytest.approx(selected / total)


def test_ssd_without_forget_weight_changes_nothing(synthetic, trained):
    out = make_method("ssd").apply(trained, synthetic, torch.zeros(synthetic.num_train))
    for k, v in trained.state_dict().items():
        assert torch.equal(out.state_dict()[k], v), k


def test_ssd_paper_defaults_dampen_a_small_share_on_a_mislabelled_forget_set(synthetic, trained):
    """Forget samples the model has not fitted (relabelled) have outsized gradients: α = 10 selects some."""
    from dataclasses import replace

    data = replace(synthetic, y_train=synthetic.y_train.clone())
    idx = torch.arange(15)
    data.y_train[idx] = (data.y_train[idx] + 1) % data.num_classes
    method = make_method("ssd")
    method.apply(trained, data, zero_one(data, idx))
    assert 0 < method.last_report["dampened_fraction"] < 0.5


# ----------------------------------------------------------------------------- Fisher forgetting


def test_retain_fisher_matches_per_sample_per_class_loop(synthetic, trained):
    data = synthetic
    w = fractional(data, seed=1)
    model = copy.deepcopy(trained).eval()
    got = retain_fisher(model, data, w, batch_size=BATCH)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        probs = torch.softmax(model(data.x_train), 1)
    for c in range(data.num_classes):
        for i, g in enumerate(brute_grads(model, data.x_train, data.y_train, label=c)):
            for n in expected:
                expected[n] += (1 - float(w[i])) * float(probs[i, c]) * g[n] ** 2
    mass = float((1 - w).sum())
    for n, value in expected.items():
        torch.testing.assert_close(got[n], value / mass, rtol=1e-4, atol=1e-10)


def test_noise_variance_matches_the_reference_rules_entry_by_entry(trained):
    model = trained
    g = torch.Generator().manual_seed(0)
    # Fisher values spanning the clamps: tiny ones hit 1e3 (hidden) or 1e2 (output layer)
    fisher = {n: 10 ** (torch.rand(p.shape, generator=g) * 6 - 5) for n, p in model.named_parameters()}
    alpha = 1e-3
    for row_mean in (False, True):
        got = noise_variance(model, fisher, alpha=alpha, row_mean=row_mean)
        for n, p in model.named_parameters():
            is_output = n.startswith("classifier.")
            cap = 1e2 if is_output else 1e3
            raw = [[min(1.0 / (float(f) + 1e-8), cap) * alpha for f in row.reshape(-1)] for row in
                   fisher[n].reshape(p.shape[0], -1)]
            if row_mean and p.dim() > 1:
                raw = [[sum(r) / len(r)] * len(r) for r in raw]
            boost = 10.0 if (is_output or p.dim() == 1) else 1.0
            expected = torch.tensor([[v * boost for v in r] for r in raw]).reshape(p.shape)
            torch.testing.assert_close(got[n], expected, rtol=1e-5, atol=0.0)


def test_fisher_noise_variance_is_inversely_proportional_to_the_fisher(monkeypatch, synthetic, trained):
    """Across seeds, the empirical variance of θ_u − θ per parameter is α/F: log-log slope −1, ratio 1."""
    calls = {}
    real = fisher_module.retain_fisher

    def memo(model, data, w, *, batch_size):  # the Fisher is tested above; compute it once here
        if "f" not in calls:
            calls["f"] = real(model, data, w, batch_size=batch_size)
        return calls["f"]

    monkeypatch.setattr(fisher_module, "retain_fisher", memo)
    w = zero_one(synthetic, random_forget_set(synthetic.num_train, 30, 0))
    alpha, seeds = 1e-4, 300
    method = make_method("fisher", {"alpha": alpha, "row_mean": False})
    name = "features.1.weight"  # hidden weights: variance α/(F + 1e-8), no multiplier
    p0 = dict(trained.named_parameters())[name].detach()
    deltas = torch.stack([dict(method.apply(trained, synthetic, w, seed=s).named_parameters())[name].detach() - p0
                          for s in range(seeds)])
    fisher = calls["f"][name]
    unclamped = fisher > 2e-3  # 1/(F + 1e-8) below the 1e3 cap
    assert int(unclamped.sum()) > 50 and float(fisher[unclamped].max() / fisher[unclamped].min()) > 10
    var = deltas.square().mean(0)[unclamped]  # the noise has mean zero
    target = alpha / (fisher[unclamped] + 1e-8)
    slope = np.polyfit(np.log(fisher[unclamped].numpy()), np.log(var.numpy()), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.08)
    # each ratio is a χ²_300/300 draw (sd 0.08); their mean over >50 parameters is within ±0.05 of 1
    assert float((var / target).mean()) == pytest.approx(1.0, abs=0.05)


def test_fisher_noise_comes_from_the_seed(synthetic, trained):
    w = zero_one(synthetic, random_forget_set(synthetic.num_train, 30, 0))
    method = make_method("fisher", {"alpha": 1e-4})
    a, b = method.apply(trained, synthetic, w, seed=1), method.apply(trained, synthetic, w, seed=2)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, trained.classifier.weight)


# ----------------------------------------------------------------------------- bad teacher


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax_list(z: list[float]) -> list[float]:
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def test_bad_teacher_loss_on_a_tiny_batch_matches_hand_computed_kl():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1], [2.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    good = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, -1.0], [0.0, -2.0, 1.0]])
    bad = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.0, 0.3], [-0.2, 0.1, 0.0], [0.3, 0.0, -0.1]])
    w = torch.tensor([0.0, 1.0, 0.25, 1.0])
    for temperature in (1.0, 2.0):
        got = bad_teacher_per_sample(student, good, bad, w, temperature)
        for i in range(4):
            s = softmax_list([v / temperature for v in student[i].tolist()])
            kl_good = hand_kl(softmax_list([v / temperature for v in good[i].tolist()]), s)
            kl_bad = hand_kl(softmax_list([v / temperature for v in bad[i].tolist()]), s)
            expected = ((1 - float(w[i])) * kl_good + float(w[i]) * kl_bad) * temperature**2
            assert float(got[i]) == pytest.approx(expected, rel=1e-5)


def test_bad_teacher_with_zero_weights_is_distillation_from_the_original(synthetic, trained):
    """w = 0: SGD on mean KL(original ‖ student) over the whole training set in the loop's batch order.

    The run starts at its teacher, where the KL's gradient vanishes; weight decay pulls the student away
    and the distillation pulls it back, so the comparison exercises both. (Plain SGD here: Adam would
    normalise the vanishing gradient's rounding noise into full-size steps.)
    """
    params = {"epochs": 2, "batch_size": BATCH, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 0.05, "augment": False}
    out = make_method("bad_teacher", params).apply(trained, synthetic, torch.zeros(synthetic.num_train), seed=4)
    student = copy.deepcopy(trained).train()
    teacher = copy.deepcopy(trained).eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=0.05)
    g = generator(4, "unlearn-order")
    for _ in range(2):
        for idx in torch.randperm(synthetic.num_train, generator=g).split(BATCH):
            x = synthetic.x_train[idx]
            with torch.no_grad():
                target = F.softmax(teacher(x), 1)
            loss = F.kl_div(F.log_softmax(student(x), 1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    moved = False
    for (n, p), (_, q), (_, p0) in zip(out.named_parameters(), student.named_parameters(), trained.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
        moved |= not torch.equal(p, p0)
    assert moved


def test_bad_teacher_pulls_forget_samples_toward_the_random_teacher(synthetic, trained, tiny_spec):
    idx = random_forget_set(synthetic.num_train, 30, 0)
    w = zero_one(synthetic, idx)
    method = make_method("bad_teacher", {"epochs": 3, "batch_size": BATCH, "lr": 1e-2})
    out = method.apply(trained, synthetic, w, seed=0, spec=tiny_spec)
    ctx = method.context(trained, synthetic, w, seed=0, spec=tiny_spec)
    bad = incompetent_teacher(ctx)  # the very teacher the run used: built from the run's seed
    x = synthetic.x_train[idx]

    def kl_to_bad(model):
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(model(x), 1), F.softmax(bad(x), 1), reduction="batchmean"))

    assert kl_to_bad(out) < 0.5 * kl_to_bad(trained)
    retain = torch.nonzero(w == 0).flatten()
    with torch.no_grad():  # the retain side stays with the competent teacher
        agree = (out(synthetic.x_train[retain]).argmax(1)
                 == trained(synthetic.x_train[retain]).argmax(1)).float().mean()
    assert float(agree) > 0.9


def test_incompetent_teacher_without_a_recipe_is_a_reinitialised_copy(synthetic, trained, tiny_spec):
    method = make_method("bad_teacher")
    w = torch.zeros(synthetic.num_train)
    bare = incompetent_teacher(method.context(trained, synthetic, w, seed=0))
    again = incompetent_teacher(method.context(trained, synthetic, w, seed=0))
    other = incompetent_teacher(method.context(trained, synthetic, w, seed=1))
    assert torch.equal(bare.classifier.weight, again.classifier.weight)
    assert not torch.equal(bare.classifier.weight, other.classifier.weight)
    assert not torch.equal(bare.classifier.weight, trained.classifier.weight)
    assert all(not p.requires_grad for p in bare.parameters()) and not bare.training


# ----------------------------------------------------------------------------- UNSIR


def test_unsir_noise_raises_the_original_loss_on_the_forget_labels(synthetic, trained):
    y = synthetic.y_train[:40]
    init = torch.randn((40, *synthetic.input_shape), generator=torch.Generator().manual_seed(0))
    learned = error_maximising_noise(trained, init, y, steps=40, lr=0.1, penalty=0.1, batch_size=16)
    with torch.no_grad():
        before = F.cross_entropy(trained(init), y, reduction="none")
        after = F.cross_entropy(trained(learned), y, reduction="none")
    assert float(after.mean()) > float(before.mean()) + 1.0
    assert float((after > before).float().mean()) > 0.9
    # each input has its own objective and Adam is element-wise: chunking does not change the noise
    one_chunk = error_maximising_noise(trained, init, y, steps=40, lr=0.1, penalty=0.1, batch_size=1000)
    torch.testing.assert_close(learned, one_chunk, rtol=1e-4, atol=1e-5)


def test_unsir_impair_loss_mixes_real_and_noise_inputs_by_weight(synthetic, trained):
    method = make_method("unsir", {"batch_size": BATCH, "noise_steps": 5})
    w = zero_one(synthetic, torch.tensor([1, 4, 6]))
    w[2] = 0.25
    ctx = method.context(trained, synthetic, w, seed=0)
    method.prepare(copy.deepcopy(trained), ctx)
    idx = torch.arange(8)
    b = Batch(idx=idx, x=synthetic.x_train[idx], y=synthetic.y_train[idx], w=w[idx], norm=torch.ones(()))
    got = impair_loss(trained, {"all": b}, ctx)
    noise = ctx.extra["unsir_noise"]  # rows in index order of w > 0: samples 1, 2, 4, 6
    assert noise.shape == (4, *synthetic.input_shape)
    with torch.no_grad():
        terms = []
        for i in range(8):
            real = F.cross_entropy(trained(b.x[i:i + 1]), b.y[i:i + 1])
            row = {1: 0, 2: 1, 4: 2, 6: 3}.get(i)
            fake = F.cross_entropy(trained(noise[row:row + 1]), b.y[i:i + 1]) if row is not None else 0.0
            terms.append((1 - float(w[i])) * float(real) + float(w[i]) * float(fake))
    assert float(got.detach()) == pytest.approx(sum(terms) / 8, rel=1e-5)


def test_unsir_impairs_then_repairs_at_their_learning_rates(synthetic, trained):
    method = make_method("unsir", {"epochs": 3, "impair_epochs": 1, "lr": 0.02, "repair_lr": 0.005})
    ctx = method.context(trained, synthetic, torch.zeros(synthetic.num_train), seed=0)
    assert [p.streams for p in method.phases(0, ctx)] == [("all",)]
    assert [p.streams for p in method.phases(1, ctx)] == [("retain",)] == [p.streams for p in method.phases(2, ctx)]
    ctx.epoch = 0
    assert method.lr_scale(ctx) == 1.0
    ctx.epoch = 2
    assert method.lr * method.lr_scale(ctx) == pytest.approx(0.005)


def test_unsir_raises_forget_loss_more_than_finetune(synthetic, trained):
    idx = random_forget_set(synthetic.num_train, 30, 0)
    w = zero_one(synthetic, idx)
    out = make_method("unsir", {"batch_size": BATCH}).apply(trained, synthetic, w, seed=0)
    ft = make_method("finetune", {"batch_size": BATCH, "epochs": 2, "optimizer": "adam", "lr": 0.01,
                                  "weight_decay": 0.0}).apply(trained, synthetic, w, seed=0)
    x, y = synthetic.x_train[idx], synthetic.y_train[idx]
    with torch.no_grad():
        assert float(F.cross_entropy(out(x), y)) > float(F.cross_entropy(ft(x), y))


# ----------------------------------------------------------------------------- RUM and memorization


def test_memorization_groups_are_disjoint_ordered_and_cover_the_forget_side():
    g = np.random.default_rng(0)
    scores = g.normal(size=100).astype(np.float32)
    scores[:10] = 0.5  # ties are broken by index
    w = torch.zeros(100)
    w[::3] = 1.0
    w[1::7] = 0.3
    groups = rum_module.memorization_groups(scores, w)
    assert len(groups) == 3
    flat = torch.cat(groups)
    assert sorted(flat.tolist()) == torch.nonzero(w > 0).flatten().tolist()  # cover, no duplicates
    sizes = [len(x) for x in groups]
    assert max(sizes) - min(sizes) <= 1
    for lo, hi in itertools.pairwise(groups):  # every score of a lower group ≤ every score of the next
        assert scores[lo.numpy()].max() <= scores[hi.numpy()].min()
    for grp in groups:
        assert torch.equal(grp, grp.sort().values)


def test_rum_runs_the_base_once_per_group_low_to_high(monkeypatch, synthetic, trained, tiny_spec):
    n = synthetic.num_train
    scores = np.random.default_rng(1).normal(size=n).astype(np.float32)
    monkeypatch.setattr(rum_module, "memorization_scores", lambda spec, data, **kw: scores)
    finetune_cls = METHODS.get("finetune")
    real_apply = finetune_cls.apply
    calls = []

    def spy(self, original, data, weights, **kw):
        calls.append({"x": data.x_train.clone(), "w": weights.clone(), "lr": self.lr, "batch": self.batch_size,
                      "original": original})
        return real_apply(self, original, data, weights, **kw)

    monkeypatch.setattr(finetune_cls, "apply", spy)
    w = fractional(synthetic, seed=3)
    w[w < 0.5] = 0.0  # a forget side of mixed 0/1 and fractional weights
    params = {"base_params": {"lr": 0.02, "epochs": 1}, "group_params": {"high": {"lr": 0.005}}, "batch_size": 16}
    out = make_method("rum", params).apply(trained, synthetic, w, seed=0, spec=tiny_spec)

    forget = torch.nonzero(w > 0).flatten().numpy()
    order = forget[np.argsort(scores[forget], kind="stable")]
    expected_groups = [torch.as_tensor(np.sort(p)) for p in np.array_split(order, 3)]
    assert len(calls) == 3
    removed: list[int] = []
    for k, (call, group) in enumerate(zip(calls, expected_groups)):
        keep = torch.tensor([i for i in range(n) if i not in set(removed)])
        assert torch.equal(call["x"], synthetic.x_train[keep])  # earlier groups are out of the data
        in_group = torch.isin(keep, group)
        torch.testing.assert_close(call["w"], torch.where(in_group, w[keep], torch.zeros(())), rtol=0, atol=0)
        assert call["lr"] == (0.005 if k == 2 else 0.02) and call["batch"] == 16
        removed += group.tolist()
    assert calls[0]["original"] is trained and calls[1]["original"] is not trained  # each step starts from the last
    assert not torch.equal(out.classifier.weight, trained.classifier.weight)


def test_rum_skips_empty_groups(monkeypatch, synthetic, trained, tiny_spec):
    monkeypatch.setattr(rum_module, "memorization_scores", lambda spec, data, **kw: np.zeros(data.num_train))
    calls = []
    cls = METHODS.get("finetune")
    real_apply = cls.apply
    monkeypatch.setattr(cls, "apply",
                        lambda self, o, d, w, **kw: calls.append(w.clone()) or real_apply(self, o, d, w, **kw))
    make_method("rum", {"base_params": {"epochs": 1}}).apply(trained, synthetic, zero_one(synthetic, [3, 9]),
                                                              seed=0, spec=tiny_spec)
    assert [int(c.sum()) for c in calls] == [1, 1]  # groups of sizes 1, 1, 0


@pytest.mark.parametrize("params, match", [({"base": "rum"}, "cannot run rum"), ({"base": "sisa"}, "cannot run sisa"),
                                           ({"group_params": {"top": {}}}, "unknown group"),
                                           ({"base_params": {"nosuch": 1}}, "no hyper-parameter")])
def test_rum_rejects_bad_configuration(params, match, synthetic, trained, tiny_spec):
    with pytest.raises(ConfigError, match=match):
        make_method("rum", params).apply(trained, synthetic, zero_one(synthetic, [1, 2]), spec=tiny_spec)


def test_rum_needs_the_recipe(synthetic, trained):
    with pytest.raises(ConfigError, match="spec"):
        make_method("rum").apply(trained, synthetic, zero_one(synthetic, [1, 2]))


def test_rum_parameters_parse_from_the_command_line():
    out = parse_params("rum", ["base=neggrad_plus", "base_params={'lr': 0.01, 'beta': 0.97}", "memorization_models=4"])
    assert out == {"base": "neggrad_plus", "base_params": {"lr": 0.01, "beta": 0.97}, "memorization_models": 4}


def test_memorization_scores_are_cached_per_recipe_data_models_and_seed(monkeypatch, synthetic, tiny_spec, tmp_path):
    cache = ArrayCache(tmp_path)
    trainings = []
    real = ensemble_module.fit_ensemble

    def counting(*args, **kwargs):
        trainings.append(len(kwargs["seeds"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ensemble_module, "fit_ensemble", counting)
    first = memorization_scores(tiny_spec, synthetic, num_models=4, seed=0, cache=cache)
    again = memorization_scores(tiny_spec, synthetic, num_models=4, seed=0, cache=cache)
    assert trainings == [4] and np.array_equal(first, again) and first.shape == (synthetic.num_train,)
    memorization_scores(tiny_spec, synthetic, num_models=4, seed=1, cache=cache)
    memorization_scores(tiny_spec, synthetic, num_models=2, seed=0, cache=cache)
    from dataclasses import replace
    memorization_scores(tiny_spec, replace(synthetic, fingerprint=synthetic.fingerprint + "-other"), num_models=4,
                        seed=0, cache=cache)
    memorization_scores(replace(tiny_spec, seed=5), synthetic, num_models=4, seed=0, cache=cache)
    assert trainings == [4, 4, 2, 4, 4]  # every key component triggers its own training
    uncached = memorization_scores(tiny_spec, synthetic, num_models=4, seed=0,
                                   cache=ArrayCache(tmp_path, enabled=False))
    assert np.allclose(uncached, first, atol=1e-5) and trainings[-1] == 4


def test_memorization_scores_measure_trained_on_minus_held_out_confidence(monkeypatch, synthetic, tiny_spec, tmp_path):
    """The score equals the mean confidence of the models that trained on a sample minus the others'."""
    cache = ArrayCache(tmp_path)
    captured = {}
    real = ensemble_module.fit_ensemble

    def keep(*args, **kwargs):
        models = real(*args, **kwargs)
        captured["models"], captured["masks"] = models, kwargs["sample_weights"].bool()
        return models

    monkeypatch.setattr(ensemble_module, "fit_ensemble", keep)
    scores = memorization_scores(tiny_spec, synthetic, num_models=4, seed=0, cache=cache)
    masks = captured["masks"]
    assert torch.equal(masks.sum(0), torch.full((synthetic.num_train,), 2))  # in exactly half of the models
    i = 17
    with torch.no_grad():
        conf = [float(torch.softmax(m(synthetic.x_train[i:i + 1]), 1)[0, synthetic.y_train[i]])
                for m in captured["models"]]
    inside = np.mean([c for c, m in zip(conf, masks[:, i]) if m])
    outside = np.mean([c for c, m in zip(conf, masks[:, i]) if not m])
    assert scores[i] == pytest.approx(inside - outside, abs=1e-5)


def test_memorization_selector_wrapper_uses_the_core_and_the_setting_cache(tmp_path):
    from worstforget.forget_sets import memorization_scores as selector_scores
    from worstforget.setting import prepare_setting

    setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=str(tmp_path),
                              train_overrides={"epochs": 3})
    a = selector_scores(setting, num_models=2, seed=0)
    b = memorization_scores(setting.spec, setting.data, num_models=2, seed=0, cache=ArrayCache(tmp_path))
    assert np.array_equal(a, b)
    assert list((tmp_path / "arrays" / "memorization").glob("*.npz"))
