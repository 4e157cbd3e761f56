"""Optimizers, clipping and learning-rate schedules against torch.optim (float64)."""
import math

import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, report, require

SHAPES = [(3, 4), (5,), (1, 1)]


def make_params(rng, dtype="float64"):
    """Fresh (name, data, grad) triples with non-zero values."""
    return [(f"p{i}", rng.standard_normal(s).astype(dtype), np.zeros(s, dtype))
            for i, s in enumerate(SHAPES)]


def run_both(torch, make_fl, make_torch, steps=6, clip=None, seed=0):
    """Apply the same gradient sequence to fastlstm and torch; return both parameter lists."""
    rng = np.random.default_rng(seed)
    params = make_params(rng)
    tensors = [torch.tensor(data.copy(), requires_grad=True) for _, data, _ in params]
    opt, torch_opt = make_fl(params), make_torch(torch, tensors)
    for _ in range(steps):
        for (_, _, grad), tensor in zip(params, tensors):
            grad[...] = rng.standard_normal(grad.shape) * 3
            tensor.grad = torch.tensor(grad.copy())
        if clip == "norm":
            torch.nn.utils.clip_grad_norm_(tensors, 1.5)
        elif clip == "value":
            torch.nn.utils.clip_grad_value_(tensors, 0.7)
        opt.step()
        torch_opt.step()
    return [data for _, data, _ in params], [t.detach().numpy() for t in tensors]


CASES = {
    "sgd": (lambda p: fl.optim.SGD(p, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    "sgd_momentum_dampening_l2": (
        lambda p: fl.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05),
        lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
    "sgd_nesterov": (lambda p: fl.optim.SGD(p, lr=0.1, momentum=0.7, nesterov=True),
                     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.7, nesterov=True)),
    "adam": (lambda p: fl.optim.Adam(p, lr=0.01), lambda t, p: t.optim.Adam(p, lr=0.01)),
    "adam_l2_betas": (
        lambda p: fl.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda t, p: t.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda p: fl.optim.AdamW(p, lr=0.01), lambda t, p: t.optim.AdamW(p, lr=0.01)),
    "rmsprop": (lambda p: fl.optim.RMSprop(p, lr=0.01), lambda t, p: t.optim.RMSprop(p, lr=0.01)),
    "rmsprop_momentum_l2": (
        lambda p: fl.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01),
        lambda t, p: t.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01)),
}


@pytest.mark.parametrize("name", CASES)
def test_optimizers_match_torch(name):
    torch = require("torch")
    ours, theirs = run_both(torch, *CASES[name])
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(f"{name}: parameter {i} after 6 steps", a, b, 1e-12)


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clipping_matches_torch_utilities(clip):
    torch = require("torch")
    kwargs = {"clipnorm": 1.5} if clip == "norm" else {"clipvalue": 0.7}
    ours, theirs = run_both(torch, lambda p: fl.optim.Adam(p, lr=0.01, **kwargs),
                            lambda t, p: t.optim.Adam(p, lr=0.01), clip=clip)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(f"Adam clip{clip}: parameter {i}", a, b, 1e-12)


def test_clipping_leaves_gradients_untouched_but_clip_grad_norm_scales_them():
    rng = np.random.default_rng(1)
    params = make_params(rng)
    for _, _, grad in params:
        grad[...] = 10.0
    before = [g.copy() for _, _, g in params]
    fl.optim.SGD(params, lr=0.1, clipnorm=1.0).step()
    assert all(np.array_equal(g, b) for (_, _, g), b in zip(params, before))
    norm = fl.optim.clip_grad_norm_(params, 2.0)
    assert norm == pytest.approx(10.0 * math.sqrt(12 + 5 + 1))
    assert fl.optim.global_norm([g for _, _, g in params]) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("name", ["sgd_momentum_dampening_l2", "adam", "adamw", "rmsprop"])
