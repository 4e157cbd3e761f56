/* Template body of packed.h, included once per (REAL, instruction set):
 * FL_NAME(x) names, FL_TARGET the target attribute, FL_MR the rows of the register block,
 * FL_KVEC the machine vector (64, 32 or 16 bytes: a panel is 64 / sizeof(FL_KVEC) of them). */

/* C[MR rows, NV panels] (+)= A[MR rows, :K] @ P[NV panels, :K]: the register block. Row i
 * of A at depth k is A[i * lda + k], or A[k * lda + i] with TA (A stored transposed). With
 * NSEG runs, the panels are NSEG * K deep and run r of A starts r * seg_stride after A
 * (depth r * K + k of the panels meets A[i * lda + r * seg_stride + k]). */
FL_TARGET static inline __attribute__((always_inline)) void FL_NAME(block)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, const REAL *P, ptrdiff_t panel_stride,
    ptrdiff_t K, int accumulate, const int MR, const int NV, const int TA, const int NSEG,
    ptrdiff_t seg_stride)
{
    enum { LANES = (int)(64 / sizeof(REAL)), SUB = (int)(64 / sizeof(FL_KVEC)),
           SUB_LANES = (int)(sizeof(FL_KVEC) / sizeof(REAL)) };
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
        _Pragma("GCC unroll 16") for (int v = 0; v < NV * SUB; v++)
            memcpy(&w[v], P + (v / SUB) * panel_stride + k * LANES + (v % SUB) * SUB_LANES,
                   sizeof(FL_KVEC));
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

/* The block for a run-time row count mr <= FL_MR and nv in {1, 2} (or nv = 4 for
 * mr <= FL_SMALL_M), each shape compiled with constant sizes; A stored by rows, or
 * transposed (ta, nv <= 2). */
FL_TARGET static void FL_NAME(block_any)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, const REAL *P, ptrdiff_t panel_stride,
    ptrdiff_t K, int accumulate, int mr, int nv, int ta)
{
#define FL_CASE(MR, NV)                                                                      \
    (ta ? FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, MR, NV, 1, 1, 0)     \
        : FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, MR, NV, 0, 1, 0))
    if (nv == 4) {
        switch (mr) {
        case 1: FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, 1, 4, 0, 1, 0); break;
#if FL_MR >= 8
        case 2: FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, 2, 4, 0, 1, 0); break;
        case 3: FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, 3, 4, 0, 1, 0); break;
        case 4: FL_NAME(block)(C, ldc, A, lda, P, panel_stride, K, accumulate, 4, 4, 0, 1, 0); break;
#endif
        default: break;
        }
        return;
    }
    switch (mr * 2 + (nv == 2)) {
    case 2: FL_CASE(1, 1); break;
    case 3: FL_CASE(1, 2); break;
#if FL_MR >= 2
    case 4: FL_CASE(2, 1); break;
    case 5: FL_CASE(2, 2); break;
#endif
#if FL_MR >= 4
    case 6: FL_CASE(3, 1); break;
    case 7: FL_CASE(3, 2); break;
    case 8: FL_CASE(4, 1); break;
    case 9: FL_CASE(4, 2); break;
#endif
#if FL_MR >= 8
    case 10: FL_CASE(5, 1); break;
    case 11: FL_CASE(5, 2); break;
    case 12: FL_CASE(6, 1); break;
    case 13: FL_CASE(6, 2); break;
    case 14: FL_CASE(7, 1); break;
    case 15: FL_CASE(7, 2); break;
    case 16: FL_CASE(8, 1); break;
    case 17: FL_CASE(8, 2); break;
#endif
    default: break;
    }
#undef FL_CASE
}

/* C (M, n_panels * LANES) (+)= A (M, K) @ panels, K deep, each panel_stride elements after
 * the last (K * LANES for whole panels; more for depths [k0, k0 + K) of deeper panels, from
 * panels + k0 * LANES). NumPy: C[:, :N] (+)= A @ W.T for the W the panels were packed from. */
FL_TARGET static void FL_NAME(packed_product)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, const REAL *panels,
    ptrdiff_t panel_stride, ptrdiff_t M, ptrdiff_t n_panels, ptrdiff_t K, int accumulate)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    /* One row (a matrix-vector product), or a few on AVX-512: the product is bound by
     * reading the panels, so each streams once over its whole depth, four panels at once
     * (two on narrower vector units) for independent accumulators. */
    if (M <= FL_SMALL_M) {
        const int nv = FL_MR >= 8 ? 4 : 2;
        ptrdiff_t p = 0;
        for (; p + nv <= n_panels; p += nv)
            FL_NAME(block_any)(C + p * LANES, ldc, A, lda, panels + p * panel_stride,
                               panel_stride, K, accumulate, (int)M, nv, 0);
        for (; p < n_panels; p++)
            FL_NAME(block_any)(C + p * LANES, ldc, A, lda, panels + p * panel_stride,
                               panel_stride, K, accumulate, (int)M, 1, 0);
        return;
    }
    /* Depth blocks of FL_KC: two panels' chunk stays in L2 while every row block of A
     * streams past it. */
    for (ptrdiff_t k0 = 0; k0 < K; k0 += FL_KC) {
        const ptrdiff_t kc = K - k0 < FL_KC ? K - k0 : FL_KC;
        const int acc = accumulate || k0 > 0;
        for (ptrdiff_t p = 0; p < n_panels; p += 2) {
            const int nv = n_panels - p >= 2 ? 2 : 1;
            const REAL *P = panels + p * panel_stride + k0 * LANES;
            ptrdiff_t m = 0;
            for (; m + FL_MR <= M; m += FL_MR)
                FL_NAME(block_any)(C + m * ldc + p * LANES, ldc, A + m * lda + k0, lda, P,
                                   panel_stride, kc, acc, FL_MR, nv, 0);
            if (m < M)
                FL_NAME(block_any)(C + m * ldc + p * LANES, ldc, A + m * lda + k0, lda, P,
                                   panel_stride, kc, acc, (int)(M - m), nv, 0);
        }
    }
}

