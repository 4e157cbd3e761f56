"""LSTM.from_keras against a NumPy transcription of Keras' LSTM equations (training against
Keras 3 itself is in test_keras_training.py): kernel (in, 4H), recurrent_kernel (H, 4H),
bias (4H,), gates i, f, c, o, recurrent activation sigmoid, activation tanh; Bidirectional runs a go_backwards copy and
re-reverses its outputs before concatenating them."""
import numpy as np
import pytest

import fastlstm as fl
from conftest import assert_close, keras_lstm


def from_keras(weights, **kwargs):
    convert = getattr(fl.LSTM, "from_keras", None) or fl.interop.from_keras
    return convert(weights, **kwargs)


def keras_weights(rng, input_size, units, dtype, bias=True):
    weights = [rng.uniform(-0.6, 0.6, (input_size, 4 * units)),
               rng.uniform(-0.6, 0.6, (units, 4 * units))]
    if bias:
        weights.append(rng.uniform(-0.6, 0.6, 4 * units))
    return [w.astype(dtype) for w in weights]


SIZES = [(3, 5, 4, 6), (1, 1, 1, 1), (2, 7, 9, 3), (4, 3, 2, 13)]  # (B, T, in, units)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", SIZES)
def test_from_keras_matches_keras_equations(sizes, bias, dtype):
    batch, steps, input_size, units = sizes
    rng = np.random.default_rng(sum(sizes))
    weights = keras_weights(rng, input_size, units, dtype, bias)
    x = rng.standard_normal((batch, steps, input_size)).astype(dtype)
    m = from_keras(weights)
    assert m.batch_first and m.training and m.dtype == np.dtype(dtype) and m.bias == bias
    out, (h_n, c_n) = m(x)
    expected, h, c = keras_lstm(x.astype(np.float64), *(w.astype(np.float64) for w in weights))
    rtol = 2e-5 if dtype == "float32" else 1e-9
    assert_close(f"keras {sizes} out", out, expected, rtol)
    assert_close(f"keras {sizes} h_n", h_n, h[None], rtol)
    assert_close(f"keras {sizes} c_n", c_n, c[None], rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_from_keras_bidirectional_matches_keras_equations(bias, dtype):
    rng = np.random.default_rng(7)
    batch, steps, input_size, units = 3, 6, 5, 4
    forward = keras_weights(rng, input_size, units, dtype, bias)
    backward = keras_weights(rng, input_size, units, dtype, bias)
    x = rng.standard_normal((batch, steps, input_size)).astype(dtype)
    m = from_keras(forward + backward)
    assert m.bidirectional and m.batch_first and m.training
    out, (h_n, c_n) = m(x)
    x64 = x.astype(np.float64)
    out_f, h_f, c_f = keras_lstm(x64, *(w.astype(np.float64) for w in forward))
    out_b, h_b, c_b = keras_lstm(x64, *(w.astype(np.float64) for w in backward), go_backwards=True)
    expected = np.concatenate([out_f, out_b[:, ::-1]], axis=-1)  # merge_mode="concat"
    rtol = 2e-5 if dtype == "float32" else 1e-9
    assert_close("keras bidirectional out", out, expected, rtol)
    assert_close("keras bidirectional h_n", h_n, np.stack([h_f, h_b]), rtol)
    assert_close("keras bidirectional c_n", c_n, np.stack([c_f, c_b]), rtol)


def test_from_keras_layout_dtype_and_copies():
    rng = np.random.default_rng(3)
    kernel, recurrent_kernel, bias = keras_weights(rng, 3, 2, np.float32)
    m = from_keras([kernel, recurrent_kernel, bias])
    np.testing.assert_array_equal(m.weight_ih_l0, kernel.T)
    np.testing.assert_array_equal(m.weight_hh_l0, recurrent_kernel.T)
    np.testing.assert_array_equal(m.bias_ih_l0, bias)
    np.testing.assert_array_equal(m.bias_hh_l0, np.zeros(8, np.float32))
    before = m.state_dict()
    kernel += 1.0  # the module holds copies
    for name, value in m.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert from_keras([kernel.astype(np.float64), recurrent_kernel, bias]).dtype == np.float64
    assert from_keras([kernel, recurrent_kernel, bias], dtype="float64").dtype == np.float64
    assert from_keras([kernel.astype(np.float64), recurrent_kernel, bias],
                      dtype="float32").dtype == np.float32
    as_lists = from_keras([kernel.tolist(), recurrent_kernel.tolist(), bias.tolist()])
    assert as_lists.dtype == np.float32  # nested lists of Python floats: the float32 default
    np.testing.assert_array_equal(as_lists.weight_ih_l0, kernel.T)


def test_from_keras_rejects_bad_weights():
    rng = np.random.default_rng(4)
    kernel, recurrent_kernel, bias = keras_weights(rng, 3, 2, np.float32)
    other = keras_weights(rng, 3, 5, np.float32)
    cases = [
        ([kernel], ValueError, "expected 3 arrays"),
        ([kernel, recurrent_kernel, bias, kernel, recurrent_kernel], ValueError, "got 5"),
        ([kernel[:, :-1], recurrent_kernel, bias], ValueError, "weights\\[0\\] \\(kernel\\)"),
        ([kernel, recurrent_kernel[:, :-1], bias], ValueError, "recurrent_kernel"),
        ([kernel, recurrent_kernel, bias[:-1]], ValueError, "weights\\[2\\] \\(bias\\)"),
        ([kernel[None], recurrent_kernel, bias], ValueError, "kernel"),
        ([kernel, recurrent_kernel, bias, *other], ValueError, "backward layer"),
        ([kernel, recurrent_kernel, bias, kernel, recurrent_kernel, bias[:-1]], ValueError,
         "weights\\[5\\] \\(bias\\)"),
        ([kernel, recurrent_kernel, bias.astype(np.complex64)], TypeError, "weights\\[2\\]"),
        ([kernel, "recurrent", bias], TypeError, "weights\\[1\\]"),
        ({"kernel": kernel}, TypeError, "list of arrays"),
        (np.zeros((3, 4)), TypeError, "list of arrays"),
        (None, TypeError, "list of arrays"),
    ]
    for weights, error, message in cases:
        with pytest.raises(error, match=message) as info:
            from_keras(weights)
        print(info.value)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        from_keras([kernel, recurrent_kernel, bias], dtype="int8")
