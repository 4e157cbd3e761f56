# cython: language_level=3
"""LSTM kernels: forward (inference and training), backward (BPTT), streaming step.

One call handles one layer and one direction over time-major contiguous buffers. Inside a
call OpenMP owns the cores and BLAS runs single-threaded (DESIGN section 4): thread k owns
the hidden units [j0, j1) and the four matching row blocks of W_hh, which stay in its
cache across steps; per time step it computes h_{t-1} @ W_hh[its rows].T (gemm, or a
hand-vectorised matvec when B = 1), the fused pointwise pass for its units, and one barrier.
"""
from cython cimport floating
from cython.parallel cimport parallel
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cimport numpy as cnp

from .blas cimport blas_threads_limit, blas_threads_restore, gemm, gemv
from .openmp cimport (fl_barrier_t, fl_barrier_wait, fl_omp_barrier, fl_omp_team_size,
                       fl_omp_thread_id)

cnp.import_array()

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "cell.h":
    void cell_forward_f(float* act, float* c, float* h, float* out, unsigned char* clipped,
                        const float* zx, const float* zh, const float* c_prev,
                        const float* peep, float clip, int n, int H,
                        int zh_stride) noexcept nogil
    void cell_forward_d(double* act, double* c, double* h, double* out, unsigned char* clipped,
                        const double* zx, const double* zh, const double* c_prev,
                        const double* peep, double clip, int n, int H,
                        int zh_stride) noexcept nogil
    void cell_backward_f(float* dz, float* dc, float* dpeep, const float* dh,
                         const float* act, const unsigned char* clipped, const float* c,
                         const float* c_prev, const float* peep, int n, int H) noexcept nogil
    void cell_backward_d(double* dz, double* dc, double* dpeep, const double* dh,
                         const double* act, const unsigned char* clipped, const double* c,
                         const double* c_prev, const double* peep, int n, int H) noexcept nogil
    void matvec_f(float* y, const float* W, const float* x, int rows, int cols,
                  int ldw) noexcept nogil
    void matvec_d(double* y, const double* W, const double* x, int rows, int cols,
                  int ldw) noexcept nogil
    void gemm_nt_f(float* C, int ldc, const float* A, int lda, const float* Bt, int ldb,
                   int M, int N, int K) noexcept nogil
    void gemm_nt_d(double* C, int ldc, const double* A, int lda, const double* Bt, int ldb,
                   int M, int N, int K) noexcept nogil
    void gemm_nn_f(float* C, int ldc, const float* A, int lda, const float* B, int ldb,
                   int M, int N, int K, int accumulate) noexcept nogil

cdef enum:
    UNIT_ALIGN = 16     # units per thread are multiples of this (whole vector chunks)
    SMALL_BATCH = 32    # up to this batch the hand-tiled product beats BLAS (measured)


