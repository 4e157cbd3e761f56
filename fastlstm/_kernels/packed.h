/* Packed-panel products for the recurrence: C (M, n_panels * LANES) (+)= A (M, K) @ P.
 *
 * BLAS re-packs its operand on every call and is tuned for large M; the recurrence multiplies
 * the same W_hh by a short h_{t-1} T times. So W_hh is packed once per kernel call into
 * panels, and a register-blocked micro-kernel streams them every step.
 *
 * A panel holds LANES output columns (one 64-byte vector: 16 floats or 8 doubles) for every
 * k, k-major: panel[k * LANES + c] = column c at depth k, zero past the matrix edge. Panels
 * of one slice lie one after another, `K * LANES` elements apart.
 *
 * The micro-kernel keeps an MR x NV block of C (MR rows, NV vectors) in registers, loads NV
 * panel vectors per k and broadcasts MR values of A against them. Shapes are compile-time
 * constants of each instantiation, so GCC unrolls the block into straight FMA code. The
 * product is compiled for AVX-512, AVX2+FMA and baseline x86-64 with register blocks that
 * fit each (32 zmm, 16 ymm, 16 xmm registers), chosen once, at load time.
 */
#ifndef FASTLSTM_PACKED_H
#define FASTLSTM_PACKED_H

#include <stddef.h>
#include <string.h>

#include "cell.h"   /* fl_vec_f, fl_vec_d: 64-byte vectors */
#include "isa.h"    /* fl_packed_isa */

/* Depth block: a block's panel chunks (up to 4 x KC x 64 B = 256 KB for floats) stay in L2
 * while the row blocks stream past them, and each block of C is written once up to this
 * depth.
 * Measured against 128 (a chunk that fits L1, C re-read per block): S3 forward 104-106 ms
 * -> 95-97 ms, training step 339-342 -> 323-326 ms. */
#define FL_KC 1024
/* A block of several rows asks for each panel this many depths ahead (1 KB for floats):
 * the L1 prefetchers do not follow four panels read in step, so without it each block
 * waited on L2 for the panel chunks it re-reads row block after row block. Measured on a
 * Xeon (Cascade Lake), builds alternated: S3 forward 104 -> 97 ms (2 threads), 224 -> 198
 * ms (1 thread), S3 training step 320 -> 297 ms, S2 forward 3.83 -> 3.53 ms. Distances of
 * 8 and 32 measured the same as 16. One row (B = 1) is slower with it (S1 forward 0.52 ->
 * 0.67 ms): its one pass over the panels is bound by L2 reads, which the prefetches only
 * add to. */
#define FL_PREFETCH_K 16
/* Rows of A per block of the transposed product (packed_product_at). */
#define FL_MC 64

/* Pack ncols columns of a strided matrix into one panel of depth K:
 * panel[k * lanes + c] = src[c * col_stride + k * k_stride], zero for c >= ncols.
 * The element-by-element version; pack_panel_f/d below take faster routes when they can. */
#define FL_DEFINE_PACK(REAL, NAME)                                                           \
static void NAME(REAL *panel, const REAL *src, ptrdiff_t col_stride, ptrdiff_t k_stride,     \
                 ptrdiff_t K, int ncols)                                                     \
{                                                                                            \
    const int lanes = (int)(64 / sizeof(REAL));                                              \
    for (ptrdiff_t k = 0; k < K; k++) {                                                      \
        REAL *dst = panel + k * lanes;                                                       \
        int c = 0;                                                                           \
        for (; c < ncols; c++)                                                               \
            dst[c] = src[c * col_stride + k * k_stride];                                     \
        for (; c < lanes; c++)                                                               \
            dst[c] = 0;                                                                      \
    }                                                                                        \
}
FL_DEFINE_PACK(float, pack_panel_f_scalar)
FL_DEFINE_PACK(double, pack_panel_d_scalar)
#undef FL_DEFINE_PACK

/* Columns contiguous in src (col_stride 1, e.g. W_hh^T for the backward): a row copy per k
 * (of a constant size for whole panels, so that it compiles to one vector move, not a call). */
