# cython: language_level=3
"""Kernels of the layers around the LSTM: one pass where NumPy took several.

The embedding gradient is a scatter-add; NumPy's fastest equivalent sorted the indices and
summed each run of equal ones. The sparse softmax cross-entropy runs the cell pass's
exponential (``cell.h``) on the CPU's best instruction set.
"""
from libc.stdint cimport int64_t

from .openmp cimport fl_run_parts, fl_share, fl_shared_address, shared_state
from .lstm import ISAS as _ISAS, supported_isas as _supported_isas

fl_share(shared_state())    # the process's one stall handling (openmp.pxd)


cdef extern from "cell.h":
    void sparse_softmax_xent_f(int isa, float* loss, float* grad, const float* z,
                               const int64_t* target, Py_ssize_t rows, Py_ssize_t C,
                               float divisor) noexcept nogil
    void sparse_softmax_xent_d(double* loss, double* grad, const double* z,
                               const int64_t* target, Py_ssize_t rows, Py_ssize_t C,
                               double divisor) noexcept nogil

ctypedef fused floating:
    float
    double


cdef int _check_indices(str function, str name, const int64_t[::1] indices,
                        Py_ssize_t size) except -1:
    # ValueError for the first index outside [0, size)
    cdef Py_ssize_t n
    for n in range(indices.shape[0]):
        if not 0 <= indices[n] < size:
            raise ValueError(f"{function}: {name}: expected values in [0, {size}), got "
                             f"{indices[n]}")
    return 0


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
    _check_indices("embedding_backward", "indices", indices, V)
    with nogil:
        for n in range(N):
            index = indices[n]
            if index == skip_index:
                continue
            for j in range(D):
                grad_weight[index, j] += grad_out[n, j]


cdef enum:
    XENT_MIN_ELEMENTS = 1 << 15     # logits a second thread is worth waking for


cdef void _xent_rows(floating* loss, floating* grad, const floating* logits,
                     const int64_t* target, Py_ssize_t rows, Py_ssize_t C, double divisor,
                     int isa, int part, int parts) noexcept nogil:
    # rows [rows*part/parts, rows*(part+1)/parts)
    cdef Py_ssize_t r0 = rows * part // parts, r1 = rows * (part + 1) // parts
    if r1 <= r0:
        return
    if floating is float:
        sparse_softmax_xent_f(isa, loss + r0, grad + r0 * C, logits + r0 * C, target + r0,
                              r1 - r0, C, <float>divisor)
    else:
        sparse_softmax_xent_d(loss + r0, grad + r0 * C, logits + r0 * C, target + r0, r1 - r0,
                              C, divisor)


ctypedef struct XentCall:      # the arguments of _xent_rows, for fl_run_parts
    void* loss
    void* grad
    const void* logits
    const int64_t* target
    Py_ssize_t rows, C
    double divisor
    int isa
    bint double


cdef void _xent_parts(void* arg, int part, int parts) noexcept nogil:
    cdef XentCall* p = <XentCall*>arg
    if p.double:
        _xent_rows(<double*>p.loss, <double*>p.grad, <const double*>p.logits, p.target,
                   p.rows, p.C, p.divisor, p.isa, part, parts)
    else:
        _xent_rows(<float*>p.loss, <float*>p.grad, <const float*>p.logits, p.target, p.rows,
                   p.C, p.divisor, p.isa, part, parts)


def sparse_softmax_cross_entropy(floating[::1] loss, floating[:, ::1] grad,
                                 const floating[:, ::1] logits, const int64_t[::1] target,
                                 str isa, int n_threads=1, double divisor=1):
    """Per row r of logits (rows, C): loss[r] = -log softmax(logits[r])[target[r]] and
    grad[r] = (softmax(logits[r]) - onehot(target[r])) / divisor (divisor in the logits'
    dtype), from one exp of the logits shifted by their max (a row holding a NaN gets NaN).
    NumPy::

        shifted = logits - logits.max(-1, keepdims=True)
        loss = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(rows), target]

    isa is the instruction set of the float pass: one of
    ``fastlstm._kernels.lstm.supported_isas()`` (the LSTM kernels' is ``packed_isa()``).
    The rows are shared by up to n_threads OpenMP threads, with the kernels' stall handling
    (``fl_run_parts``).
    """
    cdef Py_ssize_t rows = logits.shape[0], C = logits.shape[1]
    cdef int isa_index
    cdef XentCall call
    if isa not in _supported_isas():
        raise ValueError(f"sparse_softmax_cross_entropy: isa: expected one of "
                         f"{_supported_isas()}, got {isa!r}")
    isa_index = _ISAS.index(isa)
    if loss.shape[0] != rows or target.shape[0] != rows:
        raise ValueError(f"sparse_softmax_cross_entropy: loss and target: expected {rows} "
                         f"rows (those of logits), got {loss.shape[0]} and {target.shape[0]}")
    if grad.shape[0] != rows or grad.shape[1] != C:
        raise ValueError(f"sparse_softmax_cross_entropy: grad: expected shape ({rows}, {C}), "
                         f"got ({grad.shape[0]}, {grad.shape[1]})")
    _check_indices("sparse_softmax_cross_entropy", "target", target, C)
    if rows == 0 or C == 0:
        return
    call = XentCall(&loss[0], &grad[0, 0], &logits[0, 0], &target[0], rows, C, divisor,
                    isa_index, floating is double)
    with nogil:     # about 1 ns per logit on one thread
        fl_run_parts(_xent_parts, &call, n_threads if rows * C >= XENT_MIN_ELEMENTS else 1,
                     rows * C)


def shared_state_address():
    """Address of the stall handling's state as this module sees it (tests: one per
    process)."""
    return fl_shared_address()
