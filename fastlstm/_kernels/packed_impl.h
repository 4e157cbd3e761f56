/* Template body of packed.h, included once per (REAL, instruction set):
 * FL_NAME(x) names, FL_TARGET the target attribute, FL_KVEC the machine vector (64, 32 or 16
 * bytes: a panel is 64 / sizeof(FL_KVEC) of them), FL_REGISTERS the vector registers,
 * FL_ACC the accumulator vectors a register block may keep, FL_MR the rows of a block when
 * the rows take several, and FL_AT_MR its rows with A transposed (a divisor of 8). A block of
 * mr rows takes FL_PANELS(mr) panels: the most of 4, 3 (up to FL_MAX_PANELS), 2 or 1 whose
 * accumulators fit FL_ACC. Up to FL_ROWS_MAX rows go as one block, which reads each panel
 * once. */
#define FL_SUB ((int)(64 / sizeof(FL_KVEC)))
#define FL_PANELS(mr)                                                                        \
    (FL_MAX_PANELS >= 4 && (mr) * 4 * FL_SUB <= FL_ACC   ? 4                                   \
     : FL_MAX_PANELS >= 3 && (mr) * 3 * FL_SUB <= FL_ACC ? 3                                   \
     : (mr) * 2 * FL_SUB <= FL_ACC                       ? 2                                   \
                                                         : 1)
#define FL_ROWS_MAX (FL_MR > FL_AT_MR ? FL_MR : FL_AT_MR)   /* the row counts compiled */
/* The switch cases over a block's rows (in a function with `nv` in scope): CALL(MR, NV) for
 * nv panels, 4, 3 and 2 only where FL_PANELS allows them (3 also for fewer rows than a
 * 3-panel block's: the last rows of A transposed). */
#define FL_ROWS_CASE(MR, CALL)                                                               \
    case MR:                                                                                 \
        if (MR > FL_ROWS_MAX)                                                                \
            break;                                                                           \
        if (FL_PANELS(MR) == 4 && nv == 4)                                                   \
            CALL(MR, 4);                                                                     \
        else if (FL_PANELS(FL_ROWS_MAX) == 3 && FL_PANELS(MR) >= 3 && nv == 3)               \
            CALL(MR, 3);                                                                     \
        else if (FL_PANELS(MR) >= 2 && nv == 2)                                              \
            CALL(MR, 2);                                                                     \
        else                                                                                 \
            CALL(MR, 1);                                                                     \
        break;
#define FL_ROW_CASES(CALL)                                                                   \
    FL_ROWS_CASE(1, CALL) FL_ROWS_CASE(2, CALL) FL_ROWS_CASE(3, CALL) FL_ROWS_CASE(4, CALL)  \
    FL_ROWS_CASE(5, CALL) FL_ROWS_CASE(6, CALL) FL_ROWS_CASE(7, CALL) FL_ROWS_CASE(8, CALL)

/* C[MR rows, NV panels] (+)= A[MR rows, :K] @ P[NV panels, :K]: the register block. Row i
 * of A at depth k is A[i * lda + k], or A[k * lda + i] with TA (A stored transposed). With
 * NSEG runs, the panels are NSEG * K deep and run r of A starts r * seg_stride after A
 * (depth r * K + k of the panels meets A[i * lda + r * seg_stride + k]). */
