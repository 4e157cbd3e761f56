/* Reduced-precision packed products for quantised inference: bfloat16 and int8 weights.
 *
 * Same panel idea as packed.h (16 output columns per 64-byte vector, k-major), with the
 * depth grouped the way the dot-product instructions read it:
 *   bf16: pairs of k.  panel[(k / 2) * 32 + c * 2 + k % 2]  (vdpbf16ps: 2 products per lane)
 *   int8: quads of k.  panel[(k / 4) * 64 + c * 4 + k % 4]  (vpdpbusd: 4 products per lane)
 * Depths are padded to a whole pair / quad with zero weights. Activations are rows of bf16
 * (uint16 bits) or of u8 with a per-row scale and zero point, padded the same way.
 *
 *   bf16: C (+)= A @ W.T, products exact in float32, summed in float32 (each lane adds its
 *         odd-k product, then its even-k product, as vdpbf16ps does).
 *   int8: C (+)= sa[i] * sw[n] * (sum_k a[i,k] w[n,k] - za[i] * rowsum[n]), the sum exact in
 *         int32; a = round(x / sa) + za in [0, 255], w = round(W / sw) in [-127, 127].
 *
 * Each product is compiled twice: for AVX512-BF16 / AVX512-VNNI (8 rows x 2 panels of zmm
 * accumulators) and portably in plain C, which widens to float32 / int32 and runs on any
 * CPU. The int8 paths sum identically (exact int32) and differ only in the rounding of the
 * float32 epilogue (fused on AVX-512, as the compiler pleases portably); the bf16 paths
 * only in denormals (flushed by vdpbf16ps) and in that rounding. Within a path every block
 * shape and slice rounds alike, so a stream step equals the full call bit for bit.
 */
#ifndef FASTLSTM_QUANT_H
#define FASTLSTM_QUANT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>

/* Calls FL_CASE(MR, NV), defined by the caller, for a run-time row count mr in 1..8 and
 * nv in {1, 2} (or mr = 1, nv = 4), so that each block shape is compiled with constant
 * sizes. */
#define FL_BLOCK_DISPATCH(mr, nv)                                                          \
    switch ((nv) == 4 ? 0 : (mr) * 2 + ((nv) == 2)) {                                    \
    case 0: FL_CASE(1, 4);                                                                \
    case 2: FL_CASE(1, 1);  case 3: FL_CASE(1, 2);  case 4: FL_CASE(2, 1);                \
    case 5: FL_CASE(2, 2);  case 6: FL_CASE(3, 1);  case 7: FL_CASE(3, 2);                \
    case 8: FL_CASE(4, 1);  case 9: FL_CASE(4, 2);  case 10: FL_CASE(5, 1);               \
    case 11: FL_CASE(5, 2); case 12: FL_CASE(6, 1); case 13: FL_CASE(6, 2);               \
    case 14: FL_CASE(7, 1); case 15: FL_CASE(7, 2); case 16: FL_CASE(8, 1);               \
    case 17: FL_CASE(8, 2);                                                               \
    default: break;                                                                       \
    }

#define FL_QKC 256  /* bf16 depth block (k): two panels' chunk (2 x 16 KB) stays in L1/L2 */

/* float32 -> bfloat16 bits, round to nearest even (NaN stays NaN). */
static inline uint16_t fl_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float fl_bf16_to_f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Rows of A (M, K) float32, row stride lda, to bf16 rows of Kp (K rounded up to even). */
static void fl_rows_to_bf16(uint16_t *dst, const float *A, ptrdiff_t lda, ptrdiff_t M,
                            ptrdiff_t K, ptrdiff_t Kp)
{
    for (ptrdiff_t i = 0; i < M; i++) {
        uint16_t *d = dst + i * Kp;
        const float *a = A + i * lda;
        for (ptrdiff_t k = 0; k < K; k++)
            d[k] = fl_bf16(a[k]);
        for (ptrdiff_t k = K; k < Kp; k++)
            d[k] = 0;
    }
}

/* Rows of A (M, K) float32 to u8 rows of Kq with a per-row scale and zero point:
 * the row's range [min(lo, 0), max(hi, 0)] mapped onto [0, 255]. */
