# OpenMP shim: every OpenMP call of the kernels goes through here, so a build without
# OpenMP compiles the same code serially (one thread, barriers are no-ops).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static inline int fl_openmp_enabled(void) { return 1; }
    static inline int fl_omp_max_threads(void) { return omp_get_max_threads(); }
    static inline int fl_omp_team_size(void) { return omp_get_num_threads(); }
    static inline int fl_omp_thread_id(void) { return omp_get_thread_num(); }
    static inline void fl_omp_barrier(void) {
        #pragma omp barrier
    }
    #else
    static inline int fl_openmp_enabled(void) { return 0; }
    static inline int fl_omp_max_threads(void) { return 1; }
    static inline int fl_omp_team_size(void) { return 1; }
    static inline int fl_omp_thread_id(void) { return 0; }
    static inline void fl_omp_barrier(void) { }
    #endif
    """
    int fl_openmp_enabled() noexcept nogil
    int fl_omp_max_threads() noexcept nogil
    int fl_omp_team_size() noexcept nogil      # threads in the current parallel region
    int fl_omp_thread_id() noexcept nogil
    void fl_omp_barrier() noexcept nogil       # orphaned barrier: binds to the enclosing region
