# cython: language_level=3
"""Row-major gemm on scipy's BLAS, and control of scipy's OpenBLAS thread pool.

Row-major callers swap operands instead of transposing data: C = op(A) op(B) in row-major
order is C^T = op(B)^T op(A)^T in the column-major order Fortran BLAS expects.

SciPy's BLAS is found on first use (:func:`load`, from the first product that needs it),
not at import: importing ``scipy.linalg`` took 0.17 s and 32 MB here, and loading its
OpenBLAS starts a thread pool that spins for about 0.1 s. An LSTM alone never needs it.
"""
import ctypes
import os

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

# scipy.linalg.cython_blas's sgemm / dgemm (Fortran argument order, all by pointer)
ctypedef void (*sgemm_t)(char* transa, char* transb, int* m, int* n, int* k, float* alpha,
                         float* a, int* lda, float* b, int* ldb, float* beta, float* c,
                         int* ldc) noexcept nogil
ctypedef void (*dgemm_t)(char* transa, char* transb, int* m, int* n, int* k, double* alpha,
                         double* a, int* lda, double* b, int* ldb, double* beta, double* c,
                         int* ldc) noexcept nogil
cdef sgemm_t _sgemm = NULL
cdef dgemm_t _dgemm = NULL


cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating* a, int lda, const floating* b, int ldb, floating beta,
               floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major; C is (m, n), op(A) (m, k). The
    caller has run require_blas()."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        _sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        _dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


# scipy's OpenBLAS keeps its own thread pool. While OpenMP owns the cores inside a kernel,
# BLAS must run single-threaded, so the kernels set it to one thread
# for the call and restore it after. Other BLAS builds expose no such switch: no-op.
ctypedef void (*set_threads_t)(int) noexcept nogil
ctypedef int (*get_threads_t)() noexcept nogil
cdef set_threads_t _set_threads = NULL
cdef get_threads_t _get_threads = NULL


def _find_openblas():
    import scipy
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    names = sorted(os.listdir(libs)) if os.path.isdir(libs) else []
    for name in names:
        if "openblas" not in name:
            continue
        lib = ctypes.CDLL(os.path.join(libs, name))
        for prefix in ("scipy_openblas", "openblas"):
            setter = getattr(lib, prefix + "_set_num_threads", None)
            getter = getattr(lib, prefix + "_get_num_threads", None)
            if setter is not None and getter is not None:
                return (ctypes.cast(setter, ctypes.c_void_p).value,
                        ctypes.cast(getter, ctypes.c_void_p).value)
    return None


cdef void* _function(dict capi, str name) except NULL:
    """The C function `name` that a Cython module exports in its ``__pyx_capi__``."""
    capsule = capi[name]
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


def load():
    """Find scipy's sgemm and dgemm, and its OpenBLAS thread controls (once)."""
    global _sgemm, _dgemm, _set_threads, _get_threads
    if _sgemm != NULL:
        return
    from scipy.linalg import cython_blas
    try:
        found = _find_openblas()
    except OSError:
        found = None
    if found is not None:
        _set_threads = <set_threads_t><size_t>found[0]
        _get_threads = <get_threads_t><size_t>found[1]
    _dgemm = <dgemm_t>_function(cython_blas.__pyx_capi__, "dgemm")
    _sgemm = <sgemm_t>_function(cython_blas.__pyx_capi__, "sgemm")


cdef int require_blas() except -1:
    """Run load() unless it has run: before the first gemm (with the GIL)."""
    if _sgemm == NULL:
        load()
    return 0


cdef int blas_threads_limit(int n_threads) noexcept nogil:
    """Limit scipy's OpenBLAS to ``n_threads``; return the previous count (0: unknown)."""
    cdef int previous
    if _get_threads == NULL:
        return 0
    previous = _get_threads()
    if previous != n_threads:
        _set_threads(n_threads)
    return previous


cdef void blas_threads_restore(int previous) noexcept nogil:
    if _get_threads != NULL and previous > 0 and _get_threads() != previous:
        _set_threads(previous)


# Test twins: the cdef wrappers called from Python, checked against NumPy.
def gemm_twin(bint trans_a, bint trans_b, double alpha, floating[:, ::1] a,
              floating[:, ::1] b, double beta, floating[:, ::1] c):
    """c := alpha * op(a) @ op(b) + beta * c (in place) through the row-major wrapper."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    require_blas()
    gemm(trans_a, trans_b, m, n, k, <floating>alpha, &a[0, 0], a.shape[1], &b[0, 0],
         b.shape[1], <floating>beta, &c[0, 0], c.shape[1])