#define FL_DEFINE_PACK_ROWS(REAL, NAME)                                                      \
static void NAME(REAL *panel, const REAL *src, ptrdiff_t k_stride, ptrdiff_t K, int ncols)   \
{                                                                                            \
    enum { LANES = 64 / sizeof(REAL) };                                                      \
    if (ncols == LANES) {                                                                    \
        for (ptrdiff_t k = 0; k < K; k++)                                                    \
            memcpy(panel + k * LANES, src + k * k_stride, LANES * sizeof(REAL));             \
        return;                                                                              \
    }                                                                                        \
    for (ptrdiff_t k = 0; k < K; k++) {                                                      \
        memcpy(panel + k * LANES, src + k * k_stride, ncols * sizeof(REAL));                 \
        memset(panel + k * LANES + ncols, 0, (LANES - ncols) * sizeof(REAL));                \
    }                                                                                        \
}
FL_DEFINE_PACK_ROWS(float, pack_rows_f)
FL_DEFINE_PACK_ROWS(double, pack_rows_d)
#undef FL_DEFINE_PACK_ROWS

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define FL_HAVE_TRANSPOSE 1

/* 16 whole rows of W (each K long, row stride ld) into one float panel: 16 x 16 blocks
 * transposed in registers. NumPy: panel.reshape(K, 16)[:] = W[:16, :K].T */
__attribute__((target("avx512f")))
static void pack_transpose16_f_avx512(float *panel, const float *src, ptrdiff_t ld, ptrdiff_t K)
{
    ptrdiff_t k0 = 0;
    for (; k0 + 16 <= K; k0 += 16) {
        __m512 r[16], t[16];
        for (int i = 0; i < 16; i++)
            r[i] = _mm512_loadu_ps(src + i * ld + k0);
        /* pairs of rows interleaved within 128-bit lanes */
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        /* quads: 64-bit pairs of the row pairs */
        for (int i = 0; i < 16; i += 4) {
            r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]),
                                                       _mm512_castps_pd(t[i + 2])));
            r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]),
                                                           _mm512_castps_pd(t[i + 2])));
            r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]),
                                                           _mm512_castps_pd(t[i + 3])));
            r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]),
                                                           _mm512_castps_pd(t[i + 3])));
        }
        /* 128-bit lanes: first across groups of 4 rows, then of 8 */
        for (int i = 0; i < 4; i++) {
            t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
            t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
            t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
            t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
        }
        for (int i = 0; i < 4; i++) {
            r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
            r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
            r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
            r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
        }
        /* r[q] is now depth k0 + q of the 16 rows */
        for (int q = 0; q < 16; q++)
            _mm512_storeu_ps(panel + (k0 + q) * 16, r[q]);
    }
    if (k0 < K)
        pack_panel_f_scalar(panel + k0 * 16, src + k0, ld, 1, K - k0, 16);
}
#else
#define FL_HAVE_TRANSPOSE 0
#endif

/* panel[k * lanes + c] = src[c * col_stride + k * k_stride], zero for c >= ncols: K x ncols
 * of a strided matrix (rows of W for col_stride K, k_stride 1; columns for col_stride 1). */
static void pack_panel_f(float *panel, const float *src, ptrdiff_t col_stride,
                         ptrdiff_t k_stride, ptrdiff_t K, int ncols)
{
    if (col_stride == 1)
        pack_rows_f(panel, src, k_stride, K, ncols);
#if FL_HAVE_TRANSPOSE
    else if (k_stride == 1 && ncols == 16 && fl_packed_isa() == 2)
        pack_transpose16_f_avx512(panel, src, col_stride, K);
#endif
    else
        pack_panel_f_scalar(panel, src, col_stride, k_stride, K, ncols);
}

static void pack_panel_d(double *panel, const double *src, ptrdiff_t col_stride,
                         ptrdiff_t k_stride, ptrdiff_t K, int ncols)
{
    if (col_stride == 1)
        pack_rows_d(panel, src, k_stride, K, ncols);
    else
        pack_panel_d_scalar(panel, src, col_stride, k_stride, K, ncols);
}


/* Sanitized builds (-fsanitize=address): the register block is left uninstrumented and
 * checks instead, before its loop, that every range it reads or writes is addressable.
 * Instrumenting each of its loads took three quarters of a sanitized test run, and its
 * unrolled shapes most of the sanitized build. A range that is not addressable is reported
 * by reading its first bad byte from instrumented code: ASan's usual report and stack. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define FL_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined")))
static __attribute__((noinline)) void fl_check_range(const void *start, size_t bytes)
{
    const char *bad = (const char *)__asan_region_is_poisoned((void *)start, bytes);
    if (bad)
        (void)*(const volatile char *)bad;
}
#else
#define FL_UNINSTRUMENTED
#endif

/* Micro-kernels and drivers, one set per (REAL, instruction set). */
typedef float fl_v32_f __attribute__((vector_size(32)));
typedef float fl_v16_f __attribute__((vector_size(16)));
typedef double fl_v32_d __attribute__((vector_size(32)));
typedef double fl_v16_d __attribute__((vector_size(16)));