static void fl_rows_to_u8(uint8_t *dst, float *scale, int32_t *zero, const float *A,
                          ptrdiff_t lda, ptrdiff_t M, ptrdiff_t K, ptrdiff_t Kq)
{
    for (ptrdiff_t i = 0; i < M; i++) {
        const float *a = A + i * lda;
        uint8_t *d = dst + i * Kq;
        float lo = 0.0f, hi = 0.0f;
        for (ptrdiff_t k = 0; k < K; k++) {
            lo = a[k] < lo ? a[k] : lo;
            hi = a[k] > hi ? a[k] : hi;
        }
        float s = (hi - lo) / 255.0f;
        if (!(s > 0.0f) || !isfinite(s))    /* all zeros (or non-finite input) */
            s = 1.0f;
        const float inv = 1.0f / s;
        int32_t z = (int32_t)nearbyintf(-lo * inv);
        z = z < 0 ? 0 : (z > 255 ? 255 : z);
        for (ptrdiff_t k = 0; k < K; k++) {
            float q = nearbyintf(a[k] * inv) + (float)z;
            q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
            d[k] = (uint8_t)q;
        }
        for (ptrdiff_t k = K; k < Kq; k++)
            d[k] = (uint8_t)z;
        scale[i] = s;
        zero[i] = z;
    }
}

/* ------------------------------------------------------------------ bfloat16 products */
static inline __attribute__((always_inline)) void fl_bf16_block_portable(
    float *C, ptrdiff_t ldc, const uint16_t *A, ptrdiff_t lda, const uint16_t *P,
    ptrdiff_t panel_stride, ptrdiff_t pairs, int accumulate, int mr, int nv)
{
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) {
            float acc[16];
            const uint16_t *p = P + v * panel_stride;
            for (int c = 0; c < 16; c++)
                acc[c] = accumulate ? C[i * ldc + v * 16 + c] : 0.0f;
            for (ptrdiff_t q = 0; q < pairs; q++) {
                const float a0 = fl_bf16_to_f(A[i * lda + 2 * q]);
                const float a1 = fl_bf16_to_f(A[i * lda + 2 * q + 1]);
                for (int c = 0; c < 16; c++) {
                    acc[c] += a1 * fl_bf16_to_f(p[q * 32 + 2 * c + 1]);
                    acc[c] += a0 * fl_bf16_to_f(p[q * 32 + 2 * c]);
                }
            }
            memcpy(C + i * ldc + v * 16, acc, sizeof acc);
        }
}

#define FL_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

FL_BF16_TARGET static inline __attribute__((always_inline)) void fl_bf16_block_avx512(
    float *C, ptrdiff_t ldc, const uint16_t *A, ptrdiff_t lda, const uint16_t *P,
    ptrdiff_t panel_stride, ptrdiff_t pairs, int accumulate, const int MR, const int NV)
{
    __m512 acc[8][4];
    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
            acc[i][v] = accumulate ? _mm512_loadu_ps(C + i * ldc + v * 16) : _mm512_setzero_ps();
    for (ptrdiff_t q = 0; q < pairs; q++) {
        __m512i w[4];
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
            w[v] = _mm512_loadu_si512((const void *)(P + v * panel_stride + q * 32));
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {
            int32_t pair;
            memcpy(&pair, A + i * lda + 2 * q, sizeof pair);
            const __m512i a = _mm512_set1_epi32(pair);
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
                acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)a, (__m512bh)w[v]);
        }
    }
    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(C + i * ldc + v * 16, acc[i][v]);
}

FL_BF16_TARGET static void fl_bf16_block_avx512_any(
    float *C, ptrdiff_t ldc, const uint16_t *A, ptrdiff_t lda, const uint16_t *P,
    ptrdiff_t panel_stride, ptrdiff_t pairs, int accumulate, int mr, int nv)
{
#define FL_CASE(MR, NV) fl_bf16_block_avx512(C, ldc, A, lda, P, panel_stride, pairs, \
                                             accumulate, MR, NV); break
    FL_BLOCK_DISPATCH(mr, nv);
#undef FL_CASE
}

