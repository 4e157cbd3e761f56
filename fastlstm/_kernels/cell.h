/* Activations and the fused LSTM cell pass (forward and backward) over one batch row and
 * a slice of n hidden units; with the same exponential, the sparse softmax cross-entropy
 * of the layers around the LSTM (xent_impl.h).
 *
 * Gate blocks are laid out i | f | g | o. Loops run over chunks of FL_CHUNK units held in
 * local arrays so gcc vectorises them. The float pass uses a polynomial exp for the
 * sigmoid and a rational tanh (cell_float.h; NaN propagating), compiled for AVX-512,
 * AVX2+FMA and baseline x86-64 and chosen at run time like the packed products
 * (fl_packed_isa). The double pass uses libm, for gradient checks.
 */
#ifndef FASTLSTM_POINTWISE_H
#define FASTLSTM_POINTWISE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"    /* fl_packed_isa */
#if defined(__SSE2__)
#include <immintrin.h>  /* streaming stores of the gates (cell_float.h) and their fence */
#endif

#define FL_CHUNK 16

/* Target pragmas for the per-instruction-set float passes (GCC on x86-64). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FL_CELL_ISAS 1
#else
#define FL_CELL_ISAS 0
#endif
#define FL_CELL_GLUE(name, suffix) name##_##suffix
#define FL_CELL_NAME(name, suffix) FL_CELL_GLUE(name, suffix)

static inline double fl_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Order a thread's streaming stores before what follows (another thread's backward reads
 * them): once per thread at the end of a forward that streamed its gates. */
static inline void fl_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

typedef float fl_vec_f __attribute__((vector_size(64)));
typedef double fl_vec_d __attribute__((vector_size(64)));

#define REAL float
#define FL_SUFFIX f_portable
#include "cell_float.h"
#undef FL_SUFFIX
#if FL_CELL_ISAS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FL_SUFFIX f_avx2
#include "cell_float.h"
#undef FL_SUFFIX
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#define FL_SUFFIX f_avx512
#include "cell_float.h"
#undef FL_SUFFIX
#pragma GCC pop_options
#endif
#undef REAL

/* The float passes with the instruction set of fl_packed_isa. */
static inline void cell_forward_f(float *act, float *c, float *h, float *out,
                                  unsigned char *clipped, const float *zx, const float *zh,
                                  const float *c_prev, const float *peep, float clip, int n,
                                  int H, int zx_stride, int zh_stride, int stream)
{
#if FL_CELL_ISAS
    typedef void (*pass_t)(float *, float *, float *, float *, unsigned char *, const float *,
                           const float *, const float *, const float *, float, int, int, int,
                           int, int);
    static const pass_t by_isa[3] = {cell_forward_f_portable, cell_forward_f_avx2,
                                     cell_forward_f_avx512};
    by_isa[fl_packed_isa()](act, c, h, out, clipped, zx, zh, c_prev, peep, clip, n, H,
                            zx_stride, zh_stride, stream);
#else
    cell_forward_f_portable(act, c, h, out, clipped, zx, zh, c_prev, peep, clip, n, H,
                            zx_stride, zh_stride, stream);
#endif
}

static inline void cell_backward_f(float *dz, float *dc, float *dpeep, const float *dh,
                                   const float *dh_out, const float *act,
                                   const unsigned char *clipped, const float *c,
                                   const float *c_prev, const float *peep, int n, int H)
{
#if FL_CELL_ISAS
    typedef void (*pass_t)(float *, float *, float *, const float *, const float *,
                           const float *, const unsigned char *, const float *, const float *,
                           const float *, int, int);
    static const pass_t by_isa[3] = {cell_backward_f_portable, cell_backward_f_avx2,
                                     cell_backward_f_avx512};
    by_isa[fl_packed_isa()](dz, dc, dpeep, dh, dh_out, act, clipped, c, c_prev, peep, n, H);
#else
    cell_backward_f_portable(dz, dc, dpeep, dh, dh_out, act, clipped, c, c_prev, peep, n, H);
#endif
}

/* The sparse softmax cross-entropy (xent_impl.h) with instruction set `isa` (as in
 * fl_packed_isa; the caller checks that the CPU has it). */
static inline void sparse_softmax_xent_f(int isa, float *loss, float *grad, const float *z,
                                         const int64_t *target, ptrdiff_t rows, ptrdiff_t C,
                                         float divisor)
{
#if FL_CELL_ISAS
    typedef void (*pass_t)(float *, float *, const float *, const int64_t *, ptrdiff_t,
                           ptrdiff_t, float);
    static const pass_t by_isa[3] = {sparse_softmax_xent_f_portable,
                                     sparse_softmax_xent_f_avx2, sparse_softmax_xent_f_avx512};
    by_isa[isa](loss, grad, z, target, rows, C, divisor);
#else
    (void)isa;
    sparse_softmax_xent_f_portable(loss, grad, z, target, rows, C, divisor);
#endif
}

#define REAL double
#define FL_NAME(name) name##_d
#define FL_SIGMOID fl_sigmoid
#define FL_TANH tanh
#define FL_EXP exp
#define FL_LOG log
#include "cell_impl.h"
#include "xent_impl.h"
#undef REAL
#undef FL_NAME
#undef FL_SIGMOID
#undef FL_TANH
#undef FL_EXP
#undef FL_LOG

#endif
