# cython: language_level=3
"""LSTM kernels: forward (inference and training), backward (BPTT), streaming step.

One call handles one layer and one direction over time-major contiguous buffers, described
by one workspace struct (:c:type:`LSTMWork`). Inside a call OpenMP owns the cores and BLAS
runs single-threaded. The hidden units are cut into slices, one per thread (a forward
with weights past L2 cuts more and shares them out step by step); a slice's
W_hh rows (all four gates of its units) are packed once per call into panels
(``packed.h``), which stay in that thread's cache. Per time step a thread multiplies
h_{t-1} by its panels, runs the fused cell pass for its units (``cell.h``), and meets the
others at one barrier (``openmp.pxd``), which hands every slice to thread 0 when another
thread loses its core to other load. The products of the other layers (:func:`matmul`) run
on the same threads, under the same backoff.
"""
from cython cimport floating
from cython.parallel cimport parallel
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from posix.unistd cimport usleep

cimport numpy as cnp

from .blas cimport blas_threads_limit, blas_threads_restore, gemm, require_blas
from .cell cimport (cell_backward_d, cell_backward_f, cell_forward_d, cell_forward_f,
                   fl_stream_fence)
from .openmp cimport (fl_adaptive, fl_backoff_reset, fl_busy_override, fl_chooser_init,
                      fl_chooser_record, fl_chooser_t, fl_chooser_threads, fl_chooser_way,
                      fl_set_adaptive, fl_set_busy_override, fl_share, fl_shared_address,
                      shared_state,
                      FL_LAG_MEMBERS, FL_LAG_STEPS, FL_SHARE_MEMBERS, fl_lag_check, fl_lag_done,
                      fl_lag_go, fl_lag_mark, fl_lag_release, fl_lag_stopped, fl_member_t,
                      fl_now_ns, fl_omp_team_size, fl_omp_thread_id, fl_run_parts, fl_share_claim,
                      fl_team_await, fl_team_barrier, fl_team_init, fl_team_join,
                      fl_team_judge_call, fl_team_publish, fl_team_report, fl_team_size,
                      fl_team_t, kernel_threads)

from .arrays cimport copy_contiguous
from .arrays import aligned_empty

fl_share(shared_state())    # the process's one stall handling (openmp.pxd)

cnp.import_array()

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from *:
    """
    /* Ask for every cache line of [p, p + bytes) at once, so that lines another core has
     * just written arrive in parallel instead of one by one as a product reaches them. */
    static inline void fl_prefetch_lines(const void *p, size_t bytes) {
        const char *c = (const char *)p;
        for (size_t i = 0; i < bytes; i += 64)
            __builtin_prefetch(c + i);
        if (bytes > 0)
            __builtin_prefetch(c + bytes - 1);   /* the last line of an unaligned range */
    }

    /* Add n to a count the threads share. */
    static inline void fl_count(Py_ssize_t *total, Py_ssize_t n) {
        __atomic_fetch_add(total, n, __ATOMIC_RELAXED);
    }

    /* The next task of a queue the team shares: the value of *next, which it advances. */
    static inline Py_ssize_t fl_claim(Py_ssize_t *next) {
        return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
    }
    """
    void fl_prefetch_lines(const void* p, size_t bytes) noexcept nogil
    Py_ssize_t fl_claim(Py_ssize_t* next) noexcept nogil
    void fl_count(Py_ssize_t* total, Py_ssize_t n) noexcept nogil

cdef extern from "packed.h":
    void pack_panel_f(float* panel, const float* src, Py_ssize_t col_stride,
                      Py_ssize_t k_stride, Py_ssize_t K, int ncols) noexcept nogil
    void pack_panel_d(double* panel, const double* src, Py_ssize_t col_stride,
                      Py_ssize_t k_stride, Py_ssize_t K, int ncols) noexcept nogil
    void packed_product_f(float* C, Py_ssize_t ldc, const float* A, Py_ssize_t lda,
                          const float* panels, Py_ssize_t panel_stride, Py_ssize_t M,
                          Py_ssize_t n_panels, Py_ssize_t K, int accumulate,
                          int backwards) noexcept nogil
    void packed_product_d(double* C, Py_ssize_t ldc, const double* A, Py_ssize_t lda,
                          const double* panels, Py_ssize_t panel_stride, Py_ssize_t M,
                          Py_ssize_t n_panels, Py_ssize_t K, int accumulate,
                          int backwards) noexcept nogil
    void packed_product_isa_f(int isa, float* C, Py_ssize_t ldc, const float* A,
                              Py_ssize_t lda, const float* panels, Py_ssize_t panel_stride,
                              Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t K,
                              int accumulate, int backwards) noexcept nogil
    void packed_product_isa_d(int isa, double* C, Py_ssize_t ldc, const double* A,
                              Py_ssize_t lda, const double* panels, Py_ssize_t panel_stride,
                              Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t K,
                              int accumulate, int backwards) noexcept nogil
    void packed_product_at_f(float* C, Py_ssize_t ldc, const float* A, const float* panels,
                             Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t K,
                             int accumulate) noexcept nogil
    void packed_product_at_d(double* C, Py_ssize_t ldc, const double* A, const double* panels,
                             Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t K,
                             int accumulate) noexcept nogil
    void gates_product_f(float* C, Py_ssize_t ldc, const float* A, Py_ssize_t lda,
                         Py_ssize_t a_stride, const float* panels, Py_ssize_t panel_stride,
                         Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t K,
                         int accumulate, int backwards) noexcept nogil
    void gates_product_d(double* C, Py_ssize_t ldc, const double* A, Py_ssize_t lda,
                         Py_ssize_t a_stride, const double* panels, Py_ssize_t panel_stride,
                         Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t K,
                         int accumulate, int backwards) noexcept nogil
    void rows_product_f(float* C, Py_ssize_t ldc, const float* A_panels, const float* W,
                        Py_ssize_t ldw, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) noexcept nogil
    void rows_product_d(double* C, Py_ssize_t ldc, const double* A_panels, const double* W,
                        Py_ssize_t ldw, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) noexcept nogil
    void fl_pack_rows8_f(float* out, float* sums, float* table, const Py_ssize_t* tokens,
                         Py_ssize_t ldt, const float* A, Py_ssize_t lda,
                         Py_ssize_t M, Py_ssize_t K) noexcept nogil
    void fl_pack_rows8_d(double* out, double* sums, double* table, const Py_ssize_t* tokens,
                         Py_ssize_t ldt, const double* A, Py_ssize_t lda,
                         Py_ssize_t M, Py_ssize_t K) noexcept nogil
    int fl_packed_isa() noexcept nogil
    int fl_cpu_isa() noexcept nogil
    int fl_forced_isa

cdef enum:
    SLICE_ALIGN = 16    # units per slice: a multiple of every panel width (16 floats, 8 doubles)
    ALIGNMENT = 64      # bytes: workspaces start on cache lines
    # x @ W_ih.T is projected for CHUNK_ROWS rows (steps x batch) at once, every step when
    # the sequence has no more; for SHORT_CHUNK_ROWS when W_ih takes at most
    # SHORT_CHUNK_MAX_BYTES, so that the chunk's z stays in L2 until its steps read it,
    # where reading W_ih once more per chunk costs little. Chunks of 128 rows instead of
    # 256, alternated call by call in one process (2 threads, median paired ratios, order
    # reversed every pair): S2-bidir forward 0.925, two-layer S2 0.962, S2's second layer
    # (in 256) 0.964, S2 0.983, DB2 0.990, the char-LM's training step 0.995; with larger
    # W_ih S3 0.999, DB4 0.994, DB6 (16 MB) 1.026 and S3's training step 1.047.
    CHUNK_ROWS = 256
    SHORT_CHUNK_ROWS = 128
    SHORT_CHUNK_MAX_BYTES = 1 << 20
    # A team splits the batch instead of the hidden units when each thread gets at least
    # this many sequences and every thread can keep all the packed weights close: a thread
    # then reads and writes only its own sequences' rows in the time loop, so no cache line
    # passes between the cores there (see _step_share). Alternated with the unit split in
    # fresh processes: the char-LM's 0.33 MB of weights (B 32) 9 % faster forward and S2's
    # 1.3 MB (B 16) 1-3 %; S3's 6.3 MB (B 64) 1.5 % slower and DB6's 34 MB (B 32) 6 %.
    BATCH_SPLIT_ROWS = 8
    BATCH_SPLIT_MAX_BYTES = 1 << 21
    # Split by hidden units, a step's product reads rows the other threads wrote in the
    # step before: up to this size they are asked for at once (fl_prefetch_lines) rather
    # than line by line as the product reaches them. S1 forward 358 -> 345 us and training
    # step 1.04 -> 1.03 ms with the cores far apart, 251 -> 248 us and 676 -> 671 us near.
    PREFETCH_MAX_BYTES = 8192
    # A forward whose packed weights pass SHARE_MIN_BYTES a thread (more than a core's L2
    # keeps, so a slice costs the same read wherever it runs) over SHARE_MIN_ROWS sequences
    # or more (steps long enough to share out) cuts its units into SHARE_SLICES slices a
    # thread, claimed step by step (fl_share_claim): a virtual core the host slows for a
    # while does fewer of them instead of holding the other at every barrier. The backward
    # keeps a slice a thread: sharing its steps the same way measured no faster on S3's
    # training step with a core 20 % taken and 3-4 % slower on quiet cores.
    SHARE_MIN_BYTES = 1 << 20
    SHARE_MIN_ROWS = 16
    SHARE_SLICES = 8
    SHARE_MIN_UNITS = 64    # units a slice at least: a block of C 4 panels wide
    INT_INDEX_MAX = 2147483647   # 2**31 - 1: the products and the cell pass index with C ints


# A stream whose weights pass this many bytes may split each step across the threads: it
# times both ways and keeps the faster (fl_chooser_t). Smaller ones stay on the calling
# thread: on the development machine a split step lost at 96-192 KB wherever the host put
# the cores (see bench/stream_split.py).
cdef Py_ssize_t _stream_split_bytes = 1 << 18


def set_stream_split_bytes(Py_ssize_t size):
    """Let the streams made from now on split their steps across the threads when their
    weights pass ``size`` bytes (default 256 KB; 0: every stream). Returns the previous
    size.

    Such a stream times its steps on one thread and split, and keeps the faster way,
    comparing again now and then; with :func:`set_adaptive_threads` off it always splits.
    For tuning (``bench/stream_split.py`` measures both ways) and tests; streams already
    made keep their setting.
    """
    global _stream_split_bytes
    if size < 0:
        raise ValueError(f"size: expected bytes >= 0, got {size}")
    previous = _stream_split_bytes
    _stream_split_bytes = size
    return previous


# A training forward whose gates pass this many bytes (a core's L2) stores them past the
# caches: a store that skips the cache neither reads the line first (from the other core,
# which read it in the last backward) nor pushes the packed weights out, and the backward
# reads the gates back as fast. Measured on the development machine, the two settings
# alternated in one process: char-LM forward (4 MB of gates) 2.36 -> 2.27 ms, and 4.1 ->
# 3.6 ms while the machine ran slow; S2 5.4 -> 5.1 ms (slow); S3 -2%; the backwards the
# same; S1 (256 KB) 3% slower streamed, so it keeps its gates cached.
cdef Py_ssize_t _stream_gates_bytes = 1 << 20


def set_stream_gates_bytes(Py_ssize_t size):
    """Store the gates of training forwards past the caches when they pass ``size`` bytes
    (default 1 MB; 0: always). Returns the previous size. For tuning and tests."""
    global _stream_gates_bytes
    if size < 0:
        raise ValueError(f"size: expected bytes >= 0, got {size}")
    previous = _stream_gates_bytes
    _stream_gates_bytes = size
    return previous


# Fault injection for tests: thread 1 sleeps before the barrier of this step (-1: never),
# as if other load had taken its core.
cdef Py_ssize_t _late_step = -1
cdef unsigned int _late_us = 0


cdef inline void _maybe_late(int tid, Py_ssize_t step) noexcept nogil:
    if tid == 1 and step == _late_step:
        usleep(_late_us)


def inject_late_thread(Py_ssize_t step, unsigned int microseconds):
    """Make thread 1 of every later call arrive late at one step's barrier (-1: never).

    While a late thread is injected the machine counts as busy (as if other processes had
    taken the core), so the wait is handled as a lost core.
    """
    global _late_step, _late_us
    _late_step, _late_us = step, microseconds
    fl_set_busy_override(1 if step >= 0 else -1)


def set_machine_busy(busy):
    """Take the machine as busy (True) or idle (False) whatever it is, or look at it again
    (None), in the stall handling (for tests). Returns the previous setting."""
    previous = {-1: None, 0: False, 1: True}[fl_busy_override()]
    fl_set_busy_override(-1 if busy is None else int(bool(busy)))
    return previous


def set_adaptive_threads(bint adaptive):
    """Turn stall handling on (the default) or off, and clear the backoff.

    On: a call whose thread lost its core finishes on thread 0, and the calls of the next
    backoff period use one thread; a short call after the cores sat idle uses one thread.
    Off: every call runs its full team to the end.
    Returns the previous setting.
    """
    previous = bool(fl_adaptive())
    fl_set_adaptive(adaptive)
    fl_backoff_reset()
    return previous


def team_size(int requested):
    """Threads a long kernel call would use now when asked for `requested`."""
    return fl_team_size(requested, 1LL << 62)


cdef long long _expected_ns(LSTMWork* w, int passes):
    # One thread's time for `passes` forward-sized passes, at a modest 50 GFLOP/s
    return passes * 2 * w.T * w.B * 4 * w.H * (w.n_in + w.H) // 50


# How the last forward or backward call ran (for tests and diagnostics; not synchronised).
cdef int _last_team = 0
cdef bint _last_stalled = False
cdef Py_ssize_t _stolen_slices = 0     # slices sharing teams took from another member's range


def stolen_slices():
    """Slices the members of sharing teams (SHARE_SLICES) have taken from another member's
    range since the module was loaded; for tests."""
    return _stolen_slices


cdef bint _last_by_rows = False


def last_call():
    """``(threads, stalled)`` of the last kernel call in this process."""
    return _last_team, bool(_last_stalled)


def last_projected_by_rows():
    """Whether the last forward projected x through W_ih's own rows (its first slice)."""
    return bool(_last_by_rows)


cdef object _finish(LSTMWork* w):
    global _last_team, _last_stalled
    _last_team, _last_stalled = w.team.n, w.team.stalled
    _give_block(w.block, w.block_size)
    w.block = w.packed = w.z = w.grad = NULL
    return bool(w.team.stalled)


