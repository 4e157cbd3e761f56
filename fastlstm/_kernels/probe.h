/* Probes of this machine's limits, for the benchmark report (fastlstm.bench).
 *
 * - FMA peak: each of N threads runs FL_PROBE_CHAINS independent chains
 *   acc = acc * scale + 1 on vector registers (enough multiply-adds in flight to hide their
 *   latency), reading the clock every FL_PROBE_BLOCK rounds; float32 GFLOP/s of them all.
 * - L2 read bandwidth: one thread sums a FL_PROBE_L2_BYTES buffer (past L1, inside L2)
 *   into FL_PROBE_SUMS vector accumulators, pass after pass; GB/s read.
 * - Core-to-core round trip: two threads pass a counter back and forth through one cache
 *   line; nanoseconds per round trip. The kernels' threads exchange hidden states and meet
 *   at a barrier every time step, so this is what a step's synchronisation costs. On a
 *   virtual machine it changes with where the host places the virtual CPUs: 50-100 ns
 *   between cores that share a cache, 300-1000 ns between distant ones.
 *
 * Both are compiled for AVX-512, AVX2+FMA and baseline 16-byte vectors (target attributes,
 * as the packed products) and run with the CPU's best (fl_cpu_isa), so one portable build
 * measures what the kernels can use there. Baseline x86-64 has no FMA: its chains multiply
 * then add, the same 2 FLOPs per lane, its own ceiling. Every sum ends in fl_probe_sink, so
 * the compiler keeps the loops.
 */
#ifndef FASTLSTM_PROBE_H
#define FASTLSTM_PROBE_H

#include <stddef.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa.h"    /* fl_cpu_isa */

#define FL_PROBE_CHAINS 12                  /* independent accumulators per thread */
#define FL_PROBE_BLOCK 1024                 /* rounds of the chains between clock reads */
#define FL_PROBE_SUMS 8                     /* accumulators of the L2 sum */
#define FL_PROBE_L2_BYTES (256 * 1024)      /* the buffer the L2 probe reads */
#define FL_PROBE_PING_CHECK 1024            /* spins between clock reads while waiting */
#define FL_PROBE_PING_CHUNK 64              /* round trips between clock reads */

typedef float fl_probe_v64 __attribute__((vector_size(64)));
typedef float fl_probe_v32 __attribute__((vector_size(32)));
typedef float fl_probe_v16 __attribute__((vector_size(16)));

static volatile float fl_probe_sink;       /* where every probe's sum goes */

static inline double fl_probe_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Per instruction set ISA, with vector type V:
 * fl_fma_blocks_ISA runs the chains on the calling thread for `seconds`, adds their sum to
 * *sum and returns the blocks of FL_PROBE_BLOCK rounds it did;
 * fl_l2_passes_ISA sums the n floats of buf (a multiple of FL_PROBE_SUMS vectors) over and
 * over for `seconds`, adds the sum to *sum and returns the passes it made. */
#define FL_DEFINE_PROBES(ISA, TARGET, V)                                                    \
TARGET static long long fl_fma_blocks_##ISA(double seconds, float scale, float *sum)      \
{                                                                                          \
    V acc[FL_PROBE_CHAINS];                                                                \
    long long blocks = 0;                                                                  \
    const double start = fl_probe_seconds();                                               \
    for (int c = 0; c < FL_PROBE_CHAINS; c++)                                              \
        acc[c] = (V){0} + (float)c;                                                        \
    do {                                                                                   \
        for (int i = 0; i < FL_PROBE_BLOCK; i++) {                                         \
            _Pragma("GCC unroll 12")                                                       \
            for (int c = 0; c < FL_PROBE_CHAINS; c++)                                      \
                acc[c] = acc[c] * scale + 1.0f;                                            \
        }                                                                                  \
        blocks++;                                                                          \
    } while (fl_probe_seconds() - start < seconds);                                        \
    for (int c = 1; c < FL_PROBE_CHAINS; c++)                                              \
        acc[0] += acc[c];                                                                  \
    for (size_t l = 0; l < sizeof(V) / sizeof(float); l++)                                 \
        *sum += acc[0][l];                                                                 \
    return blocks;                                                                         \
}                                                                                          \
                                                                                           \
TARGET static long long fl_l2_passes_##ISA(const float *buf, size_t n, double seconds,    \
                                           float *sum)                                     \
{                                                                                          \
    const size_t lanes = sizeof(V) / sizeof(float);                                        \
    V acc[FL_PROBE_SUMS];                                                                  \
    long long passes = 0;                                                                  \
    const double start = fl_probe_seconds();                                               \
    for (int s = 0; s < FL_PROBE_SUMS; s++)                                                \
        acc[s] = (V){0};                                                                   \
    do {                                                                                   \
        for (size_t i = 0; i < n; i += FL_PROBE_SUMS * lanes) {                            \
            _Pragma("GCC unroll 8")                                                        \
            for (int s = 0; s < FL_PROBE_SUMS; s++) {                                      \
                V v;                                                                       \
                __builtin_memcpy(&v, buf + i + s * lanes, sizeof v);                       \
                acc[s] += v;                                                               \
            }                                                                              \
        }                                                                                  \
        passes++;                                                                          \
    } while (fl_probe_seconds() - start < seconds);                                        \
    for (int s = 1; s < FL_PROBE_SUMS; s++)                                                \
        acc[0] += acc[s];                                                                  \
    for (size_t l = 0; l < lanes; l++)                                                     \
        *sum += acc[0][l];                                                                 \
    return passes;                                                                         \
}

