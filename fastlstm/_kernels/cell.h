/* Activations and the fused LSTM cell pass (forward and backward) over one batch row and
 * a slice of n hidden units.
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
    uint32_t bits = (uint32_t)(n + 127) << 23;   /* n in [-126, 127]: a normal exponent */
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

#endif