cdef struct LSTMWork:
    # The workspace of one layer and direction: sizes, then every buffer the passes touch.
    # Sizes and flags
    Py_ssize_t T, B, n_in, H
    Py_ssize_t out_t, out_b         # strides of out's step and batch axes (in elements)
    Py_ssize_t grad_t, grad_b       # strides of grad_out's step and batch axes
    Py_ssize_t slice_units          # hidden units per slice (multiple of SLICE_ALIGN)
    int n_slices
    bint reverse, training, accumulate_dx
    bint stream_gates               # training: store the gates past the caches (too large
                                    # to stay cached until the backward reads them)
    bint weights_fit_core           # the packed weights fit BATCH_SPLIT_MAX_BYTES
    bint shares_slices              # forward: the team claims its slices step by step
    Py_ssize_t chunk                # steps whose x @ W_ih.T is projected at once (CHUNK_ROWS)
    double clip                     # <= 0: no clipping
    Py_ssize_t n_rows               # rows of x: T*B, or the table's rows with tokens
    # IN
    void* x                         # (n_rows, n_in): the rows t*B + b, or a table
    const Py_ssize_t* tokens        # (T*B,) or NULL: row t*B + b of the input is x[tokens[.]]
    void* h0                        # (B, H)
    void* c0                        # (B, H)
    void* W_ih                      # (4H, n_in)
    void* W_hh                      # (4H, H)
    void* bias                      # (4H,) or NULL: b_ih + b_hh
    void* peep                      # (3H,) or NULL: p_i | p_f | p_o
    Py_ssize_t* lengths             # (B,) or NULL
    void* grad_out                  # (T, B, >= H) strided, this direction's columns first
    # OUT of the forward (IN of the backward)
    void* out                       # (T, B, >= H) strided: this direction's h_t at out_col
    void* h_n                       # (B, H)
    void* c_n                       # (B, H)
    void* gates                     # (T, B, 4H): x-projection + bias, then activated gates
    void* hidden                    # (T, B, H) training, else (2, B, H) ring
    void* cells                     # same as hidden
    unsigned char* clipped          # (T, B, 4H) clip mask (training with clip) or NULL
    # OUT of the backward
    void* dx                        # (T*B, n_in), overwritten or accumulated; NULL with tokens
    void* dtable                    # with tokens, (n_rows, 4H): dgates summed per table row
    void* dh                        # (B, H): IN dL/dh_n, OUT dL/dh0
    void* dc                        # (B, H): IN dL/dc_n, OUT dL/dc0
    void* dW_ih                     # (4H, n_in) accumulated
    void* dW_hh                     # (4H, H) accumulated
    void* db                        # (4H,) accumulated, or NULL
    void* dpeep                     # (3H,) accumulated, or NULL
    void* dgates                    # (T, B, 4H) pre-activation gradients: the gates
                                    # buffer, each step's row overwritten once read
    # Scratch: one block from the workspace pool, holding packed then z
    void* block
    size_t block_size                # bytes of block
    void* packed                    # n_slices x slice_panels: W_hh (fwd) or W_hh^T (bwd)
    void* z                         # n_slices x z_size: per-slice gate pre-activations of a
                                    # chunk of steps, (chunk, B, 4 nj_pad)
    void* grad                      # backward: n_threads x grad_panels_size (a packed block
                                    # of dgates, panels of x or h_prev), two (4H, lanes) edges
    void* table                     # forward with tokens: n_slices x table_size, each slice's
                                    # x @ W_ih[rows].T, (n_rows, 4 nj_pad)
    Py_ssize_t slice_panels         # elements of packed weights per slice
    Py_ssize_t z_size               # elements of z per slice
    Py_ssize_t table_size           # elements of table per slice
    Py_ssize_t grad_panels_size     # elements of one thread's weight-gradient scratch
    fl_team_t team
    Py_ssize_t dx_next              # the next dx task to claim (_input_gradient)


# ---------------------------------------------------------------- small typed helpers
cdef inline Py_ssize_t _lanes(floating* kind) noexcept nogil:
    return 64 // sizeof(floating)


cdef inline void _pack(floating* panel, const floating* src, Py_ssize_t col_stride,
                       Py_ssize_t k_stride, Py_ssize_t K, int ncols) noexcept nogil:
    # panel[k, c] = src[c * col_stride + k * k_stride], zero for c >= ncols
    if floating is float:
        pack_panel_f(panel, src, col_stride, k_stride, K, ncols)
    else:
        pack_panel_d(panel, src, col_stride, k_stride, K, ncols)


cdef inline void _product(floating* C, Py_ssize_t ldc, const floating* A, Py_ssize_t lda,
                          const floating* panels, Py_ssize_t M, Py_ssize_t n_panels,
                          Py_ssize_t K, int accumulate) noexcept nogil:
    # C[:, :n_panels*lanes] (+)= A @ W.T for the W packed into `panels`
    _product_depths(C, ldc, A, lda, panels, K, M, n_panels, 0, K, accumulate, False)


cdef inline void _product_depths(floating* C, Py_ssize_t ldc, const floating* A,
                                 Py_ssize_t lda, const floating* panels, Py_ssize_t depth,
                                 Py_ssize_t M, Py_ssize_t n_panels, Py_ssize_t k0,
                                 Py_ssize_t k1, int accumulate, bint backwards) noexcept nogil:
    # C[:, :n_panels*lanes] (+)= A[:, k0:k1] @ W[:, k0:k1].T for the W packed into `panels`
    # `depth` deep, the panels read last to first when backwards (the same bits). Each
    # element of C adds its products in the order of k, so the product over [0, k) then,
    # accumulated, over [k, K) gives the bits of the one over [0, K).
    cdef Py_ssize_t lanes = _lanes(C)
    if floating is float:
        packed_product_f(C, ldc, A + k0, lda, panels + k0 * lanes, depth * lanes, M, n_panels,
                         k1 - k0, accumulate, backwards)
    else:
        packed_product_d(C, ldc, A + k0, lda, panels + k0 * lanes, depth * lanes, M, n_panels,
                         k1 - k0, accumulate, backwards)


cdef inline void _gates_product(floating* C, Py_ssize_t ldc, const floating* A,
                                Py_ssize_t lda, Py_ssize_t a_stride, const floating* panels,
                                Py_ssize_t depth, Py_ssize_t M, Py_ssize_t n_panels,
                                Py_ssize_t k0, Py_ssize_t K, int accumulate,
                                bint backwards) noexcept nogil:
    # C[:, :n_panels*lanes] (+)= sum over g < 4 of A[:, g*a_stride : g*a_stride + K] @
    # W[:, k0 + g*K : k0 + (g+1)*K].T for the W packed into `panels` `depth` deep: four runs
    # of A's columns (four gates of some units) in turn, as one product over 4K depths; the
    # panels read last to first when backwards (the same bits)
    cdef Py_ssize_t lanes = _lanes(C)
    if floating is float:
        gates_product_f(C, ldc, A, lda, a_stride, panels + k0 * lanes, depth * lanes, M,
                        n_panels, K, accumulate, backwards)
    else:
        gates_product_d(C, ldc, A, lda, a_stride, panels + k0 * lanes, depth * lanes, M,
                        n_panels, K, accumulate, backwards)


cdef inline void _product_at(floating* C, Py_ssize_t ldc, const floating* A,
                             const floating* panels, Py_ssize_t M, Py_ssize_t n_panels,
                             Py_ssize_t K, int accumulate) noexcept nogil:
    # C[:, :n_panels*lanes] (+)= A.T @ W.T for A (K, M) packed by _pack_rows8 and the W (N, K)
    # in `panels`
    if floating is float:
        packed_product_at_f(C, ldc, A, panels, M, n_panels, K, accumulate)
    else:
        packed_product_at_d(C, ldc, A, panels, M, n_panels, K, accumulate)


cdef inline void _rows_product(floating* C, Py_ssize_t ldc, const floating* A_panels,
                               const floating* W, Py_ssize_t ldw, Py_ssize_t M, Py_ssize_t N,
                               Py_ssize_t K) noexcept nogil:
    # C[:M, :N] = A @ W.T for A (M, K) packed into panels of rows (_pack) and W (N, K) by rows
    if floating is float:
        rows_product_f(C, ldc, A_panels, W, ldw, M, N, K)
    else:
        rows_product_d(C, ldc, A_panels, W, ldw, M, N, K)


cdef inline void _pack_rows8(floating* out, floating* sums, floating* table,
                             const Py_ssize_t* tokens, Py_ssize_t ldt, const floating* A,
                             Py_ssize_t lda, Py_ssize_t M, Py_ssize_t K) noexcept nogil:
    # out[8b*K + 8k + i] = A[k*lda + 8b + i]: rows [0, M) of A (K, M) in blocks of 8; and,
    # unless sums is NULL, sums[:M] += A[:, :M].sum(axis=0), adding the rows in order; and,
    # unless table is NULL, table[tokens[k]*ldt + i] += A[k, i], the rows in order
    if floating is float:
        fl_pack_rows8_f(out, sums, table, tokens, ldt, A, lda, M, K)
    else:
        fl_pack_rows8_d(out, sums, table, tokens, ldt, A, lda, M, K)


cdef inline void _cell_forward(floating* act, floating* c, floating* h, floating* out,
                               unsigned char* clipped, const floating* zx, const floating* zh,
                               const floating* c_prev, const floating* peep, floating clip,
                               int n, int H, int zx_stride, int zh_stride,
                               bint stream) noexcept nogil:
    # zx: the bias (zx_stride H) or a projected table row (its gates nj_pad apart); stream:
    # act goes past the caches (fl_stream_fence orders it)
    if floating is float:
        cell_forward_f(act, c, h, out, clipped, zx, zh, c_prev, peep, clip, n, H, zx_stride,
                       zh_stride, stream)
    else:
        cell_forward_d(act, c, h, out, clipped, zx, zh, c_prev, peep, clip, n, H, zx_stride,
                       zh_stride, stream)


cdef inline void _cell_backward(floating* dz, floating* dc, floating* dpeep, const floating* dh,
                                const floating* dh_out, const floating* act,
                                const unsigned char* clipped, const floating* c,
                                const floating* c_prev, const floating* peep, int n,
                                int H) noexcept nogil:
    # dL/dh_t = dh (from later steps) + dh_out (from the output)
    if floating is float:
        cell_backward_f(dz, dc, dpeep, dh, dh_out, act, clipped, c, c_prev, peep, n, H)
    else:
        cell_backward_d(dz, dc, dpeep, dh, dh_out, act, clipped, c, c_prev, peep, n, H)


cdef inline void _split(Py_ssize_t n, int parts, int k, Py_ssize_t* start,
                        Py_ssize_t* stop) noexcept nogil:
    """Contiguous part k of range(n) split in `parts`."""
    start[0] = n * k // parts
    stop[0] = n * (k + 1) // parts


cdef inline void _slice_units(LSTMWork* w, int s, Py_ssize_t* j0, Py_ssize_t* nj) noexcept nogil:
    """Hidden units [j0, j0 + nj) of slice s (nj may be 0 for a trailing slice)."""
    j0[0] = min(w.H, s * w.slice_units)
    nj[0] = min(w.H, j0[0] + w.slice_units) - j0[0]


cdef inline bint _splits_batch(LSTMWork* w, int n) noexcept nogil:
    # A team of n splits the sequences of w rather than its hidden units (_step_share).
    return n > 1 and w.B >= n * BATCH_SPLIT_ROWS and w.weights_fit_core and w.dpeep == NULL


cdef inline int _home_slice(LSTMWork* w, int m, int n) noexcept nogil:
    # The first slice of member m's home range in a sharing team of n (m = n: the end).
    return m * w.n_slices // n


cdef inline bint _lags(LSTMWork* w, int n) noexcept nogil:
    # A team of n that splits the batch lags (fl_lag_go in openmp.pxd) instead of meeting
    # after every step, as no member reads another's rows. Alternated in one process with
    # the barrier per step: the char-LM's (B 32, H 128) eval forward 0.969-0.975, training
    # forward 0.954-0.967 and backward 0.976-0.987; S2's (B 16, H 256) 0.971-0.986,
    # 0.970-0.986 and 0.993-0.996.
    return _splits_batch(w, n) and n <= FL_LAG_MEMBERS


cdef inline void _step_share(LSTMWork* w, int tid, int n, int* s0, int* ds, Py_ssize_t* b0,
                             Py_ssize_t* b1) noexcept nogil:
    # Member tid's share of a time step in a team of n: slices s0, s0 + ds, ... for the
    # sequences [b0, b1). The team splits the sequences (every slice for a share of the
    # batch) from BATCH_SPLIT_ROWS each when the packed weights are small enough for every
    # core to keep them all, else the hidden units (its own slices for every sequence); a
    # solo member takes everything. Each row of a product is computed alike however the
    # rows are grouped, so all give the same bits. No batch split in a backward with
    # peepholes: its cell pass sums dpeep over the sequences in their order.
    if w.team.solo or n == 1:
        s0[0], ds[0], b0[0], b1[0] = 0, 1, 0, w.B
    elif _splits_batch(w, n):
        s0[0], ds[0] = 0, 1
        _split(w.B, n, tid, b0, b1)
    else:
        s0[0], ds[0], b0[0], b1[0] = tid, n, 0, w.B


cdef void _pack_gate_rows(floating* panels, const floating* W, Py_ssize_t H, Py_ssize_t K,
                          Py_ssize_t j0, Py_ssize_t nj, floating* kind) noexcept nogil:
    # Rows g*H + j0 + j (j < nj) of W (4H, K), gate-major panels: panel (g, u) holds rows
    # g*H + j0 + u*lanes + c.   NumPy: W.reshape(4, H, K)[:, j0:j0 + nj]
    cdef Py_ssize_t lanes = _lanes(kind), blocks = (nj + lanes - 1) // lanes, g, u
    for g in range(4):
        for u in range(blocks):
            _pack(panels + (g * blocks + u) * K * lanes, W + (g * H + j0 + u * lanes) * K, K, 1,
                  K, <int>min(lanes, nj - u * lanes))


# ---------------------------------------------------------------- forward
cdef inline bint _project_by_rows(LSTMWork* w, Py_ssize_t nj_pad,
                                  Py_ssize_t lanes) noexcept nogil:
    # Whether the first chunk holds every step, in at least 4 panels of rows, and W_ih's
    # rows for a slice (4 nj_pad of them) outweigh twice the rows of x and of z: then packing
    # W_ih for its one use would cost more than reading it in its own rows. x's panels then
    # fit in W_ih's place (4 nj_pad > 2 rows >= rows + 4 lanes). See _pack_forward_slice.
    cdef Py_ssize_t rows = w.T * w.B
    return (w.tokens == NULL and w.chunk >= w.T and rows >= 4 * lanes
            and 4 * nj_pad * w.n_in > 2 * rows * (w.n_in + 4 * nj_pad))


