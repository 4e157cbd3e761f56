"""The NumPy reference: central-difference gradient checks and parity with torch.nn.LSTM."""
import numpy as np
import pytest

from conftest import assert_close, central_differences, require
from fastlstm import reference as ref

F64_TOL = 1e-9
GRAD_TOL = 1e-6
EPS = 1e-6


def numerical_gradient(loss, array, eps=EPS):
    """Central differences of loss() with respect to every entry of array."""
    return central_differences(lambda _: loss(), array, eps=eps)


def make_layer(rng, T, B, n_in, H, bias=True, peephole=False, dtype=np.float64):
    """Random inputs and weights for one layer, scaled so gates are far from saturation."""
    scale = 1.0 / np.sqrt(H)
    arrays = dict(
        x=rng.standard_normal((T, B, n_in)),
        h0=rng.uniform(-0.5, 0.5, (B, H)),
        c0=rng.uniform(-0.5, 0.5, (B, H)),
        W_ih=rng.uniform(-scale, scale, (4 * H, n_in)),
        W_hh=rng.uniform(-scale, scale, (4 * H, H)),
        b=rng.uniform(-scale, scale, 4 * H) if bias else None,
        P=rng.uniform(-scale, scale, 3 * H) if peephole else None,
    )
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def projections(rng, T, B, H):
    """Random weights for out, h_n and c_n: the scalar loss is their dot product with them."""
    return rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))


def choose_clip(arrays, lengths, reverse):
    """A clip that clamps some pre-activations while none lies within 1e-4 of it."""
    for clip in np.arange(0.5, 3.0, 0.05):
        *_, cache = ref.layer_forward(**arrays, lengths=lengths, reverse=reverse, clip=clip)
        size = np.abs(cache["Z"])
        if (size > clip).any() and (size < clip).any() and np.min(np.abs(size - clip)) > 1e-4:
            print(f"clip {clip:.2f}: {np.mean(size > clip):.0%} of pre-activations clamped")
            return clip
    raise AssertionError("no clip value clamps some gates while staying away from all of them")


