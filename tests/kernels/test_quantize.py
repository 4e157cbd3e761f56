"""fl.quantize: bfloat16 / int8 inference against the float32 module, a NumPy emulation of
the same rounding, the portable path, streams, save/load and hostile files."""
import json

import numpy as np
import pytest

import fastlstm as fl
from fastlstm.quantized import (cpu_paths, from_bfloat16, quantize_rows_int8,
                                quantized_path, set_quantized_path, to_bfloat16)

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(peephole=True, clip=0.8),
    dict(reverse=True, bias=False),
    dict(num_layers=3, batch_first=True),
]
SIZES = [(7, 4, 13, 37), (1, 1, 1, 1), (5, 1, 3, 16), (3, 9, 40, 33)]   # T, B, in, H


@pytest.fixture(params=["fast", "portable"])
def path(request):
    set_quantized_path("portable" if request.param == "portable" else None)
    yield request.param
    set_quantized_path(None)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _rows_u8(a):
    """The kernel's per-row u8 quantisation, dequantised (float64)."""
    a = a.astype(np.float32)
    lo = np.minimum(a.min(axis=1, keepdims=True), 0)
    hi = np.maximum(a.max(axis=1, keepdims=True), 0)
    s = ((hi - lo) / np.float32(255)).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1))
    inv = (np.float32(1) / s).astype(np.float32)
    z = np.clip(np.rint(-lo * inv), 0, 255)
    q = np.clip(np.rint(a * inv) + z, 0, 255)
    return (q - z).astype(np.float64) * s