cdef void _pack_forward_slice(LSTMWork* w, int s, floating* kind) noexcept nogil:
    # The panels of slice s: W_ih's rows of its units, then W_hh's, gate-major: panel (g, u)
    # holds rows g*H + j0 + u*lanes + c. W_ih's panels are used first (the table with tokens,
    # else the first chunk's projection), then W_hh's are packed: the recurrence's panels are
    # the last weights the thread touched, so more of them are still in its caches when the
    # steps begin (B 4, in = H = 1024 forward 2-4 % faster; no change where they fit L2).
    # When one chunk holds every step and W_ih is large against x (_project_by_rows), x's
    # rows are packed in W_ih's place instead and meet W_ih's own rows (rows_product).
    cdef Py_ssize_t lanes = _lanes(kind), H = w.H, n_in = w.n_in, j0, nj, blocks, nj_pad
    cdef Py_ssize_t rows = w.T * w.B, v, g, j, p
    cdef floating* panels = <floating*>w.packed + s * w.slice_panels
    cdef floating* z = <floating*>w.z + s * w.z_size
    cdef floating* table
    cdef const floating* bias = <const floating*>w.bias
    cdef const floating* x = <const floating*>w.x
    cdef const floating* W_ih = <const floating*>w.W_ih
    cdef bint by_rows
    global _last_by_rows
    _slice_units(w, s, &j0, &nj)
    blocks = (nj + lanes - 1) // lanes
    nj_pad = blocks * lanes
    by_rows = nj > 0 and _project_by_rows(w, nj_pad, lanes)
    if s == 0:
        _last_by_rows = by_rows
    if by_rows:
        # z[r] = x[r] @ W_ih[rows].T for every row r = t*B + b; the padding columns zeroed
        for p in range((rows + lanes - 1) // lanes):
            _pack(panels + p * lanes * n_in, x + p * lanes * n_in, n_in, 1, n_in,
                  <int>min(lanes, rows - p * lanes))
        for g in range(4):
            _rows_product(z + g * nj_pad, 4 * nj_pad, panels, W_ih + (g * H + j0) * n_in, n_in,
                          rows, nj, n_in)
            if nj < nj_pad:
                for v in range(rows):
                    memset(z + v * 4 * nj_pad + g * nj_pad + nj, 0,
                           (nj_pad - nj) * sizeof(floating))
    else:
        _pack_gate_rows(panels, W_ih, H, n_in, j0, nj, kind)
        if w.tokens != NULL:
            # table[v] = x[v] @ W_ih[rows].T + bias[rows]: each table row projected once per
            # call; the cell pass reads it in place of the bias
            table = <floating*>w.table + s * w.table_size
            _product(table, 4 * nj_pad, x, n_in, panels, w.n_rows, 4 * blocks, n_in, 0)
            for v in range(w.n_rows):
                for g in range(4):
                    for j in range(nj):
                        table[(v * 4 + g) * nj_pad + j] += bias[g * H + j0 + j]
        elif nj > 0:
            _project_chunk(w, s, 0, 0, w.B, kind)
    _pack_gate_rows(panels + 4 * nj_pad * n_in, <const floating*>w.W_hh, H, H, j0, nj, kind)


cdef inline Py_ssize_t _chunk_offset(LSTMWork* w, Py_ssize_t step) noexcept nogil:
    # t - t_low: the place of step's time in its chunk's rows of z (_forward_slice_product)
    cdef Py_ssize_t first = step - step % w.chunk, count = min(w.chunk, w.T - first)
    return (w.T - 1 - step) - (w.T - first - count) if w.reverse else step - first


cdef void _project_chunk(LSTMWork* w, int s, Py_ssize_t first, Py_ssize_t b0, Py_ssize_t b1,
                         floating* kind) noexcept nogil:
    # z[t - t_low, b] = x[t, b] @ W_ih[rows].T for the units of slice s, the sequences
    # [b0, b1) and the chunk of steps [first, first + count), times [t_low, t_low + count)
    cdef Py_ssize_t lanes = _lanes(kind), B = w.B, n_in = w.n_in, j0, nj, blocks, nj_pad
    cdef Py_ssize_t count = min(w.chunk, w.T - first), t_low, tc
    cdef floating* z = <floating*>w.z + s * w.z_size
    cdef const floating* panels = <floating*>w.packed + s * w.slice_panels
    cdef const floating* x = <const floating*>w.x
    _slice_units(w, s, &j0, &nj)
    blocks = (nj + lanes - 1) // lanes
    nj_pad = blocks * lanes
    t_low = w.T - first - count if w.reverse else first
    if b1 - b0 == B:
        # one product of count*B rows, so each W_ih panel is read once per chunk instead of
        # once per step
        _product(z, 4 * nj_pad, x + t_low * B * n_in, n_in, panels, count * B, 4 * blocks,
                 n_in, 0)
    else:   # one product per step of the chunk
        for tc in range(count):
            _product(z + (tc * B + b0) * 4 * nj_pad, 4 * nj_pad,
                     x + ((t_low + tc) * B + b0) * n_in, n_in, panels, b1 - b0, 4 * blocks,
                     n_in, 0)


cdef void _forward_slice_product(LSTMWork* w, int s, Py_ssize_t step, Py_ssize_t b0,
                                 Py_ssize_t b1, Py_ssize_t k0, Py_ssize_t k1,
                                 floating* kind) noexcept nogil:
    # The products of one time step for the units of slice s and the sequences [b0, b1),
    # over the depths [k0, k1) of h_{t-1}: z = x_t @ W_ih[rows].T (at a chunk's first step,
    # with k0 = 0; the first chunk's at packing) + h_{t-1}[:, k0:k1] @ W_hh[rows, k0:k1].T
    # from the packed panels. Depth ranges in order, [0, k) then [k, H), give the bits of
    # [0, H) at once.
    cdef Py_ssize_t lanes = _lanes(kind), B = w.B, H = w.H, n_in = w.n_in
    cdef Py_ssize_t j0, nj, blocks, nj_pad, b
    cdef Py_ssize_t t = w.T - 1 - step if w.reverse else step
    cdef Py_ssize_t prev_slot = (t + 1 if w.reverse else t - 1) if w.training else (step + 1) % 2
    cdef floating* z = <floating*>w.z + s * w.z_size
    cdef floating* panels = <floating*>w.packed + s * w.slice_panels
    cdef const floating* h_prev = (<floating*>w.hidden + prev_slot * B * H if step > 0
                                   else <floating*>w.h0)
    _slice_units(w, s, &j0, &nj)
    if nj <= 0:
        return
    blocks = (nj + lanes - 1) // lanes
    nj_pad = blocks * lanes
    if step % w.chunk == 0 and step > 0 and k0 == 0 and w.tokens == NULL:
        _project_chunk(w, s, step, b0, b1, kind)    # the first chunk's is done at packing
    # z[t - t_low, b] += h_prev[b] @ W_hh[rows].T; with tokens z = h_prev[b] @ W_hh[rows].T,
    # to which the cell pass adds the looked-up table row (the bias in it) instead of the bias
    z += _chunk_offset(w, step) * B * 4 * nj_pad
    if b1 - b0 == B and B * H * <Py_ssize_t>sizeof(floating) <= PREFETCH_MAX_BYTES:
        for b in range(B):      # the units other cores wrote, asked for at once
            fl_prefetch_lines(h_prev + b * H + k0, (k1 - k0) * sizeof(floating))
    _product_depths(z + b0 * 4 * nj_pad, 4 * nj_pad, h_prev + b0 * H, H,
                    panels + 4 * blocks * lanes * n_in, H, b1 - b0, 4 * blocks, k0, k1,
                    0 if w.tokens != NULL and k0 == 0 else 1, step % 2 == 1)


cdef void _forward_slice_cells(LSTMWork* w, int s, Py_ssize_t step, Py_ssize_t b0,
                               Py_ssize_t b1, floating* kind) noexcept nogil:
    # The cell pass of one time step for the units of slice s and the sequences [b0, b1),
    # from the products in z (_forward_slice_product).
    cdef Py_ssize_t lanes = _lanes(kind), B = w.B, H = w.H, G = 4 * H
    cdef Py_ssize_t j0, nj, nj_pad, b, row
    cdef Py_ssize_t t = w.T - 1 - step if w.reverse else step
    cdef Py_ssize_t slot = t if w.training else step % 2
    cdef Py_ssize_t prev_slot = (t + 1 if w.reverse else t - 1) if w.training else (step + 1) % 2
    cdef floating* z = <floating*>w.z + s * w.z_size
    cdef floating* gates = <floating*>w.gates
    cdef floating* out = <floating*>w.out
    cdef floating* h_t = <floating*>w.hidden + slot * B * H
    cdef floating* c_t = <floating*>w.cells + slot * B * H
    cdef const floating* h_prev = (<floating*>w.hidden + prev_slot * B * H if step > 0
                                   else <floating*>w.h0)
    cdef const floating* c_prev = (<floating*>w.cells + prev_slot * B * H if step > 0
                                   else <floating*>w.c0)
    cdef const floating* peep = <const floating*>w.peep
    cdef const floating* zx
    _slice_units(w, s, &j0, &nj)
    if nj <= 0:
        return
    zx = <const floating*>w.bias + j0
    nj_pad = (nj + lanes - 1) // lanes * lanes
    z += _chunk_offset(w, step) * B * 4 * nj_pad
    for b in range(b0, b1):
        row = t * B + b
        if w.lengths == NULL or t < w.lengths[b]:
            if w.tokens != NULL:    # x_t @ W_ih[rows].T + bias[rows], looked up
                zx = <floating*>w.table + s * w.table_size + w.tokens[row] * 4 * nj_pad
            _cell_forward(gates + row * G + j0 if w.training else NULL,
                          c_t + b * H + j0, h_t + b * H + j0, out + t * w.out_t + b * w.out_b + j0,
                          w.clipped + row * G + j0 if w.clipped != NULL else NULL,
                          zx, z + b * 4 * nj_pad, c_prev + b * H + j0,
                          peep + j0 if peep != NULL else NULL, <floating>w.clip, <int>nj,
                          <int>H, <int>(nj_pad if w.tokens != NULL else H), <int>nj_pad,
                          w.stream_gates)
        else:   # past this sequence's end: carry the state, output zeros
            memcpy(h_t + b * H + j0, h_prev + b * H + j0, nj * sizeof(floating))
            memcpy(c_t + b * H + j0, c_prev + b * H + j0, nj * sizeof(floating))
            memset(out + t * w.out_t + b * w.out_b + j0, 0, nj * sizeof(floating))


cdef bint _pipelined(LSTMWork* w, int n) noexcept nogil:
    # Whether a team of n runs the steps as a pipeline (fl_team_publish): two threads, one
    # slice of hidden units each, every sequence. From the shapes only, not from the
    # team's state: a member that starts late must take the path member 0 took.
    return n == 2 and w.n_slices == 2 and not _splits_batch(w, n)


cdef bint _forward_pipeline(LSTMWork* w, int tid, fl_member_t* me,
                            floating* kind) noexcept nogil:
    # The time steps of member tid of a pipelined team of two (see fl_team_publish), slice
    # tid its own; member 0 takes slice 1 too once it runs alone, and at the end waits for
    # member 1's last step, as at a last barrier (where a late member is noticed). Returns
    # whether the member ran to the end.
    cdef Py_ssize_t step, split = w.slice_units
    for step in range(w.T):
        if tid == 0:
            _forward_slice_product(w, 0, step, 0, w.B, 0, split, kind)
            fl_team_await(&w.team, me, 0, step)
            _forward_slice_product(w, 0, step, 0, w.B, split, w.H, kind)
            _forward_slice_cells(w, 0, step, 0, w.B, kind)
            if w.team.solo_step <= step:    # alone: member 1's slice too
                _forward_slice_product(w, 1, step, 0, w.B, 0, w.H, kind)
                _forward_slice_cells(w, 1, step, 0, w.B, kind)
        else:
            if not fl_team_await(&w.team, me, 1, step):
                return False
            _forward_slice_product(w, 1, step, 0, w.B, 0, w.H, kind)
            _forward_slice_cells(w, 1, step, 0, w.B, kind)
            _maybe_late(tid, step)
        fl_team_publish(&w.team, tid, step + 1)
    if tid == 0:
        fl_team_await(&w.team, me, 0, w.T)
    return True


cdef bint _forward_steps(LSTMWork* w, int tid, int n, fl_member_t* me,
                         floating* kind) noexcept nogil:
    # The time steps of member tid of a team of n meeting at a barrier after each: its own
    # slices, or every slice for its own sequences. Returns whether the member ran to the
    # end.
    cdef int s, ds, i, r
    cdef Py_ssize_t step, b0, b1, stolen = 0
    cdef bint member = fl_team_barrier(&w.team, me, tid)
    step = 0
    while member and step < w.T:
        if w.shares_slices and not w.team.solo:
            # its own range from the front, then the others' from their backs (a late
            # thread, _maybe_late, finds its range taken)
            _maybe_late(tid, step)
            for i in range(n):
                r = (tid + i) % n
                while True:
                    s = fl_share_claim(&w.team, r, step, _home_slice(w, r, n),
                                       _home_slice(w, r + 1, n), i > 0)
                    if s < 0:
                        break
                    stolen += i > 0
                    _forward_slice_product(w, s, step, 0, w.B, 0, w.H, kind)
                    _forward_slice_cells(w, s, step, 0, w.B, kind)
        else:
            _step_share(w, tid, n, &s, &ds, &b0, &b1)
            while s < w.n_slices:
                _forward_slice_product(w, s, step, b0, b1, 0, w.H, kind)
                _forward_slice_cells(w, s, step, b0, b1, kind)
                s += ds
            _maybe_late(tid, step)
        member = fl_team_barrier(&w.team, me, tid)
        step += 1
    if stolen:
        fl_count(&_stolen_slices, stolen)
    return member


cdef void _forward_group_steps(LSTMWork* w, Py_ssize_t first, Py_ssize_t last, Py_ssize_t b0,
                               Py_ssize_t b1, floating* kind) noexcept nogil:
    # Steps [first, last) of every slice for the sequences [b0, b1).
    cdef Py_ssize_t step
    cdef int s
    for step in range(first, last):
        for s in range(w.n_slices):
            _forward_slice_product(w, s, step, b0, b1, 0, w.H, kind)
            _forward_slice_cells(w, s, step, b0, b1, kind)


cdef void _forward_thread(LSTMWork* w, int tid, int n, floating* kind) noexcept nogil:
    # Member tid of a team of n threads (tid = 0, n = 1: the whole call on this thread).
    cdef int s
    cdef fl_member_t me
    cdef Py_ssize_t j0, nj, b, last_slot
    cdef bint member, pipelined = _pipelined(w, n), lagging = _lags(w, n), mine
    fl_team_join(&w.team, &me, n)

    # 1. Each thread packs its slices' panels, which then stay in its cache (a sharing
    # team: its home range).
    if w.shares_slices:
        for s in range(_home_slice(w, tid, n), _home_slice(w, tid + 1, n)):
            _pack_forward_slice(w, s, kind)
    else:
        s = tid
        while s < w.n_slices:
            _pack_forward_slice(w, s, kind)
            s += n

    # 2. Recurrence: the packed products and the cell pass per slice.
    if pipelined:
        member = _forward_pipeline(w, tid, &me, kind)
    elif lagging:
        member = _lagging_steps(w, tid, n, &me, fl_team_barrier(&w.team, &me, tid), False, kind)
    else:
        member = _forward_steps(w, tid, n, &me, kind)
    if w.stream_gates:
        fl_stream_fence()
    if not member:
        return

    # 3. Final state: whole slices, by whoever ran their last step.
    last_slot = (w.T - 1) if w.training else (w.T - 1) % 2
    if w.reverse and w.training:
        last_slot = 0
    for s in range(w.n_slices):
        if pipelined:   # member 0 ran slice 1's last step if it ran alone by then
            mine = s == tid or (s == 1 and w.team.solo_step < w.T)
        else:       # a lagging team's member 0 holds every sequence
            mine = w.team.solo or lagging or s % n == tid
        if not mine:
            continue
        _slice_units(w, s, &j0, &nj)
        for b in range(w.B):
            memcpy(<floating*>w.h_n + b * w.H + j0,
                   <floating*>w.hidden + (last_slot * w.B + b) * w.H + j0, nj * sizeof(floating))
            memcpy(<floating*>w.c_n + b * w.H + j0,
                   <floating*>w.cells + (last_slot * w.B + b) * w.H + j0, nj * sizeof(floating))


# ---------------------------------------------------------------- backward
cdef inline Py_ssize_t _dh_split(LSTMWork* w) noexcept nogil:
    # The backward's dh product sums its depths (the gates) in two parts: the four gates of
    # units [0, _dh_split), then of the rest, each part gate by gate. The split is slice 0's
    # units in a team of two, whatever the team: so the member of a pipelined team of two
    # sums its own gates before the other's, and every team sums in the same order.
    return min(w.H, ((w.H + SLICE_ALIGN - 1) // SLICE_ALIGN + 1) // 2 * SLICE_ALIGN)


cdef inline void _dh_run(LSTMWork* w, int part, int g, Py_ssize_t* a0, Py_ssize_t* k0,
                         Py_ssize_t* K) noexcept nogil:
    # Run g of `part` (_dh_split): a dgates row's columns [a0, a0 + K), which are the
    # depths [k0, k0 + K) of the backward's packed panels
    cdef Py_ssize_t u0 = 0 if part == 0 else _dh_split(w), u1 = _dh_split(w) if part == 0 else w.H
    a0[0], k0[0], K[0] = g * w.H + u0, 4 * u0 + g * (u1 - u0), u1 - u0


cdef void _pack_backward_slice(LSTMWork* w, int s, floating* kind) noexcept nogil:
    # panels of slice s over the gate axis in the order the dh product sums it (_dh_run):
    # panel u holds columns j0 + u*lanes + c of W_hh, depth k0 + i its row a0 + i
    cdef Py_ssize_t lanes = _lanes(kind), H = w.H, j0, nj, blocks, u, a0, k0, K
    cdef int part, g
    cdef floating* panels = <floating*>w.packed + s * w.slice_panels
    _slice_units(w, s, &j0, &nj)
    blocks = (nj + lanes - 1) // lanes
    for u in range(blocks):
        for part in range(2):
            for g in range(4):
                _dh_run(w, part, g, &a0, &k0, &K)
                if K > 0:
                    _pack(panels + (u * 4 * H + k0) * lanes,
                          <const floating*>w.W_hh + a0 * H + j0 + u * lanes, 1, H, K,
                          <int>min(lanes, nj - u * lanes))


cdef void _backward_cell_slice(LSTMWork* w, int s, Py_ssize_t step, Py_ssize_t b0,
                               Py_ssize_t b1, floating* kind) noexcept nogil:
    # dgates[t] and dc for the units of slice s and the sequences [b0, b1) at backward step
    # `step`, from dh (which holds dL/dh_t from the later steps for them) plus grad_out[t]
    # (the cell pass adds the two)
    cdef Py_ssize_t B = w.B, H = w.H, G = 4 * H, T = w.T, j0, nj, b, g, row
    cdef Py_ssize_t t = step if w.reverse else T - 1 - step
    cdef floating* dh = <floating*>w.dh
    cdef floating* dgates = <floating*>w.dgates
    cdef const floating* grad_out = <const floating*>w.grad_out
    cdef const floating* cells = <const floating*>w.cells
    cdef const floating* c_prev
    cdef const floating* peep = <const floating*>w.peep
    cdef floating* dpeep = <floating*>w.dpeep
    _slice_units(w, s, &j0, &nj)
    if nj <= 0:
        return
    if w.reverse:
        c_prev = cells + (t + 1) * B * H if t < T - 1 else <const floating*>w.c0
    else:
        c_prev = cells + (t - 1) * B * H if t > 0 else <const floating*>w.c0
    for b in range(b0, b1):
        row = t * B + b
        if w.lengths == NULL or t < w.lengths[b]:
            _cell_backward(dgates + row * G + j0, <floating*>w.dc + b * H + j0,
                           dpeep + j0 if dpeep != NULL else NULL, dh + b * H + j0,
                           grad_out + t * w.grad_t + b * w.grad_b + j0,
                           <const floating*>w.gates + row * G + j0,
                           w.clipped + row * G + j0 if w.clipped != NULL else NULL,
                           cells + row * H + j0, c_prev + b * H + j0,
                           peep + j0 if peep != NULL else NULL, <int>nj, <int>H)
        else:   # past this sequence's end: the state gradient passes through
            for g in range(4):
                memset(dgates + row * G + g * H + j0, 0, nj * sizeof(floating))


cdef void _backward_product_slice(LSTMWork* w, int s, Py_ssize_t step, Py_ssize_t b0,
                                  Py_ssize_t b1, int part0, int part1,
                                  floating* kind) noexcept nogil:
    # dh[b0:b1, slice] = dgates[t, b0:b1] @ W_hh[:, slice] for the sequences still running
    # at t (backward step `step`), over the parts [part0, part1) of the depths (_dh_split),
    # in order; the last part writes dh. Parts in order give the bits of both at once.
    cdef Py_ssize_t lanes = _lanes(kind), B = w.B, H = w.H, G = 4 * H, j0, nj, nj_pad, b
    cdef Py_ssize_t t = step if w.reverse else w.T - 1 - step, a0, k0, K
    cdef floating* z = <floating*>w.z + s * w.z_size
    cdef const floating* dgates = <const floating*>w.dgates + (t * B + b0) * G
    cdef int part, g
    _slice_units(w, s, &j0, &nj)
    if nj <= 0:
        return
    nj_pad = (nj + lanes - 1) // lanes * lanes
    for part in range(part0, part1):
        if b1 - b0 == B and B * G * <Py_ssize_t>sizeof(floating) <= PREFETCH_MAX_BYTES:
            for g in range(4):      # the gates other cores wrote, asked for at once
                _dh_run(w, part, g, &a0, &k0, &K)
                for b in range(B):
                    fl_prefetch_lines(dgates + b * G + a0, K * sizeof(floating))
        _dh_run(w, part, 0, &a0, &k0, &K)
        if K > 0:       # the part's four gates: four runs of each dgates row
            _gates_product(z + b0 * nj_pad, nj_pad, dgates + a0, G, H,
                           <floating*>w.packed + s * w.slice_panels, G, b1 - b0,
                           nj_pad // lanes, k0, K, part > 0, step % 2 == 1)
    if part1 < 2:
        return
    for b in range(b0, b1):
        if w.lengths == NULL or t < w.lengths[b]:
            memcpy(<floating*>w.dh + b * H + j0, z + b * nj_pad, nj * sizeof(floating))


cdef enum:
    DX_TASK_ROWS = 64   # rows of dx per task at least (each a product of ~DX_TASK_WORK)
    DX_TASK_WORK = 1 << 20  # multiply-adds
    DX_COLUMNS = 256    # columns of dx per packed block of W_ih (fits a part's a_rows)
    GRAD_DEPTH = 512    # rows (steps x batch) per depth block of the weight-gradient products
    GRAD_PANEL_BYTES = 1 << 19  # one block's panels (GRAD_DEPTH x columns) stay in L2


cdef inline Py_ssize_t _edge_rows(floating* kind) noexcept nogil:
    # Rows of a ragged dx panel at a time: what a part's panel block holds
    return GRAD_DEPTH * _grad_columns(sizeof(floating)) // _lanes(kind)


cdef inline Py_ssize_t _dx_task_rows(Py_ssize_t n_in, Py_ssize_t G) noexcept nogil:
    # Rows of dx per task: DX_TASK_ROWS, or more (multiples of 16) for DX_TASK_WORK
    return max(<Py_ssize_t>DX_TASK_ROWS, _padded(DX_TASK_WORK // max(1, n_in * G), 16))


cdef inline Py_ssize_t _padded(Py_ssize_t n, Py_ssize_t multiple) noexcept nogil:
    return (n + multiple - 1) // multiple * multiple


cdef inline Py_ssize_t _grad_columns(size_t itemsize) noexcept nogil:
    # Columns of x or h_prev per panel block (a multiple of 16: every panel width)
    return max(16, GRAD_PANEL_BYTES // <Py_ssize_t>itemsize // GRAD_DEPTH // 16 * 16)


cdef void _pack_rows_of(LSTMWork* w, floating* panels, bint h_prev, Py_ssize_t r0,
                        Py_ssize_t kc, Py_ssize_t c0, Py_ssize_t nc, floating* kind) noexcept nogil:
    # Columns [c0, c0 + nc) of rows [r0, r0 + kc) of x, or of h_prev (row r = t*B + b takes
    # h_{t-1}, h_{t+1} in reverse, h0 at the sequence's start), into panels kc deep.
    # NumPy: rows[r0:r0 + kc, c0:c0 + nc].T, 16 (or 8) columns per panel
    cdef Py_ssize_t lanes = _lanes(kind), B = w.B, TB = w.T * w.B, p, segment, lo, hi
    cdef Py_ssize_t N = w.H if h_prev else w.n_in
    cdef Py_ssize_t first_h0 = TB - B if w.reverse else 0   # rows whose h_prev is h0
    cdef const floating* src
    for segment in range(2 if h_prev else 1):
        if not h_prev:
            lo, hi = r0, r0 + kc
            src = <const floating*>w.x + lo * N
        elif segment == 0:  # rows taking h0
            lo, hi = max(r0, first_h0), min(r0 + kc, first_h0 + B)
            src = <const floating*>w.h0 + (lo - first_h0) * N
        else:               # rows taking a hidden state, B rows away
            lo, hi = (r0, min(r0 + kc, TB - B)) if w.reverse else (max(r0, B), r0 + kc)
            src = <const floating*>w.hidden + (lo + B if w.reverse else lo - B) * N
        if hi <= lo:
            continue
        for p in range((nc + lanes - 1) // lanes):
            _pack(panels + p * kc * lanes + (lo - r0) * lanes, src + c0 + p * lanes, 1, N,
                  hi - lo, <int>min(lanes, nc - p * lanes))


cdef void _weight_gradient(LSTMWork* w, bint h_prev, Py_ssize_t g0, Py_ssize_t g1,
                           Py_ssize_t r0, Py_ssize_t kc, const floating* a_rows,
                           floating* panels, floating* edge, floating* kind) noexcept nogil:
    # dW[g0:g1] += dgates[r0:r0+kc, g0:g1].T @ rows[r0:r0+kc] for dW = dW_ih, rows = x, or
    # dW = dW_hh, rows = h_prev: our packed products, the rows packed into this thread's
    # panels in blocks of columns, dgates given in a_rows (fl_pack_rows8). Whole panels go
    # straight into dW; a ragged last one into edge (g1 - g0, lanes), added by _add_edge.
    cdef Py_ssize_t lanes = _lanes(kind), N = w.H if h_prev else w.n_in
    cdef Py_ssize_t NC = _grad_columns(sizeof(floating)), c0 = 0, nc, full
    cdef floating* dW = (<floating*>w.dW_hh if h_prev else <floating*>w.dW_ih) + g0 * N
    while c0 < N:
        nc = min(NC, N - c0)
        full = nc // lanes
        _pack_rows_of(w, panels, h_prev, r0, kc, c0, nc, kind)
        if full > 0:
            _product_at(dW + c0, N, a_rows, panels, g1 - g0, full, kc, 1)
        if nc % lanes:
            _product_at(edge, lanes, a_rows, panels + full * kc * lanes, g1 - g0, 1, kc,
                        0 if r0 == 0 else 1)
        c0 += nc


cdef void _add_edge(floating* dW, Py_ssize_t N, const floating* edge, Py_ssize_t rows,
                    bint accumulate, floating* kind) noexcept nogil:
    # dW[:rows, N - N % lanes:] (+)= edge[:rows, :N % lanes]
    cdef Py_ssize_t lanes = _lanes(kind), start = N - N % lanes, g, c
    for g in range(rows):
        for c in range(N % lanes):
            if accumulate:
                dW[g * N + start + c] += edge[g * lanes + c]
            else:
                dW[g * N + start + c] = edge[g * lanes + c]


cdef void _input_gradient(LSTMWork* w, floating* panels, floating* edge,
                          floating* kind) noexcept nogil:
    # dx (+)= dgates @ W_ih, packed, in tasks the team claims one by one (fl_claim): task i
    # is a block of _dx_task_rows rows of dx for DX_COLUMNS of its columns, i // (row blocks)
    # the column block. A thread packs a column block's W_ih into panels when its task
    # moves to it; a ragged last panel goes through edge (EDGE_ROWS x lanes). Claimed as the
    # threads come free, the tasks even out whatever the phases before left uneven (the
    # host slowing one core for a while). Each row of dx sums in the same order on any
    # thread, so dx does not depend on the threads, bit for bit.
    cdef Py_ssize_t G = 4 * w.H, n_in = w.n_in, TB = w.T * w.B, lanes = _lanes(kind)
    cdef Py_ssize_t task_rows = _dx_task_rows(n_in, G), edge_rows = _edge_rows(kind)
    cdef Py_ssize_t row_blocks = (TB + task_rows - 1) // task_rows
    cdef Py_ssize_t tasks = row_blocks * ((n_in + DX_COLUMNS - 1) // DX_COLUMNS)
    cdef Py_ssize_t task, c0, packed_c0 = -1, nc, full, u, r0, r1, m0, m1
    cdef const floating* dgates = <const floating*>w.dgates
    cdef floating* dx = <floating*>w.dx
    cdef int accumulate = 1 if w.accumulate_dx else 0
    task = fl_claim(&w.dx_next)
    while task < tasks:
        c0 = task // row_blocks * DX_COLUMNS
        nc = min(<Py_ssize_t>DX_COLUMNS, n_in - c0)
        full = nc // lanes
        if c0 != packed_c0:
            for u in range((nc + lanes - 1) // lanes):
                # panel u: columns c0 + u*lanes + c of W_ih (4H, in).  NumPy: W_ih[:, cols].T
                _pack(panels + u * G * lanes, <const floating*>w.W_ih + c0 + u * lanes, 1, n_in,
                      G, <int>min(lanes, nc - u * lanes))
            packed_c0 = c0
        r0 = task % row_blocks * task_rows
        r1 = min(TB, r0 + task_rows)
        # dx[r0:r1, c0:c0 + nc] (+)= dgates[r0:r1] @ W_ih[:, c0:c0 + nc]
        if full > 0:
            _product(dx + r0 * n_in + c0, n_in, dgates + r0 * G, G, panels, r1 - r0, full, G,
                     accumulate)
        m0 = r0
        while nc % lanes and m0 < r1:
            m1 = min(r1, m0 + edge_rows)
            _product(edge, lanes, dgates + m0 * G, G, panels + full * G * lanes, m1 - m0, 1, G,
                     0)
            # a ragged panel is the last one of dx (DX_COLUMNS is whole panels)
            _add_edge(dx + m0 * n_in, n_in, edge, m1 - m0, accumulate, kind)
            m0 = m1
        task = fl_claim(&w.dx_next)


cdef void _weight_gradients(LSTMWork* w, int part, int parts, floating* kind) noexcept nogil:
    # Whole-sequence products after the loop. dW_ih, dW_hh and db: this part's rows of the
    # gate axis, over depth blocks of GRAD_DEPTH rows (steps x batch): dgates' block packed
    # once (fl_pack_rows8, which adds its rows to db), then _weight_gradient for x and
    # h_prev. Every element sums the rows in the same order for any thread count, so the
    # results do not depend on the threads, bit for bit. Then dx (_input_gradient), unless
    # the caller asked for none.
    # With tokens, the packing also sums dgates per table row (dtable), dW_ih comes from
    # those sums and the table, and the caller computes dtable @ W_ih.
    cdef Py_ssize_t G = 4 * w.H, n_in = w.n_in, TB = w.T * w.B, lanes = _lanes(kind)
    cdef Py_ssize_t g0, g1, r0, kc, v
    cdef const floating* dgates = <const floating*>w.dgates
    cdef floating* dtable = <floating*>w.dtable
    cdef floating* db = <floating*>w.db
    cdef floating* a_rows = <floating*>w.grad + part * w.grad_panels_size
    cdef floating* panels = a_rows + _padded(G, 8) * GRAD_DEPTH
    cdef floating* edge_ih = <floating*>w.grad + parts * w.grad_panels_size
    cdef floating* edge_hh = edge_ih + G * lanes
    _split(G, parts, part, &g0, &g1)
    for v in range(w.n_rows if w.tokens != NULL and g1 > g0 else 0):
        memset(dtable + v * G + g0, 0, (g1 - g0) * sizeof(floating))
    r0 = 0
    while g1 > g0 and r0 < TB:
        kc = min(<Py_ssize_t>GRAD_DEPTH, TB - r0)
        # a_rows: dgates[r0:r0+kc, g0:g1] in blocks of 8 gate rows; db[g0:g1] += their sum;
        # with tokens, dtable[tokens[r], g0:g1] += dgates[r, g0:g1]
        _pack_rows8(a_rows, db + g0 if db != NULL else NULL,
                    dtable + g0 if w.tokens != NULL else NULL,
                    w.tokens + r0 if w.tokens != NULL else NULL, G, dgates + r0 * G + g0, G,
                    g1 - g0, kc)
        if w.tokens == NULL:
            _weight_gradient(w, False, g0, g1, r0, kc, a_rows, panels, edge_ih + g0 * lanes,
                             kind)
        _weight_gradient(w, True, g0, g1, r0, kc, a_rows, panels, edge_hh + g0 * lanes, kind)
        r0 += kc
    r0 = 0
    while w.tokens != NULL and g1 > g0 and r0 < w.n_rows:
        # dW_ih[g0:g1] += dtable[r0:r0+kc, g0:g1].T @ table[r0:r0+kc]
        kc = min(<Py_ssize_t>GRAD_DEPTH, w.n_rows - r0)
        _pack_rows8(a_rows, NULL, NULL, NULL, 0, dtable + r0 * G + g0, G, g1 - g0, kc)
        _weight_gradient(w, False, g0, g1, r0, kc, a_rows, panels, edge_ih + g0 * lanes, kind)
        r0 += kc
    if g1 > g0:
        _add_edge(<floating*>w.dW_ih + g0 * n_in, n_in, edge_ih + g0 * lanes, g1 - g0, True,
                  kind)
        _add_edge(<floating*>w.dW_hh + g0 * w.H, w.H, edge_hh + g0 * lanes, g1 - g0, True,
                  kind)
    # this part's blocks are free now: W_ih's panels in a_rows, the edge in panels
    if w.dx != NULL:
        _input_gradient(w, a_rows, panels, kind)


cdef void _backward_group_steps(LSTMWork* w, Py_ssize_t first, Py_ssize_t last,
                                Py_ssize_t b0, Py_ssize_t b1, floating* kind) noexcept nogil:
    # Steps [first, last) of every slice for the sequences [b0, b1): the cell pass, then dh.
    cdef Py_ssize_t step
    cdef int s
    for step in range(first, last):
        for s in range(w.n_slices):
            _backward_cell_slice(w, s, step, b0, b1, kind)
        for s in range(w.n_slices):
            _backward_product_slice(w, s, step, b0, b1, 0, 2, kind)


cdef inline void _group_steps(LSTMWork* w, bint backward, Py_ssize_t first, Py_ssize_t last,
                              Py_ssize_t b0, Py_ssize_t b1, floating* kind) noexcept nogil:
    # Steps [first, last) of the sequences [b0, b1), forward or backward.
    if backward:
        _backward_group_steps(w, first, last, b0, b1, kind)
    else:
        _forward_group_steps(w, first, last, b0, b1, kind)


cdef bint _lagging_steps(LSTMWork* w, int tid, int n, fl_member_t* me, bint member,
                         bint backward, floating* kind) noexcept nogil:
    # The time steps of member tid of a lagging team of n (see _lags), forward or backward,
    # after the barrier that follows packing (which it passed as a member or not): every
    # slice for its own sequences; member 0 runs what the others left if the team stalls.
    # Returns whether the member goes on: member 0, which then holds every sequence's
    # steps, and in a backward every member that finished, to the barrier before the
    # weight gradients.
    cdef Py_ssize_t step, b0, b1, m0, m1
    cdef int m
    if not member:      # the team is solo: leave before step 0
        fl_lag_go(&w.team, tid, 0)
        return False
    if w.team.solo:     # stalled at that barrier: member 0 alone, the others have left
        _group_steps(w, backward, 0, w.T, 0, w.B, kind)
        return True
    _split(w.B, n, tid, &b0, &b1)
    for step in range(w.T):
        if tid == 0:
            fl_lag_mark(me)
        elif not fl_lag_go(&w.team, tid, step):
            return False
        _group_steps(w, backward, step, step + 1, b0, b1, kind)
        _maybe_late(tid, step)
        if tid > 0:
            fl_lag_done(&w.team, tid, step + 1)
        elif fl_lag_check(&w.team, me, step + 1 - FL_LAG_STEPS, w.T):
            _group_steps(w, backward, step + 1, w.T, b0, b1, kind)
            break
    if tid > 0:
        return backward
    if w.team.solo or fl_lag_check(&w.team, me, w.T, w.T):
        for m in range(1, n):
            _split(w.B, n, m, &m0, &m1)
            _group_steps(w, backward, fl_lag_stopped(&w.team, m, w.T), w.T, m0, m1, kind)
        if backward:    # let go the members that finished and wait at the next barrier
            fl_lag_release(&w.team, me)
    return True


cdef bint _backward_steps(LSTMWork* w, int tid, int n, fl_member_t* me, bint member,
                         floating* kind) noexcept nogil:
    # The time steps of member tid of a team of n meeting at a barrier after each step's
    # cell pass (the product needs every unit's dgates[t]): the cell pass for its own
    # slices, then dh for them, which only this thread reads next; or both for every slice
    # of its own sequences in a team too large to lag. Returns whether the member ran to
    # the end.
    cdef int s, ds
    cdef Py_ssize_t step = 0, b0, b1
    while member and step < w.T:
        _step_share(w, tid, n, &s, &ds, &b0, &b1)
        while s < w.n_slices:
            _backward_cell_slice(w, s, step, b0, b1, kind)
            s += ds
        member = fl_team_barrier(&w.team, me, tid)
        if not member:
            break
        _step_share(w, tid, n, &s, &ds, &b0, &b1)     # solo from here, if the team stalled
        while s < w.n_slices:
            _backward_product_slice(w, s, step, b0, b1, 0, 2, kind)
            s += ds
        _maybe_late(tid, step)
        step += 1
    return member


cdef bint _backward_pipeline(LSTMWork* w, int tid, fl_member_t* me,
                             floating* kind) noexcept nogil:
    # The time steps of member tid of a pipelined team of two (see fl_team_publish), slice
    # tid its own. Stage `step` is the dh product of step - 1 (the first stage has none),
    # then the cell pass of `step` (the last stage, T, has none). Member 0 sums the depths
    # of its own gates first (the first part of the dh product's order, _dh_split), then
    # waits for member 1's cell pass; member 1 waits for member 0's, then sums every depth
    # in order. Member 0 takes slice 1 too once it runs alone. Returns whether the member
    # ran to the end.
    cdef Py_ssize_t step
    for step in range(w.T + 1):
        if tid == 0:
            if step > 0:
                _backward_product_slice(w, 0, step - 1, 0, w.B, 0, 1, kind)
                fl_team_await(&w.team, me, 0, step)
                _backward_product_slice(w, 0, step - 1, 0, w.B, 1, 2, kind)
            if step < w.T:
                _backward_cell_slice(w, 0, step, 0, w.B, kind)
            if w.team.solo_step <= step:    # alone: member 1's slice too
                if step > 0:
                    _backward_product_slice(w, 1, step - 1, 0, w.B, 0, 2, kind)
                if step < w.T:
                    _backward_cell_slice(w, 1, step, 0, w.B, kind)
        else:
            if not fl_team_await(&w.team, me, 1, step):
                return False
            if step > 0:
                _backward_product_slice(w, 1, step - 1, 0, w.B, 0, 2, kind)
            if step < w.T:
                _backward_cell_slice(w, 1, step, 0, w.B, kind)
            _maybe_late(tid, step)
        # The last stage publishes nothing: the barrier after it is the meeting, and member
        # 0 must not go solo once member 1 may be waiting there.
        if step < w.T:
            fl_team_publish(&w.team, tid, step + 1)
    return True


cdef void _backward_thread(LSTMWork* w, floating* kind) noexcept nogil:
    cdef int tid = fl_omp_thread_id(), n = fl_omp_team_size(), s
    cdef fl_member_t me
    cdef bint member
    fl_team_join(&w.team, &me, n)
    s = tid
    while s < w.n_slices:
        _pack_backward_slice(w, s, kind)
        s += n
    # A team of two that splits the units runs as a pipeline; a team that splits the batch
    # lags (no thread reads another's rows); the others meet after every step's cell pass.
    if _pipelined(w, n):
        member = _backward_pipeline(w, tid, &me, kind)
    elif _lags(w, n):
        member = _lagging_steps(w, tid, n, &me, fl_team_barrier(&w.team, &me, tid), True, kind)
    else:
        member = _backward_steps(w, tid, n, &me, fl_team_barrier(&w.team, &me, tid), kind)
    if member:
        member = fl_team_barrier(&w.team, &me, tid)    # every dgates row is written
    if not member:
        return
    if w.team.solo:
        _weight_gradients(w, 0, 1, kind)
    else:
        _weight_gradients(w, tid, n, kind)


# ---------------------------------------------------------------- Python entry points
# Argument checks in C: a message is formatted only when its check fails (a layer call
# makes about thirty; a list of tuples of them had cost a microsecond a call).
cdef inline int _expect(str function, str name, Py_ssize_t actual,
                        Py_ssize_t expected) except -1:
    """Raise ValueError unless actual == expected."""
    if actual != expected:
        raise ValueError(f"{function}: {name}: expected {expected}, got {actual}")
    return 0


cdef inline bint _int_product(Py_ssize_t rows, Py_ssize_t columns) noexcept:
    """Whether rows x columns elements can be indexed with a C int (< 2**31)."""
    return columns == 0 or rows <= INT_INDEX_MAX // columns


cdef inline int _require(str function, str name, bint holds) except -1:
    """Raise ValueError unless the condition `name` stands for holds."""
    if not holds:
        raise ValueError(f"{function}: {name}: expected True, got False")
    return 0


cdef enum:
    C_CONTIGUOUS = 1    # _array flags
    WRITABLE = 2


cdef char* _array(str function, str name, object array, int typenum, int ndim,
                  int flags) except? NULL:
    """The data of `array`, checked to be an ndarray of `typenum` with `ndim` axes (and
    C-contiguous and writable as `flags` ask). Through NumPy's C API: typed memoryviews of
    a call's twenty arrays had cost 3 us a call."""
    if not cnp.PyArray_Check(array):
        raise TypeError(f"{function}: {name}: expected a NumPy array, got "
                        f"{type(array).__name__}")
    if not cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(array), typenum):
        raise TypeError(f"{function}: {name}: expected dtype "
                        f"{cnp.PyArray_DescrFromType(typenum)}, got {array.dtype}")
    if not (cnp.PyArray_ISNOTSWAPPED(array) and cnp.PyArray_ISALIGNED(array)):
        raise ValueError(f"{function}: {name}: expected an aligned array in native byte "
                         f"order, got {array.dtype}, aligned {array.flags.aligned}")
    if cnp.PyArray_NDIM(array) != ndim:
        raise ValueError(f"{function}: {name}: expected {ndim} dimensions, got {array.ndim}")
    if flags & C_CONTIGUOUS and not cnp.PyArray_IS_C_CONTIGUOUS(array):
        raise ValueError(f"{function}: {name}: expected a C-contiguous array")
    if flags & WRITABLE and not cnp.PyArray_ISWRITEABLE(array):
        raise ValueError(f"{function}: {name}: expected a writable array")
    return <char*>cnp.PyArray_DATA(array)


cdef inline Py_ssize_t _dim(object array, int axis):
    """Length of an axis of an array _array checked."""
    return cnp.PyArray_DIM(<cnp.ndarray>array, axis)


cdef int _real_type(str function, object W_hh) except -1:
    """The float type of a call, W_hh's: NPY_FLOAT32 or NPY_FLOAT64."""
    if cnp.PyArray_Check(W_hh) and cnp.PyArray_TYPE(W_hh) in (cnp.NPY_FLOAT32,
                                                              cnp.NPY_FLOAT64):
        return cnp.PyArray_TYPE(W_hh)
    raise TypeError(f"{function}: W_hh: expected a float32 or float64 NumPy array, got "
                    f"{getattr(W_hh, 'dtype', type(W_hh).__name__)}")


cdef char* _time_major(str function, str name, str column_name, object array,
                       Py_ssize_t column, Py_ssize_t H, Py_ssize_t itemsize,
                       Py_ssize_t* step_stride, Py_ssize_t* batch_stride) except? NULL:
    """Column `column` of `array` (T, B, >= column + H), whose step and batch axes may have
    any strides in whole elements and whose last axis is contiguous: out, or grad_out.
    Its strides go to step_stride and batch_stride (in elements)."""
    _require(function, name, _dim(array, 2) >= column + H)
    _require(function, column_name, column >= 0)
    if not (_dim(array, 2) == 1 or cnp.PyArray_STRIDE(array, 2) == itemsize):
        _require(function, f"{name}: a contiguous last axis", False)
    if cnp.PyArray_STRIDE(array, 0) % itemsize or cnp.PyArray_STRIDE(array, 1) % itemsize:
        _require(function, f"{name}: strides in whole elements", False)
    step_stride[0] = cnp.PyArray_STRIDE(array, 0) // itemsize
    batch_stride[0] = cnp.PyArray_STRIDE(array, 1) // itemsize
    return <char*>cnp.PyArray_DATA(array) + column * itemsize


cdef int _layer_inputs(LSTMWork* w, str function, int real, Py_ssize_t T, Py_ssize_t B, x,
                       tokens, h0, c0, W_ih, W_hh, peep, lengths) except -1:
    """Check what a forward and its backward both read (the input rows or a table and its
    tokens, the initial state, the weights, peepholes, lengths) against T, B and W_hh's
    H, and point w at it, with its sizes."""
    cdef int C = C_CONTIGUOUS
    cdef char* p_x = _array(function, "x", x, real, 2, C)
    cdef char* p_tokens = _array(function, "tokens", tokens, cnp.NPY_INTP, 1, C)
    cdef char* p_h0 = _array(function, "h0", h0, real, 2, C)
    cdef char* p_c0 = _array(function, "c0", c0, real, 2, C)
    cdef char* p_W_ih = _array(function, "W_ih", W_ih, real, 2, C)
    cdef char* p_W_hh = _array(function, "W_hh", W_hh, real, 2, C)
    cdef char* p_peep = _array(function, "peep", peep, real, 1, C)
    cdef char* p_lengths = _array(function, "lengths", lengths, cnp.NPY_INTP, 1, C)
    cdef Py_ssize_t H = _dim(W_hh, 1), n_in = _dim(x, 1), rows = _dim(x, 0)
    cdef bint lookup = _dim(tokens, 0) > 0
    _expect(function, "x", rows, rows if lookup else T * B)
    _require(function, "tokens", _dim(tokens, 0) in (0, T * B))
    _expect(function, "h0", _dim(h0, 0), B)
    _expect(function, "h0", _dim(h0, 1), H)
    _expect(function, "c0", _dim(c0, 0), B)
    _expect(function, "c0", _dim(c0, 1), H)
    _expect(function, "W_ih", _dim(W_ih, 0), 4 * H)
    _expect(function, "W_ih", _dim(W_ih, 1), n_in)
    _expect(function, "W_hh", _dim(W_hh, 0), 4 * H)
    _require(function, "peep", _dim(peep, 0) in (0, 3 * H))
    _require(function, "lengths", _dim(lengths, 0) in (0, B))
    _require(function, "T, B, H, rows of x", T > 0 and B > 0 and H > 0 and rows > 0)
    _require(function, "T * B * max(in, 4H)", _int_product(max(T * B, rows),
                                                           max(n_in, 4 * H)))
    _check_lengths(<const Py_ssize_t*>p_lengths, _dim(lengths, 0), T)
    _check_tokens(<const Py_ssize_t*>p_tokens, _dim(tokens, 0), rows)
    w.T, w.B, w.n_in, w.H, w.n_rows = T, B, n_in, H, rows
    w.tokens = <const Py_ssize_t*>p_tokens if lookup else NULL
    w.x, w.h0, w.c0, w.W_ih, w.W_hh = p_x, p_h0, p_c0, p_W_ih, p_W_hh
    w.peep = p_peep if _dim(peep, 0) > 0 else NULL
    w.lengths = <Py_ssize_t*>p_lengths if _dim(lengths, 0) > 0 else NULL
    return 0


cdef int _check_lengths(const Py_ssize_t* lengths, Py_ssize_t n, Py_ssize_t T) except -1:
    cdef Py_ssize_t b
    for b in range(n):
        if lengths[b] < 1 or lengths[b] > T:
            raise ValueError(f"lengths: expected values in [1, {T}], got {lengths[b]}")
    return 0


cdef int _check_tokens(const Py_ssize_t* tokens, Py_ssize_t n, Py_ssize_t rows) except -1:
    cdef Py_ssize_t r
    for r in range(n):
        if tokens[r] < 0 or tokens[r] >= rows:
            raise ValueError(f"tokens: expected values in [0, {rows}) (the rows of x), got "
                             f"{tokens[r]}")
    return 0


# ---------------------------------------------------------------- workspace pool
# A call's scratch is one block that goes back to this pool when the call ends. A fresh
# block of tens of MB costs a page fault and a zeroing per 4 KB page on first touch (about a
# tenth of a forward at in = H = 1024), so up to POOL_BLOCKS blocks (both directions of a
# layer) wait here for the next call. Taken and given back only while holding the GIL.
cdef enum:
    POOL_BLOCKS = 2

cdef inline size_t _aligned_bytes(size_t size) noexcept nogil:
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


cdef void* _pool_block[POOL_BLOCKS]
cdef size_t _pool_size[POOL_BLOCKS]


cdef void* _take_block(size_t size, size_t* capacity) except NULL:
    """The smallest pooled block of at least `size` bytes, or a new one."""
    cdef int i, best = -1
    cdef void* block
    for i in range(POOL_BLOCKS):
        if (_pool_block[i] != NULL and _pool_size[i] >= size
                and (best < 0 or _pool_size[i] < _pool_size[best])):
            best = i
    if best >= 0:
        block, capacity[0] = _pool_block[best], _pool_size[best]
        _pool_block[best] = NULL
        return block
    capacity[0] = _aligned_bytes(size)
    block = aligned_alloc(ALIGNMENT, capacity[0])
    if block == NULL:
        raise MemoryError(f"fastlstm: cannot allocate a kernel workspace of {size} bytes")
    return block


cdef void _give_block(void* block, size_t capacity) noexcept:
    """Keep `block` for later calls, in an empty slot or in place of a smaller block."""
    cdef int i, smallest = -1
    if block == NULL:
        return
    for i in range(POOL_BLOCKS):
        if _pool_block[i] == NULL:
            _pool_block[i], _pool_size[i] = block, capacity
            return
        if _pool_size[i] < capacity and (smallest < 0 or _pool_size[i] < _pool_size[smallest]):
            smallest = i
    if smallest < 0:
        free(block)
        return
    free(_pool_block[smallest])
    _pool_block[smallest], _pool_size[smallest] = block, capacity


def release_workspaces():
    """Free the kernel workspaces kept for reuse; return the bytes released.

    Calls keep their scratch (the packed weights of a layer, about its own weights' size)
    for the next call; this hands that memory back, e.g. after the last call of a large
    model.
    """
    cdef int i
    cdef size_t released = 0
    for i in range(POOL_BLOCKS):
        if _pool_block[i] != NULL:
            free(_pool_block[i])
            released += _pool_size[i]
            _pool_block[i] = NULL
            _pool_size[i] = 0
    return released


def pooled_workspace_bytes():
    """Bytes of kernel workspace kept for reuse now."""
    return sum(_pool_size[i] for i in range(POOL_BLOCKS) if _pool_block[i] != NULL)


cdef void _cut_slices(LSTMWork* w, int n_slices, Py_ssize_t depth) noexcept nogil:
    # w's units in n_slices slices (fewer when they would pass the blocks of SLICE_ALIGN)
    cdef Py_ssize_t blocks = (w.H + SLICE_ALIGN - 1) // SLICE_ALIGN
    w.n_slices = max(1, min(n_slices, <int>blocks))
    w.slice_units = (blocks + w.n_slices - 1) // w.n_slices * SLICE_ALIGN
    w.slice_panels = 4 * w.slice_units * depth    # a multiple of every panel width


cdef int _scratch(LSTMWork* w, int n_threads, Py_ssize_t depth, size_t itemsize,
                  Py_ssize_t grad_elements=0, bint table=False, bint share=False) except -1:
    """Slices and per-slice scratch: panels `depth` deep for all gates, product results,
    then `grad_elements` for the weight gradients (w.grad), then (with `table`) each slice's
    projected table (w.table). A forward (`share`) past SHARE_MIN_BYTES a thread shares
    SHARE_SLICES slices a thread out step by step; otherwise each thread has one."""
    cdef Py_ssize_t slice_pad
    cdef size_t packed_bytes, z_bytes, grad_bytes
    _cut_slices(w, n_threads, depth)
    packed_bytes = _aligned_bytes(w.n_slices * w.slice_panels * itemsize)
    w.weights_fit_core = packed_bytes <= BATCH_SPLIT_MAX_BYTES
    w.shares_slices = (share and 1 < n_threads <= FL_SHARE_MEMBERS and w.B >= SHARE_MIN_ROWS
                       and not _splits_batch(w, n_threads)
                       and packed_bytes > <size_t>n_threads * SHARE_MIN_BYTES)
    if w.shares_slices:
        _cut_slices(w, max(n_threads, min(n_threads * SHARE_SLICES,
                                          <int>(w.H // SHARE_MIN_UNITS))), depth)
        packed_bytes = _aligned_bytes(w.n_slices * w.slice_panels * itemsize)
    slice_pad = w.slice_units   # already a multiple of every panel width
    w.z_size = max(1, w.chunk) * w.B * 4 * slice_pad
    w.table_size = w.n_rows * 4 * slice_pad if table else 0
    z_bytes = _aligned_bytes(w.n_slices * w.z_size * itemsize)
    grad_bytes = _aligned_bytes(grad_elements * itemsize)
    w.block = _take_block(packed_bytes + z_bytes + grad_bytes
                          + w.n_slices * w.table_size * itemsize, &w.block_size)
    w.packed = w.block
    w.z = <char*>w.block + packed_bytes
    w.grad = <char*>w.z + z_bytes
    w.table = <char*>w.grad + grad_bytes
    return 0


cdef class ForwardCall:
    """One layer and direction of a forward pass, checked and ready for :func:`run_forward`.

    Holds the workspace description and references to every array it points into.
    """
    cdef LSTMWork w
    cdef object arrays
    cdef bint double
    cdef void* owned     # the summed bias, then in inference the h and c rings

    def __dealloc__(self):
        free(self.owned)


def prepare_forward(out, Py_ssize_t out_col, h_n, c_n, gates, hidden, cells, clipped, x,
                    tokens, h0, c0, W_ih, W_hh, b_ih, b_hh, peep, lengths, bint reverse,
                    bint training, double clip):
    """Check the arrays of one layer and direction, time-major; return a ForwardCall.

    All are NumPy arrays of W_hh's float type (float32 or float64), C-contiguous but out;
    clipped is uint8, tokens and lengths intp.
    out (T, B, D*H) receives h_t in columns [out_col, out_col + H) (0 past a sequence's end);
    its step and batch axes may have any strides (a batch-first array, transposed).
    x (T*B, in) holds the input rows t*B + b; or, with tokens (T*B,) not empty, x is a table
    and row t*B + b of the input is x[tokens[t*B + b]] (an embedding lookup, projected once
    per table row instead of once per step).
    Training: gates (T*B*4H,) keeps the activated gates, hidden/cells (T*B*H,) the states,
    clipped (T*B*4H,) the clip mask (empty without clip). Inference: gates, clipped, hidden
    and cells are empty (the call keeps two steps of h and c itself). b_ih and b_hh are
    (4H,), or both empty without biases: the call adds them once. Empty peep/lengths arrays
    mean absent.
    """
    cdef str function = "prepare_forward"
    cdef int real = _real_type(function, W_hh)
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(W_hh)
    cdef int CW = C_CONTIGUOUS | WRITABLE
    _array(function, "out", out, real, 3, WRITABLE)
    cdef char* p_h_n = _array(function, "h_n", h_n, real, 2, CW)
    cdef char* p_c_n = _array(function, "c_n", c_n, real, 2, CW)
    cdef char* p_gates = _array(function, "gates", gates, real, 1, CW)
    cdef char* p_hidden = _array(function, "hidden", hidden, real, 1, CW)
    cdef char* p_cells = _array(function, "cells", cells, real, 1, CW)
    cdef char* p_clipped = _array(function, "clipped", clipped, cnp.NPY_UINT8, 1, CW)
    cdef char* p_b_ih = _array(function, "b_ih", b_ih, real, 1, C_CONTIGUOUS)
    cdef char* p_b_hh = _array(function, "b_hh", b_hh, real, 1, C_CONTIGUOUS)
    cdef Py_ssize_t T = _dim(out, 0), B = _dim(out, 1), H = _dim(W_hh, 1), i, chunk_rows
    cdef Py_ssize_t n_bias = _dim(b_ih, 0)
    cdef size_t ring_bytes, bias_bytes
    cdef ForwardCall call = ForwardCall()
    cdef LSTMWork* w = &call.w
    memset(w, 0, sizeof(LSTMWork))
    w.out = _time_major(function, "out", "out_col", out, out_col, H, itemsize, &w.out_t,
                        &w.out_b)
    _layer_inputs(w, function, real, T, B, x, tokens, h0, c0, W_ih, W_hh, peep, lengths)
    _expect(function, "h_n", _dim(h_n, 0), B)
    _expect(function, "h_n", _dim(h_n, 1), H)
    _expect(function, "c_n", _dim(c_n, 0), B)
    _expect(function, "c_n", _dim(c_n, 1), H)
    _expect(function, "gates", _dim(gates, 0), T * B * 4 * H if training else 0)
    _expect(function, "hidden", _dim(hidden, 0), T * B * H if training else 0)
    _expect(function, "cells", _dim(cells, 0), T * B * H if training else 0)
    _expect(function, "clipped", _dim(clipped, 0), T * B * 4 * H if training and clip > 0 else 0)
    _expect(function, "b_ih", n_bias, 4 * H if n_bias else 0)
    _expect(function, "b_hh", _dim(b_hh, 0), n_bias)
    # one block: the rings of h and c (inference), then bias = b_ih + b_hh (zeros without)
    ring_bytes = 0 if training else _aligned_bytes(2 * B * H * itemsize)
    bias_bytes = _aligned_bytes(4 * H * itemsize)
    call.owned = aligned_alloc(ALIGNMENT, 2 * ring_bytes + bias_bytes)
    if call.owned == NULL:
        raise MemoryError(f"fastlstm: cannot allocate {2 * ring_bytes + bias_bytes} bytes")
    w.bias = <char*>call.owned + 2 * ring_bytes
    if n_bias == 0:
        memset(w.bias, 0, bias_bytes)
    elif real == cnp.NPY_FLOAT32:
        for i in range(4 * H):
            (<float*>w.bias)[i] = (<float*>p_b_ih)[i] + (<float*>p_b_hh)[i]
    else:
        for i in range(4 * H):
            (<double*>w.bias)[i] = (<double*>p_b_ih)[i] + (<double*>p_b_hh)[i]
    w.reverse, w.training, w.clip = reverse, training, clip
    w.h_n, w.c_n = p_h_n, p_c_n
    w.gates = p_gates if training else NULL
    if training:
        w.hidden, w.cells = p_hidden, p_cells
    else:
        w.hidden, w.cells = call.owned, <char*>call.owned + ring_bytes
    w.clipped = <unsigned char*>p_clipped if _dim(clipped, 0) > 0 else NULL
    chunk_rows = (SHORT_CHUNK_ROWS if 4 * H * w.n_in * itemsize <= SHORT_CHUNK_MAX_BYTES
                  else CHUNK_ROWS)
    w.chunk = max(1, T if T * B <= CHUNK_ROWS else chunk_rows // B)
    w.stream_gates = training and _dim(gates, 0) * itemsize > _stream_gates_bytes
    call.arrays = (out, h_n, c_n, gates, hidden, cells, clipped, x, tokens, h0, c0, W_ih, W_hh,
                   peep, lengths)
    call.double = real == cnp.NPY_FLOAT64
    return call


cdef void _run_forward_thread(LSTMWork* w, int tid, int n, bint double) noexcept nogil:
    if double:
        _forward_thread(w, tid, n, <double*>NULL)
    else:
        _forward_thread(w, tid, n, <float*>NULL)


def run_forward(list calls, int n_threads):
    """Run ForwardCalls (one, or the two directions of a layer) on up to n_threads threads.

    One call: its hidden units split across the team. Two calls of the same input on two
    or more threads: one thread each, side by side, with no barrier between them (each
    thread keeps its direction's weights in its own cache). Returns True when a thread
    lost its core and a call finished on one thread.
    """
    cdef ForwardCall first = calls[0], second
    cdef Py_ssize_t depth = first.w.n_in + first.w.H
    cdef bint stalled = False, double = first.double
    if len(calls) == 2:
        second = calls[1]
        n_threads = fl_team_size(n_threads, 2 * _expected_ns(&first.w, 1))
        if n_threads >= 2:
            for call in (first, second):
                _scratch(&(<ForwardCall>call).w, 1, depth, 8 if double else 4, 0,
                         (<ForwardCall>call).w.tokens != NULL)
                fl_team_init(&(<ForwardCall>call).w.team, 1, first.w.T + 1)
            with nogil:
                with parallel(num_threads=2):
                    if fl_omp_team_size() == 2:
                        _run_forward_thread(&first.w if fl_omp_thread_id() == 0 else &second.w,
                                            0, 1, double)
                    else:
                        _run_forward_thread(&first.w, 0, 1, double)
                        _run_forward_thread(&second.w, 0, 1, double)
                fl_team_report(&first.w.team, fl_now_ns())
            _finish(&first.w)
            _finish(&second.w)
            return False
        calls = [first, second]
    for call in calls:
        stalled |= _run_forward(<ForwardCall>call, n_threads)
    return stalled


cdef bint _run_forward(ForwardCall call, int n_threads) except -1:
    cdef LSTMWork* w = &call.w
    n_threads = fl_team_size(n_threads, _expected_ns(w, 1))
    _scratch(w, n_threads, w.n_in + w.H, 8 if call.double else 4, 0, w.tokens != NULL, True)
    fl_team_init(&w.team, n_threads, w.T + 1)
    with nogil:     # no BLAS in the forward: nothing to hold at one thread
        with parallel(num_threads=n_threads):
            _run_forward_thread(w, fl_omp_thread_id(), fl_omp_team_size(), call.double)
        fl_team_report(&w.team, fl_now_ns())
    return _finish(w)


def lstm_backward(dx, bint accumulate_dx, dtable, dh, dc, dW_ih, dW_hh, db, dpeep, grad_out,
                  Py_ssize_t grad_col, gates, hidden, cells, clipped, x, tokens, h0, c0, W_ih,
                  W_hh, peep, lengths, bint reverse, int n_threads):
    """Backward of a training-mode forward (:func:`prepare_forward`) for one layer and direction.

    dh, dc hold dL/dh_n, dL/dc_n on entry and dL/dh0, dL/dc0 on return; gates holds the
    forward's activated gates on entry and dL/d(pre-activations) on return (each step's row
    is overwritten once read, so the pass writes no second buffer); dW_ih, dW_hh, db,
    dpeep accumulate; dx (T*B, in) is overwritten, or accumulated into when accumulate_dx;
    a dx of no rows (0, in) skips it (the input needs no gradient).
    grad_out columns [grad_col, grad_col + H) are this direction's output gradient (its step
    and batch axes strided like out's in :func:`prepare_forward`). x and
    tokens as in :func:`prepare_forward`; with tokens, dx is empty and dtable (rows of x,
    4H) receives dgates summed per table row (dx of the lookup is dtable @ W_ih).
    Arrays as in :func:`prepare_forward`: the float type of W_hh, C-contiguous but grad_out.
    Returns True when another thread lost its core and the call finished on one thread.
    """
    cdef str function = "lstm_backward"
    cdef int real = _real_type(function, W_hh)
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(W_hh)
    cdef int C = C_CONTIGUOUS, CW = C_CONTIGUOUS | WRITABLE
    cdef char* p_dx = _array(function, "dx", dx, real, 2, CW)
    cdef char* p_dtable = _array(function, "dtable", dtable, real, 2, CW)
    cdef char* p_dh = _array(function, "dh", dh, real, 2, CW)
    cdef char* p_dc = _array(function, "dc", dc, real, 2, CW)
    cdef char* p_dW_ih = _array(function, "dW_ih", dW_ih, real, 2, CW)
    cdef char* p_dW_hh = _array(function, "dW_hh", dW_hh, real, 2, CW)
    cdef char* p_db = _array(function, "db", db, real, 1, CW)
    cdef char* p_dpeep = _array(function, "dpeep", dpeep, real, 1, CW)
    _array(function, "grad_out", grad_out, real, 3, 0)
    cdef char* p_gates = _array(function, "gates", gates, real, 1, CW)
    cdef char* p_hidden = _array(function, "hidden", hidden, real, 1, C)
    cdef char* p_cells = _array(function, "cells", cells, real, 1, C)
    cdef char* p_clipped = _array(function, "clipped", clipped, cnp.NPY_UINT8, 1, C)
    cdef Py_ssize_t T = _dim(grad_out, 0), B = _dim(grad_out, 1), H = _dim(W_hh, 1)
    cdef LSTMWork w
    memset(&w, 0, sizeof(w))
    w.grad_out = _time_major(function, "grad_out", "grad_col", grad_out, grad_col, H,
                             itemsize, &w.grad_t, &w.grad_b)
    _layer_inputs(&w, function, real, T, B, x, tokens, h0, c0, W_ih, W_hh, peep, lengths)
    cdef bint lookup = w.tokens != NULL
    if _dim(dx, 0) != 0:    # no rows: no dx
        _expect(function, "dx", _dim(dx, 0), 0 if lookup else T * B)
    _expect(function, "dx", _dim(dx, 1), w.n_in)
    _expect(function, "dtable", _dim(dtable, 0), w.n_rows if lookup else 0)
    _expect(function, "dtable", _dim(dtable, 1), 4 * H)
    _expect(function, "dh", _dim(dh, 0), B)
    _expect(function, "dh", _dim(dh, 1), H)
    _expect(function, "dc", _dim(dc, 0), B)
    _expect(function, "dc", _dim(dc, 1), H)
    _expect(function, "dW_ih", _dim(dW_ih, 0), 4 * H)
    _expect(function, "dW_ih", _dim(dW_ih, 1), w.n_in)
    _expect(function, "dW_hh", _dim(dW_hh, 0), 4 * H)
    _expect(function, "dW_hh", _dim(dW_hh, 1), H)
    _require(function, "db", _dim(db, 0) in (0, 4 * H))
    _expect(function, "dpeep", _dim(dpeep, 0), _dim(peep, 0))
    _expect(function, "gates", _dim(gates, 0), T * B * 4 * H)
    _expect(function, "hidden", _dim(hidden, 0), T * B * H)
    _expect(function, "cells", _dim(cells, 0), T * B * H)
    _require(function, "clipped", _dim(clipped, 0) in (0, T * B * 4 * H))
    w.reverse, w.training, w.accumulate_dx = reverse, True, accumulate_dx
    w.gates, w.hidden, w.cells = p_gates, p_hidden, p_cells
    w.clipped = <unsigned char*>p_clipped if _dim(clipped, 0) > 0 else NULL
    w.dx = NULL if lookup or _dim(dx, 0) == 0 else p_dx
    w.dtable = p_dtable if lookup else NULL
    w.dh, w.dc = p_dh, p_dc
    w.dW_ih, w.dW_hh, w.dgates = p_dW_ih, p_dW_hh, p_gates
    w.db = p_db if _dim(db, 0) > 0 else NULL
    w.dpeep = p_dpeep if _dim(dpeep, 0) > 0 else NULL
    n_threads = fl_team_size(n_threads, _expected_ns(&w, 2))
    # weight gradients: each thread's packed dgates block and panels, then two (4H, lanes)
    # edges
    w.grad_panels_size = GRAD_DEPTH * (_padded(4 * w.H, 8) + _grad_columns(itemsize))
    _scratch(&w, n_threads, w.H, itemsize,
             n_threads * w.grad_panels_size + 2 * 4 * w.H * (64 // itemsize))
    fl_team_init(&w.team, n_threads, w.T + 1)
    cdef bint double = real == cnp.NPY_FLOAT64
    with nogil:     # no BLAS in the backward either: every product is packed
        with parallel(num_threads=n_threads):
            if double:
                _backward_thread(&w, <double*>NULL)
            else:
                _backward_thread(&w, <float*>NULL)
        fl_team_report(&w.team, fl_now_ns())
    return _finish(&w)


ISAS = ("portable", "avx2", "avx512")
SLICE_UNITS = SLICE_ALIGN    # a thread's hidden units come in blocks of this many


def packed_isa():
    """The instruction set the packed products use: one of :data:`ISAS`."""
    return ISAS[fl_packed_isa()]


def supported_isas():
    """The instruction sets this CPU runs, lowest first (:func:`set_packed_isa` takes any)."""
    return ISAS[:fl_cpu_isa() + 1]


def set_packed_isa(isa=None):
    """Force the packed products onto a lower instruction set, or back to the CPU's best.

    For tests and comparisons: every path this CPU offers can be run on it. The panels do
    not depend on the instruction set, so this may be called between any two kernel calls
    (not during one). The environment variable ``FASTLSTM_ISA`` sets it at import.

    Parameters
    ----------
    isa : {"portable", "avx2", "avx512"} or None
        None restores the CPU's best.
    """
    global fl_forced_isa
    supported = supported_isas()
    if isa is None:
        fl_forced_isa = -1
    elif isa in supported:
        fl_forced_isa = ISAS.index(isa)
    else:
        raise ValueError(f"isa: expected one of {supported} on this CPU or None, got {isa!r}")


def setting_from_environment(str variable, setter):
    """Call ``setter(value)`` if the environment variable is set; its ValueError names
    the variable."""
    import os
    value = os.environ.get(variable)
    if value:
        try:
            setter(value)
        except ValueError as error:
            raise ValueError(f"environment variable {variable}: {error}") from None


setting_from_environment("FASTLSTM_ISA", set_packed_isa)


cdef tuple _twin_operands(floating[:, ::1] C, const floating[:, ::1] W, str function):
    """A twin's W (N, K) in zero-padded panels, and C (M, N) copied into a result padded to
    whole panels; checks C against W."""
    cdef Py_ssize_t N = W.shape[0], K = W.shape[1], lanes = 64 // sizeof(floating), p
    cdef Py_ssize_t n_panels = (N + lanes - 1) // lanes
    _expect(function, "C", C.shape[1], N)
    import numpy as np
    dtype = np.float32 if floating is float else np.float64
    panels = np.zeros(max(1, n_panels * lanes * K), dtype)
    cdef floating[::1] view = panels
    for p in range(n_panels):
        _pack(&view[p * K * lanes], &W[p * lanes, 0], K, 1, K, <int>min(lanes, N - p * lanes))
    result = np.zeros((C.shape[0], n_panels * lanes), dtype)
    result[:, :N] = C
    return panels, result


def packed_product_twin(floating[:, ::1] C, const floating[:, ::1] A,
                        const floating[:, ::1] W, bint accumulate, str isa,
                        bint backwards=False):
    """C (+)= A @ W.T through packing and the micro-kernels of `isa` (a test twin), the
    panels read last to first when `backwards`.

    C (M, N), A (M, K), W (N, K); `isa` one of :data:`ISAS` this CPU supports.
    """
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = W.shape[0]
    if isa not in supported_isas():
        raise ValueError(f"isa: expected one of {supported_isas()} on this CPU, got {isa!r}")
    cdef int level = ISAS.index(isa)
    _expect("packed_product_twin", "C", C.shape[0], M)
    _expect("packed_product_twin", "W", W.shape[1], K)
    panels_array, result_array = _twin_operands(C, W, "packed_product_twin")
    cdef floating[::1] panels = panels_array
    cdef floating[:, ::1] result = result_array
    cdef Py_ssize_t n_panels = result.shape[1] // (64 // sizeof(floating))
    if floating is float:
        packed_product_isa_f(level, &result[0, 0], result.shape[1], &A[0, 0], K, &panels[0],
                             K * (64 // sizeof(floating)), M, n_panels, K, accumulate,
                             backwards)
    else:
        packed_product_isa_d(level, &result[0, 0], result.shape[1], &A[0, 0], K, &panels[0],
                             K * (64 // sizeof(floating)), M, n_panels, K, accumulate,
                             backwards)
    C[:, :] = result[:, :N]


def packed_product_at_twin(floating[:, ::1] C, const floating[:, ::1] A_T,
                           const floating[:, ::1] W, bint accumulate):
    """C (+)= A_T.T @ W.T through packing (A_T in blocks of 8 rows, W in panels) and the
    weight-gradient product of the instruction set in use (:func:`set_packed_isa`); a
    test twin. C (M, N), A_T (K, M), W (N, K).
    """
    cdef Py_ssize_t K = A_T.shape[0], M = A_T.shape[1], N = W.shape[0]
    _expect("packed_product_at_twin", "C", C.shape[0], M)
    _expect("packed_product_at_twin", "W", W.shape[1], K)
    panels_array, result_array = _twin_operands(C, W, "packed_product_at_twin")
    import numpy as np
    cdef floating[::1] panels = panels_array
    cdef floating[:, ::1] result = result_array
    cdef floating[::1] a_rows = np.zeros(_padded(M, 8) * K, result_array.dtype)
    _pack_rows8(&a_rows[0], NULL, NULL, NULL, 0, &A_T[0, 0], M, M, K)
    _product_at(&result[0, 0], result.shape[1], &a_rows[0], &panels[0], M,
                result.shape[1] // (64 // sizeof(floating)), K, accumulate)
    C[:, :] = result[:, :N]


def gates_product_twin(floating[:, ::1] C, const floating[:, ::1] A,
                       const floating[:, ::1] W, Py_ssize_t a_stride, bint accumulate,
                       bint backwards=False):
    """C (+)= sum over g < 4 of A[:, g*a_stride : g*a_stride + K] @ W[:, g*K:(g+1)*K].T
    through packing W and the four-run product of the instruction set in use
    (:func:`set_packed_isa`), the panels read last to first when `backwards`; a test twin.
    C (M, N), A (M, >= 3*a_stride + K), W (N, 4K).
    """
    cdef Py_ssize_t M = A.shape[0], N = W.shape[0], K = W.shape[1] // 4
    _expect("gates_product_twin", "C", C.shape[0], M)
    _expect("gates_product_twin", "W", W.shape[1], 4 * K)
    _require("gates_product_twin", "a_stride >= K and A holds 4 runs",
             a_stride >= K and A.shape[1] >= 3 * a_stride + K)
    panels_array, result_array = _twin_operands(C, W, "gates_product_twin")
    cdef floating[::1] panels = panels_array
    cdef floating[:, ::1] result = result_array
    _gates_product(&result[0, 0], result.shape[1], &A[0, 0], A.shape[1], a_stride,
                   &panels[0], 4 * K, M, result.shape[1] // (64 // sizeof(floating)), 0, K,
                   accumulate, backwards)
    C[:, :] = result[:, :N]


def rows_product_twin(floating[:, ::1] C, const floating[:, ::1] A,
                      const floating[:, ::1] W):
    """C = A @ W.T through packing A's rows into panels and the product with W's own rows of
    the instruction set in use (:func:`set_packed_isa`); a test twin. C (M, N), A (M, K),
    W (N, K).
    """
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = W.shape[0], p
    cdef Py_ssize_t lanes = 64 // sizeof(floating)
    _expect("rows_product_twin", "C", C.shape[0], M)
    _expect("rows_product_twin", "C", C.shape[1], N)
    _expect("rows_product_twin", "W", W.shape[1], K)
    import numpy as np
    cdef floating[::1] a_panels = np.zeros(max(1, _padded(M, lanes) * K),
                                           np.float32 if floating is float else np.float64)
    for p in range((M + lanes - 1) // lanes):
        _pack(&a_panels[p * lanes * K], &A[p * lanes, 0], K, 1, K,
              <int>min(lanes, M - p * lanes))
    _rows_product(&C[0, 0], N, &a_panels[0], &W[0, 0], K, M, N, K)


def pack_rows8_twin(floating[::1] out, floating[::1] sums, floating[:, ::1] table,
                    const Py_ssize_t[::1] tokens, const floating[:, ::1] A):
    """The weight gradients' packing of the instruction set in use (:func:`set_packed_isa`);
    a test twin. A (K, M); out (ceil(M / 8) * 8 * K,): A's columns in blocks of 8,
    out[8b*K + 8k + i] = A[k, 8b + i]; sums (M,) += A.sum(axis=0), adding the rows in order;
    table (V, M): table[tokens[k]] += A[k], in order; tokens (K,) in [0, V).
    """
    cdef Py_ssize_t K = A.shape[0], M = A.shape[1], k
    _expect("pack_rows8_twin", "out", out.shape[0], _padded(M, 8) * K)
    _expect("pack_rows8_twin", "sums", sums.shape[0], M)
    _expect("pack_rows8_twin", "table", table.shape[1], M)
    _expect("pack_rows8_twin", "tokens", tokens.shape[0], K)
    for k in range(K):
        if not 0 <= tokens[k] < table.shape[0]:
            raise ValueError(f"pack_rows8_twin: tokens: expected values in [0, "
                             f"{table.shape[0]}), got {tokens[k]}")
    if K == 0 or M == 0:
        return
    _pack_rows8(&out[0], &sums[0], &table[0, 0], &tokens[0], M, &A[0, 0], M, M, K)


# ---------------------------------------------------------------- products of other layers
# The products of the Dense / Linear layers run on the OpenMP threads, as the LSTM kernels
# do: each thread takes a block of C (rows, or columns) on single-threaded BLAS, so no
# second thread pool spins beside the kernels' team, under the process's one stall
# handling (openmp.pxd). Products under
# MATMUL_MIN_WORK multiply-adds run on the calling thread: opening a parallel region costs
# about a microsecond.
cdef enum:
    MATMUL_MIN_WORK = 1 << 20
    MATMUL_ROW_ALIGN = 8


cdef inline bint _matmul_splits_columns(bint trans_a, bint trans_b) noexcept nogil:
    # A.T @ B (a weight gradient: few rows, a deep sum) is shared by columns: two threads'
    # BLAS calls on half the rows each took 1.2x the time of the same on half the columns
    return trans_a and not trans_b


cdef void _matmul_part(floating* c, const floating* a, const floating* b, int m, int n, int k,
                       int lda, int ldb, int ldc, bint trans_a, bint trans_b, floating beta,
                       int part, int parts) noexcept nogil:
    # part `part` of `parts` of C, in blocks of MATMUL_ROW_ALIGN rows (or columns)
    cdef bint columns = _matmul_splits_columns(trans_a, trans_b)
    cdef int size = n if columns else m
    cdef int blocks = (size + MATMUL_ROW_ALIGN - 1) // MATMUL_ROW_ALIGN
    cdef int i0 = min(size, blocks * part // parts * MATMUL_ROW_ALIGN)
    cdef int i1 = min(size, blocks * (part + 1) // parts * MATMUL_ROW_ALIGN)
    if i1 <= i0:
        return
    if columns:     # C[:, i0:i1] (+)= A.T @ B[:, i0:i1]
        gemm(trans_a, trans_b, m, i1 - i0, k, <floating>1, a, lda, b + i0, ldb, beta, c + i0,
             ldc)
    else:           # C[i0:i1] (+)= op(A)[i0:i1] @ op(B)
        gemm(trans_a, trans_b, i1 - i0, n, k, <floating>1, a + (i0 if trans_a else i0 * lda),
             lda, b, ldb, beta, c + i0 * ldc, ldc)


ctypedef struct MatmulCall:    # the arguments of _matmul_part, for fl_run_parts
    void* c
    const void* a
    const void* b
    int m, n, k, lda, ldb, ldc
    bint trans_a, trans_b
    double beta
    bint double


cdef void _matmul_parts(void* arg, int part, int parts) noexcept nogil:
    cdef MatmulCall* p = <MatmulCall*>arg
    if p.double:
        _matmul_part(<double*>p.c, <const double*>p.a, <const double*>p.b, p.m, p.n, p.k,
                     p.lda, p.ldb, p.ldc, p.trans_a, p.trans_b, <double>p.beta, part, parts)
    else:
        _matmul_part(<float*>p.c, <const float*>p.a, <const float*>p.b, p.m, p.n, p.k,
                     p.lda, p.ldb, p.ldc, p.trans_a, p.trans_b, <float>p.beta, part, parts)


def matmul(floating[:, ::1] c, const floating[:, ::1] a, const floating[:, ::1] b,
           bint trans_a, bint trans_b, bint accumulate, int n_threads):
    """c (+)= op(a) @ op(b) on up to ``n_threads`` OpenMP threads (blocks of c, each on
    single-threaded BLAS); op transposes when its flag is set. c (m, n), op(a) (m, k),
    op(b) (k, n); all float32 or all float64, C-contiguous.

    A product too small to share, or one asked for while the LSTM kernels' threads are
    backing off after a lost core, runs on the calling thread; so does every product after
    one of these whose thread lost its core (the same backoff as the kernels').
    """
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    if ((a.shape[1] if trans_a else a.shape[0]) != m
            or (b.shape[1] if trans_b else b.shape[0]) != k
            or (b.shape[0] if trans_b else b.shape[1]) != n):
        raise ValueError(f"matmul: expected c (m, n), op(a) (m, k), op(b) (k, n), got c "
                         f"({c.shape[0]}, {c.shape[1]}), a ({a.shape[0]}, {a.shape[1]}) "
                         f"(transposed: {bool(trans_a)}), b ({b.shape[0]}, {b.shape[1]}) "
                         f"(transposed: {bool(trans_b)})")
    if m == 0 or n == 0:
        return
    require_blas()
    cdef long long work = <long long>m * n * k
    cdef MatmulCall call
    cdef int previous
    if k == 0:
        if not accumulate:
            c[:, :] = 0
        return
    if work < MATMUL_MIN_WORK or (
            (n if _matmul_splits_columns(trans_a, trans_b) else m) < 2 * MATMUL_ROW_ALIGN):
        n_threads = 1
    call = MatmulCall(&c[0, 0], &a[0, 0], &b[0, 0], m, n, k, a.shape[1], b.shape[1],
                      c.shape[1], trans_a, trans_b, 1 if accumulate else 0, floating is double)
    with nogil:
        previous = blas_threads_limit(1)
        fl_run_parts(_matmul_parts, &call, n_threads, 2 * work // 50)  # at a modest 50 GFLOP/s
        blas_threads_restore(previous)


# ---------------------------------------------------------------- streaming
cdef unsigned long long _weights_generation = 0


def weights_changed():
    """Note that some parameter array was written: streams re-pack before their next step."""
    global _weights_generation
    _weights_generation += 1


cdef void _stream_products(floating* z, const floating* layer_in, Py_ssize_t n_in,
                           const floating* h_layer, const floating* packed_ih,
                           const floating* packed_hh, Py_ssize_t B, Py_ssize_t H,
                           Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    # z[:, g*H_pad + j] = x @ W_ih[g*H + j].T + h @ W_hh[g*H + j].T for the units of panel
    # blocks [u0, u1) of every gate (the panels of one gate are contiguous)
    cdef Py_ssize_t lanes = _lanes(z), H_pad = (H + lanes - 1) // lanes * lanes
    cdef Py_ssize_t blocks = H_pad // lanes, g
    if u0 == 0 and u1 == blocks:    # every unit: all four gates' panels are one run
        _product(z, 4 * H_pad, layer_in, n_in, packed_ih, B, 4 * blocks, n_in, 0)
        _product(z, 4 * H_pad, h_layer, H, packed_hh, B, 4 * blocks, H, 1)
        return
    for g in range(4):
        _product(z + g * H_pad + u0 * lanes, 4 * H_pad, layer_in, n_in,
                 packed_ih + (g * blocks + u0) * n_in * lanes, B, u1 - u0, n_in, 0)
        _product(z + g * H_pad + u0 * lanes, 4 * H_pad, h_layer, H,
                 packed_hh + (g * blocks + u0) * H * lanes, B, u1 - u0, H, 1)


cdef void _stream_step(floating* h_next, floating* c, floating* z, const floating* x,
                       const floating* h, floating** packed_ih, floating** packed_hh,
                       floating** bias, void** peep, const Py_ssize_t* in_sizes, Py_ssize_t L,
                       Py_ssize_t B, Py_ssize_t H, floating clip, fl_team_t* team) noexcept nogil:
    """One time step through all L layers, as a member of `team`.

    x (B, in); h (L, B, H) the state at t-1, only read; h_next (L, B, H) OUT the state at t;
    c (L, B, H) updated in place; z scratch (B, 4 * H_pad). Each thread takes part of the
    hidden units, and reads and writes c and h_next only for them: h stays whole while
    every thread reads it, so within a layer no thread waits for another. The next layer
    reads all of the new h, so it starts after a barrier.
    """
    cdef int tid = fl_omp_thread_id(), n = fl_omp_team_size(), part
    cdef fl_member_t me
    cdef Py_ssize_t lanes = _lanes(z), H_pad = (H + lanes - 1) // lanes * lanes
    cdef Py_ssize_t blocks = H_pad // lanes, layer, b, u0, u1, j0, nj
    cdef const floating* layer_in = x
    cdef bint member = True
    fl_team_join(team, &me, n)
    for layer in range(L):
        if layer > 0:
            member = fl_team_barrier(team, &me, tid)    # all of layer_in is written
            if not member:
                return
        part = 0 if team.solo else tid
        while part < n:
            _split(blocks, n, part, &u0, &u1)
            _stream_products(z, layer_in, in_sizes[layer], h + layer * B * H,
                             packed_ih[layer], packed_hh[layer], B, H, u0, u1)
            j0 = u0 * lanes
            nj = min(H, u1 * lanes) - j0
            for b in range(B):
                if nj <= 0:
                    break
                _cell_forward(<floating*>NULL, c + (layer * B + b) * H + j0,
                              h_next + (layer * B + b) * H + j0, <floating*>NULL, NULL,
                              bias[layer] + j0, z + b * 4 * H_pad + j0,
                              c + (layer * B + b) * H + j0,
                              <const floating*>peep[layer] + j0 if peep[layer] != NULL
                              else NULL, clip, <int>nj, <int>H, <int>H, <int>H_pad, False)
            part += 1 if team.solo else n
        layer_in = h_next + layer * B * H
    _maybe_late(tid, 0)


def simulate_chooser(long long one_thread_ns, long long split_ns, Py_ssize_t calls,
                     bint busy=False):
    """The ways (0: one thread, 1: split) a stream's chooser gives `calls` steps that take
    `one_thread_ns` on one thread and `split_ns` split, on a machine taken as busy or idle
    whatever it is (for tests)."""
    cdef fl_chooser_t chooser
    cdef int way
    ways = []
    previous = set_machine_busy(busy)
    try:
        fl_chooser_init(&chooser)
        for _ in range(calls):
            way = fl_chooser_way(&chooser)
            ways.append(way)
            fl_chooser_record(&chooser, split_ns if way else one_thread_ns)
    finally:
        set_machine_busy(previous)
    return ways


cdef class StreamKernel:
    """Stateful single-step inference over all layers of a unidirectional LSTM.

    Keeps the module's weights packed into panels. It re-packs them before a step whenever
    :func:`weights_changed` was called since (optimizer steps, ``load_state_dict``), and on
    :meth:`refresh` after a direct in-place write to a parameter array.
    """
    cdef readonly object h, c           # (L, B, H) state arrays
    cdef object _layers, _packed, _bias, _z, _h_next, _y, _y_flat, _dtype, _in_sizes
    cdef object _pointers
    cdef Py_ssize_t L, B, H, in_size
    cdef int typenum
    cdef bint split                     # weights past _stream_split_bytes: may split
    cdef fl_chooser_t chooser           # one thread or split, by timing both
    cdef long long expected_ns
    cdef double clip
    cdef unsigned long long _generation
    cdef void** _packed_ih
    cdef void** _packed_hh
    cdef void** _bias_rows
    cdef void** _peep

    def __cinit__(self, list layers, Py_ssize_t batch_size, object dtype, double clip):
        import numpy as np
        cdef Py_ssize_t layer, lanes, H_pad
        self._dtype = np.dtype(dtype)
        if self._dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self._dtype}")
        if not layers:
            raise ValueError("layers: expected at least one layer, got none")
        if not 1 <= batch_size <= 1 << 24:
            raise ValueError(f"batch_size: expected 1 to {1 << 24}, got {batch_size}")
        self.L = len(layers)
        self.B = batch_size
        self.H = layers[0][1].shape[1]
        self.in_size = layers[0][0].shape[1]
        self.clip = clip
        self.typenum = self._dtype.num
        lanes = 64 // self._dtype.itemsize
        H_pad = (self.H + lanes - 1) // lanes * lanes
        in_sizes = []
        for layer, params in enumerate(layers):
            W_ih, W_hh, b_ih, b_hh, peep = params
            n_in = self.in_size if layer == 0 else self.H
            expected = [("W_ih", W_ih, (4 * self.H, n_in)), ("W_hh", W_hh, (4 * self.H, self.H)),
                        ("b_ih", b_ih, (4 * self.H,)), ("b_hh", b_hh, (4 * self.H,)),
                        ("peep", peep, (3 * self.H,))]
            for name, array, shape in expected:
                if array is None and name not in ("W_ih", "W_hh"):
                    continue
                if (not isinstance(array, np.ndarray) or array.dtype != self._dtype
                        or array.shape != shape or not array.flags.c_contiguous):
                    raise ValueError(f"layers[{layer}].{name}: expected a C-contiguous "
                                     f"{self._dtype} array of shape {shape}, got "
                                     f"{getattr(array, 'dtype', type(array).__name__)} "
                                     f"{getattr(array, 'shape', '')}")
            in_sizes.append(n_in)
        self._layers = layers
        self._in_sizes = np.array(in_sizes, dtype=np.intp)
        # on cache lines, as the calls' workspaces: a panel row split across two lines
        # made a 320 KB stream's step 0.2 us slower, depending on where NumPy put it
        self._packed = [(aligned_empty(4 * H_pad * size, self._dtype),
                         aligned_empty(4 * H_pad * self.H, self._dtype)) for size in in_sizes]
        self._bias = [aligned_empty(4 * self.H, self._dtype) for _ in layers]
        self._pointers = np.zeros((4, self.L), dtype=np.uintp)
        self._packed_ih = <void**>cnp.PyArray_DATA(self._pointers)
        self._packed_hh = self._packed_ih + self.L
        self._bias_rows = self._packed_hh + self.L
        self._peep = self._bias_rows + self.L
        for layer in range(self.L):
            self._packed_ih[layer] = cnp.PyArray_DATA(self._packed[layer][0])
            self._packed_hh[layer] = cnp.PyArray_DATA(self._packed[layer][1])
            self._bias_rows[layer] = cnp.PyArray_DATA(self._bias[layer])
            peep = layers[layer][4]
            self._peep[layer] = cnp.PyArray_DATA(peep) if peep is not None else NULL
        self.h = aligned_empty((self.L, self.B, self.H), self._dtype)
        self.c = aligned_empty((self.L, self.B, self.H), self._dtype)
        self.reset()
        self._z = aligned_empty(self.B * 4 * H_pad, self._dtype)
        weights = sum(4 * self.H * (size + self.H) for size in in_sizes) * self._dtype.itemsize
        self.split = weights > _stream_split_bytes
        fl_chooser_init(&self.chooser)
        self.expected_ns = 2 * self.B * weights // (self._dtype.itemsize * 50)
        self._h_next = aligned_empty((self.L, self.B, self.H), self._dtype)
        self._y = self.h[self.L - 1]            # views of the last layer's state
        self._y_flat = self._y.reshape(-1)
        self.refresh()

    def refresh(self):
        """Re-pack the weights: needed after a direct in-place write to a parameter array."""
        cdef Py_ssize_t layer
        for layer in range(self.L):
            W_ih, W_hh, b_ih, b_hh, _ = self._layers[layer]
            packed_ih, packed_hh = self._packed[layer]
            if self.typenum == cnp.NPY_FLOAT32:
                _pack_gate_rows(<float*>cnp.PyArray_DATA(packed_ih),
                                <const float*>cnp.PyArray_DATA(W_ih), self.H,
                                <Py_ssize_t>W_ih.shape[1], 0, self.H, <float*>NULL)
                _pack_gate_rows(<float*>cnp.PyArray_DATA(packed_hh),
                                <const float*>cnp.PyArray_DATA(W_hh), self.H, self.H, 0,
                                self.H, <float*>NULL)
            else:
                _pack_gate_rows(<double*>cnp.PyArray_DATA(packed_ih),
                                <const double*>cnp.PyArray_DATA(W_ih), self.H,
                                <Py_ssize_t>W_ih.shape[1], 0, self.H, <double*>NULL)
                _pack_gate_rows(<double*>cnp.PyArray_DATA(packed_hh),
                                <const double*>cnp.PyArray_DATA(W_hh), self.H, self.H, 0,
                                self.H, <double*>NULL)
            bias = self._bias[layer]
            bias.fill(0)
            if b_ih is not None:
                bias += b_ih
            if b_hh is not None:
                bias += b_hh
        self._generation = _weights_generation

    def reset(self):
        """Zero the state."""
        self.h.fill(0)
        self.c.fill(0)

    @property
    def split_next(self):
        """Whether the next step is to split across the threads (unless a backoff after a
        lost core runs it on one thread)."""
        return bool(self.split and kernel_threads() > 1
                    and (not fl_adaptive() or fl_chooser_way(&self.chooser) == 1))

    cdef void _step(self, void* h_next, void* c, void* z, const void* x, const void* h,
                    const Py_ssize_t* in_sizes, fl_team_t* team) noexcept nogil:
        if self.typenum == cnp.NPY_FLOAT32:
            _stream_step(<float*>h_next, <float*>c, <float*>z, <const float*>x,
                         <const float*>h, <float**>self._packed_ih, <float**>self._packed_hh,
                         <float**>self._bias_rows, self._peep, in_sizes, self.L, self.B,
                         self.H, <float>self.clip, team)
        else:
            _stream_step(<double*>h_next, <double*>c, <double*>z, <const double*>x,
                         <const double*>h, <double**>self._packed_ih,
                         <double**>self._packed_hh, <double**>self._bias_rows, self._peep,
                         in_sizes, self.L, self.B, self.H, self.clip, team)

    cdef cnp.ndarray _coerce(self, object x):
        import numpy as np
        from ..validation import as_real_array
        arr = as_real_array(x, "x_t", self._dtype)
        if not (arr.shape == (self.B, self.in_size)
                or (self.B == 1 and arr.shape == (self.in_size,))):
            expected = f"({self.B}, {self.in_size})"
            if self.B == 1:
                expected += f" or ({self.in_size},)"
            raise ValueError(f"x_t: expected shape {expected} (batch_size, input_size), got "
                             f"{arr.shape}")
        return np.ascontiguousarray(arr)

    def step(self, x_t):
        """Advance one time step; return the last layer's h_t: (B, H), or (H,) for x_t (in,)."""
        cdef cnp.ndarray arr
        if (type(x_t) is cnp.ndarray and cnp.PyArray_TYPE(x_t) == self.typenum
                and cnp.PyArray_IS_C_CONTIGUOUS(x_t)
                and ((cnp.PyArray_NDIM(x_t) == 2 and cnp.PyArray_DIMS(x_t)[0] == self.B
                      and cnp.PyArray_DIMS(x_t)[1] == self.in_size)
                     or (cnp.PyArray_NDIM(x_t) == 1 and self.B == 1
                         and cnp.PyArray_DIMS(x_t)[0] == self.in_size))):
            arr = x_t
        else:
            arr = self._coerce(x_t)
        if self._generation != _weights_generation:
            self.refresh()
        cdef const void* x = cnp.PyArray_DATA(arr)
        cdef void* h = cnp.PyArray_DATA(self.h)
        cdef void* c = cnp.PyArray_DATA(self.c)
        cdef void* h_next = cnp.PyArray_DATA(self._h_next)
        cdef void* z = cnp.PyArray_DATA(self._z)
        cdef const Py_ssize_t* in_sizes = <const Py_ssize_t*>cnp.PyArray_DATA(self._in_sizes)
        cdef Py_ssize_t state_bytes = self.L * self.B * self.H * cnp.PyArray_ITEMSIZE(self.h)
        cdef int n_threads = 1
        cdef int timed = 0          # the chooser picked the way and times it
        cdef long long started = 0, ended
        cdef fl_team_t team
        if self.split:
            n_threads = fl_chooser_threads(&self.chooser, kernel_threads(), self.expected_ns,
                                           &timed)
        fl_team_init(&team, n_threads, self.L)
        with nogil:
            if self.split:          # only a stream that may split is timed (a clock read: 23 ns)
                started = fl_now_ns()
            if n_threads == 1:      # no parallel region: its start costs as much as a small step
                self._step(h_next, c, z, x, h, in_sizes, &team)
            else:
                with parallel(num_threads=n_threads):
                    self._step(h_next, c, z, x, h, in_sizes, &team)
            memcpy(h, h_next, state_bytes)
            if self.split:
                ended = fl_now_ns()
                if n_threads > 1:
                    fl_team_judge_call(&team, ended - started, self.expected_ns)
                fl_team_report(&team, ended)
                if timed:
                    fl_chooser_record(&self.chooser, ended - started)
        return copy_contiguous(self._y_flat if cnp.PyArray_NDIM(arr) == 1 else self._y)


def shared_state_address():
    """Address of the stall handling's state as this module sees it (tests: one per
    process)."""
    return fl_shared_address()