FL_TARGET FL_UNINSTRUMENTED static inline __attribute__((always_inline)) void FL_NAME(block)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, const REAL *P, ptrdiff_t panel_stride,
    ptrdiff_t K, int accumulate, const int MR, const int NV, const int TA, const int NSEG,
    ptrdiff_t seg_stride)
{
    enum { LANES = (int)(64 / sizeof(REAL)), SUB = FL_SUB,
           SUB_LANES = (int)(sizeof(FL_KVEC) / sizeof(REAL)) };
#if defined(__SANITIZE_ADDRESS__)   /* what the loops below touch (packed.h) */
    for (int i = 0; i < MR; i++) {
        fl_check_range(C + i * ldc, NV * LANES * sizeof(REAL));
        for (int r = 0; r < NSEG && !TA; r++)
            fl_check_range(A + i * lda + r * seg_stride, K * sizeof(REAL));
    }
    for (ptrdiff_t k = 0; k < K && TA; k++)
        fl_check_range(A + k * lda, MR * sizeof(REAL));
    for (int v = 0; v < NV; v++)
        fl_check_range(P + v * panel_stride, NSEG * K * LANES * sizeof(REAL));
#endif
    FL_KVEC acc[8][4 * SUB];
    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16") for (int v = 0; v < NV * SUB; v++) {
            if (accumulate)
                memcpy(&acc[i][v], C + i * ldc + v * SUB_LANES, sizeof(FL_KVEC));
            else
                acc[i][v] = (FL_KVEC){0};
        }
    for (int r = 0; r < NSEG; r++, A += seg_stride, P += K * LANES)
    for (ptrdiff_t k = 0; k < K; k++) {
        FL_KVEC w[4 * SUB];
        /* Several rows: fetch each panel FL_PREFETCH_K depths ahead into L1 (packed.h) */
        if (MR > 1)
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
                __builtin_prefetch(P + v * panel_stride + (k + FL_PREFETCH_K) * LANES, 0, 3);
        _Pragma("GCC unroll 16") for (int v = 0; v < NV * SUB; v++) {
            memcpy(&w[v], P + (v / SUB) * panel_stride + k * LANES + (v % SUB) * SUB_LANES,
                   sizeof(FL_KVEC));
            /* Several rows: keep the panel vector in a register (when they fit), or GCC
             * folds it into every row's FMA and loads it MR times. */
            if (MR > 1 && MR * NV * SUB + NV * SUB < FL_REGISTERS)
                __asm__("" : "+v"(w[v]));
        }
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {
            const REAL a = TA ? A[k * lda + i] : A[i * lda + k];
            _Pragma("GCC unroll 16") for (int v = 0; v < NV * SUB; v++)
                acc[i][v] += a * w[v];
        }
    }
    _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16") for (int v = 0; v < NV * SUB; v++)
            memcpy(C + i * ldc + v * SUB_LANES, &acc[i][v], sizeof(FL_KVEC));
}

/* How many panels the next block takes: at_once, or 2 or 1 at the ragged end. */
static inline int FL_NAME(panels_next)(ptrdiff_t left, int at_once)
{
    return left >= at_once ? at_once : left >= 2 ? 2 : 1;
}

/* The block for a run-time row count mr <= FL_ROWS_MAX and nv <= FL_PANELS(mr)
 * panels, each shape compiled with constant sizes; A stored by rows, or transposed (ta,
 * nv <= 3). */
FL_TARGET FL_UNINSTRUMENTED static void FL_NAME(block_any)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, const REAL *P, ptrdiff_t panel_stride,
    ptrdiff_t K, int accumulate, int mr, int nv, int ta)
{
#define FL_CASE(MR, NV)                                                                      \
    (ta && NV <= 3                                                                           \
     ? FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, MR, NV, 1, 1, 0)       \
     : FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, MR, NV, 0, 1, 0))
    switch (mr) {
    FL_ROW_CASES(FL_CASE)
    default: break;
    }
#undef FL_CASE
}

/* C (M, n_panels * LANES) (+)= A (M, K) @ panels, K deep, each panel_stride elements after
 * the last (K * LANES for whole panels; more for depths [k0, k0 + K) of deeper panels, from
 * panels + k0 * LANES). NumPy: C[:, :N] (+)= A @ W.T for the W the panels were packed from.
 * With `backwards` the panels are read last to first, which gives the same bits (a column's
 * sum does not depend on the others): a recurrence alternating the two starts each step on
 * the panels the last one read last, still in cache when they all do not fit it. */
FL_TARGET static void FL_NAME(packed_product)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, const REAL *panels,
    ptrdiff_t panel_stride, ptrdiff_t M, ptrdiff_t n_panels, ptrdiff_t K, int accumulate,
    int backwards)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    if (M <= 0)
        return;
    /* Rows in blocks of even height: up to twice FL_ROWS_MAX rows in blocks of at most
     * FL_ROWS_MAX (up to it one block, which reads the panels once; 16 rows as 8 + 8 x 3
     * panels, not 6 + 6 + 4 x 4, whose 4-row block is short of accumulators), more in
     * blocks of at most FL_MR. A short last block (8 rows as 6 + 2) would leave the FMA
     * units waiting on too few accumulators. Each block takes as many panels as its
     * accumulators allow: a row or a few, bound by reading the panels, stream several at
     * once for independent accumulators. */
    const ptrdiff_t block_rows = M <= 2 * FL_ROWS_MAX ? FL_ROWS_MAX : FL_MR;
    const ptrdiff_t n_blocks = (M + block_rows - 1) / block_rows;
    const int rows = (int)((M + n_blocks - 1) / n_blocks), panels_at_once = FL_PANELS(rows);
    /* One block of rows over the whole depth (the step of a few sequences): one loop, as
     * the driver's own overhead counts at B = 1 (S1 forward 1-2 % with the loops below). */
    if (n_blocks == 1 && K <= FL_KC) {
        for (ptrdiff_t done = 0, nv; done < n_panels; done += nv) {
            nv = FL_NAME(panels_next)(n_panels - done, panels_at_once);
            const ptrdiff_t p = backwards ? n_panels - done - nv : done;
            FL_NAME(block_any)(C + p * LANES, ldc, A, lda, panels + p * panel_stride,
                               panel_stride, K, accumulate, (int)M, (int)nv, 0);
        }
        return;
    }
    /* Depth blocks of FL_KC: the chunk of a block's panels stays in L2 while every row
     * block of A streams past it. */
    for (ptrdiff_t k0 = 0; k0 < K; k0 += FL_KC) {
        const ptrdiff_t kc = K - k0 < FL_KC ? K - k0 : FL_KC;
        const int acc = accumulate || k0 > 0;
        for (ptrdiff_t done = 0, nv; done < n_panels; done += nv) {
            nv = FL_NAME(panels_next)(n_panels - done, panels_at_once);
            const ptrdiff_t p = backwards ? n_panels - done - nv : done;
            const REAL *P = panels + p * panel_stride + k0 * LANES;
            for (ptrdiff_t m = 0; m < M; m += rows) {
                const int mr = M - m < rows ? (int)(M - m) : rows;
                FL_NAME(block_any)(C + m * ldc + p * LANES, ldc, A + m * lda + k0, lda, P,
                                   panel_stride, kc, acc, mr, (int)nv, 0);
            }
        }
    }
}