/* C (M, n_panels * 16), row stride ldc, (+)= A (M, Kp) bf16 @ panels (Kp deep, even). */
static void fl_bf16_product(int fast, float *C, ptrdiff_t ldc, const uint16_t *A,
                            ptrdiff_t lda, const uint16_t *panels, ptrdiff_t M,
                            ptrdiff_t n_panels, ptrdiff_t Kp, int accumulate)
{
    const ptrdiff_t stride = Kp * 16, pairs = Kp / 2;
    if (!fast) {
        for (ptrdiff_t p = 0; p < n_panels; p++)
            for (ptrdiff_t m = 0; m < M; m++)
                fl_bf16_block_portable(C + m * ldc + p * 16, ldc, A + m * lda, lda,
                                       panels + p * stride, stride, pairs, accumulate, 1, 1);
        return;
    }
    if (M == 1) {   /* a matrix-vector product: four independent accumulators */
        ptrdiff_t p = 0;
        for (; p + 4 <= n_panels; p += 4)
            fl_bf16_block_avx512_any(C + p * 16, ldc, A, lda, panels + p * stride, stride,
                                     pairs, accumulate, 1, 4);
        for (; p < n_panels; p++)
            fl_bf16_block_avx512_any(C + p * 16, ldc, A, lda, panels + p * stride, stride,
                                     pairs, accumulate, 1, 1);
        return;
    }
    for (ptrdiff_t k0 = 0; k0 < Kp; k0 += FL_QKC) {
        const ptrdiff_t kc = Kp - k0 < FL_QKC ? Kp - k0 : FL_QKC;
        const int acc = accumulate || k0 > 0;
        for (ptrdiff_t p = 0; p < n_panels; p += 2) {
            const int nv = n_panels - p >= 2 ? 2 : 1;
            const uint16_t *P = panels + p * stride + k0 * 16;
            ptrdiff_t m = 0;
            for (; m + 8 <= M; m += 8)
                fl_bf16_block_avx512_any(C + m * ldc + p * 16, ldc, A + m * lda + k0, lda, P,
                                         stride, kc / 2, acc, 8, nv);
            if (m < M)
                fl_bf16_block_avx512_any(C + m * ldc + p * 16, ldc, A + m * lda + k0, lda, P,
                                         stride, kc / 2, acc, (int)(M - m), nv);
        }
    }
}

/* ------------------------------------------------------------------ int8 products */
/* The epilogue of one row and panel: C (+)= sa * sw * (acc - za * rowsum). */
static inline __attribute__((always_inline)) void fl_i8_store_portable(
    float *C, const int32_t *acc, float sa, int32_t za, const float *sw, const int32_t *rs,
    int accumulate)
{
    for (int c = 0; c < 16; c++) {
        const float v = sa * sw[c] * (float)(acc[c] - za * rs[c]);
        C[c] = accumulate ? C[c] + v : v;
    }
}

static void fl_i8_block_portable(float *C, const uint8_t *A, const int8_t *P, ptrdiff_t quads,
                                 float sa, int32_t za, const float *sw, const int32_t *rs,
                                 int accumulate)
{
    int32_t acc[16] = {0};
    for (ptrdiff_t q = 0; q < quads; q++)
        for (int c = 0; c < 16; c++)
            for (int r = 0; r < 4; r++)
                acc[c] += (int32_t)A[4 * q + r] * (int32_t)P[q * 64 + 4 * c + r];
    fl_i8_store_portable(C, acc, sa, za, sw, rs, accumulate);
}

#define FL_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

