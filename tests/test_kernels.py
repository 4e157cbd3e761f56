"""The Cython kernels (through fastlstm.LSTM) against their NumPy twin, fastlstm.reference."""
import numpy as np
import pytest
from conftest import assert_close

import fastlstm as fl
from fastlstm import reference

TOLERANCE = {"float32": (2e-5, 2e-4), "float64": (1e-9, 1e-9)}
CONFIGS = [
    dict(),
    dict(bias=False),
    dict(peephole=True),
    dict(reverse=True, peephole=True, clip=0.7),
    dict(num_layers=2, bidirectional=True, peephole=True, clip=1.5),
    dict(num_layers=3, dropout=0.3),
]
SIZES = [(6, 3, 5, 7), (1, 1, 1, 1), (5, 2, 4, 129), (4, 33, 17, 40)]   # (T, B, in, H)


def run_both(config, size, dtype, lengths):
    T, B, input_size, H = size
    module = fl.LSTM(input_size, H, dtype=dtype, seed=0, **config)
    D, L = module.num_directions, module.num_layers
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, input_size)).astype(dtype)
    hx = tuple(rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))
    grad_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    grad_h, grad_c = (rng.standard_normal((D * L, B, H)).astype(dtype) for _ in range(2))

    out, (h_n, c_n) = module(x, hx, lengths=lengths)
    dx, (dh0, dc0) = module.backward(grad_out, (grad_h, grad_c))
    masks = [record["mask"] for record in module_records(module, x, hx, lengths)][:-1]

    ref_out, (ref_h, ref_c), cache = reference.forward(
        module.state_dict(), x, hx, lengths, num_layers=L, bidirectional=module.bidirectional,
        reverse=module.reverse, clip=module.clip, peephole=module.peephole, bias=module.bias,
        dropout_masks=masks if module.dropout else None)
    ref_dx, (ref_dh0, ref_dc0), ref_grads = reference.backward(cache, grad_out, grad_h, grad_c)
    forward_tol, grad_tol = TOLERANCE[dtype]
    assert_close("out", out, ref_out, forward_tol)
    assert_close("h_n", h_n, ref_h, forward_tol)
    assert_close("c_n", c_n, ref_c, forward_tol)
    assert_close("dx", dx, ref_dx, grad_tol)
    assert_close("dh0", dh0, ref_dh0, grad_tol)
    assert_close("dc0", dc0, ref_dc0, grad_tol)
    for name, grad in ref_grads.items():
        assert_close(f"grad {name}", module.grads[name], grad, grad_tol)


def module_records(module, x, hx, lengths):
    """Replay the dropout masks of the last call: same seed, same draws."""
    replay = fl.LSTM(**module.get_config())
    replay.load_state_dict(module.state_dict())
    replay._rng = np.random.default_rng(module.get_config()["seed"])
    replay._rng.uniform(size=sum(p.data.size for p in replay.parameters()))  # the init draws
    replay(x, hx, lengths=lengths)
    return replay._kept["layers"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_kernels_match_reference(config, size, dtype):
    run_both(config, size, dtype, None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_kernels_match_reference_with_lengths(config, dtype):
    run_both(config, (7, 4, 3, 20), dtype, [7, 1, 4, 6])


@pytest.mark.parametrize("size", [(5, 3, 4, 3), (4, 2, 3, 37)], ids=str)
def test_threads_split_hidden_units_unevenly(monkeypatch, size):
    """Force 2 threads on tiny H: a thread may own no units, or a ragged block."""
    import fastlstm.lstm

    monkeypatch.setattr(fastlstm.lstm, "_MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(fastlstm.lstm, "_UNITS_PER_BLOCK", 1)
    previous = fl.get_num_threads()
    try:
        fl.set_num_threads(2)
        for dtype in ("float32", "float64"):
            run_both(dict(num_layers=2, bidirectional=True, peephole=True), size, dtype,
                     [size[0], 2, 1][:size[1]])
    finally:
        fl.set_num_threads(previous)
