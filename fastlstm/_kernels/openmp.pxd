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

    /* Per-time-step barrier: sense-reversing, spins briefly (a step's imbalance is a few
     * microseconds) and then yields the core, so a thread descheduled by other load on the
     * machine gets to run instead of the waiter burning its time slice. */
    #include <sched.h>
    typedef struct { int count; int sense; int n; } fl_barrier_t;
    static inline void fl_barrier_wait(fl_barrier_t *barrier, int *local_sense) {
        int spins = 0;
        *local_sense = !*local_sense;
        if (__atomic_add_fetch(&barrier->count, 1, __ATOMIC_ACQ_REL) == barrier->n) {
            __atomic_store_n(&barrier->count, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&barrier->sense, *local_sense, __ATOMIC_RELEASE);
            return;
        }
        while (__atomic_load_n(&barrier->sense, __ATOMIC_ACQUIRE) != *local_sense) {
            if (++spins < 20000) {
    #if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
    #endif
            } else {
                sched_yield();
            }
        }
    }
    """
    int fl_openmp_enabled() noexcept nogil
    int fl_omp_max_threads() noexcept nogil
    int fl_omp_team_size() noexcept nogil      # threads in the current parallel region
    int fl_omp_thread_id() noexcept nogil
    void fl_omp_barrier() noexcept nogil       # orphaned barrier: binds to the enclosing region
    ctypedef struct fl_barrier_t:
        int count
        int sense
        int n
    void fl_barrier_wait(fl_barrier_t* barrier, int* local_sense) noexcept nogil
