"""fastlstm.LSTM module semantics: modes, state dicts, streaming, threads, bad input."""
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import assert_close, require

import fastlstm as fl
from fastlstm._kernels import blas as _blas


def make_input(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- BLAS wrappers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_twin_matches_numpy(dtype, trans_a, trans_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3) if trans_a else (3, 5)).astype(dtype)
    b = rng.standard_normal((4, 5) if trans_b else (5, 4)).astype(dtype)
    c = rng.standard_normal((3, 4)).astype(dtype)
    expected = 0.5 * (a.T if trans_a else a) @ (b.T if trans_b else b) + 2.0 * c
    _blas.gemm_twin(trans_a, trans_b, 0.5, a, b, 2.0, c)
    assert_close("gemm", c, expected, 1e-5 if dtype == np.float32 else 1e-12)


def test_an_lstm_alone_never_loads_scipys_blas_and_a_linear_layer_does():
    """scipy.linalg (0.17 s to import, and an OpenBLAS pool that spins at load) is loaded by
    the first product that needs BLAS, not by ``import fastlstm``."""
    code = ("import sys, numpy as np, fastlstm as fl\n"
            "m = fl.LSTM(3, 5)\n"
            "y, _ = m(np.ones((4, 2, 3), np.float32)); m.backward(np.ones_like(y))\n"
            "m.eval().stream(2).step(np.ones((2, 3), np.float32))\n"
            "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg imported'\n"
            "lin = fl.modules.Linear(5, 2)\n"
            "x = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)\n"
            "np.testing.assert_allclose(lin(x), x @ lin.weight.T + lin.bias, rtol=1e-5)\n"
            "assert 'scipy.linalg' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- modes and state
def test_starts_in_train_mode_and_eval_keeps_nothing():
    m = fl.LSTM(3, 4, seed=0)
    assert m.training
    x = make_input((5, 2, 3))
    out_train, _ = m(x)
    m.eval()
    out_eval, _ = m(make_input((5, 2, 3), seed=1))
    assert not m.training
    # the eval call left the kept train-mode call untouched
    dx, _ = m.train().backward(np.ones_like(out_train))
    assert dx.shape == x.shape
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(np.ones_like(out_train))


def test_backward_without_train_call_raises():
    m = fl.LSTM(3, 4).eval()
    m(make_input((2, 1, 3)))
    with pytest.raises(RuntimeError, match="no train-mode call"):
        m.backward(np.zeros((2, 1, 4), np.float32))


def test_gradients_accumulate_until_zero_grad():
    m = fl.LSTM(3, 4, seed=0)
    x = make_input((5, 2, 3))
    out, _ = m(x)
    m.backward(np.ones_like(out))
    first = {k: v.copy() for k, v in m.grads.items()}
    out, _ = m(x)
    m.backward(np.ones_like(out))
    for name in first:
        assert_close(name, m.grads[name], 2 * first[name], 1e-6)
    m.zero_grad()
    assert all(not np.any(g) for g in m.grads.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs, shape, lengths", [
    ({}, (5, 3, 6), None),
    ({"num_layers": 2, "bidirectional": True}, (5, 3, 6), None),
    ({"batch_first": True, "num_layers": 2}, (3, 5, 6), [5, 2, 4]),
    ({"reverse": True, "peephole": True}, (1, 1, 6), None),
    ({}, (4, 6), None),     # unbatched
], ids=["plain", "two-layer-bidirectional", "batch-first-lengths", "reverse-peephole-T1",
        "unbatched"])
def test_backward_without_input_grad_gives_the_same_parameter_gradients(
        dtype, kwargs, shape, lengths, monkeypatch):
    """input_grad=False skips dx (None comes back); every parameter and state gradient
    keeps its bits, on 1 and 2 threads."""
    monkeypatch.setattr(fl.lstm, "_MIN_WORK_PER_THREAD", 1)   # 2 threads even at these sizes
    x = make_input(shape, dtype=dtype)
    previous = fl.get_num_threads()
    try:
        for threads in (1, 2):
            fl.set_num_threads(threads)
            results = []
            for input_grad in (True, False):
                m = fl.LSTM(6, 5, dtype=np.dtype(dtype).name, seed=0, **kwargs)
                out, _ = m(x, lengths=lengths)
                dx, (dh0, dc0) = m.backward(np.cos(out), input_grad=input_grad)
                results.append((dx, dh0, dc0, {k: v.copy() for k, v in m.grads.items()}))
            (dx, dh0, dc0, grads), (no_dx, dh0_, dc0_, grads_) = results
            assert dx.shape == x.shape and no_dx is None
            assert np.array_equal(dh0, dh0_) and np.array_equal(dc0, dc0_)
            assert all(np.array_equal(grads[k], grads_[k]) for k in grads)
    finally:
        fl.set_num_threads(previous)