FL_VNNI_TARGET static inline __attribute__((always_inline)) void fl_i8_block_avx512(
    float *C, ptrdiff_t ldc, const uint8_t *A, ptrdiff_t lda, const int8_t *P,
    ptrdiff_t panel_stride, ptrdiff_t quads, const float *sa, const int32_t *za,
    const float *sw, const int32_t *rs, int accumulate, const int MR, const int NV)
{
    __m512i acc[8][4];
    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_si512();
    for (ptrdiff_t q = 0; q < quads; q++) {
        __m512i w[4];
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
            w[v] = _mm512_loadu_si512((const void *)(P + v * panel_stride + q * 64));
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {
            int32_t quad;
            memcpy(&quad, A + i * lda + 4 * q, sizeof quad);
            const __m512i a = _mm512_set1_epi32(quad);
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
                acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], a, w[v]);
        }
    }
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {
        const __m512 scale = _mm512_loadu_ps(sw + v * 16);
        const __m512i sums = _mm512_loadu_si512((const void *)(rs + v * 16));
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {
            const __m512i exact = _mm512_sub_epi32(
                acc[i][v], _mm512_mullo_epi32(_mm512_set1_epi32(za[i]), sums));
            const __m512 factor = _mm512_mul_ps(_mm512_set1_ps(sa[i]), scale);
            /* one explicit fused multiply-add: every block shape rounds alike */
            const __m512 value = accumulate
                ? _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(exact),
                                  _mm512_loadu_ps(C + i * ldc + v * 16))
                : _mm512_mul_ps(factor, _mm512_cvtepi32_ps(exact));
            _mm512_storeu_ps(C + i * ldc + v * 16, value);
        }
    }
}

FL_VNNI_TARGET static void fl_i8_block_avx512_any(
    float *C, ptrdiff_t ldc, const uint8_t *A, ptrdiff_t lda, const int8_t *P,
    ptrdiff_t panel_stride, ptrdiff_t quads, const float *sa, const int32_t *za,
    const float *sw, const int32_t *rs, int accumulate, int mr, int nv)
{
#define FL_CASE(MR, NV) fl_i8_block_avx512(C, ldc, A, lda, P, panel_stride, quads, sa, za, sw, \
                                           rs, accumulate, MR, NV); break
    FL_BLOCK_DISPATCH(mr, nv);
#undef FL_CASE
}

/* C (M, n_panels * 16) (+)= the int8 product of A (M, Kq) u8 (row scales sa, zero points
 * za) and the panels (Kq deep, a multiple of 4), with per-column scales sw and row sums rs
 * stored 16 per panel. */
static void fl_i8_product(int fast, float *C, ptrdiff_t ldc, const uint8_t *A, ptrdiff_t lda,
                          const float *sa, const int32_t *za, const int8_t *panels,
                          const float *sw, const int32_t *rs, ptrdiff_t M, ptrdiff_t n_panels,
                          ptrdiff_t Kq, int accumulate)
{
    const ptrdiff_t stride = Kq * 16, quads = Kq / 4;
    if (!fast) {
        for (ptrdiff_t p = 0; p < n_panels; p++)
            for (ptrdiff_t m = 0; m < M; m++)
                fl_i8_block_portable(C + m * ldc + p * 16, A + m * lda, panels + p * stride,
                                     quads, sa[m], za[m], sw + p * 16, rs + p * 16, accumulate);
        return;
    }
    if (M == 1) {
        ptrdiff_t p = 0;
        for (; p + 4 <= n_panels; p += 4)
            fl_i8_block_avx512_any(C + p * 16, ldc, A, lda, panels + p * stride, stride, quads,
                                   sa, za, sw + p * 16, rs + p * 16, accumulate, 1, 4);
        for (; p < n_panels; p++)
            fl_i8_block_avx512_any(C + p * 16, ldc, A, lda, panels + p * stride, stride, quads,
                                   sa, za, sw + p * 16, rs + p * 16, accumulate, 1, 1);
        return;
    }
    for (ptrdiff_t p = 0; p < n_panels; p += 2) {
        const int nv = n_panels - p >= 2 ? 2 : 1;
        ptrdiff_t m = 0;
        for (; m + 8 <= M; m += 8)
            fl_i8_block_avx512_any(C + m * ldc + p * 16, ldc, A + m * lda, lda,
                                   panels + p * stride, stride, quads, sa + m, za + m,
                                   sw + p * 16, rs + p * 16, accumulate, 8, nv);
        if (m < M)
            fl_i8_block_avx512_any(C + m * ldc + p * 16, ldc, A + m * lda, lda,
                                   panels + p * stride, stride, quads, sa + m, za + m,
                                   sw + p * 16, rs + p * 16, accumulate, (int)(M - m), nv);
    }
}

/* The fast path this CPU has for each dtype: 1 AVX512-BF16 / AVX512-VNNI, 0 portable. */
static inline int fl_cpu_bf16(void)
{
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

static inline int fl_cpu_vnni(void)
{
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

#endif
