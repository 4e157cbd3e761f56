/* The micro-kernels and driver of packed_impl.h for one REAL (FL_TYPE f or d), once per
 * instruction set: name_<type>_avx512, name_<type>_avx2, name_<type>_portable. */
#define FL_GLUE(name, type, isa) name##_##type##_##isa
#define FL_EXPAND(name, type, isa) FL_GLUE(name, type, isa)

#define FL_NAME(name) FL_EXPAND(name, FL_TYPE, avx512)
#define FL_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define FL_KVEC FL_V64
#define FL_REGISTERS 32
#define FL_ACC 24           /* 6 rows x 4 panels; up to 8 rows in one block, x 3 panels */
#define FL_MAX_PANELS 4
#define FL_MR 6
#define FL_AT_MR 8
#include "packed_impl.h"
#undef FL_NAME
#undef FL_TARGET
#undef FL_KVEC
#undef FL_REGISTERS
#undef FL_ACC
#undef FL_MAX_PANELS
#undef FL_MR
#undef FL_AT_MR

#define FL_NAME(name) FL_EXPAND(name, FL_TYPE, avx2)
#define FL_TARGET __attribute__((target("avx2,fma")))
#define FL_KVEC FL_V32
#define FL_REGISTERS 16
#define FL_ACC 12           /* 6 rows x 1 panel of 2 ymm halves, up to 3 rows x 2 panels */
#define FL_MAX_PANELS 2     /* one row: 1 x 2 read the panels faster than 1 x 4 */
#define FL_MR 6
#define FL_AT_MR 4          /* 4 rows x 1 panel (A transposed comes in blocks of 8 rows) */
#include "packed_impl.h"
#undef FL_NAME
#undef FL_TARGET
#undef FL_KVEC
#undef FL_REGISTERS
#undef FL_ACC
#undef FL_MAX_PANELS
#undef FL_MR
#undef FL_AT_MR

#define FL_NAME(name) FL_EXPAND(name, FL_TYPE, portable)
#define FL_TARGET
#define FL_KVEC FL_V16
#define FL_REGISTERS 16
#define FL_ACC 8            /* 1 row x 2 panels of 4 xmm quarters */
#define FL_MAX_PANELS 2
#define FL_MR 1
#define FL_AT_MR 1
#include "packed_impl.h"
#undef FL_NAME
#undef FL_TARGET
#undef FL_KVEC
#undef FL_REGISTERS
#undef FL_ACC
#undef FL_MAX_PANELS
#undef FL_MR
#undef FL_AT_MR

#undef FL_GLUE
#undef FL_EXPAND