#define REAL float
#define FL_V64 fl_vec_f
#define FL_V32 fl_v32_f
#define FL_V16 fl_v16_f
#define FL_TYPE f
#include "packed_isas.h"
#undef REAL
#undef FL_V64
#undef FL_V32
#undef FL_V16
#undef FL_TYPE

#define REAL double
#define FL_V64 fl_vec_d
#define FL_V32 fl_v32_d
#define FL_V16 fl_v16_d
#define FL_TYPE d
#include "packed_isas.h"
#undef REAL
#undef FL_V64
#undef FL_V32
#undef FL_V16
#undef FL_TYPE

typedef void (*fl_product_f_t)(float *, ptrdiff_t, const float *, ptrdiff_t, const float *,
                               ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, int, int);
typedef void (*fl_product_d_t)(double *, ptrdiff_t, const double *, ptrdiff_t, const double *,
                               ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, int, int);

/* C (M, n_panels * lanes), row stride ldc, (+)= A (M, K), row stride lda, @ panels (each
 * panel_stride elements after the last; read last to first with `backwards`), with the
 * products of instruction set `isa` (see fl_packed_isa). */
static inline void packed_product_isa_f(int isa, float *C, ptrdiff_t ldc, const float *A,
                                        ptrdiff_t lda, const float *panels,
                                        ptrdiff_t panel_stride, ptrdiff_t M,
                                        ptrdiff_t n_panels, ptrdiff_t K, int accumulate,
                                        int backwards)
{
    static const fl_product_f_t by_isa[3] = {packed_product_f_portable, packed_product_f_avx2,
                                             packed_product_f_avx512};
    by_isa[isa](C, ldc, A, lda, panels, panel_stride, M, n_panels, K, accumulate, backwards);
}

static inline void packed_product_isa_d(int isa, double *C, ptrdiff_t ldc, const double *A,
                                        ptrdiff_t lda, const double *panels,
                                        ptrdiff_t panel_stride, ptrdiff_t M,
                                        ptrdiff_t n_panels, ptrdiff_t K, int accumulate,
                                        int backwards)
{
    static const fl_product_d_t by_isa[3] = {packed_product_d_portable, packed_product_d_avx2,
                                             packed_product_d_avx512};
    by_isa[isa](C, ldc, A, lda, panels, panel_stride, M, n_panels, K, accumulate, backwards);
}

/* The same with the best instruction set of this CPU. */
static inline void packed_product_f(float *C, ptrdiff_t ldc, const float *A, ptrdiff_t lda,
                                    const float *panels, ptrdiff_t panel_stride, ptrdiff_t M,
                                    ptrdiff_t n_panels, ptrdiff_t K, int accumulate,
                                    int backwards)
{
    packed_product_isa_f(fl_packed_isa(), C, ldc, A, lda, panels, panel_stride, M, n_panels, K,
                           accumulate, backwards);
}

static inline void packed_product_d(double *C, ptrdiff_t ldc, const double *A, ptrdiff_t lda,
                                    const double *panels, ptrdiff_t panel_stride, ptrdiff_t M,
                                    ptrdiff_t n_panels, ptrdiff_t K, int accumulate,
                                    int backwards)
{
    packed_product_isa_d(fl_packed_isa(), C, ldc, A, lda, panels, panel_stride, M, n_panels, K,
                           accumulate, backwards);
}

/* C (M, n_panels * lanes) (+)= the four runs of A's rows (a_stride apart) @ panels 4K deep
 * (read last to first with `backwards`), with the instruction set of fl_packed_isa (see
 * gates_product in packed_impl.h). */