def test_backward_input_grad_must_be_a_bool():
    m = fl.LSTM(3, 4)
    out, _ = m(make_input((2, 1, 3)))
    with pytest.raises(TypeError, match="input_grad"):
        m.backward(np.zeros_like(out), input_grad="no")


def test_eval_and_train_forward_agree_without_dropout():
    m = fl.LSTM(3, 6, num_layers=2, bidirectional=True, seed=0)
    x = make_input((7, 3, 3))
    train_out, (train_h, _) = m(x)
    eval_out, (eval_h, _) = m.eval()(x)
    np.testing.assert_array_equal(train_out, eval_out)
    np.testing.assert_array_equal(train_h, eval_h)


def test_dropout_only_in_train_mode():
    m = fl.LSTM(3, 50, num_layers=2, dropout=0.5, seed=0)
    x = make_input((4, 2, 3))
    a, _ = m(x)
    b, _ = m(x)
    assert not np.allclose(a, b)            # fresh masks each train call
    m.eval()
    c, _ = m(x)
    d, _ = m(x)
    np.testing.assert_array_equal(c, d)
    dropout_free = fl.LSTM(3, 50, num_layers=2, seed=0).eval()
    np.testing.assert_array_equal(c, dropout_free(x)[0])


def test_state_dict_round_trip_and_in_place_load():
    a = fl.LSTM(3, 4, num_layers=2, peephole=True, seed=0)
    b = fl.LSTM(3, 4, num_layers=2, peephole=True, seed=1)
    live = b.weight_ih_l0
    b.load_state_dict(a.state_dict())
    assert b.weight_ih_l0 is live
    x = make_input((3, 2, 3))
    np.testing.assert_array_equal(a.eval()(x)[0], b.eval()(x)[0])
    state = a.state_dict()
    state["weight_ih_l0"][...] = 0       # a copy: the module is unchanged
    assert np.any(a.weight_ih_l0)


def test_load_state_dict_errors_name_the_entry():
    m = fl.LSTM(3, 4)
    state = m.state_dict()
    with pytest.raises(ValueError, match="weight_hh_l0"):
        m.load_state_dict({**state, "weight_hh_l0": np.zeros((4, 4))})
    del state["bias_hh_l0"]
    with pytest.raises(ValueError, match="missing keys \\['bias_hh_l0'\\]"):
        m.load_state_dict(state)
    with pytest.raises(ValueError, match="unexpected keys \\['extra'\\]"):
        m.load_state_dict({**m.state_dict(), "extra": np.zeros(1)})
    with pytest.raises(TypeError, match="state_dict"):
        m.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="weight_ih_l0"):
        m.load_state_dict({**m.state_dict(), "weight_ih_l0": np.full((16, 3), "a")})


def test_load_state_dict_accepts_torch_tensors():
    torch = require("torch")
    reference = torch.nn.LSTM(3, 4)
    m = fl.LSTM(3, 4)
    m.load_state_dict(reference.state_dict())
    np.testing.assert_array_equal(m.weight_hh_l0, reference.weight_hh_l0.detach().numpy())


def test_config_round_trip_and_repr():
    m = fl.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", clip=2.0)
    assert fl.LSTM.from_config(m.get_config()).get_config() == m.get_config()
    assert repr(m) == "LSTM(3, 4, num_layers=2, bidirectional=True, dtype='float64', clip=2.0)"


def test_unusual_but_valid_inputs_give_the_same_answer():
    m = fl.LSTM(3, 4, seed=0).eval()
    x = make_input((5, 2, 3), dtype=np.float64)
    expected, _ = m(x.astype(np.float32))
    fortran = np.asfortranarray(x)
    reversed_strides = x[::-1][::-1]
    sliced = np.concatenate([x, x], axis=2)[:, :, ::2][:, :, :3]
    for variant in (fortran, reversed_strides, x.tolist(), np.asarray(x, np.float64)):
        np.testing.assert_allclose(m(variant)[0], expected, rtol=1e-6, atol=1e-7)
    assert m(sliced)[0].shape == (5, 2, 4)
    assert m(np.ones((2, 1, 3), dtype=np.int64))[0].dtype == np.float32


