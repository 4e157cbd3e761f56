# cython: language_level=3
"""Fused optimizer updates: one pass over a parameter and its state per step.

Each function does, element by element and in the same order, the float operations of the
NumPy expression beside it, so it gives the same result; NumPy took about ten passes over
the arrays and their temporaries. The arrays are one parameter's flat, C-contiguous data,
gradient and state, all float32 or all float64.
"""
from libc.math cimport sqrt

ctypedef fused floating:
    float
    double


def _check_sizes(str function, Py_ssize_t size, dict arrays):
    for name, n in arrays.items():
        if n != size:
            raise ValueError(f"{function}: {name}: expected {size} elements (those of data), "
                             f"got {n}")


def adam(floating[::1] data, const floating[::1] grad, floating[::1] m, floating[::1] v,
         double beta1, double beta2, double step_size, double bias_correction2, double eps):
    """PyTorch's Adam step. NumPy::

        m = m * beta1 + (1 - beta1) * grad
        v = v * beta2 + (1 - beta2) * (grad * grad)
        data -= step_size * (m / (sqrt(v / bias_correction2) + eps))
    """
    cdef Py_ssize_t i, n = data.shape[0]
    _check_sizes("adam", n, {"grad": grad.shape[0], "m": m.shape[0], "v": v.shape[0]})
    cdef floating b1 = <floating>beta1, c1 = <floating>(1 - beta1)
    cdef floating b2 = <floating>beta2, c2 = <floating>(1 - beta2)
    cdef floating size = <floating>step_size, bc2 = <floating>bias_correction2
    cdef floating epsilon = <floating>eps, g, mi, vi, denom
    with nogil:
        for i in range(n):
            g = grad[i]
            mi = m[i] * b1
            mi = mi + c1 * g
            vi = v[i] * b2
            vi = vi + c2 * (g * g)
            m[i], v[i] = mi, vi
            denom = <floating>sqrt(vi / bc2) + epsilon
            data[i] = data[i] - size * (mi / denom)


def keras_adam(floating[::1] data, const floating[::1] grad, floating[::1] m, floating[::1] v,
               floating[::1] v_hat, double beta_1, double beta_2, double alpha, double epsilon):
    """Keras' Adam step; v_hat empty, or the running max of v (amsgrad). NumPy::

        m += (grad - m) * (1 - beta_1)
        v += (grad * grad - v) * (1 - beta_2)
        v_hat = maximum(v_hat, v)          # amsgrad; then v = v_hat
        data -= m * alpha / (sqrt(v) + epsilon)
    """
    cdef Py_ssize_t i, n = data.shape[0]
    cdef bint amsgrad = v_hat.shape[0] > 0
    _check_sizes("keras_adam", n, {"grad": grad.shape[0], "m": m.shape[0], "v": v.shape[0]})
    if amsgrad:
        _check_sizes("keras_adam", n, {"v_hat": v_hat.shape[0]})
    cdef floating c1 = <floating>(1 - beta_1), c2 = <floating>(1 - beta_2)
    cdef floating a = <floating>alpha, eps = <floating>epsilon, g, mi, vi
    with nogil:
        for i in range(n):
            g = grad[i]
            mi = m[i] + (g - m[i]) * c1
            vi = v[i] + (g * g - v[i]) * c2
            m[i], v[i] = mi, vi
            if amsgrad:
                if not (v_hat[i] >= vi or v_hat[i] != v_hat[i]):   # np.maximum keeps NaN
                    v_hat[i] = vi
                vi = v_hat[i]
            data[i] = data[i] - mi * a / (<floating>sqrt(vi) + eps)
