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
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

cimport numpy as cnp

from .openmp cimport (fl_member_t, fl_omp_team_size, fl_omp_thread_id, fl_team_barrier,
                      fl_team_init, fl_team_join, fl_team_report, fl_team_size, fl_team_t)

cnp.import_array()

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "cell.h":
    void cell_forward_f(float* act, float* c, float* h, float* out, unsigned char* clipped,
                        const float* zx, const float* zh, const float* c_prev,
                        const float* peep, float clip, int n, int H,
                        int zh_stride) noexcept nogil

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
                           <int>H, <int>nj_pad)
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


def _check(str name, bint ok, expected, actual):
    if not ok:
        raise ValueError(f"quantized_forward: {name}: expected {expected}, got {actual}")


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
    wtype = cnp.NPY_UINT16 if kind == 0 else cnp.NPY_INT8
    for name, array, size in (("w_ih", w_ih, 4 * blocks * LANES * Kx),
                              ("w_hh", w_hh, 4 * blocks * LANES * Kh)):
        _check(name, cnp.PyArray_TYPE(array) == wtype and cnp.PyArray_SIZE(array) == size
               and cnp.PyArray_IS_C_CONTIGUOUS(array), f"{size} packed {dtype} values",
               f"{array.dtype} {array.shape}")
    for name, array, kind_num in (("s_ih", s_ih, cnp.NPY_FLOAT32), ("s_hh", s_hh, cnp.NPY_FLOAT32),
                                  ("r_ih", r_ih, cnp.NPY_INT32), ("r_hh", r_hh, cnp.NPY_INT32)):
        size = 4 * blocks * LANES if kind == 1 else 0
        _check(name, cnp.PyArray_TYPE(array) == kind_num and cnp.PyArray_SIZE(array) == size
               and cnp.PyArray_IS_C_CONTIGUOUS(array), f"{size} values", f"{array.dtype} {array.shape}")
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
        fl_team_report(&w.team)
    free(w.scratch)


def _path_from_environment():
    import os
    path = os.environ.get("FASTLSTM_QUANT_PATH")
    if path:
        try:
            set_quantized_path(path)
        except ValueError as error:
            raise ValueError(f"environment variable FASTLSTM_QUANT_PATH: {error}") from None


_path_from_environment()