/* C (M, n_panels * LANES) (+)= sum over g < 4 of A[:, g * a_stride : g * a_stride + K] @
 * panels[:, g * K : (g + 1) * K]: four runs of A's rows (the four gates of some hidden
 * units) meeting consecutive depths of panels 4K deep. Each element adds its products in
 * the order of the depths, as four products accumulated in turn would (which is what runs
 * past FL_ROWS_MAX rows); up to FL_ROWS_MAX rows, one pass keeps C in registers. The
 * panels are read last to first with `backwards`, as in packed_product. */
FL_TARGET FL_UNINSTRUMENTED static void FL_NAME(gates_product)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, ptrdiff_t a_stride,
    const REAL *panels, ptrdiff_t panel_stride, ptrdiff_t M, ptrdiff_t n_panels, ptrdiff_t K,
    int accumulate, int backwards)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    if (M > FL_ROWS_MAX) {
        for (int g = 0; g < 4; g++)
            FL_NAME(packed_product)(C, ldc, A + g * a_stride, lda, panels + g * K * LANES,
                                    panel_stride, M, n_panels, K, accumulate || g > 0,
                                    backwards);
        return;
    }
    /* as many panels at once as packed_product takes for M rows */
    const int panels_at_once = FL_PANELS((int)M);
    for (ptrdiff_t done = 0; done < n_panels;) {
        const int nv = FL_NAME(panels_next)(n_panels - done, panels_at_once);
        const ptrdiff_t p = backwards ? n_panels - done - nv : done;
        REAL *Cp = C + p * LANES;
        const REAL *P = panels + p * panel_stride;
#define FL_RUNS(MR, NV)                                                                      \
        FL_NAME(block)(Cp, ldc, A, lda, P, panel_stride, K, accumulate, MR, NV, 0, 4, a_stride)
        switch (M) {
        FL_ROW_CASES(FL_RUNS)
        default: break;
        }
#undef FL_RUNS
        done += nv;
    }
}

/* C (M, N) = A (M, K) @ W.T for W (N, K) read in its own rows (row stride ldw) and A packed
 * into panels of LANES rows (the layout of packed weights): the projection of a few rows
 * against a matrix too large to pack for one use. Blocks of FL_ROWS_MAX rows of W, in order,
 * meet A's panels (which stay in L2) a few at a time, so W streams once. A block's result,
 * C transposed, goes through a small tile. Each element of C adds its products in the
 * order of k, as packed_product does: the bits of C = A @ panels(W). */
FL_TARGET static void FL_NAME(rows_product)(
    REAL *C, ptrdiff_t ldc, const REAL *A_panels, const REAL *W, ptrdiff_t ldw, ptrdiff_t M,
    ptrdiff_t N, ptrdiff_t K)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    /* W's rows per block, and A's rows (WIDTH) a block meets */
    enum { MR = FL_ROWS_MAX, PANELS = FL_PANELS(MR), WIDTH = PANELS * LANES };
    REAL tile[MR * WIDTH];
    for (ptrdiff_t j = 0; j < N; j += MR) {
        const int mr = N - j < MR ? (int)(N - j) : MR;
        for (ptrdiff_t m0 = 0, nv; m0 < M; m0 += nv * LANES) {
            nv = FL_NAME(panels_next)((M - m0 + LANES - 1) / LANES, PANELS);
            const int rows = M - m0 < nv * LANES ? (int)(M - m0) : (int)nv * LANES;
            FL_NAME(block_any)(tile, WIDTH, W + j * ldw, ldw, A_panels + m0 * K, K * LANES,
                               K, 0, mr, (int)nv, 0);
            if (mr == MR)           /* a constant count: the moves of a row unrolled */
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < MR; i++)
                        C[(m0 + r) * ldc + j + i] = tile[i * WIDTH + r];
            else
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < mr; i++)
                        C[(m0 + r) * ldc + j + i] = tile[i * WIDTH + r];
        }
    }
}

