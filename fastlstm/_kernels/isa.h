/* The instruction set this CPU offers, read once: the packed products (packed.h), the cell
 * pass (cell.h) and the machine probes (probe.h) run the code compiled for it with target
 * attributes. */
#ifndef FASTLSTM_ISA_H
#define FASTLSTM_ISA_H

/* The best instruction set of this CPU: 2 AVX-512, 1 AVX2+FMA, 0 portable (read once). */
static inline int fl_cpu_isa(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int isa = -1;
    if (isa < 0) {
        __builtin_cpu_init();
        isa = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2
            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    }
    return isa;
#else
    return 0;
#endif
}

/* A lower instruction set forced for testing (set_packed_isa), or -1 for the CPU's best. */
static int fl_forced_isa = -1;

/* The instruction set the packed products and the cell pass use. */
static inline int fl_packed_isa(void)
{
    return fl_forced_isa >= 0 ? fl_forced_isa : fl_cpu_isa();
}

#endif