LAYER_CASES = {
    "plain": dict(T=4, B=3, n_in=2, H=5),
    "bias None": dict(T=3, B=2, n_in=3, H=4, bias=False),
    "peephole": dict(T=4, B=2, n_in=3, H=5, peephole=True),
    "clip": dict(T=4, B=3, n_in=2, H=3, clip=True),
    "clip peephole reverse": dict(T=4, B=2, n_in=3, H=3, peephole=True, clip=True, reverse=True),
    "reverse": dict(T=4, B=2, n_in=3, H=5, reverse=True),
    "lengths": dict(T=4, B=3, n_in=2, H=3, lengths=[1, 4, 2]),
    "lengths reverse peephole": dict(T=4, B=3, n_in=2, H=3, lengths=[2, 1, 4], reverse=True,
                                     peephole=True),
    "T=1 B=1 H=1": dict(T=1, B=1, n_in=3, H=1),
    "B=1 H=1 reverse": dict(T=5, B=1, n_in=1, H=1, reverse=True, peephole=True),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_gradients_match_central_differences(case):
    spec = dict(LAYER_CASES[case])
    T, B, n_in, H = (spec.pop(k) for k in ("T", "B", "n_in", "H"))
    rng = np.random.default_rng(sorted(LAYER_CASES).index(case))
    arrays = make_layer(rng, T, B, n_in, H, spec.pop("bias", True), spec.pop("peephole", False))
    lengths = spec.pop("lengths", None)
    reverse = spec.pop("reverse", False)
    clip = choose_clip(arrays, lengths, reverse) if spec.pop("clip", False) else None
    R_out, R_h, R_c = projections(rng, T, B, H)

    def loss():
        out, h_n, c_n, _ = ref.layer_forward(**arrays, lengths=lengths, reverse=reverse, clip=clip)
        return np.sum(out * R_out) + np.sum(h_n * R_h) + np.sum(c_n * R_c)

    *_, cache = ref.layer_forward(**arrays, lengths=lengths, reverse=reverse, clip=clip)
    grads = ref.layer_backward(R_out, R_h, R_c, cache)
    names = dict(x="dx", h0="dh0", c0="dc0", W_ih="dW_ih", W_hh="dW_hh", b="db", P="dP")
    for name, grad_name in names.items():
        if arrays[name] is None:
            assert grads[grad_name] is None
            continue
        assert_close(f"{case} {grad_name}", grads[grad_name], numerical_gradient(loss, arrays[name]),
                     GRAD_TOL)


def make_params(rng, n_in, H, num_layers, bidirectional, bias=True, peephole=False, reverse=False):
    """PyTorch-named parameters of a multi-layer module."""
    suffixes = ["", "_reverse"] if bidirectional else [""]
    scale = 1.0 / np.sqrt(H)
    params = {}
    for k in range(num_layers):
        layer_in = n_in if k == 0 else len(suffixes) * H
        for suffix in suffixes:
            shapes = {"weight_ih": (4 * H, layer_in), "weight_hh": (4 * H, H)}
            if bias:
                shapes.update(bias_ih=(4 * H,), bias_hh=(4 * H,))
            if peephole:
                shapes.update(peephole_i=(H,), peephole_f=(H,), peephole_o=(H,))
            for name, shape in shapes.items():
                params[f"{name}_l{k}{suffix}"] = rng.uniform(-scale, scale, shape)
    return params


MODULE_CASES = {
    "2 layers bidirectional hx dropout": dict(
        T=3, B=2, n_in=3, H=2, num_layers=2, bidirectional=True, hx=True, dropout=True),
    "2 layers bidirectional lengths": dict(
        T=4, B=3, n_in=2, H=2, num_layers=2, bidirectional=True, lengths=[4, 1, 2], hx=True),
    "2 layers reverse peephole no bias lengths": dict(
        T=3, B=2, n_in=1, H=3, num_layers=2, reverse=True, peephole=True, bias=False,
        lengths=[1, 3], dropout=True),
}


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_module_gradients_match_central_differences(case):
    spec = dict(MODULE_CASES[case])
    T, B, n_in, H, num_layers = (spec.pop(k) for k in ("T", "B", "n_in", "H", "num_layers"))
    bidirectional = spec.pop("bidirectional", False)
    D = 2 if bidirectional else 1
    options = dict(num_layers=num_layers, bidirectional=bidirectional,
                   reverse=spec.pop("reverse", False), peephole=spec.pop("peephole", False),
                   bias=spec.pop("bias", True))
    rng = np.random.default_rng(10 + sorted(MODULE_CASES).index(case))
    params = make_params(rng, n_in, H, num_layers, bidirectional, options["bias"],
                         options["peephole"])
    x = rng.standard_normal((T, B, n_in))
    h0 = rng.uniform(-0.5, 0.5, (D * num_layers, B, H))
    c0 = rng.uniform(-0.5, 0.5, (D * num_layers, B, H))
    hx = (h0, c0) if spec.pop("hx", False) else None
    lengths = spec.pop("lengths", None)
    masks = None
    if spec.pop("dropout", False):
        p = 0.3
        masks = [(rng.random((T, B, D * H)) > p) / (1 - p) for _ in range(num_layers - 1)]
    R_out, _, _ = projections(rng, T, B, D * H)
    R_h = rng.standard_normal((D * num_layers, B, H))
    R_c = rng.standard_normal((D * num_layers, B, H))

    def loss():
        out, (h_n, c_n), _ = ref.forward(params, x, hx, lengths, dropout_masks=masks, **options)
        return np.sum(out * R_out) + np.sum(h_n * R_h) + np.sum(c_n * R_c)

    *_, cache = ref.forward(params, x, hx, lengths, dropout_masks=masks, **options)
    dx, (dh0, dc0), grads = ref.backward(cache, R_out, R_h, R_c)
    assert sorted(grads) == sorted(params)
    assert_close(f"{case} dx", dx, numerical_gradient(loss, x), GRAD_TOL)
    if hx is not None:
        assert_close(f"{case} dh0", dh0, numerical_gradient(loss, h0), GRAD_TOL)
        assert_close(f"{case} dc0", dc0, numerical_gradient(loss, c0), GRAD_TOL)
    for name, value in params.items():
        assert_close(f"{case} {name}", grads[name], numerical_gradient(loss, value), GRAD_TOL)


def torch_lstm(torch, params, n_in, H, num_layers, bidirectional):
    module = torch.nn.LSTM(n_in, H, num_layers=num_layers, bidirectional=bidirectional,
                           dtype=torch.float64)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
    return module


@pytest.mark.parametrize("num_layers, bidirectional, lengths", [
    (2, True, None),
    (2, True, [5, 1, 3]),
    (1, False, [2, 5, 1]),
])
def test_matches_torch_lstm(num_layers, bidirectional, lengths):
    torch = require("torch")
    T, B, n_in, H = 5, 3, 4, 3
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(20)
    params = make_params(rng, n_in, H, num_layers, bidirectional)
    x = rng.standard_normal((T, B, n_in))
    h0 = rng.uniform(-0.5, 0.5, (D * num_layers, B, H))
    c0 = rng.uniform(-0.5, 0.5, (D * num_layers, B, H))
    R_out = rng.standard_normal((T, B, D * H))
    R_h = rng.standard_normal((D * num_layers, B, H))
    R_c = rng.standard_normal((D * num_layers, B, H))

    out, (h_n, c_n), cache = ref.forward(params, x, (h0, c0), lengths, num_layers=num_layers,
                                         bidirectional=bidirectional)
    dx, (dh0, dc0), grads = ref.backward(cache, R_out, R_h, R_c)

    module = torch_lstm(torch, params, n_in, H, num_layers, bidirectional)
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    if lengths is None:
        t_out, (t_h_n, t_c_n) = module(tx, (th0, tc0))
    else:
        pack = torch.nn.utils.rnn.pack_padded_sequence
        packed = pack(tx, torch.tensor(lengths), enforce_sorted=False)
        t_packed_out, (t_h_n, t_c_n) = module(packed, (th0, tc0))
        t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(t_packed_out, total_length=T)
    t_loss = ((t_out * torch.from_numpy(R_out)).sum() + (t_h_n * torch.from_numpy(R_h)).sum()
              + (t_c_n * torch.from_numpy(R_c)).sum())
    t_loss.backward()

    label = f"L={num_layers} D={D} lengths={lengths}"
    for name, ours, theirs in [("out", out, t_out), ("h_n", h_n, t_h_n), ("c_n", c_n, t_c_n),
                               ("dx", dx, tx.grad), ("dh0", dh0, th0.grad),
                               ("dc0", dc0, tc0.grad)]:
        assert_close(f"{label} {name}", ours, theirs.detach().numpy(), F64_TOL)
    for name, p in module.named_parameters():
        assert_close(f"{label} d{name}", grads[name], p.grad.numpy(), F64_TOL)


def test_one_call_equals_steps_with_carried_state():
    rng = np.random.default_rng(30)
    T, B, n_in, H = 6, 2, 3, 5
    arrays = make_layer(rng, T, B, n_in, H, peephole=True)
    out, h_n, c_n, cache = ref.layer_forward(**arrays, clip=1.5)
    assert not any(np.shares_memory(state, cache[k]) for state in (h_n, c_n) for k in ("C", "IFOG"))
    h, c = arrays["h0"], arrays["c0"]
    steps = []
    for t in range(T):
        step_arrays = dict(arrays, x=arrays["x"][t:t + 1], h0=h, c0=c)
        step_out, h, c, _ = ref.layer_forward(**step_arrays, clip=1.5)
        steps.append(step_out)
    assert_close("stepped out", np.concatenate(steps), out, F64_TOL)
    assert_close("stepped h_n", h, h_n, F64_TOL)
    assert_close("stepped c_n", c, c_n, F64_TOL)


def test_reverse_equals_forward_on_flipped_input():
    rng = np.random.default_rng(31)
    arrays = make_layer(rng, 5, 2, 3, 4, peephole=True)
    out, h_n, c_n, _ = ref.layer_forward(**arrays, reverse=True)
    flip_out, flip_h_n, flip_c_n, _ = ref.layer_forward(**dict(arrays, x=arrays["x"][::-1]))
    assert_close("reverse out", out, flip_out[::-1], F64_TOL)
    assert_close("reverse h_n", h_n, flip_h_n, F64_TOL)
    assert_close("reverse c_n", c_n, flip_c_n, F64_TOL)


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_equal_each_sequence_run_alone(reverse):
    rng = np.random.default_rng(32)
    T, B, n_in, H = 5, 3, 2, 4
    lengths = [3, 5, 1]
    arrays = make_layer(rng, T, B, n_in, H, peephole=True)
    out, h_n, c_n, _ = ref.layer_forward(**arrays, lengths=lengths, reverse=reverse)
    for b, L in enumerate(lengths):
        alone = dict(arrays, x=arrays["x"][:L, b:b + 1], h0=arrays["h0"][b:b + 1],
                     c0=arrays["c0"][b:b + 1])
        out_b, h_b, c_b, _ = ref.layer_forward(**alone, reverse=reverse)
        assert_close(f"reverse={reverse} sequence {b} out", out[:L, b], out_b[:, 0], F64_TOL)
        assert np.all(out[L:, b] == 0)
        assert_close(f"reverse={reverse} sequence {b} h_n", h_n[b], h_b[0], F64_TOL)
        assert_close(f"reverse={reverse} sequence {b} c_n", c_n[b], c_b[0], F64_TOL)


def test_zero_peepholes_and_wide_clip_change_nothing():
    rng = np.random.default_rng(33)
    arrays = make_layer(rng, 4, 2, 3, 5)
    out, h_n, c_n, _ = ref.layer_forward(**arrays)
    for label, extra in [("P=0", dict(P=np.zeros(15))), ("clip=50", dict(clip=50.0))]:
        other_out, other_h_n, other_c_n, _ = ref.layer_forward(**dict(arrays, **extra))
        assert_close(f"{label} out", other_out, out, F64_TOL)
        assert_close(f"{label} h_n", other_h_n, h_n, F64_TOL)
        assert_close(f"{label} c_n", other_c_n, c_n, F64_TOL)


def test_float32_runs_in_float32_and_matches_float64():
    rng = np.random.default_rng(34)
    T, B, n_in, H = 6, 3, 4, 5
    params = make_params(rng, n_in, H, 2, True, peephole=True)
    x = rng.standard_normal((T, B, n_in))
    R_out = rng.standard_normal((T, B, 2 * H))
    lengths = [6, 2, 4]
    results = {}
    for dtype in (np.float32, np.float64):
        params_d = {k: v.astype(dtype) for k, v in params.items()}
        out, (h_n, c_n), cache = ref.forward(params_d, x.astype(dtype), None, lengths,
                                             num_layers=2, bidirectional=True, peephole=True,
                                             clip=1.0)
        dx, (dh0, dc0), grads = ref.backward(cache, R_out.astype(dtype))
        arrays = dict(out=out, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **grads)
        assert all(a.dtype == dtype for a in arrays.values())
        results[dtype] = arrays
    for name in results[np.float64]:
        rtol = 2e-5 if name in ("out", "h_n", "c_n") else 2e-4
        assert_close(f"float32 {name}", results[np.float32][name], results[np.float64][name], rtol)


def test_rejects_bad_lengths_and_reverse_with_bidirectional():
    rng = np.random.default_rng(35)
    arrays = make_layer(rng, 3, 2, 2, 2)
    for lengths in ([0, 3], [1, 4], [1, 2, 3]):
        with pytest.raises(ValueError, match="lengths"):
            ref.layer_forward(**arrays, lengths=lengths)
    params = make_params(rng, 2, 2, 1, True)
    with pytest.raises(ValueError, match="reverse"):
        ref.forward(params, arrays["x"], bidirectional=True, reverse=True)