/* C (M, n_panels * LANES) (+)= A.T @ panels for A (K, M), K a short depth block: the
 * weight-gradient product, C[g, j] (+)= sum_k A[k, g] W[j, k]. NumPy: C[:, :N] (+)= A.T @ W.T.
 * A comes packed in blocks of 8 rows (fl_pack_rows8 in packed.h): rows [8b, 8b + 8) at
 * depth k in A[8b * K + 8k : ... + 8], so every depth reads one contiguous run. Rows go in
 * blocks of FL_MC, so a block of A stays in cache while every panel pair streams past it. */
FL_TARGET static void FL_NAME(packed_product_at)(
    REAL *C, ptrdiff_t ldc, const REAL *A, const REAL *panels, ptrdiff_t M, ptrdiff_t n_panels,
    ptrdiff_t K, int accumulate)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    _Static_assert(FL_PANELS(FL_AT_MR) <= 3, "A transposed meets up to three panels");
    const ptrdiff_t panel_stride = K * LANES;
    for (ptrdiff_t m0 = 0; m0 < M; m0 += FL_MC) {
        const ptrdiff_t m1 = M - m0 < FL_MC ? M : m0 + FL_MC;
        for (ptrdiff_t p = 0, nv; p < n_panels; p += nv) {
            nv = FL_NAME(panels_next)(n_panels - p, FL_PANELS(FL_AT_MR));
            const REAL *P = panels + p * panel_stride;
            for (ptrdiff_t m = m0; m < m1; m += FL_AT_MR) {   /* FL_AT_MR divides 8 */
                const int mr = m1 - m < FL_AT_MR ? (int)(m1 - m) : FL_AT_MR;
                FL_NAME(block_any)(C + m * ldc + p * LANES, ldc, A + (m / 8) * 8 * K + m % 8, 8,
                                   P, panel_stride, K, accumulate, mr, (int)nv, 1);
            }
        }
    }
}

/* fl_pack_rows8 of packed.h (its dispatcher), compiled for this instruction set: scalar
 * code would split its 8-wide vectors and spill the running sums. */
FL_TARGET static void FL_NAME(pack_rows8)(REAL *out, REAL *sums, REAL *table,
                                         const ptrdiff_t *tokens, ptrdiff_t ldt,
                                         const REAL *A, ptrdiff_t lda, ptrdiff_t M,
                                         ptrdiff_t K)
{
    typedef REAL v8 __attribute__((vector_size(8 * sizeof(REAL))));
    ptrdiff_t b = 0;
    for (; b + 64 <= M; b += 64) {
        v8 acc[8];
        if (sums)
            memcpy(acc, sums + b, sizeof acc);
        for (ptrdiff_t k = 0; k < K; k++) {
            REAL *row = table ? table + tokens[k] * ldt + b : NULL;
            for (int q = 0; q < 8; q++) {
                v8 v;
                memcpy(&v, A + k * lda + b + 8 * q, sizeof v);
                acc[q] += v;
                memcpy(out + (b + 8 * q) * K + 8 * k, &v, sizeof v);
                if (row) {
                    v8 t;
                    memcpy(&t, row + 8 * q, sizeof t);
                    t += v;
                    memcpy(row + 8 * q, &t, sizeof t);
                }
            }
        }
        if (sums)
            memcpy(sums + b, acc, sizeof acc);
    }
    for (; b < M; b += 8) {
        const int n = M - b < 8 ? (int)(M - b) : 8;
        REAL *dst = out + b * K;
        v8 acc = {0};
        if (sums)
            memcpy(&acc, sums + b, n * sizeof(REAL));
        for (ptrdiff_t k = 0; k < K; k++) {
            v8 v = {0};
            memcpy(&v, A + k * lda + b, n * sizeof(REAL));
            acc += v;
            memcpy(dst + 8 * k, &v, sizeof v);
            if (table)
                for (int i = 0; i < n; i++)
                    table[tokens[k] * ldt + b + i] += A[k * lda + b + i];
        }
        if (sums)
            memcpy(sums + b, &acc, n * sizeof(REAL));
    }
}

#undef FL_SUB
#undef FL_PANELS
#undef FL_ROWS_MAX
#undef FL_ROW_CASES
#undef FL_ROWS_CASE
