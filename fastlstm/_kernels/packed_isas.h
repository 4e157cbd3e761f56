/* The micro-kernels and driver of packed_impl.h for one REAL (FL_TYPE f or d), once per
 * instruction set: name_<type>_avx512, name_<type>_avx2, name_<type>_portable. */
#define FL_GLUE(name, type, isa) name##_##type##_##isa
#define FL_EXPAND(name, type, isa) FL_GLUE(name, type, isa)

#define FL_NAME(name) FL_EXPAND(name, FL_TYPE, avx512)
#define FL_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define FL_MR 8             /* 8 rows x 2 panels: 16 of 32 zmm registers */
#define FL_KVEC FL_V64
#define FL_SMALL_M 4        /* up to 4 rows x 4 panels stream the whole depth */
#include "packed_impl.h"
#undef FL_NAME
#undef FL_TARGET
#undef FL_MR
#undef FL_KVEC
#undef FL_SMALL_M

#define FL_NAME(name) FL_EXPAND(name, FL_TYPE, avx2)
#define FL_TARGET __attribute__((target("avx2,fma")))
#define FL_MR 2             /* 2 rows x 2 panels of 2 ymm halves: 8 of 16 ymm registers */
#define FL_KVEC FL_V32
#define FL_SMALL_M 1
#include "packed_impl.h"
#undef FL_NAME
#undef FL_TARGET
#undef FL_MR
#undef FL_KVEC
#undef FL_SMALL_M

#define FL_NAME(name) FL_EXPAND(name, FL_TYPE, portable)
#define FL_TARGET
#define FL_MR 1             /* 1 row x 2 panels of 4 xmm quarters: 8 of 16 xmm registers */
#define FL_KVEC FL_V16
#define FL_SMALL_M 1
#include "packed_impl.h"
#undef FL_NAME
#undef FL_TARGET
#undef FL_MR
#undef FL_KVEC
#undef FL_SMALL_M

#undef FL_GLUE
#undef FL_EXPAND
