"""The library's CPU SGD is torch.optim.SGD's update bit for bit, saves and loads torch's state layout, and a
training in a fresh process imports no torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from worstforget.training.loop import TrainConfig, _sgd
from worstforget.training.optim import SGD, SignSGD, library_optimizer, make_optimizer


def _problem():
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(3), torch.randn(2)]
    return weights, torch.randn(11, 5)


def _steps(w, opt, x, steps: range, after=None):
    for step in steps:
        opt.zero_grad(set_to_none=True)
        loss = torch.tanh(x @ w[0] + w[1]).pow(2).sum() + (0.0 if step % 3 else w[2].pow(3).sum())  # w[2] idle
        loss.backward()
        if step == 2:
            for group in opt.param_groups:
                group["lr"] *= 0.5  # a schedule changes the rate between steps
        opt.step()
        if after is not None:
            after(step, opt)


def _run(opt_factory, steps: int = 7, after=None):
    weights, x = _problem()
    w = [t.clone().requires_grad_(True) for t in weights]
    opt = opt_factory(w)
    _steps(w, opt, x, range(steps), after)
    return w, opt


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 5e-4, False),
                                                            (0.9, 5e-4, True), (0.0, 1e-2, False)])
def test_sgd_takes_torchs_steps_bit_for_bit(momentum, weight_decay, nesterov):
    kw = dict(lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ours, ours_opt = _run(lambda w: SGD(w, **kw))
    theirs, theirs_opt = _run(lambda w: torch.optim.SGD(w, **kw))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], _problem()[0][0])  # it moved
    ours_state, theirs_state = ours_opt.state_dict(), theirs_opt.state_dict()
    assert ours_state["state"].keys() == theirs_state["state"].keys()
    for i, entry in theirs_state["state"].items():
        assert torch.equal(ours_state["state"][i]["momentum_buffer"], entry["momentum_buffer"])
    assert [g["params"] for g in ours_state["param_groups"]] == [g["params"] for g in theirs_state["param_groups"]]
    for key in ("lr", "momentum", "weight_decay", "nesterov", "dampening", "maximize"):
        assert ours_state["param_groups"][0][key] == theirs_state["param_groups"][0][key], key


def test_a_run_resumed_from_either_state_dict_continues_like_the_uninterrupted_run():
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    whole, _ = _run(lambda w: SGD(w, **kw), steps=8)
    saved = {}

    def keep(step, opt):
        if step == 3:
            saved["state"] = opt.state_dict()
    first, _ = _run(lambda w: torch.optim.SGD(w, **kw), steps=4, after=keep)  # torch's layout, read by ours
    w = [t.detach().clone().requires_grad_(True) for t in first]
    opt = SGD(w, **kw)
    opt.load_state_dict(saved["state"])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the halved rate came back with the state
    _steps(w, opt, _problem()[1], range(4, 8))
    for a, b in zip(w, whole):
        assert torch.equal(a, b)
    back = SGD([t.detach().clone() for t in first], **kw)
    back.load_state_dict(opt.state_dict())  # and ours reads its own
    assert all(torch.equal(back.state[p]["momentum_buffer"], opt.state[q]["momentum_buffer"])
               for p, q in zip(back.param_groups[0]["params"], w))
    with pytest.raises(ValueError, match="other parameter groups"):
        SGD(w[:2], **kw).load_state_dict(opt.state_dict())


def test_sign_sgd_steps_by_the_sign_of_the_decayed_gradient():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    opt = SignSGD([w], lr=0.1, weight_decay=1.0)
    w.grad = torch.tensor([-3.0, 1.0, -0.2])  # g + wd·θ = [-2, -1, 0.3]
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([1.1, -1.9, 0.4]))
    opt.zero_grad()
    assert w.grad is None


def test_the_sgd_factory_gives_the_library_optimiser_on_a_cpu():
    w = [torch.zeros(2, requires_grad=True)]
    assert type(make_optimizer("sgd", w, lr=0.1, momentum=0.9, weight_decay=0.0)) is SGD
    assert isinstance(make_optimizer("adam", w, lr=0.1, momentum=0.9, weight_decay=0.0), torch.optim.Adam)
    assert library_optimizer("sgd", "cpu") and library_optimizer("sign", "cuda")
    assert not library_optimizer("sgd", "cuda") and not library_optimizer("adam", "cpu")


def test_the_training_loop_takes_the_recipes_nesterov_and_decay():
    w = [torch.zeros(2, requires_grad=True)]
    cfg = TrainConfig(epochs=1, lr=0.2, momentum=0.8, weight_decay=1e-3, nesterov=True)
    opt = _sgd(w, cfg, torch.device("cpu"))
    assert type(opt) is SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.2, 0.8, 1e-3, True)


CHECK = """
import sys, tempfile
from worstforget.setting import prepare_setting
from worstforget.methods import METHODS
from worstforget.forget_sets import forget_weights, random_forget_set
setting = prepare_setting(dataset="synthetic", device="cpu", cache_dir=tempfile.mkdtemp(),
                          train_overrides={"epochs": 1})
data = setting.data
forget = random_forget_set(data.num_train, data.num_train // 10, seed=0)
METHODS.get("finetune")(epochs=1).apply(setting.original, data, forget_weights(data, forget), seed=0, spec=setting.spec)
from worstforget.training.optim import preload_torch_optim
preload_torch_optim("sgd", "cpu")
preload_torch_optim("sign", "cpu")
print("torch._dynamo" in sys.modules)
preload_torch_optim("adam", "cpu")
print("torch._dynamo" in sys.modules)
"""


def test_training_and_unlearning_on_a_cpu_import_no_dynamo():
    """torch's optimiser base class imports torch._dynamo (~1.3 s a process); the CPU path must not."""
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-2:] == ["False", "True"]  # only a torch optimiser's preload imports