def emulate(q, x, lengths=None):
    """NumPy float64 emulation of the quantised forward (time-major x, zero state)."""
    state, H, D = q.state_dict(), q.hidden_size, q.num_directions
    T, B = x.shape[:2]
    if q.quantization == "bfloat16":
        def round_rows(a):
            return from_bfloat16(to_bfloat16(a)).astype(np.float64)

        def weight(name):
            return state[name].astype(np.float64)
    else:
        round_rows = _rows_u8

        def weight(name):
            return state[name].astype(np.float64) * state[name.replace("weight", "scale")][:, None]
    layer_input = x.astype(np.float64)
    h_n = np.zeros((q.num_layers * D, B, H))
    for layer in range(q.num_layers):
        out = np.zeros((T, B, D * H))
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            W_ih, W_hh = weight("weight_ih" + sfx), weight("weight_hh" + sfx)
            b = state["bias_ih" + sfx] + state["bias_hh" + sfx] if q.bias else np.zeros(4 * H)
            p = ([state[f"peephole_{g}" + sfx].astype(np.float64) for g in "ifo"]
                 if q.peephole else [np.zeros(H)] * 3)
            clip = q.clip or np.inf
            h, c = np.zeros((B, H)), np.zeros((B, H))
            times = range(T - 1, -1, -1) if (d or q.reverse) else range(T)
            for t in times:
                z = round_rows(layer_input[t]) @ W_ih.T + round_rows(h) @ W_hh.T + b
                zi, zf, zg, zo = np.split(z, 4, axis=1)
                zi, zf = zi + p[0] * c, zf + p[1] * c
                zi, zf, zg = (np.clip(v, -clip, clip) for v in (zi, zf, zg))
                c_new = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zg)
                zo = np.clip(zo + p[2] * c_new, -clip, clip)
                h_new = _sigmoid(zo) * np.tanh(c_new)
                live = np.ones(B, bool) if lengths is None else t < np.asarray(lengths)
                h = np.where(live[:, None], h_new, h)
                c = np.where(live[:, None], c_new, c)
                out[t, :, d * H:(d + 1) * H] = np.where(live[:, None], h_new, 0)
            h_n[layer * D + d] = h
        layer_input = out
    return layer_input, h_n


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("size", SIZES)
def test_against_float32_and_emulation(dtype, config, size, path):
    T, B, n_in, H = size
    rng = np.random.default_rng(T * 1000 + B * 100 + H)
    m = fl.LSTM(n_in, H, seed=3, **config).eval()
    q = fl.quantize(m, dtype)
    x = rng.standard_normal((T, B, n_in)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    x_in = x.transpose(1, 0, 2) if q.batch_first else x
    out, (h_n, c_n) = q(x_in, lengths=lengths)
    ref, (ref_h, ref_c) = m(x_in, lengths=lengths)
    assert out.dtype == np.float32 and out.shape == ref.shape and h_n.shape == ref_h.shape
    assert np.abs(out - ref).max() < 2e-2
    assert np.abs(c_n - ref_c).max() < 2e-2
    emulated, emulated_h = emulate(q, x, lengths)
    if q.batch_first:
        emulated = emulated.transpose(1, 0, 2)
    assert np.abs(out - emulated).max() < 1e-3
    assert np.abs(h_n - emulated_h).max() < 1e-3


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_portable_matches_fast_path(dtype):
    m = fl.LSTM(70, 90, num_layers=2, seed=0).eval()
    q = fl.quantize(m, dtype)
    x = np.random.default_rng(1).standard_normal((12, 19, 70)).astype(np.float32)
    fast = q(x)[0]
    set_quantized_path("portable")
    try:
        assert quantized_path(dtype) == "portable"
        portable = q(x)[0]
    finally:
        set_quantized_path(None)
    assert quantized_path(dtype) == cpu_paths()[dtype]
    assert np.abs(fast - portable).max() < 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("size", [(5, 3, 4, 17), (4, 2, 3, 37), (3, 9, 40, 33)], ids=str)
def test_same_result_on_1_and_2_threads(dtype, size, path, monkeypatch):
    """Force 2 threads on small sizes (a thread may own a ragged block of units): the
    same result, bit for bit."""
    import fastlstm.lstm
    from fastlstm._kernels import lstm as lstm_kernels
    monkeypatch.setattr(fastlstm.lstm, "_MIN_WORK_PER_THREAD", 1)
    T, B, n_in, H = size
    m = fl.LSTM(n_in, H, num_layers=2, bidirectional=True, peephole=True, seed=0).eval()
    q = fl.quantize(m, dtype)
    x = np.random.default_rng(2).standard_normal((T, B, n_in)).astype(np.float32)
    lengths = np.random.default_rng(3).integers(1, T + 1, B)
    previous, adaptive = fl.get_num_threads(), lstm_kernels.set_adaptive_threads(False)
    results = []
    try:
        for threads in (1, 2):
            fl.set_num_threads(threads)
            assert q._kernel_threads(B) == min(threads, fl.get_num_threads())
            results.append(q(x, lengths=lengths))
    finally:
        fl.set_num_threads(previous)
        lstm_kernels.set_adaptive_threads(adaptive)
    (out1, (h1, c1)), (out2, (h2, c2)) = results
    for one, two in ((out1, out2), (h1, h2), (c1, c2)):
        np.testing.assert_array_equal(two, one)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_hx_and_unbatched(dtype):
    m = fl.LSTM(6, 20, num_layers=2, seed=2).eval()
    q = fl.quantize(m, dtype)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, 2, 20)).astype(np.float32)
    out, (h_n, c_n) = q(x, (h0, c0))
    ref, (ref_h, ref_c) = m(x, (h0, c0))
    assert out.shape == (5, 20) and h_n.shape == (2, 20)
    assert np.abs(out - ref).max() < 2e-2 and np.abs(c_n - ref_c).max() < 2e-2


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
def test_stream_equals_full_call(dtype, batch, path):
    m = fl.LSTM(9, 24, num_layers=2, seed=4, peephole=True).eval()
    q = fl.quantize(m, dtype)
    x = np.random.default_rng(5).standard_normal((6, batch, 9)).astype(np.float32)
    s = q.stream(batch)
    steps = np.stack([s.step(x[t]) for t in range(6)])
    out, (h_n, c_n) = q(x)
    np.testing.assert_array_equal(steps, out)
    np.testing.assert_array_equal(s.state[1], c_n)
    if batch == 1:
        assert s.step(x[0, 0]).shape == (24,)
    s.reset()
    assert not s.state[0].any()
    with pytest.raises(ValueError, match="x_t"):
        s.step(np.zeros((batch, 8), np.float32))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (2, 2, 13, 37), (2, 1, 40, 520)])  # L B in H