#define FL_DEFINE_GATES_PRODUCT(REAL, T)                                                     \
static inline void gates_product_##T(REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda,   \
                                     ptrdiff_t a_stride, const REAL *panels,                 \
                                     ptrdiff_t panel_stride, ptrdiff_t M, ptrdiff_t n_panels, \
                                     ptrdiff_t K, int accumulate, int backwards)             \
{                                                                                            \
    typedef void (*product_t)(REAL *, ptrdiff_t, const REAL *, ptrdiff_t, ptrdiff_t,         \
                              const REAL *, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, int, \
                              int);                                                          \
    static const product_t by_isa[3] = {gates_product_##T##_portable,                        \
                                        gates_product_##T##_avx2, gates_product_##T##_avx512}; \
    by_isa[fl_packed_isa()](C, ldc, A, lda, a_stride, panels, panel_stride, M, n_panels, K,  \
                            accumulate, backwards);                                          \
}
FL_DEFINE_GATES_PRODUCT(float, f)
FL_DEFINE_GATES_PRODUCT(double, d)
#undef FL_DEFINE_GATES_PRODUCT

/* C (M, N) = A @ W.T, A (M, K) packed into panels of rows, W (N, K) by rows, with the
 * instruction set of fl_packed_isa (see rows_product in packed_impl.h). */
#define FL_DEFINE_ROWS_PRODUCT(REAL, T)                                                      \
static inline void rows_product_##T(REAL *C, ptrdiff_t ldc, const REAL *A_panels,            \
                                    const REAL *W, ptrdiff_t ldw, ptrdiff_t M, ptrdiff_t N,  \
                                    ptrdiff_t K)                                             \
{                                                                                            \
    typedef void (*product_t)(REAL *, ptrdiff_t, const REAL *, const REAL *, ptrdiff_t,      \
                              ptrdiff_t, ptrdiff_t, ptrdiff_t);                              \
    static const product_t by_isa[3] = {rows_product_##T##_portable,                         \
                                        rows_product_##T##_avx2, rows_product_##T##_avx512}; \
    by_isa[fl_packed_isa()](C, ldc, A_panels, W, ldw, M, N, K);                              \
}
FL_DEFINE_ROWS_PRODUCT(float, f)
FL_DEFINE_ROWS_PRODUCT(double, d)
#undef FL_DEFINE_ROWS_PRODUCT

/* C (M, n_panels * lanes) (+)= A.T @ panels, A (K, M) packed by fl_pack_rows8, with the
 * instruction set of fl_packed_isa (see packed_product_at in packed_impl.h). */
typedef void (*fl_product_at_f_t)(float *, ptrdiff_t, const float *, const float *, ptrdiff_t,
                                  ptrdiff_t, ptrdiff_t, int);
typedef void (*fl_product_at_d_t)(double *, ptrdiff_t, const double *, const double *,
                                  ptrdiff_t, ptrdiff_t, ptrdiff_t, int);

static inline void packed_product_at_f(float *C, ptrdiff_t ldc, const float *A,
                                       const float *panels, ptrdiff_t M, ptrdiff_t n_panels,
                                       ptrdiff_t K, int accumulate)
{
    static const fl_product_at_f_t by_isa[3] = {packed_product_at_f_portable,
                                                packed_product_at_f_avx2,
                                                packed_product_at_f_avx512};
    by_isa[fl_packed_isa()](C, ldc, A, panels, M, n_panels, K, accumulate);
}

static inline void packed_product_at_d(double *C, ptrdiff_t ldc, const double *A,
                                       const double *panels, ptrdiff_t M, ptrdiff_t n_panels,
                                       ptrdiff_t K, int accumulate)
{
    static const fl_product_at_d_t by_isa[3] = {packed_product_at_d_portable,
                                                packed_product_at_d_avx2,
                                                packed_product_at_d_avx512};
    by_isa[fl_packed_isa()](C, ldc, A, panels, M, n_panels, K, accumulate);
}

/* Rows [0, M) of A (K, M), row stride lda, in blocks of 8 rows for packed_product_at:
 * out[8b * K + 8k + i] = A[k * lda + 8b + i], zero for 8b + i >= M. With sums, also
 * sums[i] += A[k, i], added in the order of k (NumPy: sums += A[:, :M].sum(axis=0)). With
 * table, also table[tokens[k] * ldt + i] += A[k, i], in the order of k (NumPy:
 * np.add.at(table[:, :M], tokens[:K], A[:K, :M])).
 * Blocks go 8 at a time (64 columns), so each depth reads whole cache lines of A and the
 * 8 running sums hide the add latency. Every instruction set gives the same bits: it only
 * adds, in the same order. */
#define FL_DEFINE_PACK_ROWS8(REAL, T)                                                        \
static inline void fl_pack_rows8_##T(REAL *out, REAL *sums, REAL *table,                     \
                                     const ptrdiff_t *tokens, ptrdiff_t ldt, const REAL *A,  \
                                     ptrdiff_t lda, ptrdiff_t M, ptrdiff_t K)                \
{                                                                                            \
    typedef void (*pack_t)(REAL *, REAL *, REAL *, const ptrdiff_t *, ptrdiff_t,             \
                           const REAL *, ptrdiff_t, ptrdiff_t, ptrdiff_t);                   \
    static const pack_t by_isa[3] = {pack_rows8_##T##_portable, pack_rows8_##T##_avx2,       \
                                     pack_rows8_##T##_avx512};                               \
    by_isa[fl_packed_isa()](out, sums, table, tokens, ldt, A, lda, M, K);                    \
}
FL_DEFINE_PACK_ROWS8(float, f)
FL_DEFINE_PACK_ROWS8(double, d)
#undef FL_DEFINE_PACK_ROWS8

#endif
