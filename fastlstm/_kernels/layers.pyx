# cython: language_level=3
"""Kernels of the layers around the LSTM: one pass where NumPy took several.

The embedding gradient is a scatter-add; NumPy's fastest equivalent sorted the indices and
summed each run of equal ones.
"""
from libc.stdint cimport int64_t

ctypedef fused floating:
    float
    double


def embedding_backward(floating[:, ::1] grad_weight, const int64_t[::1] indices,
                       const floating[:, ::1] grad_out, Py_ssize_t skip_index):
    """Add row n of grad_out to row indices[n] of grad_weight, in the order of n, except
    where indices[n] == skip_index (pass -1 to skip none). NumPy::

        np.add.at(grad_weight, indices[keep], grad_out[keep])
    """
    cdef Py_ssize_t n, j, index, N = indices.shape[0], V = grad_weight.shape[0]
    cdef Py_ssize_t D = grad_weight.shape[1]
    if grad_out.shape[0] != N or grad_out.shape[1] != D:
        raise ValueError(f"embedding_backward: grad_out: expected shape ({N}, {D}), got "
                         f"({grad_out.shape[0]}, {grad_out.shape[1]})")
    for n in range(N):
        if not 0 <= indices[n] < V:
            raise ValueError(f"embedding_backward: indices: expected values in [0, {V}), "
                             f"got {indices[n]}")
    with nogil:
        for n in range(N):
            index = indices[n]
            if index == skip_index:
                continue
            for j in range(D):
                grad_weight[index, j] += grad_out[n, j]