def test_stream_sizes_and_split_step(dtype, size, path):
    # H 520 puts the weights past 1 MB: the stream times its steps split (the first 16) and
    # on one thread (the next 16), and both give the full call's bits
    L, B, n_in, H = size
    m = fl.LSTM(n_in, H, num_layers=L, seed=8, clip=1.5).eval()
    q = fl.quantize(m, dtype)
    x = np.random.default_rng(9).standard_normal((40, B, n_in)).astype(np.float32)
    s = q.stream(B)
    steps = np.stack([s.step(x[t]) for t in range(40)])
    out, (h_n, c_n) = q(x)
    np.testing.assert_array_equal(steps, out)
    np.testing.assert_array_equal(s.state[0], h_n)
    np.testing.assert_array_equal(s.state[1], c_n)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_stream_inputs_and_weight_reload(dtype):
    m = fl.LSTM(5, 17, seed=10).eval()
    q = fl.quantize(m, dtype)
    x = np.random.default_rng(11).standard_normal((2, 5))
    s = q.stream(2)
    first = s.step(x)                                   # float64 rows: converted
    assert first.dtype == np.float32 and first.shape == (2, 17)
    s.reset()
    np.testing.assert_array_equal(s.step(x.astype(np.float32).tolist()), first)
    s.reset()
    np.testing.assert_array_equal(s.step(np.asfortranarray(x.astype(np.float32))), first)
    for bad, error in [(np.zeros((2, 5), complex), TypeError), ("abc", TypeError),
                       (None, TypeError), (np.zeros(5, np.float32), ValueError),
                       (np.zeros((1, 5), np.float32), ValueError),
                       (np.zeros((2, 6), np.float32), ValueError)]:
        with pytest.raises(error, match="x_t"):
            s.step(bad)
    with pytest.raises(ValueError, match="batch_size"):
        q.stream(0)
    state = q.state_dict()      # new weights reach a live stream before its next step
    state["bias_ih_l0"] = state["bias_ih_l0"] + np.float32(1)
    q.load_state_dict(state)
    s.reset()
    np.testing.assert_array_equal(s.step(x.astype(np.float32)), q(x[None].astype(np.float32))[0][0])


def test_stream_kernel_rejects_bad_packed_weights():
    from fastlstm._kernels.quant import QuantStreamKernel
    q = fl.quantize(fl.LSTM(4, 8, seed=0).eval(), "int8")

    class Module:
        input_size, hidden_size, num_layers, clip, quantization = 4, 8, 1, None, "int8"

    packed = list(q._layers[(0, 0)])
    for index, bad in [(0, packed[0][:-4]), (1, packed[1].astype(np.int16)),
                       (2, packed[2][::2]), (5, None), (6, packed[6][:-1]),
                       (7, np.zeros(5, np.float32))]:
        Module._layers = {(0, 0): tuple(packed[:index] + [bad] + packed[index + 1:])}
        with pytest.raises(ValueError, match="stream layer 0"):
            QuantStreamKernel(Module(), 1)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_save_load_round_trip(dtype, tmp_path):
    m = fl.LSTM(11, 21, num_layers=2, bidirectional=True, peephole=True, clip=2.0,
                seed=6).eval()
    q = fl.quantize(m, dtype)
    fl.save(m, tmp_path / "f32.safetensors")
    fl.save(q, tmp_path / "q.safetensors")
    q2 = fl.load(tmp_path / "q.safetensors")
    x = np.random.default_rng(7).standard_normal((4, 3, 11)).astype(np.float32)
    np.testing.assert_array_equal(q(x)[0], q2(x)[0])
    header = json.loads((tmp_path / "q.safetensors").read_bytes()[8:8 + int.from_bytes(
        (tmp_path / "q.safetensors").read_bytes()[:8], "little")])
    code = "BF16" if dtype == "bfloat16" else "I8"
    assert header["weight_hh_l1_reverse"]["dtype"] == code
    assert header["bias_ih_l0"]["dtype"] == "F32"
    if dtype == "int8":
        assert header["scale_ih_l0"]["dtype"] == "F32"
    ratio = (tmp_path / "q.safetensors").stat().st_size / (tmp_path / "f32.safetensors").stat().st_size
    assert ratio < (0.6 if dtype == "bfloat16" else 0.45)