FL_DEFINE_PROBES(avx512, __attribute__((target("avx512f"))), fl_probe_v64)
FL_DEFINE_PROBES(avx2, __attribute__((target("avx2,fma"))), fl_probe_v32)
FL_DEFINE_PROBES(portable, , fl_probe_v16)
#undef FL_DEFINE_PROBES

typedef long long (*fl_fma_blocks_t)(double, float, float *);
typedef long long (*fl_l2_passes_t)(const float *, size_t, double, float *);
static const int fl_probe_lanes[3] = {4, 8, 16};   /* floats per vector, by fl_cpu_isa */

/* Float32 GFLOP/s of `threads` OpenMP threads (one in a build without OpenMP) each running
 * the FMA chains for `seconds`. */
static double fl_fma_peak_gflops(int threads, double seconds)
{
    static const fl_fma_blocks_t by_isa[3] = {fl_fma_blocks_portable, fl_fma_blocks_avx2,
                                              fl_fma_blocks_avx512};
    const int isa = fl_cpu_isa();
    long long blocks = 0;
    float sum = 0.0f;
    const double start = fl_probe_seconds();
#ifdef _OPENMP
    #pragma omp parallel num_threads(threads) reduction(+ : blocks, sum)
#else
    (void)threads;
#endif
    blocks += by_isa[isa](seconds, 0.5f, &sum);
    const double elapsed = fl_probe_seconds() - start;
    fl_probe_sink = sum;
    return 2.0 * FL_PROBE_CHAINS * FL_PROBE_BLOCK * fl_probe_lanes[isa] * (double)blocks
           / elapsed * 1e-9;
}

/* GB/s the calling thread reads from a FL_PROBE_L2_BYTES buffer, summing it for `seconds`
 * (it is written first, so it starts in the caches); -1 if it cannot be allocated. */
static double fl_l2_read_gbps(double seconds)
{
    static const fl_l2_passes_t by_isa[3] = {fl_l2_passes_portable, fl_l2_passes_avx2,
                                             fl_l2_passes_avx512};
    const size_t n = FL_PROBE_L2_BYTES / sizeof(float);
    float *buf = aligned_alloc(64, FL_PROBE_L2_BYTES);
    float sum = 0.0f;
    if (buf == NULL)
        return -1.0;
    for (size_t i = 0; i < n; i++)
        buf[i] = 1.0f / (float)(1 + i % 64);
    const double start = fl_probe_seconds();
    const long long passes = by_isa[fl_cpu_isa()](buf, n, seconds, &sum);
    const double elapsed = fl_probe_seconds() - start;
    free(buf);
    fl_probe_sink = sum;
    return (double)passes * FL_PROBE_L2_BYTES / elapsed * 1e-9;
}

/* Nanoseconds per round trip of one cache line between two OpenMP threads, over about
 * `seconds`: thread 0 writes an odd count and waits for the next even one, which thread 1
 * writes when it sees the odd one (both spin without pausing, which would add its own
 * latency). Thread 0 reads the clock every FL_PROBE_PING_CHUNK trips and keeps the fastest
 * chunk: a chunk in which the host or the scheduler took either thread's CPU away is
 * slower, so the result is the hardware's round trip whenever one chunk ran undisturbed
 * (otherwise the mean over all trips). -1 without a second thread; 0 when no trip
 * completed (the scheduler ran both threads on one core throughout, as it may for a few ms
 * after creating the second). Thread 1 also watches a stop flag and thread 0 the clock, so
 * neither waits forever when the other loses its core. */
static double fl_core_round_trip_ns(double seconds)
{
    double result = -1.0;
#ifdef _OPENMP
    struct { _Alignas(64) long long count; _Alignas(64) int stop; } shared = {0, 0};
    long long trips = 0;
    double elapsed = 0.0, best_chunk = -1.0;
    #pragma omp parallel num_threads(2)
    if (omp_get_num_threads() == 2 && omp_get_thread_num() == 0) {
        const double start = fl_probe_seconds();
        double chunk_start = start;
        long long rounds = 0, spins = 0;
        int late = 0;
        while (!late) {
            __atomic_store_n(&shared.count, 2 * rounds + 1, __ATOMIC_RELEASE);
            while (__atomic_load_n(&shared.count, __ATOMIC_ACQUIRE) != 2 * rounds + 2) {
                if (++spins % FL_PROBE_PING_CHECK == 0 && fl_probe_seconds() - start > seconds) {
                    late = 1;
                    break;
                }
            }
            if (late)
                break;
            rounds++;
            if (rounds % FL_PROBE_PING_CHUNK == 0) {
                const double now = fl_probe_seconds();
                if (best_chunk < 0.0 || now - chunk_start < best_chunk)
                    best_chunk = now - chunk_start;
                chunk_start = now;
                late = now - start > seconds;
            }
        }
        elapsed = fl_probe_seconds() - start;
        trips = rounds;
        result = 0.0;
        __atomic_store_n(&shared.stop, 1, __ATOMIC_RELEASE);
    } else if (omp_get_num_threads() == 2) {
        long long expect = 1;
        while (!__atomic_load_n(&shared.stop, __ATOMIC_ACQUIRE)) {
            if (__atomic_load_n(&shared.count, __ATOMIC_ACQUIRE) == expect) {
                __atomic_store_n(&shared.count, expect + 1, __ATOMIC_RELEASE);
                expect += 2;
            }
        }
    }
    if (best_chunk > 0.0)
        result = best_chunk / FL_PROBE_PING_CHUNK * 1e9;
    else if (trips > 0)
        result = elapsed / (double)trips * 1e9;
#else
    (void)seconds;
#endif
    return result;
}

#endif
