/* Fused LSTM gate passes over one batch row and a slice of n hidden units.
 *
 * Gate blocks are laid out i | f | g | o. Loops run over chunks of FL_CHUNK units held in
 * local arrays so gcc vectorises them; the float build uses polynomial exp/tanh (a few ulp,
 * NaN propagating) compiled for AVX-512, AVX2+FMA and baseline x86-64 at once
 * (target_clones, resolved when the module loads). The double build uses libm, for
 * gradient checks.
 */
#ifndef FASTLSTM_POINTWISE_H
#define FASTLSTM_POINTWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define FL_CHUNK 16

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX512F__)
#define FL_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define FL_CLONES
#endif

static inline __attribute__((always_inline)) float fl_expf(float x)
{
    /* Cephes-style: exp(x) = 2^n * exp(r), |r| <= ln2/2; clamped so 2^n stays normal. */
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f + 12582912.0f;  /* round to nearest via 1.5*2^23 */
    float n_float = t - 12582912.0f;
    int32_t n;
    memcpy(&n, &t, sizeof n);
    n -= 0x4B400000;
    float r = x - n_float * 0.693359375f;
    r = r + n_float * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline __attribute__((always_inline)) float fl_sigmoidf(float x)
{
    return 1.0f / (1.0f + fl_expf(-x));
}

static inline __attribute__((always_inline)) float fl_tanhf(float x)
{
    float ax = fabsf(x);
    float z = x * x;
    float p = -5.70498872745e-3f;                      /* small |x|: odd polynomial */
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    float big = 1.0f - 2.0f / (fl_expf(2.0f * ax) + 1.0f);   /* tanh|x| = 1 - 2/(e^2|x| + 1) */
    big = copysignf(big, x);
    return ax < 0.625f ? small : big;
}

static inline double fl_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

typedef float fl_vec_f __attribute__((vector_size(64)));
typedef double fl_vec_d __attribute__((vector_size(64)));

#define REAL float
#define FL_VEC fl_vec_f
#define FL_NAME(name) name##_f
#define FL_SIGMOID fl_sigmoidf
#define FL_TANH fl_tanhf
#include "cell_impl.h"
#undef REAL
#undef FL_VEC
#undef FL_NAME
#undef FL_SIGMOID
#undef FL_TANH

#define REAL double
#define FL_VEC fl_vec_d
#define FL_NAME(name) name##_d
#define FL_SIGMOID fl_sigmoid
#define FL_TANH tanh
#include "cell_impl.h"
#undef REAL
#undef FL_VEC
#undef FL_NAME
#undef FL_SIGMOID
#undef FL_TANH

/* Fold two vectors of 16 partial sums: each output lane pair adds lanes 8 apart, a's
 * in the low half, b's in the high half. Four levels turn 16 rows' accumulators into
 * one vector of their 16 sums, in row order. */
#define FL_FOLD(a, b, ...) (__builtin_shufflevector(a, b, __VA_ARGS__))
static inline __attribute__((always_inline)) fl_vec_f fl_fold1(fl_vec_f a, fl_vec_f b)
{
    return FL_FOLD(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
         + FL_FOLD(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
static inline __attribute__((always_inline)) fl_vec_f fl_fold2(fl_vec_f a, fl_vec_f b)
{
    return FL_FOLD(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
         + FL_FOLD(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
static inline __attribute__((always_inline)) fl_vec_f fl_fold3(fl_vec_f a, fl_vec_f b)
{
    return FL_FOLD(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
         + FL_FOLD(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
}
static inline __attribute__((always_inline)) fl_vec_f fl_fold4(fl_vec_f a, fl_vec_f b)
{
    return FL_FOLD(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + FL_FOLD(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* The 16 sums of 16 vector accumulators, in order, as one vector. */
static inline __attribute__((always_inline)) fl_vec_f fl_sum16(const fl_vec_f acc[16])
{
    fl_vec_f level1[8], level2[4], level3[2];
    for (int i = 0; i < 8; i++)
        level1[i] = fl_fold1(acc[2 * i], acc[2 * i + 1]);
    for (int i = 0; i < 4; i++)
        level2[i] = fl_fold2(level1[2 * i], level1[2 * i + 1]);
    for (int i = 0; i < 2; i++)
        level3[i] = fl_fold3(level2[2 * i], level2[2 * i + 1]);
    return fl_fold4(level3[0], level3[1]);
}

/* y (rows,) = W @ x, float: 16 rows at a time, one vector accumulator per row, the 16
 * accumulators folded into one vector of sums (no scalar horizontal adds). */
FL_CLONES static void matvec_f(float *y, const float *W, const float *x, int rows, int cols,
                               int ldw)
{
    const int body = cols - cols % 16;
    int r = 0;
    for (; r + 16 <= rows; r += 16) {
        fl_vec_f acc[16] = {{0}};
        for (int k = 0; k < body; k += 16) {
            fl_vec_f xv, wv;
            memcpy(&xv, x + k, sizeof xv);
            for (int i = 0; i < 16; i++) {
                memcpy(&wv, W + (size_t)(r + i) * ldw + k, sizeof wv);
                acc[i] += wv * xv;
            }
        }
        fl_vec_f sums = fl_sum16(acc);
        for (int k = body; k < cols; k++)
            for (int i = 0; i < 16; i++)
                sums[i] += W[(size_t)(r + i) * ldw + k] * x[k];
        memcpy(y + r, &sums, sizeof sums);
    }
    if (r < rows)
        matvec_rows_f(y + r, W + (size_t)r * ldw, x, rows - r, cols, ldw);
}

#define matvec_d matvec_rows_d

/* C[m, n] = dot(A[m], Bt[n]) for A (M, K) and Bt (N, K) row-major: C = A @ Bt.T, the
 * recurrent product h_{t-1} @ W_hh[rows].T with both operands read along K. Tiles of 4
 * rows of A by 4 rows of Bt (16 vector accumulators, folded as in matvec_f); ragged edges
 * go through matvec_rows_f. */
FL_CLONES static void gemm_nt_f(float *C, int ldc, const float *A, int lda, const float *Bt,
                                int ldb, int M, int N, int K)
{
    const int body = K - K % 16;
    const int m_tiles = M - M % 4, n_tiles = N - N % 4;
    for (int m = 0; m < m_tiles; m += 4) {
        const float *a0 = A + (size_t)m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        for (int n = 0; n < n_tiles; n += 4) {
            const float *b0 = Bt + (size_t)n * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb;
            const float *b3 = b2 + ldb;
            fl_vec_f acc[16] = {{0}};
            for (int k = 0; k < body; k += 16) {
                fl_vec_f a[4], b[4];
                memcpy(&a[0], a0 + k, sizeof a[0]);
                memcpy(&a[1], a1 + k, sizeof a[1]);
                memcpy(&a[2], a2 + k, sizeof a[2]);
                memcpy(&a[3], a3 + k, sizeof a[3]);
                memcpy(&b[0], b0 + k, sizeof b[0]);
                memcpy(&b[1], b1 + k, sizeof b[1]);
                memcpy(&b[2], b2 + k, sizeof b[2]);
                memcpy(&b[3], b3 + k, sizeof b[3]);
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 4; j++)
                        acc[4 * i + j] += a[i] * b[j];
            }
            fl_vec_f sums = fl_sum16(acc);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    float total = sums[4 * i + j];
                    for (int k = body; k < K; k++)
                        total += A[(size_t)(m + i) * lda + k] * Bt[(size_t)(n + j) * ldb + k];
                    C[(size_t)(m + i) * ldc + n + j] = total;
                }
        }
        if (n_tiles < N)
            for (int i = 0; i < 4; i++)
                matvec_rows_f(C + (size_t)(m + i) * ldc + n_tiles, Bt + (size_t)n_tiles * ldb,
                              A + (size_t)(m + i) * lda, N - n_tiles, K, ldb);
    }
    for (int m = m_tiles; m < M; m++)
        matvec_f(C + (size_t)m * ldc, Bt, A + (size_t)m * lda, N, K, ldb);
}

/* C (M, N) (+)= A (M, K) @ B (K, N), all row-major: the backward recurrent product
 * dh = dgates_t @ W_hh[:, slice]. Blocks of 4 rows of C by 32 columns (8 vector
 * accumulators); each k broadcasts A[m, k] against one row of B. */
static inline __attribute__((always_inline)) void gemm_nn_block_f(
    float *C, int ldc, const float *A, int lda, const float *B, int ldb, int K,
    int accumulate, const int rows)
{
    fl_vec_f acc[4][2];
    for (int i = 0; i < rows; i++) {
        if (accumulate) {
            memcpy(&acc[i][0], C + (size_t)i * ldc, sizeof acc[i][0]);
            memcpy(&acc[i][1], C + (size_t)i * ldc + 16, sizeof acc[i][1]);
        } else {
            acc[i][0] = (fl_vec_f){0};
            acc[i][1] = (fl_vec_f){0};
        }
    }
    for (int k = 0; k < K; k++) {
        fl_vec_f b0, b1;
        memcpy(&b0, B + (size_t)k * ldb, sizeof b0);
        memcpy(&b1, B + (size_t)k * ldb + 16, sizeof b1);
        for (int i = 0; i < rows; i++) {
            const float a = A[(size_t)i * lda + k];
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    for (int i = 0; i < rows; i++) {
        memcpy(C + (size_t)i * ldc, &acc[i][0], sizeof acc[i][0]);
        memcpy(C + (size_t)i * ldc + 16, &acc[i][1], sizeof acc[i][1]);
    }
}

FL_CLONES static void gemm_nn_f(float *C, int ldc, const float *A, int lda, const float *B,
                                int ldb, int M, int N, int K, int accumulate)
{
    const int n_body = N - N % 32;
    for (int m = 0; m < M; m += 4) {
        const int rows = M - m < 4 ? M - m : 4;
        float *c = C + (size_t)m * ldc;
        const float *a = A + (size_t)m * lda;
        for (int n = 0; n < n_body; n += 32) {
            if (rows == 4)
                gemm_nn_block_f(c + n, ldc, a, lda, B + n, ldb, K, accumulate, 4);
            else
                gemm_nn_block_f(c + n, ldc, a, lda, B + n, ldb, K, accumulate, rows);
        }
        for (int i = 0; i < rows; i++) {
            for (int n = n_body; n < N; n++) {
                float total = accumulate ? c[(size_t)i * ldc + n] : 0.0f;
                for (int k = 0; k < K; k++)
                    total += a[(size_t)i * lda + k] * B[(size_t)k * ldb + n];
                c[(size_t)i * ldc + n] = total;
            }
        }
    }
}

static void gemm_nt_d(double *C, int ldc, const double *A, int lda, const double *Bt, int ldb,
                      int M, int N, int K)
{
    for (int m = 0; m < M; m++)
        matvec_rows_d(C + (size_t)m * ldc, Bt, A + (size_t)m * lda, N, K, ldb);
}

#endif