def _write(path, tensors, config):
    from fastlstm.io import write_safetensors
    metadata = {"format": "fastlstm", "class": "QuantizedLSTM", "config": json.dumps(config),
                "version": fl.__version__}
    write_safetensors(tensors, path, metadata=metadata)


def test_hostile_files(tmp_path):
    m = fl.LSTM(4, 16, seed=0).eval()
    q = fl.quantize(m, "int8")
    config, good = q.get_config(), q.state_dict()
    cases = {
        "bad dtype": (dict(good), dict(config, quantization="int4")),
        "missing": ({k: v for k, v in good.items() if k != "scale_ih_l0"}, config),
        "shape": (dict(good, weight_hh_l0=good["weight_hh_l0"][:, :8]), config),
        "float weights": (dict(good, weight_hh_l0=good["weight_hh_l0"].astype(np.float32)), config),
        "-128": (dict(good, weight_hh_l0=np.full((64, 16), -128, np.int8)), config),
        "zero scale": (dict(good, scale_hh_l0=np.zeros(64, np.float32)), config),
        "nan bias": (dict(good, bias_ih_l0=np.full(64, np.nan, np.float32)), config),
        "huge config": (dict(good), dict(config, hidden_size=1 << 19)),
    }
    for name, (tensors, cfg) in cases.items():
        _write(tmp_path / "bad.safetensors", tensors, cfg)
        with pytest.raises(ValueError):
            fl.load(tmp_path / "bad.safetensors")
    bf = fl.quantize(m, "bfloat16").state_dict()
    _write(tmp_path / "bad.safetensors",
           dict(bf, weight_ih_l0=bf["weight_ih_l0"] + np.float32(1e-4)),
           dict(config, quantization="bfloat16"))
    with pytest.raises(ValueError, match="bfloat16"):
        fl.load(tmp_path / "bad.safetensors")


def test_inference_only_and_argument_errors():
    m = fl.LSTM(4, 8, seed=0)
    with pytest.raises(ValueError, match="eval"):
        fl.quantize(m, "int8")
    m.eval()
    with pytest.raises(ValueError, match="float16"):
        fl.quantize(m, "float16")
    with pytest.raises(TypeError, match="LSTM"):
        fl.quantize(object(), "int8")
    with pytest.raises(ValueError, match="float32"):
        fl.quantize(fl.LSTM(4, 8, dtype="float64").eval(), "int8")
    q = fl.quantize(m, "bfloat16")
    with pytest.raises(RuntimeError, match="inference only"):
        q.train()
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.zeros((1, 1, 8), np.float32))
    assert q.eval() is q and q.train(False) is q
    with pytest.raises(ValueError, match="input_size"):
        q(np.zeros((2, 1, 5), np.float32))
    with pytest.raises(ValueError, match="forward-only"):
        fl.quantize(fl.LSTM(4, 8, bidirectional=True).eval(), "int8").stream()
    with pytest.raises(ValueError, match="path"):
        set_quantized_path("amx")


def test_weight_rounding_helpers():
    W = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    bits = to_bfloat16(W)
    assert np.abs(from_bfloat16(bits) - W).max() <= np.abs(W).max() * 2.0 ** -8
    assert to_bfloat16(np.float32([1 + 2 ** -8]))[0] == to_bfloat16(np.float32([1.0]))[0]
    q, scale = quantize_rows_int8(W)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.abs(q * scale[:, None] - W).max() <= scale.max() / 2 + 1e-7


def test_matches_torch_bfloat16_error():
    import torch
    torch.manual_seed(0)
    t = torch.nn.LSTM(64, 96)
    m = fl.LSTM.from_torch(t).eval()
    x = np.random.default_rng(0).standard_normal((20, 8, 64)).astype(np.float32)
    ref = m(x)[0]
    with torch.no_grad():
        tb = torch.nn.LSTM(64, 96).to(torch.bfloat16)
        tb.load_state_dict({k: v.to(torch.bfloat16) for k, v in t.state_dict().items()})
        torch_error = np.abs(tb(torch.from_numpy(x).to(torch.bfloat16))[0].float().numpy()
                             - ref).max()
    assert np.abs(fl.quantize(m, "bfloat16")(x)[0] - ref).max() <= 2 * torch_error
    assert np.abs(fl.quantize(m, "int8")(x)[0] - ref).max() <= 1e-2
