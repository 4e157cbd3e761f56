# cython: language_level=3
"""Fused optimizer updates: one pass over a parameter and its state per step.

Each function does, element by element and in the same order, the float operations of the
NumPy expression beside it, so it gives the same result; NumPy took about ten passes over
the arrays and their temporaries. The arrays are one parameter's flat, C-contiguous data,
gradient and state, all float32 or all float64. The elements are shared by up to
``n_threads`` OpenMP threads (``fl_run_parts``, with the kernels' stall handling); each
element's operations do not depend on the split, so neither does the result.
"""
from libc.math cimport sqrt

from .openmp cimport fl_run_parts, fl_share, fl_shared_address, shared_state

fl_share(shared_state())    # the process's one stall handling (openmp.pxd)

ctypedef fused floating:
    float
    double


def _check_sizes(str function, Py_ssize_t size, dict arrays):
    for name, n in arrays.items():
        if n != size:
            raise ValueError(f"{function}: {name}: expected {size} elements (those of data), "
                             f"got {n}")


cdef enum:
    UPDATE_MIN_ELEMENTS = 1 << 14   # elements a second thread is worth waking for
    UPDATE_ALIGN = 16               # elements per part boundary: whole cache lines of floats


ctypedef struct UpdateCall:     # one fused update's arrays and scalars, for fl_run_parts
    void* data
    const void* grad
    void* m
    void* v
    void* v_hat                 # keras_adam with amsgrad, else NULL
    Py_ssize_t n
    double s1, s2, s3, s4, s5   # the update's scalars, in its signature's order
    bint double


cdef inline void _part_range(Py_ssize_t n, int part, int parts, Py_ssize_t* i0,
                             Py_ssize_t* i1) noexcept nogil:
    cdef Py_ssize_t blocks = (n + UPDATE_ALIGN - 1) // UPDATE_ALIGN
    i0[0] = min(n, blocks * part // parts * UPDATE_ALIGN)
    i1[0] = min(n, blocks * (part + 1) // parts * UPDATE_ALIGN)


cdef void _adam_range(floating* data, const floating* grad, floating* m, floating* v,
                      const UpdateCall* p, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef floating b1 = <floating>p.s1, c1 = <floating>(1 - p.s1)
    cdef floating b2 = <floating>p.s2, c2 = <floating>(1 - p.s2)
    cdef floating size = <floating>p.s3, bc2 = <floating>p.s4
    cdef floating epsilon = <floating>p.s5, g, mi, vi, denom
    cdef Py_ssize_t i
    for i in range(i0, i1):
        g = grad[i]
        mi = m[i] * b1
        mi = mi + c1 * g
        vi = v[i] * b2
        vi = vi + c2 * (g * g)
        m[i], v[i] = mi, vi
        denom = <floating>sqrt(vi / bc2) + epsilon
        data[i] = data[i] - size * (mi / denom)


cdef void _adam_parts(void* arg, int part, int parts) noexcept nogil:
    cdef UpdateCall* p = <UpdateCall*>arg
    cdef Py_ssize_t i0, i1
    _part_range(p.n, part, parts, &i0, &i1)
    if p.double:
        _adam_range(<double*>p.data, <const double*>p.grad, <double*>p.m, <double*>p.v, p,
                    i0, i1)
    else:
        _adam_range(<float*>p.data, <const float*>p.grad, <float*>p.m, <float*>p.v, p, i0, i1)


def adam(floating[::1] data, const floating[::1] grad, floating[::1] m, floating[::1] v,
         double beta1, double beta2, double step_size, double bias_correction2, double eps,
         int n_threads=1):
    """PyTorch's Adam step. NumPy::

        m = m * beta1 + (1 - beta1) * grad
        v = v * beta2 + (1 - beta2) * (grad * grad)
        data -= step_size * (m / (sqrt(v / bias_correction2) + eps))
    """
    cdef Py_ssize_t n = data.shape[0]
    cdef UpdateCall call
    _check_sizes("adam", n, {"grad": grad.shape[0], "m": m.shape[0], "v": v.shape[0]})
    if n == 0:
        return
    call = UpdateCall(&data[0], &grad[0], &m[0], &v[0], NULL, n, beta1, beta2, step_size,
                      bias_correction2, eps, floating is double)
    with nogil:     # about 1 ns per element on one thread
        fl_run_parts(_adam_parts, &call, n_threads if n >= UPDATE_MIN_ELEMENTS else 1, n)


cdef void _keras_adam_range(floating* data, const floating* grad, floating* m, floating* v,
                            floating* v_hat, const UpdateCall* p, Py_ssize_t i0,
                            Py_ssize_t i1) noexcept nogil:
    cdef floating c1 = <floating>(1 - p.s1), c2 = <floating>(1 - p.s2)
    cdef floating a = <floating>p.s3, eps = <floating>p.s4, g, mi, vi
    cdef Py_ssize_t i
    for i in range(i0, i1):
        g = grad[i]
        mi = m[i] + (g - m[i]) * c1
        vi = v[i] + (g * g - v[i]) * c2
        m[i], v[i] = mi, vi
        if v_hat != NULL:
            if not (v_hat[i] >= vi or v_hat[i] != v_hat[i]):   # np.maximum keeps NaN
                v_hat[i] = vi
            vi = v_hat[i]
        data[i] = data[i] - mi * a / (<floating>sqrt(vi) + eps)


cdef void _keras_adam_parts(void* arg, int part, int parts) noexcept nogil:
    cdef UpdateCall* p = <UpdateCall*>arg
    cdef Py_ssize_t i0, i1
    _part_range(p.n, part, parts, &i0, &i1)
    if p.double:
        _keras_adam_range(<double*>p.data, <const double*>p.grad, <double*>p.m, <double*>p.v,
                          <double*>p.v_hat, p, i0, i1)
    else:
        _keras_adam_range(<float*>p.data, <const float*>p.grad, <float*>p.m, <float*>p.v,
                          <float*>p.v_hat, p, i0, i1)


def keras_adam(floating[::1] data, const floating[::1] grad, floating[::1] m, floating[::1] v,
               floating[::1] v_hat, double beta_1, double beta_2, double alpha, double epsilon,
               int n_threads=1):
    """Keras' Adam step; v_hat empty, or the running max of v (amsgrad). NumPy::

        m += (grad - m) * (1 - beta_1)
        v += (grad * grad - v) * (1 - beta_2)
        v_hat = maximum(v_hat, v)          # amsgrad; then v = v_hat
        data -= m * alpha / (sqrt(v) + epsilon)
    """
    cdef Py_ssize_t n = data.shape[0]
    cdef floating* hat = NULL
    cdef UpdateCall call
    _check_sizes("keras_adam", n, {"grad": grad.shape[0], "m": m.shape[0], "v": v.shape[0]})
    if v_hat.shape[0] > 0:
        _check_sizes("keras_adam", n, {"v_hat": v_hat.shape[0]})
        hat = &v_hat[0]
    if n == 0:
        return
    call = UpdateCall(&data[0], &grad[0], &m[0], &v[0], hat, n, beta_1, beta_2, alpha, epsilon,
                      0.0, floating is double)
    with nogil:
        fl_run_parts(_keras_adam_parts, &call, n_threads if n >= UPDATE_MIN_ELEMENTS else 1, n)


def shared_state_address():
    """Address of the stall handling's state as this module sees it (tests: one per
    process)."""
    return fl_shared_address()
