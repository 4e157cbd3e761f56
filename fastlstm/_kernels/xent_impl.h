/* Template body of cell.h: the sparse softmax cross-entropy from logits, for one REAL and
 * instruction set (FL_NAME names, FL_EXP the exponential of the cell pass's activations).
 * unused: a module that includes cell.h for one of the passes leaves the other. */

/* Row r of z (rows, C): loss[r] = log(sum_j exp(z[r, j])) - z[r, target[r]] and
 * grad[r] = (softmax(z[r]) - onehot(target[r])) / divisor, through the shift by the row's
 * max. A NaN (or inf - inf) in a row makes its sum, so its loss and gradient, NaN. NumPy
 * (softmax and its log from one exp):
 *     shifted = z - z.max(-1, keepdims=True); e = exp(shifted); total = e.sum(-1)
 *     loss = log(total) - shifted[r, target]; grad = e / total[:, None]; grad[r, target] -= 1
 *     grad = grad / divisor
 * The caller has checked every target in [0, C). */
__attribute__((unused)) static void FL_NAME(sparse_softmax_xent)(
    REAL *loss, REAL *grad, const REAL *z, const int64_t *target, ptrdiff_t rows, ptrdiff_t C,
    REAL divisor)
{
    enum { V = 64 / sizeof(REAL) };     /* lanes of the running max and sum */
    for (ptrdiff_t r = 0; r < rows; r++) {
        const REAL *zr = z + r * C;
        REAL *gr = grad + r * C;
        REAL lane[V], max = zr[0], total = 0;
        ptrdiff_t j = 0;
        for (int v = 0; v < V; v++)
            lane[v] = zr[0];
        for (; j + V <= C; j += V)              /* V running maxima: vectorised */
            for (int v = 0; v < V; v++)
                lane[v] = zr[j + v] > lane[v] ? zr[j + v] : lane[v];
        for (int v = 0; v < V; v++)
            max = lane[v] > max ? lane[v] : max;
        for (; j < C; j++)
            max = zr[j] > max ? zr[j] : max;
        for (j = 0; j < C; j++)
            gr[j] = FL_EXP(zr[j] - max);
        for (int v = 0; v < V; v++)
            lane[v] = 0;
        for (j = 0; j + V <= C; j += V)         /* V running sums: vectorised */
            for (int v = 0; v < V; v++)
                lane[v] += gr[j + v];
        for (int v = 0; v < V; v++)
            total += lane[v];
        for (; j < C; j++)
            total += gr[j];
        loss[r] = FL_LOG(total) - (zr[target[r]] - max);
        for (j = 0; j < C; j++)     /* x - 0 is x: the same bits as NumPy's three passes */
            gr[j] = (gr[j] / total - (j == target[r] ? 1 : 0)) / divisor;
    }
}
