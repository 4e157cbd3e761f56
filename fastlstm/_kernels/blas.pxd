# Row-major BLAS wrappers on scipy.linalg.cython_blas, float32/float64 through fused types.
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating* a, int lda, const floating* b, int ldb, floating beta,
               floating* c, int ldc) noexcept nogil
cdef int require_blas() except -1
cdef int blas_threads_limit(int n_threads) noexcept nogil
cdef void blas_threads_restore(int previous) noexcept nogil
