"""The fused optimizer updates against the NumPy expressions they replace, bit for bit."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm._kernels import update


def numpy_adam(data, grad, m, v, beta1, beta2, step_size, bias_correction2, eps):
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * (grad * grad)
    denom = np.sqrt(v / bias_correction2)
    denom += eps
    data -= data.dtype.type(step_size) * (m / denom)


def numpy_keras_adam(data, grad, m, v, v_hat, beta_1, beta_2, alpha, epsilon):
    t = data.dtype.type
    m += (grad - m) * t(1 - beta_1)
    v += (grad * grad - v) * t(1 - beta_2)
    if v_hat.size:
        np.maximum(v_hat, v, out=v_hat)
        v = v_hat
    data -= m * t(alpha) / (np.sqrt(v) + t(epsilon))


def arrays(rng, dtype, n, count):
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_adam_matches_numpy_bit_for_bit(dtype, n):
    rng = np.random.default_rng(0)
    data, grad, m, v = arrays(rng, dtype, n, 4)
    v = np.abs(v)
    expected = [a.copy() for a in (data, grad, m, v)]
    scalars = (0.9, 0.999, 1e-3 / (1 - 0.9 ** 3), 1 - 0.999 ** 3, 1e-8)
    numpy_adam(*expected, *scalars)
    update.adam(data, grad, m, v, *scalars)
    for got, want in zip((data, m, v), (expected[0], expected[2], expected[3])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_keras_adam_matches_numpy_bit_for_bit(dtype, amsgrad):
    rng = np.random.default_rng(1)
    data, grad, m, v, v_hat = arrays(rng, dtype, 257, 5)
    v, v_hat = np.abs(v), np.abs(v_hat) if amsgrad else v_hat[:0]
    if amsgrad:
        v_hat[3] = np.nan           # np.maximum keeps a NaN on either side
        grad[5] = np.nan
    expected = [a.copy() for a in (data, grad, m, v, v_hat)]
    scalars = (0.9, 0.999, 1e-3 * np.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2), 1e-7)
    numpy_keras_adam(*expected, *scalars)
    update.keras_adam(data, grad, m, v, v_hat, *scalars)
    for got, want in zip((data, m, v, v_hat), expected[:1] + expected[2:]):
        np.testing.assert_array_equal(got, want)
    if amsgrad:
        assert np.isnan(v_hat[3]) and np.isnan(v_hat[5]) and np.isnan(data[5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1 << 14, (1 << 16) + 5])
@pytest.mark.parametrize("kernel", ["adam", "keras_adam", "keras_amsgrad"])
def test_updates_on_threads_are_those_of_one_thread(dtype, n, kernel):
    """From 2**14 elements the update is split between threads (ragged at 2**16 + 5):
    each element's operations are the same, so the results are bit for bit."""
    rng = np.random.default_rng(n)
    start = arrays(rng, dtype, n, 5)
    start[3], start[4] = np.abs(start[3]), np.abs(start[4])
    results = []
    for threads in (1, 2, 3):
        data, grad, m, v, v_hat = (a.copy() for a in start)
        if kernel == "adam":
            update.adam(data, grad, m, v, 0.9, 0.999, 1e-3, 0.5, 1e-8, threads)
        else:
            update.keras_adam(data, grad, m, v, v_hat if kernel == "keras_amsgrad" else
                              v_hat[:0], 0.9, 0.999, 1e-3, 1e-7, threads)
        results.append((data, m, v, v_hat))
    assert np.abs(results[0][0] - start[0]).min() > 0      # every element was updated
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


def test_update_sizes_and_dtypes_are_checked():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="adam: m: expected 4 elements"):
        update.adam(a, a.copy(), np.zeros(3, np.float32), a.copy(), 0.9, 0.99, 1.0, 1.0, 1e-8)
    with pytest.raises(ValueError, match="keras_adam: v_hat: expected 4 elements"):
        update.keras_adam(a, a.copy(), a.copy(), a.copy(), np.zeros(2, np.float32), 0.9,
                          0.99, 1.0, 1e-7)
    with pytest.raises((TypeError, ValueError)):
        update.adam(a, np.zeros(4), a.copy(), a.copy(), 0.9, 0.99, 1.0, 1.0, 1e-8)


@pytest.mark.parametrize("optimizer", [fl.optim.Adam, fl.optim.KerasAdam])
@pytest.mark.parametrize("grad_dtype", [np.float32, np.float64])
def test_optimizer_updates_a_fortran_ordered_parameter(optimizer, grad_dtype):
    # a transposed parameter (a Keras kernel) with a gradient laid out alike goes through
    # flat views in memory order; with a float64 gradient, through copies written back
    rng = np.random.default_rng(2)
    grad = rng.standard_normal((5, 3)).astype(np.float32)
    start = rng.standard_normal((5, 3)).astype(np.float32)
    data_c, data_f = start.copy(), np.asfortranarray(start)
    grads = [np.zeros_like(data_c), np.zeros_like(data_f, dtype=grad_dtype)]
    assert grads[1].flags.f_contiguous
    opts = [optimizer([("w", d, g)], learning_rate=0.1) for d, g in zip((data_c, data_f), grads)]
    for _ in range(3):
        for g, opt in zip(grads, opts):
            g[...] = grad
            opt.step()
    assert data_f.flags.f_contiguous and data_f.dtype == np.float32
    np.testing.assert_array_equal(data_f, data_c)
    np.testing.assert_array_equal(opts[1].state[0]["v"], opts[0].state[0]["v"])
    assert np.abs(data_c - start).min() > 0.01
