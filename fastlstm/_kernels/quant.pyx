# cython: language_level=3
"""Quantised LSTM inference kernels: bfloat16 or int8 weights, float32 state.

One call runs one layer and direction, like ``lstm.prepare_forward`` / ``run_forward`` in
inference mode: the hidden units are cut into 16-aligned slices, one per thread; each slice
projects a chunk of inputs at once, then per time step multiplies h_{t-1} by its panels,
runs the float32 cell pass (``cell.h``) and meets the others at one barrier. The weights
come packed already (``fastlstm.quantize`` packs them once); per step each slice rounds
the whole h_{t-1} to bf16, or quantises it to u8 per row, into its own buffer.
"""
from cython.parallel cimport parallel
from libc.stdint cimport int32_t, int8_t, uint16_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

cimport numpy as cnp

from .arrays cimport copy_contiguous
from .cell cimport cell_forward_f
from .openmp cimport (fl_chooser_init, fl_chooser_record, fl_chooser_t, fl_chooser_threads,
                      fl_member_t, fl_now_ns, fl_omp_team_size, kernel_threads,
                      fl_omp_thread_id, fl_team_barrier, fl_team_init, fl_team_join,
                      fl_share, fl_shared_address, fl_team_report, fl_team_size,
                      fl_team_t, shared_state)

from .lstm import setting_from_environment

fl_share(shared_state())    # the process's one stall handling (openmp.pxd)

cnp.import_array()

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "quant.h":
    void fl_rows_to_bf16(uint16_t* dst, const float* A, Py_ssize_t lda, Py_ssize_t M,
                         Py_ssize_t K, Py_ssize_t Kp) noexcept nogil
    void fl_rows_to_u8(uint8_t* dst, float* scale, int32_t* zero, const float* A,
                       Py_ssize_t lda, Py_ssize_t M, Py_ssize_t K, Py_ssize_t Kq) noexcept nogil
    void fl_bf16_product(int fast, float* C, Py_ssize_t ldc, const uint16_t* A,
                         Py_ssize_t lda, const uint16_t* panels, Py_ssize_t M,
                         Py_ssize_t n_panels, Py_ssize_t Kp, int accumulate) noexcept nogil
    void fl_i8_product(int fast, float* C, Py_ssize_t ldc, const uint8_t* A, Py_ssize_t lda,
                       const float* sa, const int32_t* za, const int8_t* panels,
                       const float* sw, const int32_t* rs, Py_ssize_t M, Py_ssize_t n_panels,
                       Py_ssize_t Kq, int accumulate) noexcept nogil
    int fl_cpu_bf16() noexcept nogil
    int fl_cpu_vnni() noexcept nogil

cdef enum:
    LANES = 16          # output columns per panel
    ALIGNMENT = 64
    CHUNK_ROWS = 256    # rows (steps x batch) of x projected at once

DTYPES = ("bfloat16", "int8")

cdef int _forced_path = -1          # set_quantized_path: -1 the CPU's best, 0 portable


def cpu_paths():
    """The fast path of each dtype on this CPU: ``{"bfloat16": name, "int8": name}``."""
    return {"bfloat16": "avx512-bf16" if fl_cpu_bf16() else "portable",
            "int8": "avx512-vnni" if fl_cpu_vnni() else "portable"}


