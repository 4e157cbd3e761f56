# cython: language_level=3
"""Kernels of the layers around the LSTM: one pass where NumPy took several.

The embedding gradient is a scatter-add; NumPy's fastest equivalent sorted the indices and
summed each run of equal ones. The sparse softmax cross-entropy runs the cell pass's
exponential (``cell.h``) on the CPU's best instruction set.
"""
from cython.parallel cimport parallel
from libc.stdint cimport int64_t

from .openmp cimport (fl_now_ns, fl_omp_team_size, fl_omp_thread_id, fl_team_init,
                      fl_team_judge_call, fl_team_report, fl_team_size, fl_team_t)
from .lstm import ISAS as _ISAS, supported_isas as _supported_isas


cdef extern from "cell.h":
    void sparse_softmax_xent_f(int isa, float* loss, float* grad, const float* z,
                               const int64_t* target, Py_ssize_t rows,
                               Py_ssize_t C) noexcept nogil
    void sparse_softmax_xent_d(double* loss, double* grad, const double* z,
                               const int64_t* target, Py_ssize_t rows,
                               Py_ssize_t C) noexcept nogil

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
                     const int64_t* target, Py_ssize_t rows, Py_ssize_t C, int isa, int part,
                     int parts) noexcept nogil:
    # rows [rows*part/parts, rows*(part+1)/parts)
    cdef Py_ssize_t r0 = rows * part // parts, r1 = rows * (part + 1) // parts
    if r1 <= r0:
        return
    if floating is float:
        sparse_softmax_xent_f(isa, loss + r0, grad + r0 * C, logits + r0 * C, target + r0,
                              r1 - r0, C)
    else:
        sparse_softmax_xent_d(loss + r0, grad + r0 * C, logits + r0 * C, target + r0, r1 - r0,
                              C)


def sparse_softmax_cross_entropy(floating[::1] loss, floating[:, ::1] grad,
                                 const floating[:, ::1] logits, const int64_t[::1] target,
                                 str isa, int n_threads=1):
    """Per row r of logits (rows, C): loss[r] = -log softmax(logits[r])[target[r]] and
    grad[r] = softmax(logits[r]) - onehot(target[r]), from one exp of the logits shifted by
    their max (a row holding a NaN gets NaN). NumPy::

        shifted = logits - logits.max(-1, keepdims=True)
        loss = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(rows), target]

    isa is the instruction set of the float pass: one of
    ``fastlstm._kernels.lstm.supported_isas()`` (the LSTM kernels' is ``packed_isa()``).
    The rows are shared by up to n_threads OpenMP threads, under the LSTM kernels' backoff.
    """
    cdef Py_ssize_t rows = logits.shape[0], C = logits.shape[1]
    cdef int isa_index, parts
    cdef long long started, expected_ns = rows * C     # about 1 ns per logit
    cdef fl_team_t team
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
    n_threads = fl_team_size(max(1, n_threads) if rows * C >= XENT_MIN_ELEMENTS else 1,
                             expected_ns)
    fl_team_init(&team, n_threads, 0)
    with nogil:
        if n_threads == 1:
            _xent_rows(&loss[0], &grad[0, 0], &logits[0, 0], &target[0], rows, C, isa_index,
                       0, 1)
        else:
            started = fl_now_ns()
            with parallel(num_threads=n_threads):
                parts = fl_omp_team_size()      # OpenMP may give fewer than asked
                if fl_omp_thread_id() == 0:
                    team.n = parts
                _xent_rows(&loss[0], &grad[0, 0], &logits[0, 0], &target[0], rows, C,
                           isa_index, fl_omp_thread_id(), parts)
            fl_team_judge_call(&team, fl_now_ns() - started, expected_ns)
            fl_team_report(&team)
