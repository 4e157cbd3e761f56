"""The layer kernels against NumPy."""
import numpy as np
import pytest

from fastlstm import _functional as F
from fastlstm._kernels import layers


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