def quantized_path(str dtype):
    """The path the products of `dtype` use now: ``"avx512-bf16"``, ``"avx512-vnni"`` or
    ``"portable"``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    return "portable" if _forced_path == 0 else cpu_paths()[dtype]


def set_quantized_path(path=None):
    """Force the quantised products onto the portable path, or back to the CPU's best.

    For tests and comparisons. The environment variable ``FASTLSTM_QUANT_PATH`` sets it at
    import.

    Parameters
    ----------
    path : {"portable"} or None
        None restores the CPU's best path.
    """
    global _forced_path
    if path is None:
        _forced_path = -1
    elif path == "portable":
        _forced_path = 0
    else:
        raise ValueError(f"path: expected 'portable' or None, got {path!r}")


cdef int _fast(int kind) noexcept nogil:
    if _forced_path == 0:
        return 0
    return fl_cpu_bf16() if kind == 0 else fl_cpu_vnni()


cdef struct QWork:
    Py_ssize_t T, B, n_in, H, Kx, Kh     # Kx, Kh: depths padded to a pair (bf16) / quad (int8)
    Py_ssize_t blocks                    # panels per gate: ceil(H / 16)
    Py_ssize_t out_stride, chunk, slice_blocks, scratch_bytes, z_size
    int n_slices, kind, fast             # kind 0 bfloat16, 1 int8
    bint reverse
    float clip
    const float* x                       # (T, B, n_in)
    const float* h0                      # (B, H)
    const float* c0
    const float* bias                    # (4H,)
    const float* peep                    # (3H,) or NULL
    const Py_ssize_t* lengths            # (B,) or NULL
    const void* w_ih                     # (4 * blocks) panels, Kx deep
    const void* w_hh                     # (4 * blocks) panels, Kh deep
    const float* s_ih                    # int8: (4 * blocks * 16) column scales, else NULL
    const float* s_hh
    const int32_t* r_ih                  # int8: column sums of the int8 weights
    const int32_t* r_hh
    float* out                           # (T, B, out_stride) at this direction's column
    float* h_n                           # (B, H)
    float* c_n
    float* hidden                        # (2, B, H) ring
    float* cells
    char* scratch                        # n_slices x scratch_bytes
    fl_team_t team


cdef inline Py_ssize_t _rup(Py_ssize_t n, Py_ssize_t m) noexcept nogil:
    return (n + m - 1) // m * m


cdef void _slice(QWork* w, int s, Py_ssize_t* u0, Py_ssize_t* u1) noexcept nogil:
    u0[0] = min(w.blocks, s * w.slice_blocks)
    u1[0] = min(w.blocks, u0[0] + w.slice_blocks)


cdef void _product(QWork* w, float* z, Py_ssize_t ldc, const char* a, const float* sa,
                   const int32_t* za, bint recurrent, Py_ssize_t M, Py_ssize_t u0,
                   Py_ssize_t u1, int accumulate) noexcept nogil:
    # z[:, g * nj_pad + j] (+)= a @ W[g*H + 16*u0 + j].T for every gate g, units of blocks
    # [u0, u1); W is W_hh when recurrent, else W_ih
    cdef Py_ssize_t K = w.Kh if recurrent else w.Kx, g, first
    cdef Py_ssize_t nj_pad = (u1 - u0) * LANES
    for g in range(4):
        first = g * w.blocks + u0
        if w.kind == 0:
            fl_bf16_product(w.fast, z + g * nj_pad, ldc, <const uint16_t*>a, K,
                            <const uint16_t*>(w.w_hh if recurrent else w.w_ih) + first * K * LANES,
                            M, u1 - u0, K, accumulate)
        else:
            fl_i8_product(w.fast, z + g * nj_pad, ldc, <const uint8_t*>a, K, sa, za,
                          <const int8_t*>(w.w_hh if recurrent else w.w_ih) + first * K * LANES,
                          (w.s_hh if recurrent else w.s_ih) + first * LANES,
                          (w.r_hh if recurrent else w.r_ih) + first * LANES,
                          M, u1 - u0, K, accumulate)


cdef void _quantize_rows(QWork* w, char* dst, float* sa, int32_t* za, const float* src,
                         Py_ssize_t M, Py_ssize_t K, Py_ssize_t Kpad) noexcept nogil:
    if w.kind == 0:
        fl_rows_to_bf16(<uint16_t*>dst, src, K, M, K, Kpad)
    else:
        fl_rows_to_u8(<uint8_t*>dst, sa, za, src, K, M, K, Kpad)


cdef void _slice_step(QWork* w, int s, Py_ssize_t step) noexcept nogil:
    cdef Py_ssize_t B = w.B, H = w.H, u0, u1, j0, nj, nj_pad, first, count, t_low, b, row
    cdef Py_ssize_t t = w.T - 1 - step if w.reverse else step
    cdef Py_ssize_t width = 1 if w.kind == 1 else 2     # bytes per quantised value
    _slice(w, s, &u0, &u1)
    if u1 <= u0:
        return
    j0 = u0 * LANES
    nj = min(H, u1 * LANES) - j0
    nj_pad = (u1 - u0) * LANES
    # Scratch of a slice: z (chunk*B, 4 nj_pad) f32 | x rows | h rows | scales | zeros
    cdef char* base = w.scratch + s * w.scratch_bytes
    cdef float* z = <float*>base
    cdef char* xq = base + w.z_size * sizeof(float)
    cdef char* hq = xq + _rup(w.chunk * B * w.Kx * width, ALIGNMENT)
    cdef float* sx = <float*>(hq + _rup(B * w.Kh * width, ALIGNMENT))
    cdef float* sh = sx + w.chunk * B
    cdef int32_t* zx = <int32_t*>(sh + B)
    cdef int32_t* zh = zx + w.chunk * B
    cdef float* h_t = w.hidden + (step % 2) * B * H
    cdef float* c_t = w.cells + (step % 2) * B * H
    cdef const float* h_prev = w.hidden + ((step + 1) % 2) * B * H if step > 0 else w.h0
    cdef const float* c_prev = w.cells + ((step + 1) % 2) * B * H if step > 0 else w.c0
    first = step - step % w.chunk
    count = min(w.chunk, w.T - first)
    t_low = w.T - first - count if w.reverse else first
    if step == first:
        _quantize_rows(w, xq, sx, zx, w.x + t_low * B * w.n_in, count * B, w.n_in, w.Kx)
        _product(w, z, 4 * nj_pad, xq, sx, zx, False, count * B, u0, u1, 0)
    z += (t - t_low) * B * 4 * nj_pad
    _quantize_rows(w, hq, sh, zh, h_prev, B, H, w.Kh)
    _product(w, z, 4 * nj_pad, hq, sh, zh, True, B, u0, u1, 1)
    for b in range(B):
        row = t * B + b
        if w.lengths == NULL or t < w.lengths[b]:
            cell_forward_f(NULL, c_t + b * H + j0, h_t + b * H + j0,
                           w.out + row * w.out_stride + j0, NULL, w.bias + j0,
                           z + b * 4 * nj_pad, c_prev + b * H + j0,
                           w.peep + j0 if w.peep != NULL else NULL, w.clip, <int>nj,
                           <int>H, <int>H, <int>nj_pad, 0)
        else:   # past this sequence's end: carry the state, output zeros
            memcpy(h_t + b * H + j0, h_prev + b * H + j0, nj * sizeof(float))
            memcpy(c_t + b * H + j0, c_prev + b * H + j0, nj * sizeof(float))
            memset(w.out + row * w.out_stride + j0, 0, nj * sizeof(float))


cdef void _thread(QWork* w) noexcept nogil:
    cdef int tid = fl_omp_thread_id(), n = fl_omp_team_size(), s
    cdef fl_member_t me
    cdef Py_ssize_t step = 0, u0, u1, j0, nj, b, last
    cdef bint member = True
    fl_team_join(&w.team, &me, n)
    while member and step < w.T:
        s = 0 if w.team.solo else tid
        while s < w.n_slices:
            _slice_step(w, s, step)
            s += 1 if w.team.solo else n
        member = fl_team_barrier(&w.team, &me, tid)
        step += 1
    if not member:
        return
    last = (w.T - 1) % 2
    for s in range(w.n_slices):
        if not w.team.solo and s % n != tid:
            continue
        _slice(w, s, &u0, &u1)
        j0 = u0 * LANES
        nj = min(w.H, u1 * LANES) - j0
        for b in range(w.B):
            if nj > 0:
                memcpy(w.h_n + b * w.H + j0, w.hidden + (last * w.B + b) * w.H + j0,
                       nj * sizeof(float))
                memcpy(w.c_n + b * w.H + j0, w.cells + (last * w.B + b) * w.H + j0,
                       nj * sizeof(float))


def _check(str name, bint ok, expected, actual, str where="quantized_forward"):
    if not ok:
        raise ValueError(f"{where}: {name}: expected {expected}, got {actual}")


def _check_packed(str where, int kind, Py_ssize_t n_in, Py_ssize_t H, w_ih, w_hh, s_ih, s_hh,
                  r_ih, r_hh):
    """Check the packed arrays of one layer and direction (see :func:`quantized_forward`)."""
    cdef Py_ssize_t blocks = (H + LANES - 1) // LANES, unit = 2 if kind == 0 else 4
    wtype = cnp.NPY_UINT16 if kind == 0 else cnp.NPY_INT8
    for name, array, num, size in (
            ("w_ih", w_ih, wtype, 4 * blocks * LANES * _rup(n_in, unit)),
            ("w_hh", w_hh, wtype, 4 * blocks * LANES * _rup(H, unit)),
            ("s_ih", s_ih, cnp.NPY_FLOAT32, 4 * blocks * LANES * kind),
            ("s_hh", s_hh, cnp.NPY_FLOAT32, 4 * blocks * LANES * kind),
            ("r_ih", r_ih, cnp.NPY_INT32, 4 * blocks * LANES * kind),
            ("r_hh", r_hh, cnp.NPY_INT32, 4 * blocks * LANES * kind)):
        if not (isinstance(array, cnp.ndarray) and cnp.PyArray_TYPE(array) == num
                and cnp.PyArray_SIZE(array) == size and cnp.PyArray_IS_C_CONTIGUOUS(array)):
            _check(name, False,
                   f"a C-contiguous {cnp.PyArray_DescrFromType(num)} array of {size} values",
                   f"{getattr(array, 'dtype', type(array).__name__)} "
                   f"{getattr(array, 'shape', '')}", where)


def quantized_forward(str dtype, float[:, :, ::1] out, Py_ssize_t out_col,
                      float[:, ::1] h_n, float[:, ::1] c_n, const float[:, :, ::1] x,
                      const float[:, ::1] h0, const float[:, ::1] c0,
                      cnp.ndarray w_ih, cnp.ndarray w_hh, cnp.ndarray s_ih, cnp.ndarray s_hh,
                      cnp.ndarray r_ih, cnp.ndarray r_hh, const float[::1] bias,
                      const float[::1] peep, const Py_ssize_t[::1] lengths, bint reverse,
                      double clip, int n_threads):
    """One layer and direction of a quantised forward, time-major (inference only).

    out (T, B, D*H) receives h_t in columns [out_col, out_col + H). w_ih, w_hh are the
    packed panels (``fastlstm.quantize``): uint16 bf16 bits, or int8 with s_* (float32
    column scales) and r_* (int32 column sums) 16 per panel; for bfloat16 s_* and r_* are
    empty. bias (4H,) is b_ih + b_hh; empty peep / lengths mean absent.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], n_in = x.shape[2], H = h0.shape[1]
    cdef Py_ssize_t blocks = (H + LANES - 1) // LANES, b
    _check("dtype", dtype in DTYPES, DTYPES, dtype)
    cdef int kind = DTYPES.index(dtype)
    cdef Py_ssize_t unit = 2 if kind == 0 else 4
    cdef Py_ssize_t Kx = _rup(n_in, unit), Kh = _rup(H, unit)
    _check_packed("quantized_forward", kind, n_in, H, w_ih, w_hh, s_ih, s_hh, r_ih, r_hh)
    _check("T, B, H", T > 0 and B > 0 and H > 0, "positive sizes", (T, B, H))
    _check("out", out.shape[0] == T and out.shape[1] == B and out.shape[2] >= out_col + H
           and out_col >= 0, (T, B, f">= {out_col + H}"), (out.shape[0], out.shape[1], out.shape[2]))
    for name, array in (("h_n", h_n), ("c_n", c_n), ("h0", h0), ("c0", c0)):
        _check(name, array.shape[0] == B and array.shape[1] == H, (B, H),
               (array.shape[0], array.shape[1]))
    _check("bias", bias.shape[0] == 4 * H, 4 * H, bias.shape[0])
    _check("peep", peep.shape[0] in (0, 3 * H), f"0 or {3 * H}", peep.shape[0])
    _check("lengths", lengths.shape[0] in (0, B), f"0 or {B}", lengths.shape[0])
    for b in range(lengths.shape[0]):
        _check("lengths", 1 <= lengths[b] <= T, f"values in [1, {T}]", lengths[b])
    import numpy as np
    cdef QWork w
    memset(&w, 0, sizeof(w))
    w.T, w.B, w.n_in, w.H, w.Kx, w.Kh, w.blocks = T, B, n_in, H, Kx, Kh, blocks
    w.out_stride, w.kind, w.fast = out.shape[2], kind, _fast(kind)
    w.reverse, w.clip = reverse, <float>clip
    w.chunk = max(1, min(T, CHUNK_ROWS // B))
    w.x, w.h0, w.c0, w.bias = &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &bias[0]
    w.peep = &peep[0] if peep.shape[0] > 0 else NULL
    w.lengths = &lengths[0] if lengths.shape[0] > 0 else NULL
    w.w_ih, w.w_hh = cnp.PyArray_DATA(w_ih), cnp.PyArray_DATA(w_hh)
    if kind == 1:
        w.s_ih, w.s_hh = <const float*>cnp.PyArray_DATA(s_ih), <const float*>cnp.PyArray_DATA(s_hh)
        w.r_ih = <const int32_t*>cnp.PyArray_DATA(r_ih)
        w.r_hh = <const int32_t*>cnp.PyArray_DATA(r_hh)
    w.out, w.h_n, w.c_n = &out[0, 0, out_col], &h_n[0, 0], &c_n[0, 0]
    ring = np.empty((2, 2, B, H), np.float32)
    w.hidden = <float*>cnp.PyArray_DATA(ring)
    w.cells = w.hidden + 2 * B * H
    # ~ 2 * T * B * 4H * (in + H) multiply-adds at some 100 G/s on one core
    n_threads = fl_team_size(max(1, min(n_threads, <int>blocks)), T * B * 4 * H * (n_in + H) // 50)
    w.n_slices = n_threads
    w.slice_blocks = (blocks + n_threads - 1) // n_threads
    w.z_size = _rup(w.chunk * B * 4 * w.slice_blocks * LANES, ALIGNMENT)
    w.scratch_bytes = (w.z_size * sizeof(float)
                       + _rup(w.chunk * B * Kx * (2 - kind), ALIGNMENT)
                       + _rup(B * Kh * (2 - kind), ALIGNMENT)
                       + _rup((w.chunk * B + B) * (sizeof(float) + sizeof(int32_t)), ALIGNMENT))
    w.scratch = <char*>aligned_alloc(ALIGNMENT, w.n_slices * w.scratch_bytes)
    if w.scratch == NULL:
        raise MemoryError("fastlstm: cannot allocate the quantised kernel workspace")
    fl_team_init(&w.team, n_threads, T)
    with nogil:
        if n_threads == 1:
            _thread(&w)
        else:
            with parallel(num_threads=n_threads):
                _thread(&w)
        fl_team_report(&w.team, fl_now_ns())
    free(w.scratch)


# ---------------------------------------------------------------- streaming
cdef enum:
    STREAM_SPLIT_BYTES = 1 << 20    # a stream whose weights pass a core's L2 may split each
                                    # step: it times both ways and keeps the faster


cdef struct QLayer:                 # one layer of a stream: its packed weights (see QWork)
    const void* w_ih
    const void* w_hh
    const float* s_ih
    const float* s_hh
    const int32_t* r_ih
    const int32_t* r_hh
    const float* bias
    const float* peep
    Py_ssize_t n_in, Kx


cdef struct QStream:
    QLayer* layers
    Py_ssize_t L, B, H, Kh, blocks
    Py_ssize_t rows_bytes, scales_offset    # a thread's row buffer; its scales and zeros
    int kind, fast
    float clip
    const float* x                  # (B, in)
    float* h                        # (L, B, H)
    float* c
    float* y                        # (B, H)
    float* z                        # (B, 4 * blocks * 16)
    char* rows                      # per thread: quantised rows, then scales, then zeros
    fl_team_t team


cdef void _stream_products(QStream* w, const QLayer* ly, const float* layer_in,
                           const float* h_layer, char* rows, Py_ssize_t u0,
                           Py_ssize_t u1) noexcept nogil:
    # z[:, g * H_pad + j] = q(x) @ W_ih[g*H + j].T + q(h) @ W_hh[g*H + j].T for the units
    # of panel blocks [u0, u1) of every gate; all blocks: the four gates are one run
    cdef Py_ssize_t B = w.B, H_pad = w.blocks * LANES, ldc = 4 * w.blocks * LANES, K, g
    cdef float* sa = <float*>(rows + w.scales_offset)
    cdef int32_t* za = <int32_t*>(sa + B)
    cdef const void* W
    cdef Py_ssize_t recurrent, first, n_panels, parts = 1 if u0 == 0 and u1 == w.blocks else 4
    cdef const float* src
    cdef Py_ssize_t cols
    for recurrent in range(2):
        K = w.Kh if recurrent else ly.Kx
        src = h_layer if recurrent else layer_in
        cols = w.H if recurrent else ly.n_in
        if w.kind == 0:
            fl_rows_to_bf16(<uint16_t*>rows, src, cols, B, cols, K)
        else:
            fl_rows_to_u8(<uint8_t*>rows, sa, za, src, cols, B, cols, K)
        W = ly.w_hh if recurrent else ly.w_ih
        n_panels = 4 * w.blocks if parts == 1 else u1 - u0
        for g in range(parts):
            first = g * w.blocks + u0
            if w.kind == 0:
                fl_bf16_product(w.fast, w.z + g * H_pad + u0 * LANES, ldc, <const uint16_t*>rows, K,
                                <const uint16_t*>W + first * K * LANES, B, n_panels, K,
                                <int>recurrent)
            else:
                fl_i8_product(w.fast, w.z + g * H_pad + u0 * LANES, ldc, <const uint8_t*>rows,
                              K, sa, za, <const int8_t*>W + first * K * LANES,
                              (ly.s_hh if recurrent else ly.s_ih) + first * LANES,
                              (ly.r_hh if recurrent else ly.r_ih) + first * LANES,
                              B, n_panels, K, <int>recurrent)


cdef void _stream_step(QStream* w) noexcept nogil:
    # One time step through every layer; a member of w.team, each thread takes a share of
    # the units: every layer reads all of h before any thread writes it (a barrier between
    # the products and the cell passes) and the next layer reads all of the new h (a
    # barrier after them). Each thread quantises the rows it multiplies into its own buffer.
    cdef int tid = fl_omp_thread_id(), n = fl_omp_team_size(), part
    cdef fl_member_t me
    cdef Py_ssize_t B = w.B, H = w.H, H_pad = w.blocks * LANES, layer, b, u0, u1, j0, nj
    cdef const float* layer_in = w.x
    cdef const QLayer* ly
    cdef float* h_layer
    cdef float* c_layer
    fl_team_join(&w.team, &me, n)
    for layer in range(w.L):
        ly = &w.layers[layer]
        h_layer = w.h + layer * B * H
        c_layer = w.c + layer * B * H
        part = 0 if w.team.solo else tid
        while part < n:
            u0 = w.blocks * part // n
            u1 = w.blocks * (part + 1) // n
            if u1 > u0:
                _stream_products(w, ly, layer_in, h_layer, w.rows + tid * w.rows_bytes, u0, u1)
            part += 1 if w.team.solo else n
        if n > 1 and not fl_team_barrier(&w.team, &me, tid):
            return
        part = 0 if w.team.solo else tid
        while part < n:
            j0 = w.blocks * part // n * LANES
            nj = min(H, w.blocks * (part + 1) // n * LANES) - j0
            if nj > 0:
                for b in range(B):
                    cell_forward_f(NULL, c_layer + b * H + j0, h_layer + b * H + j0, NULL,
                                   NULL, ly.bias + j0, w.z + b * 4 * H_pad + j0,
                                   c_layer + b * H + j0,
                                   ly.peep + j0 if ly.peep != NULL else NULL, w.clip,
                                   <int>nj, <int>H, <int>H, <int>H_pad, 0)
            part += 1 if w.team.solo else n
        if n > 1 and not fl_team_barrier(&w.team, &me, tid):
            return
        layer_in = h_layer
    if tid == 0:
        memcpy(w.y, w.h + (w.L - 1) * B * H, B * H * sizeof(float))


cdef class QuantStreamKernel:
    """Stateful single-step quantised inference over all layers of a unidirectional LSTM.

    Holds the module's packed weights (``QuantizedLSTM._layers``, fetched again after its
    ``load_state_dict``), the state and every buffer a step needs: a step is one call
    without the GIL and without allocation, on the calling thread, or, when the weights pass
    1 MB, split across the threads if that times faster (the float stream's chooser). Its
    results equal the module's full call bit for bit.
    """
    cdef readonly object h, c           # (L, B, H) state arrays
    cdef object _module, _source, _arrays, _z, _y, _y_flat, _rows
    cdef Py_ssize_t in_size, weight_bytes
    cdef QStream w
    cdef fl_chooser_t chooser           # one thread or split, by timing both

    def __cinit__(self, module, Py_ssize_t batch_size):
        fl_chooser_init(&self.chooser)
        import numpy as np
        if not 1 <= batch_size <= 1 << 24:
            raise ValueError(f"batch_size: expected 1 to {1 << 24}, got {batch_size}")
        self._module = module
        self.in_size = module.input_size
        self.w.L, self.w.B, self.w.H = module.num_layers, batch_size, module.hidden_size
        self.w.kind = DTYPES.index(module.quantization)
        self.w.clip = <float>(module.clip or 0.0)
        self.w.blocks = (self.w.H + LANES - 1) // LANES
        self.w.Kh = _rup(self.w.H, 2 if self.w.kind == 0 else 4)
        self.w.layers = <QLayer*>calloc(self.w.L, sizeof(QLayer))
        if self.w.layers == NULL:
            raise MemoryError("fastlstm: cannot allocate the quantised stream")
        self.h = np.zeros((self.w.L, batch_size, self.w.H), np.float32)
        self.c = np.zeros((self.w.L, batch_size, self.w.H), np.float32)
        self._z = np.empty(batch_size * 4 * self.w.blocks * LANES, np.float32)
        self._y = np.empty((batch_size, self.w.H), np.float32)
        self._y_flat = self._y.reshape(-1)
        self.w.h = <float*>cnp.PyArray_DATA(self.h)
        self.w.c = <float*>cnp.PyArray_DATA(self.c)
        self.w.z = <float*>cnp.PyArray_DATA(self._z)
        self.w.y = <float*>cnp.PyArray_DATA(self._y)
        self._rows = None
        self._load()

    def __dealloc__(self):
        free(self.w.layers)

    cdef _load(self):
        """Point at the module's packed weights (checked) and size the row buffers."""
        import numpy as np
        cdef Py_ssize_t layer, n_in, Kx, unit = 2 if self.w.kind == 0 else 4, widest = 0
        cdef QLayer* ly
        source = self._module._layers
        arrays = []
        self.weight_bytes = 0
        for layer in range(self.w.L):
            packed = source[(layer, 0)]
            n_in = self.in_size if layer == 0 else self.w.H
            Kx = _rup(n_in, unit)
            _check_packed(f"stream layer {layer}", self.w.kind, n_in, self.w.H, *packed[:6])
            for name, array, sizes in (("bias", packed[6], (4 * self.w.H,)),
                                       ("peep", packed[7], (0, 3 * self.w.H))):
                _check(name, isinstance(array, np.ndarray) and array.dtype == np.float32
                       and array.ndim == 1 and array.size in sizes
                       and array.flags.c_contiguous,
                       f"a C-contiguous float32 array of {' or '.join(map(str, sizes))} values",
                       f"{getattr(array, 'dtype', type(array).__name__)} "
                       f"{getattr(array, 'shape', '')}", f"stream layer {layer}")
            arrays.append(packed)
            ly = &self.w.layers[layer]
            ly.n_in, ly.Kx = n_in, Kx
            ly.w_ih, ly.w_hh = cnp.PyArray_DATA(packed[0]), cnp.PyArray_DATA(packed[1])
            ly.s_ih = <const float*>cnp.PyArray_DATA(packed[2])
            ly.s_hh = <const float*>cnp.PyArray_DATA(packed[3])
            ly.r_ih = <const int32_t*>cnp.PyArray_DATA(packed[4])
            ly.r_hh = <const int32_t*>cnp.PyArray_DATA(packed[5])
            ly.bias = <const float*>cnp.PyArray_DATA(packed[6])
            ly.peep = <const float*>cnp.PyArray_DATA(packed[7]) if packed[7].size else NULL
            self.weight_bytes += packed[0].nbytes + packed[1].nbytes
            widest = max(widest, Kx)
        widest = max(widest, self.w.Kh)
        self.w.scales_offset = _rup(self.w.B * widest * (2 - self.w.kind), ALIGNMENT)
        self.w.rows_bytes = _rup(self.w.scales_offset
                                 + self.w.B * (sizeof(float) + sizeof(int32_t)), ALIGNMENT)
        self._arrays = arrays
        self._source = source
        self._reserve(1)

    cdef _reserve(self, int n_threads):
        """Row buffers for `n_threads` threads (each quantises the rows it multiplies)."""
        import numpy as np
        cdef Py_ssize_t size = n_threads * self.w.rows_bytes + ALIGNMENT
        if self._rows is None or self._rows.size < size:
            self._rows = np.zeros(size, np.uint8)
        cdef size_t address = <size_t>cnp.PyArray_DATA(self._rows)
        self.w.rows = <char*>((address + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT)

    def reset(self):
        """Zero the state."""
        self.h.fill(0)
        self.c.fill(0)

    cdef cnp.ndarray _coerce(self, object x):
        import numpy as np
        from ..validation import as_real_array
        arr = as_real_array(x, "x_t", np.float32)
        if not (arr.shape == (self.w.B, self.in_size)
                or (self.w.B == 1 and arr.shape == (self.in_size,))):
            expected = f"({self.w.B}, {self.in_size})"
            if self.w.B == 1:
                expected += f" or ({self.in_size},)"
            raise ValueError(f"x_t: expected shape {expected} (batch_size, input_size), got "
                             f"{arr.shape}")
        return np.ascontiguousarray(arr, np.float32)

    def step(self, x_t):
        """Advance one time step; return the last layer's h_t: (B, H), or (H,) for x_t (in,)."""
        cdef cnp.ndarray arr
        cdef Py_ssize_t B = self.w.B
        if (type(x_t) is cnp.ndarray and cnp.PyArray_TYPE(x_t) == cnp.NPY_FLOAT32
                and cnp.PyArray_IS_C_CONTIGUOUS(x_t)
                and ((cnp.PyArray_NDIM(x_t) == 2 and cnp.PyArray_DIMS(x_t)[0] == B
                      and cnp.PyArray_DIMS(x_t)[1] == self.in_size)
                     or (cnp.PyArray_NDIM(x_t) == 1 and B == 1
                         and cnp.PyArray_DIMS(x_t)[0] == self.in_size))):
            arr = x_t
        else:
            arr = self._coerce(x_t)
        if self._module._layers is not self._source:
            self._load()
        cdef int n_threads = 1
        cdef int timed = 0          # the chooser picked the way and times it
        cdef long long started = 0, ended
        if self.weight_bytes > STREAM_SPLIT_BYTES:
            n_threads = fl_chooser_threads(&self.chooser,
                                           max(1, min(kernel_threads(), <int>self.w.blocks)),
                                           2 * B * self.weight_bytes // 50, &timed)
            self._reserve(n_threads)
        self.w.x = <const float*>cnp.PyArray_DATA(arr)
        self.w.fast = _fast(self.w.kind)
        fl_team_init(&self.w.team, n_threads, 2 * self.w.L)
        with nogil:
            if timed:
                started = fl_now_ns()
            if n_threads == 1:      # no parallel region: its start costs as much as a small step
                _stream_step(&self.w)
            else:
                with parallel(num_threads=n_threads):
                    _stream_step(&self.w)
            if n_threads > 1 or timed:
                ended = fl_now_ns()
                if n_threads > 1:
                    fl_team_report(&self.w.team, ended)
                if timed:
                    fl_chooser_record(&self.chooser, ended - started)
        return copy_contiguous(self._y_flat if cnp.PyArray_NDIM(arr) == 1 else self._y)


setting_from_environment("FASTLSTM_QUANT_PATH", set_quantized_path)


def shared_state_address():
    """Address of the stall handling's state as this module sees it (tests: one per
    process)."""
    return fl_shared_address()
