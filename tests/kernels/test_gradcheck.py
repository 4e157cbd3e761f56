"""Float64 central-difference gradient checks of the kernels through fastlstm.LSTM."""
import numpy as np
import pytest
from conftest import central_differences, report

import fastlstm as fl

CONFIGS = [
    dict(),
    dict(bias=False),
    dict(peephole=True),
    dict(reverse=True, peephole=True),
    dict(clip=0.9),
    dict(clip=0.9, peephole=True, bidirectional=True),
    dict(num_layers=2, bidirectional=True, peephole=True),
    dict(num_layers=2, dropout=0.5),
]


def loss_and_grads(module, x, hx, lengths, weights):
    """Scalar loss = <out, g> + <h_n, gh> + <c_n, gc>, and its gradients from backward."""
    out, (h_n, c_n) = module(x, hx, lengths=lengths)
    g, gh, gc = weights
    loss = float(np.sum(out * g) + np.sum(h_n * gh) + np.sum(c_n * gc))
    return loss, out


def sample_indices(shape, rng, count=12):
    flat = rng.choice(int(np.prod(shape)), size=min(count, int(np.prod(shape))), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
def test_gradients_match_central_differences(config, lengths):
    rng = np.random.default_rng(0)
    module = fl.LSTM(3, 5, dtype="float64", seed=1, **config)
    if config.get("clip"):   # push pre-activations beyond the clip, away from its edge
        for name, param in module.named_parameters():
            if name.startswith("weight"):
                param *= 4
    D = module.num_directions
    L = module.num_layers
    x = rng.standard_normal((4, 3, 3))
    hx = (rng.standard_normal((D * L, 3, 5)), rng.standard_normal((D * L, 3, 5)))
    weights = (rng.standard_normal((4, 3, D * 5)), rng.standard_normal((D * L, 3, 5)),
               rng.standard_normal((D * L, 3, 5)))

    # Fix the dropout masks: reseed the module's generator before every call.
    def run():
        module._rng = np.random.default_rng(123)
        return loss_and_grads(module, x, hx, lengths, weights)[0]

    module.zero_grad()
    run()
    dx, (dh0, dc0) = module.backward(weights[0], (weights[1], weights[2]))
    worst = 0.0
    for label, array, analytic in [("x", x, dx), ("h0", hx[0], dh0), ("c0", hx[1], dc0)] + [
            (name, param, module.grads[name]) for name, param in module.named_parameters()]:
        indices = sample_indices(array.shape, rng)
        numeric = central_differences(lambda _: run(), array, indices, 1e-6)
        expected = np.array([analytic[i] for i in indices])
        report(f"d{label}", expected, numeric)
        worst = max(worst, float(np.max(np.abs(expected - numeric))))
        np.testing.assert_allclose(expected, numeric, rtol=1e-6, atol=1e-7, err_msg=label)
    print("worst abs difference", worst)


def test_clip_actually_clamps_and_zeroes_gradient():
    module = fl.LSTM(2, 3, dtype="float64", clip=0.5, seed=0)
    module.weight_ih_l0 = np.full((12, 2), 10.0)
    x = np.ones((2, 1, 2))
    out, _ = module(x)
    # every gate pre-activation is clamped to 0.5: i = f = o = sigmoid(0.5), g = tanh(0.5)
    s, g = 1 / (1 + np.exp(-0.5)), np.tanh(0.5)
    c1 = s * g
    np.testing.assert_allclose(out[0, 0], s * np.tanh(c1) * np.ones(3), rtol=1e-12)
    module.backward(np.ones_like(out))
    np.testing.assert_array_equal(module.grads["weight_ih_l0"], 0.0)
