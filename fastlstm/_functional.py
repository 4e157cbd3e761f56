"""Maths shared by the PyTorch-style modules, the Keras-style layers and ``fl.LSTM``.

Plain functions on NumPy arrays, one place for each: arrays on cache-line boundaries, the
affine map and its gradient (its products on the kernels' OpenMP threads), the embedding
lookup's index check and gradient scatter, and the inverted-dropout mask.
"""

import numpy as np

from ._kernels import layers as _layers
from ._kernels import lstm as _lstm
from ._kernels.arrays import aligned_empty
from ._threads import get_num_threads


def aligned_zeros(shape, dtype):
    """Zeros, as :func:`aligned_empty`."""
    array = aligned_empty(shape, dtype)
    array.fill(0)
    return array


_ONES: dict[np.dtype, np.ndarray] = {}


def _ones(n, dtype):
    """A read-only row of n ones (kept per dtype, grown as needed)."""
    ones = _ONES.get(dtype)
    if ones is None or len(ones) < n:
        ones = _ONES[dtype] = np.ones(max(n, 1024), dtype)
        ones.flags.writeable = False
    return ones[:n]


def as_index_array(x, size, name="x"):
    """``x`` as int64 indices in [0, size); integral floats are accepted (Keras feeds them)."""
    array = np.asarray(x)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise TypeError(f"{name}: expected integer indices, got non-integral floats")
    elif array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer indices, got dtype {array.dtype}")
    indices = array.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"{name}: expected indices in [0, {size}), got values in "
                         f"[{indices.min()}, {indices.max()}]")
    return indices


def linear(x, weight, bias):
    """``x @ weight.T + bias`` over the last axis; weight (out, in), bias (out,) or None;
    x and weight of one dtype (float32 or float64), weight C-contiguous."""
    rows = np.ascontiguousarray(x).reshape(-1, weight.shape[1])
    out = aligned_empty((rows.shape[0], weight.shape[0]), weight.dtype)
    if bias is not None:
        np.copyto(out, bias)
    _lstm.matmul(out, rows, weight, False, True, bias is not None, get_num_threads())
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


def linear_backward(grad_out, x, weight, grad_weight, grad_bias, input_grad=True):
    """Add dweight (out, in) and dbias (or skip it if None) of :func:`linear`; return dx,
    or None without ``input_grad``.

    grad_weight is C-contiguous, like weight."""
    threads = get_num_threads()
    rows = np.ascontiguousarray(grad_out).reshape(-1, weight.shape[0])
    _lstm.matmul(grad_weight, rows, np.ascontiguousarray(x).reshape(-1, weight.shape[1]), True,
                 False, True, threads)
    if grad_bias is not None:   # the column sums, as a product: ones (1, rows) @ rows
        _lstm.matmul(grad_bias.reshape(1, -1), _ones(len(rows), rows.dtype)[None], rows, False,
                     False, True, threads)
    if not input_grad:
        return None
    dx = aligned_empty((rows.shape[0], weight.shape[1]), weight.dtype)
    _lstm.matmul(dx, rows, weight, False, False, False, threads)
    return dx.reshape(grad_out.shape[:-1] + (weight.shape[1],))


def embedding_backward(grad_weight, indices, grad_out, skip_index=None):
    """Add each row of ``grad_out`` (indices.shape + (dim,)) to ``grad_weight[index]``.

    Rows of ``skip_index`` (a padding index) receive nothing. grad_weight is C-contiguous.
    """
    dim = grad_weight.shape[1]
    _layers.embedding_backward(
        grad_weight, np.ascontiguousarray(indices, dtype=np.int64).reshape(-1),
        np.ascontiguousarray(grad_out, dtype=grad_weight.dtype).reshape(-1, dim),
        -1 if skip_index is None else skip_index)


def dropout_mask(rng, shape, rate, dtype):
    """Inverted-dropout mask: 0 with probability ``rate``, else 1/(1-rate)."""
    dtype = np.dtype(dtype)
    if rate >= 1.0:
        return np.zeros(shape, dtype)
    keep = rng.random(shape) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))