def test_float32_parameters_updated_in_place(name):
    rng = np.random.default_rng(2)
    params = make_params(rng, "float32")
    arrays = [data for _, data, _ in params]
    start = [a.copy() for a in arrays]
    opt = CASES[name][0](params)
    for _, _, grad in params:
        grad[...] = 1.0
    opt.step()
    for (_, data, _), array, old in zip(params, arrays, start):
        assert data is array and data.dtype == np.float32 and np.all(data != old)
    opt.zero_grad()
    assert all(np.all(g == 0) for _, _, g in params)


def test_strings_give_keras_defaults_and_configs_round_trip():
    adam = fl.optim.get("adam")
    assert isinstance(adam, fl.optim.Adam) and adam.lr == 1e-3 and not adam.params
    assert fl.optim.get("sgd").lr == 0.01
    rmsprop = fl.optim.get("rmsprop")
    assert rmsprop.lr == 1e-3 and rmsprop.alpha == 0.9
    assert fl.optim.get("adamw").weight_decay == 0.004
    assert fl.optim.Adam(learning_rate=0.02).lr == 0.02
    for opt in (fl.optim.SGD(lr=0.3, momentum=0.5, nesterov=True),
                fl.optim.Adam(lr=0.1, betas=(0.5, 0.6), clipnorm=2.0),
                fl.optim.AdamW(weight_decay=0.3), fl.optim.RMSprop(momentum=0.1, clipvalue=1.0)):
        again = fl.optim.get(fl.optim.serialize(opt))
        assert type(again) is type(opt) and again.get_config() == opt.get_config()


def test_bad_optimizer_arguments_raise():
    with pytest.raises(ValueError, match="clipnorm, clipvalue"):
        fl.optim.SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="lr"):
        fl.optim.Adam(lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        fl.optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov"):
        fl.optim.SGD(nesterov=True)
    with pytest.raises(RuntimeError, match="no parameters"):
        fl.optim.Adam().step()
    with pytest.raises(ValueError, match="empty parameter list"):
        fl.optim.Adam([])
    with pytest.raises(TypeError, match="plain array"):
        fl.optim.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="unknown name 'adagrad'"):
        fl.optim.get("adagrad")


SCHEDULES = {
    "step": (lambda o: fl.optim.StepLR(o, step_size=3, gamma=0.5),
             lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    "exponential": (lambda o: fl.optim.ExponentialLR(o, gamma=0.9),
                    lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    "cosine": (lambda o: fl.optim.CosineAnnealingLR(o, T_max=7, eta_min=0.01),
               lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=0.01)),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_match_torch(name):
    torch = require("torch")
    make_fl, make_torch = SCHEDULES[name]
    opt = fl.optim.SGD(make_params(np.random.default_rng(3)), lr=0.2)
    torch_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    schedule, torch_schedule = make_fl(opt), make_torch(torch, torch_opt)
    ours, theirs = [], []
    for _ in range(10):
        ours.append(opt.lr)
        theirs.append(torch_opt.param_groups[0]["lr"])
        schedule.step()
        torch_opt.step()
        torch_schedule.step()
    assert_close(f"{name} schedule over 10 epochs", ours, theirs, 1e-12)
    assert schedule.get_last_lr() == opt.lr


@pytest.mark.parametrize("kwargs", [dict(), dict(mode="max", patience=1, cooldown=2, factor=0.5),
                                    dict(patience=0, threshold=0.1, threshold_mode="abs",
                                         min_lr=0.05)])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    torch = require("torch")
    opt = fl.optim.SGD(make_params(np.random.default_rng(4)), lr=1.0)
    torch_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ours = fl.optim.ReduceLROnPlateau(opt, **kwargs)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, **kwargs)
    metrics = [5, 4, 4, 4.01, 3.9, 3.95, 3.95, 3.95, 4, 1, 1, 1, 1, 1, 0.99] * 2
    lrs, torch_lrs = [], []
    for value in metrics:
        ours.step(value)
        theirs.step(value)
        lrs.append(opt.lr)
        torch_lrs.append(torch_opt.param_groups[0]["lr"])
    report(f"ReduceLROnPlateau {kwargs}", lrs, torch_lrs)
    assert lrs == pytest.approx(torch_lrs, rel=1e-12)
    assert min(lrs) < 1.0