def test_nan_propagates():
    m = fl.LSTM(2, 3, seed=0).eval()
    x = np.zeros((3, 2, 2), np.float32)
    x[1, 0, 0] = np.nan
    out, (h_n, _) = m(x)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:, 0])) and np.all(np.isfinite(out[:, 1]))
    assert np.all(np.isnan(h_n[:, 0]))


# ---------------------------------------------------------------- streaming
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_stream_steps_equal_one_full_call(dtype, batch):
    m = fl.LSTM(5, 7, num_layers=3, dtype=dtype, peephole=True, clip=3.0, seed=0).eval()
    x = make_input((6, batch, 5), dtype=dtype)
    out, (h_n, c_n) = m(x)
    s = m.stream(batch)
    steps = [s.step(x[t] if batch > 1 else x[t, 0]) for t in range(6)]
    shape = (batch, 7) if batch > 1 else (7,)   # each step a new array, not a view of the state
    assert all(y.shape == shape and y.dtype == dtype and y.flags.owndata and
               y.flags.c_contiguous for y in steps)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert_close("stream out", np.stack(steps).reshape(out.shape), out, tol)
    assert_close("stream h", s.state[0], h_n, tol)
    assert_close("stream c", s.state[1], c_n, tol)
    s.reset()
    assert not np.any(s.state[0]) and not np.any(s.state[1])
    np.testing.assert_allclose(s.step(x[0]).reshape(out[0].shape), out[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stream_with_large_weights_splits_steps_and_equals_one_full_call(dtype):
    """Weights of over 512 KB: each step's units are split across the threads."""
    from fastlstm._kernels import lstm as lstm_kernels

    m = fl.LSTM(64, 300, num_layers=2, dtype=dtype, peephole=True, seed=0).eval()
    x = make_input((5, 3, 64), dtype=dtype)
    out, (h_n, c_n) = m(x)
    previous = fl.get_num_threads()
    adaptive = lstm_kernels.set_adaptive_threads(False)   # every step on the full team
    try:
        fl.set_num_threads(2)
        s = m.stream(3)
        steps = np.stack([s.step(x[t]) for t in range(5)])
    finally:
        fl.set_num_threads(previous)
        lstm_kernels.set_adaptive_threads(adaptive)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert_close("split stream out", steps, out, tol)
    assert_close("split stream h", s.state[0], h_n, tol)
    assert_close("split stream c", s.state[1], c_n, tol)


def stream_matches_module(m, s, x):
    """One step of the stream from a zero state equals the module's first output step."""
    s.reset()
    assert_close("stream step", s.step(x[0]), m(x[:1])[0][0], 1e-5)


def test_stream_sees_optimizer_steps_and_load_state_dict_and_refresh():
    m = fl.LSTM(3, 20, num_layers=2, seed=0).eval()
    x = make_input((1, 2, 3))
    s = m.stream(2)
    stream_matches_module(m, s, x)
    # an optimizer step
    for grad in m.grads.values():
        grad[...] = 0.5
    fl.optim.SGD(m, lr=0.1).step()
    stream_matches_module(m, s, x)
    # load_state_dict, and a file loaded into the module
    other = fl.LSTM(3, 20, num_layers=2, seed=1)
    m.load_state_dict(other.state_dict())
    stream_matches_module(m, s, x)
    # a direct in-place write needs refresh()
    m.weight_ih_l0[...] = 0.3
    s.reset()
    stale = s.step(x[0])
    assert not np.allclose(stale, m(x[:1])[0][0])
    s.refresh()
    stream_matches_module(m, s, x)


def test_stream_kernel_validates_its_arrays():
    from fastlstm._kernels import lstm as lstm_kernels

    w_ih, w_hh = np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        lstm_kernels.StreamKernel([(w_ih, w_hh, None, None, None)], 1, "int32", 0.0)
    with pytest.raises(ValueError, match=r"layers\[0\]\.W_ih: expected a C-contiguous float64"):
        lstm_kernels.StreamKernel([(w_ih, w_hh, None, None, None)], 1, "float64", 0.0)
    with pytest.raises(ValueError, match=r"layers\[0\]\.b_ih"):
        lstm_kernels.StreamKernel([(w_ih, w_hh, np.zeros(7, np.float32), None, None)], 1,
                                  "float32", 0.0)


def test_stream_rejects_bidirectional_and_bad_steps():
    with pytest.raises(ValueError, match="forward-only"):
        fl.LSTM(3, 4, bidirectional=True).stream()
    s = fl.LSTM(3, 4).stream(2)
    with pytest.raises(ValueError, match=r"x_t: expected shape \(2, 3\)"):
        s.step(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="x_t"):
        s.step("abc")
    with pytest.raises(ValueError, match="batch_size"):
        fl.LSTM(3, 4).stream(0)


# ---------------------------------------------------------------- threads
def test_num_threads_setting_and_validation():
    from fastlstm import _threads
    from fastlstm._kernels import openmp as _openmp

    previous = fl.get_num_threads()
    try:
        fl.set_num_threads(1)
        assert fl.get_num_threads() == 1
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            fl.set_num_threads(0)
        with pytest.raises(TypeError, match="n: expected an int"):
            fl.set_num_threads(1.5)
        fl.set_num_threads(None)
        assert fl.get_num_threads() == max(1, min(_threads.usable_cores(),
                                                  _openmp.max_threads()))
    finally:
        fl.set_num_threads(previous)


@pytest.mark.parametrize("batch", [1, 8, 40])
def test_one_thread_pool_and_same_result_for_1_and_2_threads(batch, monkeypatch):
    threadpoolctl = require("threadpoolctl")
    from fastlstm import _threads
    from fastlstm._kernels import lstm as lstm_kernels, openmp as _openmp

    monkeypatch.setattr(fl.lstm, "_MIN_WORK_PER_THREAD", 1)   # 2 threads even at batch 1
    adaptive = lstm_kernels.set_adaptive_threads(False)   # a fixed team, even on a busy machine
    m = fl.LSTM(32, 64, num_layers=2, bidirectional=True, seed=0)
    x = make_input((20, batch, 32))
    g = make_input((20, batch, 128), seed=1)
    results = {}
    previous = fl.get_num_threads()
    try:
        for n in (1, 2):
            fl.set_num_threads(n)
            m.zero_grad()
            out, (h_n, c_n) = m(x)
            dx, _ = m.backward(g)
            if _openmp.openmp_enabled() and _threads.usable_cores() >= 2:
                assert lstm_kernels.last_call()[0] == n   # the backward really ran on n threads
            results[n] = [out, h_n, c_n, dx] + [m.grads[k].copy() for k in sorted(m.grads)]
            infos = threadpoolctl.threadpool_info()
            print(n, [(i["user_api"], i["internal_api"], i["num_threads"]) for i in infos])
            if _openmp.openmp_enabled():
                assert any(i["user_api"] == "openmp" for i in infos), infos
            assert any(i["user_api"] == "blas" for i in infos), infos
    finally:
        fl.set_num_threads(previous)
        lstm_kernels.set_adaptive_threads(adaptive)
    for one, two in zip(results[1], results[2]):
        np.testing.assert_array_equal(two, one)   # the same sums in the same order


def test_threadpoolctl_openmp_limit_is_respected():
    threadpoolctl = require("threadpoolctl")
    from fastlstm import _threads
    from fastlstm._kernels import openmp as _openmp

    if not _openmp.openmp_enabled():
        pytest.skip("serial build: always one thread")
    saved = _threads.requested_threads()
    fl.set_num_threads(None)
    try:
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert fl.get_num_threads() == 1
    finally:
        fl.set_num_threads(saved)


def test_concurrent_eval_calls_are_safe_and_identical():
    m = fl.LSTM(16, 32, num_layers=2, seed=0).eval()
    inputs = [make_input((30, 4, 16), seed=i) for i in range(4)]
    expected = [m(x)[0] for x in inputs]
    results, errors = {}, []

    def work(worker):
        try:
            for repeat in range(5):
                for i, x in enumerate(inputs):
                    results[(worker, repeat, i)] = m(x)[0]
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (_, _, i), out in results.items():
        np.testing.assert_array_equal(out, expected[i])


# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs,error,message", [
    (dict(input_size=0), ValueError, "input_size: expected an int >= 1, got 0"),
    (dict(input_size=2.5), TypeError, "input_size: expected an int"),
    (dict(hidden_size=-1), ValueError, "hidden_size"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a float in \[0.0, 1.0\)"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(dtype="float16"), ValueError, "dtype: expected 'float32' or 'float64'"),
    (dict(bias=1), TypeError, "bias: expected a bool"),
    (dict(clip=0.0), ValueError, "clip"),
    (dict(clip=float("nan")), ValueError, "clip"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(bidirectional=True, reverse=True), ValueError, "reverse"),
])
def test_constructor_errors(kwargs, error, message):
    arguments = dict(input_size=3, hidden_size=4)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        fl.LSTM(**arguments)


@pytest.mark.parametrize("x,error,message", [
    (np.zeros((2, 3, 5), np.float32), ValueError, "x: expected input_size 3"),
    (np.zeros((2, 3, 3, 1), np.float32), ValueError, "x: expected a 3-D"),
    (np.zeros(3, np.float32), ValueError, "x: expected a 3-D"),
    (np.zeros((0, 2, 3), np.float32), ValueError, "at least one time step"),
    (np.zeros((2, 0, 3), np.float32), ValueError, "at least one time step"),
    (np.zeros((2, 2, 3), bool), TypeError, "x: expected real numbers"),
    (np.zeros((2, 2, 3), complex), TypeError, "x: expected real numbers"),
    ("abc", TypeError, "x: expected a real array-like"),
    (None, TypeError, "x: expected a real array-like, got None"),
    ([[1, 2, 3], [1, 2]], TypeError, "x: expected a real array-like"),
])
def test_call_errors(x, error, message):
    with pytest.raises(error, match=message):
        fl.LSTM(3, 4)(x)


@pytest.mark.parametrize("hx,error,message", [
    (np.zeros((1, 2, 4)), TypeError, r"hx: expected a tuple \(h0, c0\)"),
    ((np.zeros((1, 2, 4)),), TypeError, "hx"),
    ((np.zeros((2, 2, 4)), np.zeros((1, 2, 4))), ValueError, r"hx\[h0\]: expected shape \(1, 2, 4\)"),
    ((np.zeros((1, 2, 4)), np.zeros((1, 3, 4))), ValueError, r"hx\[c0\]"),
    ((np.zeros((1, 2, 4)), None), TypeError, r"hx\[c0\]"),
])
def test_hx_errors(hx, error, message):
    with pytest.raises(error, match=message):
        fl.LSTM(3, 4)(np.zeros((5, 2, 3)), hx)


@pytest.mark.parametrize("lengths,error,message", [
    ([5], ValueError, r"lengths: expected shape \(2,\)"),
    ([0, 5], ValueError, r"lengths: expected values in \[1, 5\]"),
    ([-1, 5], ValueError, "lengths"),
    ([6, 5], ValueError, "lengths"),
    ([2.5, 5], ValueError, "whole numbers"),
    (["a", "b"], TypeError, "lengths: expected integers"),
])
def test_lengths_errors(lengths, error, message):
    with pytest.raises(error, match=message):
        fl.LSTM(3, 4)(np.zeros((5, 2, 3)), lengths=lengths)


def test_backward_shape_errors():
    m = fl.LSTM(3, 4, batch_first=True)
    out, _ = m(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(2, 5, 4\)"):
        m.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match=r"grad_state\[grad_c_n\]"):
        m.backward(np.zeros_like(out), (None, np.zeros((2, 2, 4))))
    with pytest.raises(TypeError, match="grad_state"):
        m.backward(np.zeros_like(out), np.zeros((1, 2, 4)))
    dx, (dh0, dc0) = m.backward(np.zeros_like(out), (None, None))
    assert dx.shape == (2, 5, 3) and dh0.shape == (1, 2, 4)


def test_float_lengths_and_tensor_lengths_accepted():
    m = fl.LSTM(3, 4, seed=0).eval()
    x = make_input((5, 2, 3))
    a, _ = m(x, lengths=[3, 5])
    b, _ = m(x, lengths=np.array([3.0, 5.0]))
    np.testing.assert_array_equal(a, b)
    assert not np.any(a[3:, 0])


def test_no_memory_growth_over_many_calls():
    import tracemalloc

    m = fl.LSTM(4, 8, num_layers=2, bidirectional=True, seed=0)
    x = make_input((12, 3, 4))
    stream = fl.LSTM(4, 8, seed=0).stream(1)

    def cycle():
        m.train()
        out, _ = m(x)
        m.backward(out)
        m.zero_grad()
        m.eval()
        m(x, lengths=[12, 5, 1])
        stream.step(x[0, 0])

    for _ in range(800):    # Cython's and NumPy's internal caches fill up first
        cycle()
    tracemalloc.start()
    for _ in range(20):
        cycle()
    baseline, _ = tracemalloc.get_traced_memory()
    for _ in range(200):
        cycle()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"traced memory growth over 200 cycles: {current - baseline} bytes")
    assert current - baseline < 50_000


def test_absurd_sizes_fail_cleanly():
    with pytest.raises((MemoryError, ValueError)):
        fl.LSTM(10, 1 << 20)
    with pytest.raises(ValueError, match="hidden_size"):
        fl.LSTM(10, 1 << 21)
    with pytest.raises(ValueError, match="input_size"):
        fl.LSTM(1 << 30, 4)