/* C (M, n_panels * LANES) (+)= sum over g < 4 of A[:, g * a_stride : g * a_stride + K] @
 * panels[:, g * K : (g + 1) * K]: four runs of A's rows (the four gates of some hidden
 * units) meeting consecutive depths of panels 4K deep. Each element adds its products in
 * the order of the depths, as four products accumulated in turn would (which is what runs
 * past FL_MR rows); up to FL_MR rows, one pass keeps C in registers. */
FL_TARGET static void FL_NAME(gates_product)(
    REAL *C, ptrdiff_t ldc, const REAL *A, ptrdiff_t lda, ptrdiff_t a_stride,
    const REAL *panels, ptrdiff_t panel_stride, ptrdiff_t M, ptrdiff_t n_panels, ptrdiff_t K,
    int accumulate)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    if (M > FL_MR) {
        for (int g = 0; g < 4; g++)
            FL_NAME(packed_product)(C, ldc, A + g * a_stride, lda, panels + g * K * LANES,
                                    panel_stride, M, n_panels, K, accumulate || g > 0);
        return;
    }
    /* four panels at once up to FL_SMALL_M rows (as packed_product streams them), else two */
    const int wide = M <= FL_SMALL_M && FL_MR >= 8;
    for (ptrdiff_t p = 0; p < n_panels;) {
        const int nv = wide && n_panels - p >= 4 ? 4 : (n_panels - p >= 2 ? 2 : 1);
        REAL *Cp = C + p * LANES;
        const REAL *P = panels + p * panel_stride;
#define FL_RUNS(MR, NV)                                                                      \
        FL_NAME(block)(Cp, ldc, A, lda, P, panel_stride, K, accumulate, MR, NV, 0, 4, a_stride)
#define FL_ROWS(MR)                                                                          \
        case MR: if (nv == 2) FL_RUNS(MR, 2); else FL_RUNS(MR, 1); break;
#if FL_MR >= 8
        if (nv == 4) {
            switch (M) {
            case 1: FL_RUNS(1, 4); break;
            case 2: FL_RUNS(2, 4); break;
            case 3: FL_RUNS(3, 4); break;
            case 4: FL_RUNS(4, 4); break;
            default: break;
            }
        } else
#endif
        {
            switch (M) {
            FL_ROWS(1)
#if FL_MR >= 2
            FL_ROWS(2)
#endif
#if FL_MR >= 8
            FL_ROWS(3) FL_ROWS(4) FL_ROWS(5) FL_ROWS(6) FL_ROWS(7) FL_ROWS(8)
#endif
            default: break;
            }
        }
#undef FL_ROWS
#undef FL_RUNS
        p += nv;
    }
}

/* C (M, N) = A (M, K) @ W.T for W (N, K) read in its own rows (row stride ldw) and A packed
 * into panels of LANES rows (the layout of packed weights): the projection of a few rows
 * against a matrix too large to pack for one use. Blocks of FL_MR rows of W, in order,
 * meet every pair of A's panels (which stay in L2), so W streams once. A block's result,
 * C transposed, goes through a small tile. Each element of C adds its products in the
 * order of k, as packed_product does: the bits of C = A @ panels(W). */
FL_TARGET static void FL_NAME(rows_product)(
    REAL *C, ptrdiff_t ldc, const REAL *A_panels, const REAL *W, ptrdiff_t ldw, ptrdiff_t M,
    ptrdiff_t N, ptrdiff_t K)
{
    enum { LANES = (int)(64 / sizeof(REAL)) };
    REAL tile[FL_MR * 2 * LANES];
    for (ptrdiff_t j = 0; j < N; j += FL_MR) {
        const int mr = N - j < FL_MR ? (int)(N - j) : FL_MR;
        for (ptrdiff_t m0 = 0; m0 < M; m0 += 2 * LANES) {
            const int nv = M - m0 > LANES ? 2 : 1;
            const int rows = M - m0 < 2 * LANES ? (int)(M - m0) : 2 * LANES;
            FL_NAME(block_any)(tile, 2 * LANES, W + j * ldw, ldw, A_panels + m0 * K, K * LANES,
                               K, 0, mr, nv, 0);
            if (mr == FL_MR)        /* a constant count: the moves of a row unrolled */
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < FL_MR; i++)
                        C[(m0 + r) * ldc + j + i] = tile[i * 2 * LANES + r];
            else
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < mr; i++)
                        C[(m0 + r) * ldc + j + i] = tile[i * 2 * LANES + r];
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
    const ptrdiff_t panel_stride = K * LANES;
    for (ptrdiff_t m0 = 0; m0 < M; m0 += FL_MC) {
        const ptrdiff_t m1 = M - m0 < FL_MC ? M : m0 + FL_MC;
        for (ptrdiff_t p = 0; p < n_panels; p += 2) {
            const int nv = n_panels - p >= 2 ? 2 : 1;
            const REAL *P = panels + p * panel_stride;
            for (ptrdiff_t m = m0; m < m1; m += FL_MR) {   /* FL_MR divides 8 */
                const int mr = m1 - m < FL_MR ? (int)(m1 - m) : FL_MR;
                FL_NAME(block_any)(C + m * ldc + p * LANES, ldc, A + (m / 8) * 8 * K + m % 8, 8,
                                   P, panel_stride, K, accumulate, mr, nv, 1);
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
