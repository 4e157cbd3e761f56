/* The float activations and cell pass of cell.h for one instruction set, included once per
 * set under its target pragma: FL_SUFFIX names it (f_avx512, f_avx2, f_portable). The
 * activations are defined here, not shared, so that they compile for the same target as
 * the loops they are inlined into (GCC leaves those loops scalar otherwise). */
#define FL_NAME(name) FL_CELL_NAME(name, FL_SUFFIX)

static inline __attribute__((always_inline)) float FL_NAME(expf)(float x)
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

static inline __attribute__((always_inline)) float FL_NAME(sigmoidf)(float x)
{
    return 1.0f / (1.0f + FL_NAME(expf)(-x));
}

/* tanh(x) = x P(x^2) / Q(x^2), both of degree 4 in x^2, fitted on |x| <= 9 for the least
 * maximum relative error: 2e-8 in exact arithmetic, at most 7 ulp (4.1e-7) in float over
 * every float. Beyond 9, where tanh rounds to +-1, the result is +-1. A NaN compares false
 * and passes. */
static inline __attribute__((always_inline)) float FL_NAME(tanhf)(float x)
{
    const float ax = fabsf(x);
    float s = ax * ax;
    float p = 1.3354159280835882e-08f;
    p = p * s + 2.0608765660310632e-05f;
    p = p * s + 3.4955715894476498e-03f;
    p = p * s + 1.3381012796165773e-01f;
    p = p * s + 9.9999997959101627e-01f;
    float q = 7.7763649965993504e-07f;
    q = q * s + 3.2856057362825236e-04f;
    q = q * s + 2.5876922560203134e-02f;
    q = q * s + 4.6714328440968983e-01f;
    q = q * s + 1.0f;
    const float t = ax * p / q;
    return copysignf(ax > 9.0f ? 1.0f : t, x);
}

/* dst[0:16] = src[0:16] with streaming stores, dst 64-byte aligned (the gates of a training
 * forward too large to stay cached until the backward: see cell_forward's stream). */
#if defined(__SSE2__)
static inline __attribute__((always_inline)) void FL_NAME(stream16)(float *dst, const float *src)
{
#if defined(__AVX512F__)
    _mm512_stream_ps(dst, _mm512_loadu_ps(src));
#elif defined(__AVX__)
    _mm256_stream_ps(dst, _mm256_loadu_ps(src));
    _mm256_stream_ps(dst + 8, _mm256_loadu_ps(src + 8));
#else
    for (int k = 0; k < 16; k += 4)
        _mm_stream_ps(dst + k, _mm_loadu_ps(src + k));
#endif
}
#define FL_STREAM16 FL_NAME(stream16)
#endif

#define FL_SIGMOID FL_NAME(sigmoidf)
#define FL_TANH FL_NAME(tanhf)
#define FL_EXP FL_NAME(expf)
#define FL_LOG logf
#include "cell_impl.h"
#include "xent_impl.h"
#undef FL_SIGMOID
#undef FL_TANH
#undef FL_EXP
#undef FL_LOG
#undef FL_STREAM16
#undef FL_NAME
