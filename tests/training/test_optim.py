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
    assert type(adam) is fl.optim.KerasAdam and not adam.params
    assert (adam.lr, adam.beta_1, adam.beta_2, adam.epsilon) == (1e-3, 0.9, 0.999, 1e-7)
    sgd = fl.optim.get("SGD")
    assert type(sgd) is fl.optim.KerasSGD and (sgd.lr, sgd.momentum) == (0.01, 0.0)
    rmsprop = fl.optim.get("rmsprop")
    assert type(rmsprop) is fl.optim.KerasRMSprop
    assert (rmsprop.lr, rmsprop.rho, rmsprop.epsilon, rmsprop.momentum) == (1e-3, 0.9, 1e-7, 0.0)
    adamw = fl.optim.get("adamw")
    assert type(adamw) is fl.optim.KerasAdamW and (adamw.weight_decay, adamw.epsilon) == (0.004,
                                                                                          1e-7)
    assert fl.optim.Adam(learning_rate=0.02).lr == 0.02
    adam.learning_rate = 0.5
    assert adam.lr == 0.5
    for opt in (fl.optim.SGD(lr=0.3, momentum=0.5, nesterov=True),
                fl.optim.Adam(lr=0.1, betas=(0.5, 0.6), clipnorm=2.0),
                fl.optim.AdamW(weight_decay=0.3), fl.optim.RMSprop(momentum=0.1, clipvalue=1.0),
                fl.optim.KerasSGD(momentum=0.9, nesterov=True, global_clipnorm=1.0),
                fl.optim.KerasAdam(amsgrad=True, clipnorm=0.5), fl.optim.KerasAdamW(),
                fl.optim.KerasRMSprop(centered=True, momentum=0.2, weight_decay=0.01)):
        again = fl.optim.get(fl.optim.serialize(opt))
        assert type(again) is type(opt) and again.get_config() == opt.get_config()


# ---------------------------------------------------------------- Keras' update equations
def keras_reference(name, config, params, grads_per_step):
    """Keras 3's update_step (keras/src/optimizers/{sgd,adam,rmsprop}.py and
    BaseOptimizer._apply_weight_decay / _clip_gradients), transcribed in float64."""
    lr = config.get("learning_rate")
    wd = config.get("weight_decay") or 0.0
    params = [p.astype(np.float64) for p in params]
    slots = [dict() for _ in params]
    for step, grads in enumerate(grads_per_step, start=1):
        grads = [g.astype(np.float64) for g in grads]
        if config.get("clipnorm"):
            c = config["clipnorm"]
            grads = [g * c / max(np.sqrt(np.sum(g * g)), c) for g in grads]
        if config.get("global_clipnorm"):
            c = config["global_clipnorm"]
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * c / max(norm, c) for g in grads]
        if config.get("clipvalue"):
            grads = [np.clip(g, -config["clipvalue"], config["clipvalue"]) for g in grads]
        for p, g, s in zip(params, grads, slots):
            p -= p * wd * lr
            if name == "sgd":
                mu = config.get("momentum", 0.0)
                if mu:
                    s["m"] = mu * s.get("m", 0.0) - g * lr
                    p += (mu * s["m"] - g * lr) if config.get("nesterov") else s["m"]
                else:
                    p -= g * lr
            elif name == "adam":
                b1, b2, eps = config["beta_1"], config["beta_2"], config["epsilon"]
                alpha = lr * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
                s["m"] = s.get("m", 0.0) + (g - s.get("m", 0.0)) * (1 - b1)
                s["v"] = s.get("v", 0.0) + (g * g - s.get("v", 0.0)) * (1 - b2)
                v = s["v"]
                if config.get("amsgrad"):
                    s["v_hat"] = np.maximum(s.get("v_hat", 0.0), s["v"])
                    v = s["v_hat"]
                p -= (s["m"] * alpha) / (np.sqrt(v) + eps)
            else:   # rmsprop
                rho, eps, mu = config["rho"], config["epsilon"], config.get("momentum", 0.0)
                s["velocity"] = rho * s.get("velocity", 0.0) + (1 - rho) * g * g
                denominator = s["velocity"] + eps
                if config.get("centered"):
                    s["average"] = rho * s.get("average", 0.0) + (1 - rho) * g
                    denominator = s["velocity"] - s["average"] ** 2 + eps
                increment = lr * g / np.sqrt(denominator)
                if mu:
                    s["momentum"] = mu * s.get("momentum", 0.0) + increment
                    p -= s["momentum"]
                else:
                    p -= increment
    return params


KERAS_CASES = [
    ("sgd", "sgd", {}),
    ("sgd", "sgd", dict(momentum=0.9)),
    ("sgd", "sgd", dict(momentum=0.5, nesterov=True, weight_decay=0.01, clipnorm=0.7)),
    ("adam", "adam", {}),
    ("adam", "adam", dict(amsgrad=True, global_clipnorm=1.0, learning_rate=0.05)),
    ("adam", "adamw", {}),
    ("rmsprop", "rmsprop", {}),
    ("rmsprop", "rmsprop", dict(momentum=0.8, centered=True, clipvalue=0.5)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule, string, overrides", KERAS_CASES)
def test_keras_optimizers_follow_keras_update_equations(rule, string, overrides, dtype):
    """Several steps against the update equations of Keras 3, written out in NumPy; the
    strings give Keras' defaults and the gradients include tiny ones, where epsilon's
    placement matters."""
    rng = np.random.default_rng(5)
    params = make_params(rng, dtype)
    opt = fl.optim.get(string)
    config = {**opt.get_config(), **overrides}
    opt = type(opt)(params, **config)
    start = [data.copy() for _, data, _ in params]
    grads_per_step = []
    for step in range(7):
        scale = 1e-4 if step % 3 == 2 else 3.0
        grads = [(rng.standard_normal(g.shape) * scale).astype(dtype) for _, _, g in params]
        for (_, _, grad), value in zip(params, grads):
            grad[...] = value
        opt.step()
        grads_per_step.append(grads)
    expected = keras_reference(rule, config, start, grads_per_step)
    tol = 1e-12 if dtype == "float64" else 2e-6
    for (name, data, _), want in zip(params, expected):
        assert_close(f"{string} {overrides} {name}", data, want, tol)
    moved = max(float(np.max(np.abs(d - s))) for (_, d, _), s in zip(params, start))
    assert moved > 1e-4


def test_keras_and_pytorch_adam_differ_where_epsilon_sits():
    """Same hyperparameters, tiny gradients: Keras' epsilon (outside the bias correction)
    and PyTorch's give different steps, so the two families are not interchangeable."""
    rng = np.random.default_rng(6)
    a, b = make_params(rng), make_params(rng)
    for (_, da, ga), (_, db, gb) in zip(a, b):
        db[...] = da
        ga[...] = gb[...] = 1e-6
    fl.optim.KerasAdam(a, epsilon=1e-7).step()
    fl.optim.Adam(b, eps=1e-7).step()
    assert not np.allclose(a[0][1], b[0][1], rtol=0, atol=1e-6)


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