cdef inline void _split(Py_ssize_t n, int parts, int k, int align,
                        Py_ssize_t* start, Py_ssize_t* stop) noexcept nogil:
    """Contiguous part k of range(n) split in `parts`, inner boundaries multiples of align."""
    cdef Py_ssize_t blocks = (n + align - 1) // align
    start[0] = min(n, (blocks * k // parts) * align)
    stop[0] = min(n, (blocks * (k + 1) // parts) * align)


cdef inline void _cell_forward(floating* act, floating* c, floating* h, floating* out,
                               unsigned char* clipped, const floating* zx, const floating* zh,
                               const floating* c_prev, const floating* peep, floating clip,
                               int n, int H, int zh_stride) noexcept nogil:
    if floating is float:
        cell_forward_f(act, c, h, out, clipped, zx, zh, c_prev, peep, clip, n, H, zh_stride)
    else:
        cell_forward_d(act, c, h, out, clipped, zx, zh, c_prev, peep, clip, n, H, zh_stride)


cdef inline void _cell_backward(floating* dz, floating* dc, floating* dpeep, const floating* dh,
                                const floating* act, const unsigned char* clipped,
                                const floating* c, const floating* c_prev, const floating* peep,
                                int n, int H) noexcept nogil:
    if floating is float:
        cell_backward_f(dz, dc, dpeep, dh, act, clipped, c, c_prev, peep, n, H)
    else:
        cell_backward_d(dz, dc, dpeep, dh, act, clipped, c, c_prev, peep, n, H)


cdef inline void _matvec(floating* y, const floating* W, const floating* x, int rows,
                         int cols, int ldw) noexcept nogil:
    # y = W @ x, W row-major (rows, cols): a hand-vectorised gemv for the B=1 recurrence
    if floating is float:
        matvec_f(y, W, x, rows, cols, ldw)
    else:
        matvec_d(y, W, x, rows, cols, ldw)


cdef inline void _gemm_nt(floating* C, int ldc, const floating* A, int lda,
                          const floating* Bt, int ldb, int M, int N, int K) noexcept nogil:
    # C = A @ Bt.T with both operands read along K: the small-batch recurrent product
    if floating is float:
        gemm_nt_f(C, ldc, A, lda, Bt, ldb, M, N, K)
    else:
        gemm_nt_d(C, ldc, A, lda, Bt, ldb, M, N, K)


cdef void _forward_thread(
        floating* out, Py_ssize_t out_stride,   # OUT (T, B, out_stride), h_t in columns [0, H)
        floating* h_n, floating* c_n,           # OUT (B, H)
        floating* gates,                        # OUT (T, B, 4H) x-projection, then activated gates
        floating* hidden, floating* cells,      # OUT (T, B, H) when training, else (2, B, H) ring
        unsigned char* clipped,                 # OUT (T, B, 4H) clip mask (training), or NULL
        floating* z_rec,                        # scratch (B * 4H)
        const floating* x, int in_size,         # IN (T, B, in)
        const floating* h0, const floating* c0,  # IN (B, H)
        const floating* W_ih, const floating* W_hh,  # IN (4H, in), (4H, H)
        const floating* bias, const floating* peep,  # IN (4H,) or NULL, (3H,) or NULL
        const Py_ssize_t* lengths,              # IN (B,) or NULL
        int T, int B, int H, bint reverse, bint training, floating clip,
        fl_barrier_t* barrier) noexcept nogil:
    cdef int tid = fl_omp_thread_id(), n_threads = fl_omp_team_size(), sense = 0
    cdef Py_ssize_t G = 4 * H, r0, r1, j0, j1, nj, r, s, t, b, row, gate
    cdef const floating* w_gate
    cdef floating* z_mine
    cdef floating* h_t
    cdef floating* c_t
    cdef const floating* h_prev = h0
    cdef const floating* c_prev = c0

    # 1. Input projection of all steps, rows split across threads.
    _split(<Py_ssize_t>T * B, n_threads, tid, 1, &r0, &r1)
    for r in range(r0, r1):
        if bias != NULL:
            memcpy(gates + r * G, bias, G * sizeof(floating))
        else:
            memset(gates + r * G, 0, G * sizeof(floating))
    # gates[r0:r1] += x[r0:r1] @ W_ih.T
    gemm(False, True, <int>(r1 - r0), <int>G, in_size, 1, x + r0 * in_size, in_size,
         W_ih, in_size, 1, gates + r0 * G, <int>G)

    # 2. This thread's hidden units [j0, j1): its four row blocks of W_hh stay in its cache.
    _split(H, n_threads, tid, UNIT_ALIGN, &j0, &j1)
    nj = j1 - j0
    z_mine = z_rec + B * 4 * j0
    if tid == 0:
        barrier.n = n_threads
    fl_omp_barrier()

    # 3. Recurrence: the gate products, one fused pointwise pass, one barrier per step.
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_t = hidden + (t if training else s % 2) * B * H
        c_t = cells + (t if training else s % 2) * B * H
        if nj > 0:
            if nj == H and B > SMALL_BATCH:
                # one thread owns every unit (BLAS threads the product): z = h_prev @ W_hh.T
                gemm(False, True, B, <int>G, H, 1, h_prev, H, W_hh, H, 0, z_mine, <int>G)
            else:
                for gate in range(4):
                    w_gate = W_hh + (gate * H + j0) * H
                    if B == 1:
                        # z_mine[gate] = W_hh[gate*H + j0 : gate*H + j1] @ h_prev[0]
                        _matvec(z_mine + gate * nj, w_gate, h_prev, <int>nj, H, H)
                    elif B <= SMALL_BATCH:
                        # z_mine[:, gate] = h_prev @ W_hh[gate*H + j0 : gate*H + j1].T
                        _gemm_nt(z_mine + gate * nj, <int>(4 * nj), h_prev, H, w_gate, H, B,
                                 <int>nj, H)
                    else:
                        # z_mine[:, gate] = h_prev @ W_hh[gate*H + j0 : gate*H + j1].T
                        gemm(False, True, B, <int>nj, H, 1, h_prev, H, w_gate, H, 0,
                             z_mine + gate * nj, <int>(4 * nj))
            for b in range(B):
                row = t * B + b
                if lengths == NULL or t < lengths[b]:
                    _cell_forward(gates + row * G + j0 if training else NULL,
                                  c_t + b * H + j0, h_t + b * H + j0,
                                  out + row * out_stride + j0,
                                  clipped + row * G + j0 if clipped != NULL else NULL,
                                  gates + row * G + j0, z_mine + b * 4 * nj,
                                  c_prev + b * H + j0, peep + j0 if peep != NULL else NULL,
                                  clip, <int>nj, H, <int>nj)
                else:   # past this sequence's end: carry the state, output zeros
                    memcpy(h_t + b * H + j0, h_prev + b * H + j0, nj * sizeof(floating))
                    memcpy(c_t + b * H + j0, c_prev + b * H + j0, nj * sizeof(floating))
                    memset(out + row * out_stride + j0, 0, nj * sizeof(floating))
        fl_barrier_wait(barrier, &sense)
        h_prev = h_t
        c_prev = c_t

    for b in range(B):
        memcpy(h_n + b * H + j0, h_prev + b * H + j0, nj * sizeof(floating))
        memcpy(c_n + b * H + j0, c_prev + b * H + j0, nj * sizeof(floating))


cdef void _backward_thread(
        floating* dx, bint accumulate_dx,       # OUT (T, B, in); += when accumulate_dx
        floating* dh, floating* dc,             # IN dL/dh_n, dL/dc_n; OUT dL/dh0, dL/dc0 (B, H)
        floating* dW_ih, floating* dW_hh,       # IN/OUT accumulated (4H, in), (4H, H)
        floating* db, floating* dpeep,          # IN/OUT accumulated (4H,), (3H,); or NULL
        floating* dgates,                       # scratch (T, B, 4H)
        const floating* grad_out, Py_ssize_t grad_stride,  # IN (T, B, grad_stride), cols [0, H)
        const floating* gates, const floating* hidden, const floating* cells,  # IN from forward
        const unsigned char* clipped,           # IN (T, B, 4H) or NULL
        const floating* x, int in_size,         # IN (T, B, in)
        const floating* h0, const floating* c0,  # IN (B, H)
        const floating* W_ih, const floating* W_hh, const floating* peep,
        const Py_ssize_t* lengths,              # IN (B,) or NULL
        int T, int B, int H, bint reverse, fl_barrier_t* barrier) noexcept nogil:
    cdef int tid = fl_omp_thread_id(), n_threads = fl_omp_team_size(), sense = 0
    cdef Py_ssize_t G = 4 * H, TB = <Py_ssize_t>T * B, j0, j1, nj, g0, g1, r0, r1
    cdef Py_ssize_t s, t, b, j, r, g, row, t_first
    cdef const floating* c_prev
    cdef bint all_active

    _split(H, n_threads, tid, UNIT_ALIGN, &j0, &j1)
    nj = j1 - j0
    if tid == 0:
        barrier.n = n_threads
    fl_omp_barrier()
    for s in range(T):
        t = s if reverse else T - 1 - s
        if reverse:
            c_prev = cells + (t + 1) * B * H if t < T - 1 else c0
        else:
            c_prev = cells + (t - 1) * B * H if t > 0 else c0
        all_active = True
        for b in range(B):
            row = t * B + b
            if lengths == NULL or t < lengths[b]:
                for j in range(j0, j1):
                    dh[b * H + j] += grad_out[row * grad_stride + j]
                _cell_backward(dgates + row * G + j0, dc + b * H + j0,
                               dpeep + j0 if dpeep != NULL else NULL, dh + b * H + j0,
                               gates + row * G + j0,
                               clipped + row * G + j0 if clipped != NULL else NULL,
                               cells + row * H + j0, c_prev + b * H + j0,
                               peep + j0 if peep != NULL else NULL, <int>nj, H)
            else:   # past this sequence's end: the state gradient passes through
                all_active = False
                for g in range(4):
                    memset(dgates + row * G + g * H + j0, 0, nj * sizeof(floating))
        fl_barrier_wait(barrier, &sense)
        # dh[:, j0:j1] = dgates[t] @ W_hh[:, j0:j1]  (rows past their end keep dh)
        if not all_active:
            for b in range(B):
                if t < lengths[b]:
                    memset(dh + b * H + j0, 0, nj * sizeof(floating))
        if floating is float and B <= SMALL_BATCH:
            gemm_nn_f(dh + j0, H, dgates + t * B * G, <int>G, W_hh + j0, H, B, <int>nj,
                      <int>G, 0 if all_active else 1)
        else:
            gemm(False, False, B, <int>nj, <int>G, 1, dgates + t * B * G, <int>G, W_hh + j0,
                 H, 0 if all_active else 1, dh + j0, H)
    fl_barrier_wait(barrier, &sense)

    # Whole-sequence weight gradients, rows of the 4H gate axis split across threads.
    _split(G, n_threads, tid, 1, &g0, &g1)
    # dW_ih[g0:g1] += dgates[:, g0:g1].T @ x
    gemm(True, False, <int>(g1 - g0), in_size, <int>TB, 1, dgates + g0, <int>G, x, in_size,
         1, dW_ih + g0 * in_size, in_size)
    # dW_hh[g0:g1] += dgates[t, :, g0:g1].T @ h_{t-1} over t, h_{-1} = h0
    t_first = T - 1 if reverse else 0
    if T > 1:
        gemm(True, False, <int>(g1 - g0), H, <int>(TB - B), 1,
             dgates + (0 if reverse else B * G) + g0, <int>G,
             hidden + (B * H if reverse else 0), H, 1, dW_hh + g0 * H, H)
    gemm(True, False, <int>(g1 - g0), H, B, 1, dgates + t_first * B * G + g0, <int>G, h0, H,
         1, dW_hh + g0 * H, H)
    if db != NULL:
        # db[g0:g1] += dgates[:, g0:g1].sum(axis=0)
        for r in range(TB):
            for g in range(g0, g1):
                db[g] += dgates[r * G + g]
    # dx[r0:r1] (+)= dgates[r0:r1] @ W_ih
    _split(TB, n_threads, tid, 1, &r0, &r1)
    gemm(False, False, <int>(r1 - r0), in_size, <int>G, 1, dgates + r0 * G, <int>G, W_ih,
         in_size, 1 if accumulate_dx else 0, dx + r0 * in_size, in_size)


def lstm_forward(floating[:, :, ::1] out, Py_ssize_t out_col,
                 floating[:, ::1] h_n, floating[:, ::1] c_n,
                 floating[::1] gates, floating[::1] hidden, floating[::1] cells,
                 unsigned char[::1] clipped,
                 const floating[:, :, ::1] x, const floating[:, ::1] h0,
                 const floating[:, ::1] c0, const floating[:, ::1] W_ih,
                 const floating[:, ::1] W_hh, const floating[::1] bias,
                 const floating[::1] peep, const Py_ssize_t[::1] lengths,
                 bint reverse, bint training, double clip, int n_threads):
    """One layer, one direction, time-major. Shapes are validated by the caller.

    out (T, B, D*H) receives h_t in columns [out_col, out_col + H) (0 past a sequence's end);
    gates (T*B*4H,) keeps the activated gates and hidden/cells (T*B*H,) the states when
    training (else hidden/cells are (2*B*H,) rings); clipped (T*B*4H,) the clip mask when
    training with clip (else empty). Empty bias/peep/lengths arrays mean absent.
    """
    cdef int T = x.shape[0], B = x.shape[1], in_size = x.shape[2], H = W_hh.shape[1]
    cdef floating* z_rec = <floating*>aligned_alloc(
        64, (B * 4 * H * sizeof(floating) + 63) // 64 * 64)
    cdef int blas_previous
    if z_rec == NULL:
        raise MemoryError("fastlstm: cannot allocate the forward workspace")
    # Small batches: OpenMP threads own hidden-unit slices, BLAS single-threaded. Large
    # batches: one thread runs the steps and BLAS threads each big product (DESIGN 4).
    cdef bint blas_owns_threads = B > SMALL_BATCH
    cdef fl_barrier_t barrier = fl_barrier_t(0, 0, 0)
    with nogil:
        blas_previous = blas_threads_limit(n_threads if blas_owns_threads else 1)
        with parallel(num_threads=1 if blas_owns_threads else n_threads):
            _forward_thread(&out[0, 0, out_col], out.shape[2], &h_n[0, 0], &c_n[0, 0],
                            &gates[0], &hidden[0], &cells[0],
                            &clipped[0] if clipped.shape[0] > 0 else NULL,
                            z_rec, &x[0, 0, 0], in_size, &h0[0, 0], &c0[0, 0],
                            &W_ih[0, 0], &W_hh[0, 0],
                            &bias[0] if bias.shape[0] > 0 else NULL,
                            &peep[0] if peep.shape[0] > 0 else NULL,
                            &lengths[0] if lengths.shape[0] > 0 else NULL,
                            T, B, H, reverse, training, <floating>clip, &barrier)
        blas_threads_restore(blas_previous)
    free(z_rec)


def lstm_backward(floating[:, :, ::1] dx, bint accumulate_dx,
                  floating[:, ::1] dh, floating[:, ::1] dc,
                  floating[:, ::1] dW_ih, floating[:, ::1] dW_hh, floating[::1] db,
                  floating[::1] dpeep, floating[::1] dgates,
                  const floating[:, :, ::1] grad_out, Py_ssize_t grad_col,
                  const floating[::1] gates, const floating[::1] hidden,
                  const floating[::1] cells, const unsigned char[::1] clipped,
                  const floating[:, :, ::1] x, const floating[:, ::1] h0,
                  const floating[:, ::1] c0, const floating[:, ::1] W_ih,
                  const floating[:, ::1] W_hh, const floating[::1] peep,
                  const Py_ssize_t[::1] lengths, bint reverse, int n_threads):
    """Backward of :func:`lstm_forward` (training mode) for one layer and direction.

    dh, dc hold dL/dh_n, dL/dc_n on entry and dL/dh0, dL/dc0 on return; dW_ih, dW_hh, db,
    dpeep accumulate; dx is overwritten, or accumulated into when accumulate_dx.
    grad_out columns [grad_col, grad_col + H) are this direction's output gradient.
    """
    cdef int T = x.shape[0], B = x.shape[1], in_size = x.shape[2], H = W_hh.shape[1]
    cdef int blas_previous
    cdef bint blas_owns_threads = B > SMALL_BATCH     # as in lstm_forward
    cdef fl_barrier_t barrier = fl_barrier_t(0, 0, 0)
    with nogil:
        blas_previous = blas_threads_limit(n_threads if blas_owns_threads else 1)
        with parallel(num_threads=1 if blas_owns_threads else n_threads):
            _backward_thread(&dx[0, 0, 0], accumulate_dx, &dh[0, 0], &dc[0, 0],
                             &dW_ih[0, 0], &dW_hh[0, 0],
                             &db[0] if db.shape[0] > 0 else NULL,
                             &dpeep[0] if dpeep.shape[0] > 0 else NULL, &dgates[0],
                             &grad_out[0, 0, grad_col], grad_out.shape[2],
                             &gates[0], &hidden[0], &cells[0],
                             &clipped[0] if clipped.shape[0] > 0 else NULL,
                             &x[0, 0, 0], in_size, &h0[0, 0], &c0[0, 0],
                             &W_ih[0, 0], &W_hh[0, 0],
                             &peep[0] if peep.shape[0] > 0 else NULL,
                             &lengths[0] if lengths.shape[0] > 0 else NULL,
                             T, B, H, reverse, &barrier)
        blas_threads_restore(blas_previous)


cdef void _stream_step(floating* y, const floating* x, floating* h, floating* c,
                       floating* zx, floating* zh, void** W_ih, void** W_hh, void** b_ih,
                       void** b_hh, void** peep, const int* in_sizes, int L, int B, int H,
                       floating clip) noexcept nogil:
    """One time step through all L layers: y (B, H) = h[L-1] after the step.

    x (B, in); h, c (L, B, H) updated in place; zx, zh scratch (B, 4H).
    """
    cdef int layer, b, g, G = 4 * H, in_size
    cdef const floating* layer_in = x
    cdef const floating* bias_ih
    cdef const floating* bias_hh
    cdef floating* h_layer
    cdef floating* c_layer
    for layer in range(L):
        in_size = in_sizes[layer]
        h_layer = h + layer * B * H
        c_layer = c + layer * B * H
        bias_ih = <const floating*>b_ih[layer]
        bias_hh = <const floating*>b_hh[layer]
        for b in range(B):
            for g in range(G):
                zx[b * G + g] = ((bias_ih[g] if bias_ih != NULL else 0)
                                 + (bias_hh[g] if bias_hh != NULL else 0))
        if B <= SMALL_BATCH:
            # zh = x @ W_ih.T (scratch) ; zx += zh ; zh = h @ W_hh.T, hand-vectorised kernels
            _gemm_nt(zh, G, layer_in, in_size, <const floating*>W_ih[layer], in_size, B, G,
                     in_size)
            for g in range(B * G):
                zx[g] += zh[g]
            _gemm_nt(zh, G, h_layer, H, <const floating*>W_hh[layer], H, B, G, H)
        else:
            # zx += x @ W_ih.T ; zh = h @ W_hh.T
            gemm(False, True, B, G, in_size, 1, layer_in, in_size,
                 <const floating*>W_ih[layer], in_size, 1, zx, G)
            gemm(False, True, B, G, H, 1, h_layer, H, <const floating*>W_hh[layer], H, 0, zh, G)
        for b in range(B):
            _cell_forward(<floating*>NULL, c_layer + b * H, h_layer + b * H, <floating*>NULL,
                          NULL, zx + b * G, zh + b * G, c_layer + b * H,
                          <const floating*>peep[layer], clip, H, H, H)
        layer_in = h_layer
    memcpy(y, h + (L - 1) * B * H, B * H * sizeof(floating))


cdef class StreamKernel:
    """Stateful single-step inference over all layers of a unidirectional LSTM.

    Holds references to the module's parameter arrays (updated in place, never replaced),
    so weight updates are seen; allocates its state and scratch once.
    """
    cdef readonly object h, c           # (L, B, H) state arrays
    cdef object _params, _zx, _zh, _y, _y_flat, _dtype
    cdef void** _w[5]                   # per layer: W_ih, W_hh, b_ih, b_hh, peep
    cdef int* _in_sizes
    cdef int L, B, H, in_size, typenum
    cdef double clip

    def __cinit__(self, list layers, int batch_size, object dtype, double clip):
        import numpy as np
        cdef int k, layer
        cdef cnp.ndarray arr
        self.L = len(layers)
        self.B = batch_size
        self.H = layers[0][1].shape[1]
        self.in_size = layers[0][0].shape[1]
        self.clip = clip
        self._dtype = np.dtype(dtype)
        self.typenum = self._dtype.num
        self._params = layers
        for k in range(5):
            self._w[k] = <void**>malloc(self.L * sizeof(void*))
            if self._w[k] == NULL:
                raise MemoryError("fastlstm: cannot allocate the stream")
        self._in_sizes = <int*>malloc(self.L * sizeof(int))
        if self._in_sizes == NULL:
            raise MemoryError("fastlstm: cannot allocate the stream")
        for layer in range(self.L):
            self._in_sizes[layer] = layers[layer][0].shape[1]
            for k in range(5):
                arr = layers[layer][k]
                self._w[k][layer] = cnp.PyArray_DATA(arr) if arr is not None else NULL
        self.h = np.zeros((self.L, self.B, self.H), dtype=dtype)
        self.c = np.zeros((self.L, self.B, self.H), dtype=dtype)
        self._zx = np.empty((self.B, 4 * self.H), dtype=dtype)
        self._zh = np.empty((self.B, 4 * self.H), dtype=dtype)
        self._y = np.empty((self.B, self.H), dtype=dtype)
        self._y_flat = self._y.reshape(-1)

    def __dealloc__(self):
        for k in range(5):
            free(self._w[k])
        free(self._in_sizes)

    def reset(self):
        """Zero the state."""
        self.h.fill(0)
        self.c.fill(0)

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
        cdef void* x = cnp.PyArray_DATA(arr)
        cdef void* y = cnp.PyArray_DATA(self._y)
        cdef void* h = cnp.PyArray_DATA(self.h)
        cdef void* c = cnp.PyArray_DATA(self.c)
        cdef void* zx = cnp.PyArray_DATA(self._zx)
        cdef void* zh = cnp.PyArray_DATA(self._zh)
        with nogil:
            if self.typenum == cnp.NPY_FLOAT32:
                _stream_step(<float*>y, <const float*>x, <float*>h, <float*>c, <float*>zx,
                             <float*>zh, self._w[0], self._w[1], self._w[2], self._w[3],
                             self._w[4], self._in_sizes, self.L, self.B, self.H,
                             <float>self.clip)
            else:
                _stream_step(<double*>y, <const double*>x, <double*>h, <double*>c,
                             <double*>zx, <double*>zh, self._w[0], self._w[1], self._w[2],
                             self._w[3], self._w[4], self._in_sizes, self.L, self.B, self.H,
                             self.clip)
        if cnp.PyArray_NDIM(arr) == 1:
            return cnp.PyArray_NewCopy(self._y_flat, cnp.NPY_CORDER)
        return cnp.PyArray_NewCopy(self._y, cnp.NPY_CORDER)
