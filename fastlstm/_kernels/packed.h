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
#include "isa.h"    /* fl_cpu_isa */

#define FL_KC 128   /* depth block: a pair of panel chunks (2 x KC x 64 B = 16 KB) stays in L1 */

/* Pack ncols columns of a strided matrix into one panel of depth K:
 * panel[k * lanes + c] = src[c * col_stride + k * k_stride], zero for c >= ncols. */
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
FL_DEFINE_PACK(float, pack_panel_f)
FL_DEFINE_PACK(double, pack_panel_d)
#undef FL_DEFINE_PACK

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
                               ptrdiff_t, ptrdiff_t, ptrdiff_t, int);
typedef void (*fl_product_d_t)(double *, ptrdiff_t, const double *, ptrdiff_t, const double *,
                               ptrdiff_t, ptrdiff_t, ptrdiff_t, int);

/* A lower instruction set forced for testing (set_packed_isa), or -1 for the CPU's best. */
static int fl_forced_isa = -1;

/* The instruction set the products use. */
static inline int fl_packed_isa(void)
{
    return fl_forced_isa >= 0 ? fl_forced_isa : fl_cpu_isa();
}

/* C (M, n_panels * lanes), row stride ldc, (+)= A (M, K), row stride lda, @ panels, with
 * the products of instruction set `isa` (see fl_packed_isa). */
static inline void packed_product_isa_f(int isa, float *C, ptrdiff_t ldc, const float *A,
                                        ptrdiff_t lda, const float *panels, ptrdiff_t M,
                                        ptrdiff_t n_panels, ptrdiff_t K, int accumulate)
{
    static const fl_product_f_t by_isa[3] = {packed_product_f_portable, packed_product_f_avx2,
                                             packed_product_f_avx512};
    by_isa[isa](C, ldc, A, lda, panels, M, n_panels, K, accumulate);
}

static inline void packed_product_isa_d(int isa, double *C, ptrdiff_t ldc, const double *A,
                                        ptrdiff_t lda, const double *panels, ptrdiff_t M,
                                        ptrdiff_t n_panels, ptrdiff_t K, int accumulate)
{
    static const fl_product_d_t by_isa[3] = {packed_product_d_portable, packed_product_d_avx2,
                                             packed_product_d_avx512};
    by_isa[isa](C, ldc, A, lda, panels, M, n_panels, K, accumulate);
}

/* The same with the best instruction set of this CPU. */
static inline void packed_product_f(float *C, ptrdiff_t ldc, const float *A, ptrdiff_t lda,
                                    const float *panels, ptrdiff_t M, ptrdiff_t n_panels,
                                    ptrdiff_t K, int accumulate)
{
    packed_product_isa_f(fl_packed_isa(), C, ldc, A, lda, panels, M, n_panels, K, accumulate);
}

static inline void packed_product_d(double *C, ptrdiff_t ldc, const double *A, ptrdiff_t lda,
                                    const double *panels, ptrdiff_t M, ptrdiff_t n_panels,
                                    ptrdiff_t K, int accumulate)
{
    packed_product_isa_d(fl_packed_isa(), C, ldc, A, lda, panels, M, n_panels, K, accumulate);
}

#endif
