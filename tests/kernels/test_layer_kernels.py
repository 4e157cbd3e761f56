"""The layer kernels against NumPy."""
import numpy as np
import pytest

from fastlstm import _functional as F
from fastlstm._kernels import layers, lstm

ISAS = lstm.supported_isas()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("skip", [None, 3])
def test_embedding_backward_matches_add_at(dtype, skip):
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 7, (4, 9))
    indices[0, :3] = 3                                   # repeated rows, and the skipped one
    grad_out = rng.standard_normal((4, 9, 5)).astype(dtype)
    grad_weight = rng.standard_normal((7, 5)).astype(dtype)
    expected = grad_weight.astype(np.float64)
    keep = indices != skip
    np.add.at(expected, indices[keep], grad_out[keep].astype(np.float64))
    F.embedding_backward(grad_weight, indices, grad_out, skip)
    np.testing.assert_allclose(grad_weight, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    if skip is not None:
        np.testing.assert_allclose(grad_weight[skip], expected[skip])


def test_embedding_backward_checks_indices_and_shapes():
    grad_weight = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 4\), got 4"):
        layers.embedding_backward(grad_weight, np.array([0, 4]), np.ones((2, 2), np.float32),
                                  -1)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \(2, 2\), got \(2, 3\)"):
        layers.embedding_backward(grad_weight, np.array([0, 1]), np.ones((2, 3), np.float32),
                                  -1)
    assert not grad_weight.any()


def softmax_cross_entropy_float64(logits, target):
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    rows = np.arange(len(target))
    grad = e / e.sum(axis=-1, keepdims=True)
    grad[rows, target] -= 1
    return np.log(e.sum(axis=-1)) - shifted[rows, target], grad


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", [1, 15, 16, 17, 80])
def test_sparse_softmax_cross_entropy_matches_float64(isa, dtype, classes):
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((37, classes)) * 4).astype(dtype)
    logits[0] += 1000                                   # the shift keeps exp finite
    target = rng.integers(0, classes, 37)
    loss, grad = np.empty(37, dtype), np.empty_like(logits)
    layers.sparse_softmax_cross_entropy(loss, grad, logits, target, isa)
    want_loss, want_grad = softmax_cross_entropy_float64(logits, target)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 409, 2048])
def test_sparse_softmax_cross_entropy_is_the_same_on_two_threads(dtype, rows):
    """Rows split between threads (from 2**15 logits up): the results are bit for bit
    those of one thread."""
    rng = np.random.default_rng(rows)
    logits = rng.standard_normal((rows, 80)).astype(dtype)
    target = rng.integers(0, 80, rows)
    results = []
    for threads in (1, 2):
        loss, grad = np.empty(rows, dtype), np.empty_like(logits)
        layers.sparse_softmax_cross_entropy(loss, grad, logits, target, ISAS[-1], threads)
        results.append((loss, grad))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_softmax_cross_entropy_divisor_is_numpys_division(isa, dtype):
    """The divisor (a mean's row count) gives the bits of dividing the gradient after."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((300, 80)).astype(dtype)
    target = rng.integers(0, 80, 300)
    loss, grad = np.empty(300, dtype), np.empty_like(logits)
    layers.sparse_softmax_cross_entropy(loss, grad, logits, target, isa)
    scaled_loss, scaled = np.empty(300, dtype), np.empty_like(logits)
    layers.sparse_softmax_cross_entropy(scaled_loss, scaled, logits, target, isa, 2, 300)
    np.testing.assert_array_equal(scaled_loss, loss)
    np.testing.assert_array_equal(scaled, grad / 300)


def test_sparse_softmax_cross_entropy_nan_row_and_bad_input():
    logits = np.zeros((3, 4), np.float32)
    logits[1, 2] = np.nan
    loss, grad = np.empty(3, np.float32), np.empty_like(logits)
    layers.sparse_softmax_cross_entropy(loss, grad, logits, np.array([0, 1, 3]), ISAS[-1])
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    np.testing.assert_allclose(loss[[0, 2]], np.log(4), rtol=1e-6)
    with pytest.raises(ValueError, match=r"target: expected values in \[0, 4\), got 4"):
        layers.sparse_softmax_cross_entropy(loss, grad, logits, np.array([0, 4, 1]), ISAS[-1])
    with pytest.raises(ValueError, match=r"grad: expected shape \(3, 4\), got \(3, 5\)"):
        layers.sparse_softmax_cross_entropy(loss, np.empty((3, 5), np.float32), logits,
                                            np.array([0, 1, 2]), ISAS[-1])
    with pytest.raises(ValueError, match="loss and target: expected 3 rows"):
        layers.sparse_softmax_cross_entropy(np.empty(2, np.float32), grad, logits,
                                            np.array([0, 1, 2]), ISAS[-1])
    with pytest.raises(ValueError, match="isa: expected one of"):
        layers.sparse_softmax_cross_entropy(loss, grad, logits, np.array([0, 1, 2]), "sse9")
