/* Template body of cell.h: FL_NAME names, FL_SIGMOID and FL_TANH the activations of REAL
 * (float: once per instruction set, by cell_float.h; double: once). unused: a module may
 * include cell.h for the cross-entropy alone. */

/* Forward cell for one row. zx: 4 gate blocks at stride zx_stride (the bias, or a
 * projected table row with the bias in it); act: 4 blocks at stride H; zh: 4 blocks at
 * stride zh_stride;
 * peep: p_i | p_f | p_o at stride H or NULL; c_prev, c, h, out: (n,); out, act, clipped
 * may be NULL. clip <= 0 means no clipping. stream: store act with streaming stores where
 * it can (float, whole aligned chunks), for gates that would leave the caches anyway. */
static inline __attribute__((always_inline)) void FL_NAME(cell_forward_chunk)(
    REAL *act, REAL *c, REAL *h, REAL *out, unsigned char *clipped,
    const REAL *zx, const REAL *zh, const REAL *c_prev, const REAL *peep,
    REAL clip, int H, int zx_stride, int zh_stride, int stream, int j0, const int m)
{
    /* Every loop reads the inputs and writes only these locals, so none needs an alias
     * check; results are copied out at the end. Called with m = FL_CHUNK (a constant) for
     * whole chunks, so the loops become straight-line vector code. */
    REAL zi[FL_CHUNK], zf[FL_CHUNK], zg[FL_CHUNK], zo[FL_CHUNK], ct[FL_CHUNK], ht[FL_CHUNK];
    {
        for (int j = 0; j < m; j++) {
            zi[j] = zx[j0 + j] + zh[j0 + j];
            zf[j] = zx[zx_stride + j0 + j] + zh[zh_stride + j0 + j];
            zg[j] = zx[2 * zx_stride + j0 + j] + zh[2 * zh_stride + j0 + j];
            zo[j] = zx[3 * zx_stride + j0 + j] + zh[3 * zh_stride + j0 + j];
        }
        if (peep) {
            for (int j = 0; j < m; j++) {
                zi[j] += peep[j0 + j] * c_prev[j0 + j];
                zf[j] += peep[H + j0 + j] * c_prev[j0 + j];
            }
        }
        if (clip > 0) {
            for (int j = 0; j < m; j++) {
                if (clipped) {
                    clipped[j0 + j] = zi[j] > clip || zi[j] < -clip;
                    clipped[H + j0 + j] = zf[j] > clip || zf[j] < -clip;
                    clipped[2 * H + j0 + j] = zg[j] > clip || zg[j] < -clip;
                }
                zi[j] = zi[j] > clip ? clip : (zi[j] < -clip ? -clip : zi[j]);
                zf[j] = zf[j] > clip ? clip : (zf[j] < -clip ? -clip : zf[j]);
                zg[j] = zg[j] > clip ? clip : (zg[j] < -clip ? -clip : zg[j]);
            }
        }
        for (int j = 0; j < m; j++) {
            zi[j] = FL_SIGMOID(zi[j]);
            zf[j] = FL_SIGMOID(zf[j]);
            zg[j] = FL_TANH(zg[j]);
            ct[j] = zf[j] * c_prev[j0 + j] + zi[j] * zg[j];
        }
        if (peep) {
            for (int j = 0; j < m; j++)
                zo[j] += peep[2 * H + j0 + j] * ct[j];
        }
        if (clip > 0) {
            for (int j = 0; j < m; j++) {
                if (clipped)
                    clipped[3 * H + j0 + j] = zo[j] > clip || zo[j] < -clip;
                zo[j] = zo[j] > clip ? clip : (zo[j] < -clip ? -clip : zo[j]);
            }
        }
        for (int j = 0; j < m; j++) {
            zo[j] = FL_SIGMOID(zo[j]);
            ht[j] = zo[j] * FL_TANH(ct[j]);
        }
        memcpy(c + j0, ct, m * sizeof(REAL));
        memcpy(h + j0, ht, m * sizeof(REAL));
        if (out)
            memcpy(out + j0, ht, m * sizeof(REAL));
#ifdef FL_STREAM16
        if (stream && act && m == 16 && (uintptr_t)(act + j0) % 64 == 0 && H % 16 == 0) {
            FL_STREAM16(act + j0, zi);
            FL_STREAM16(act + H + j0, zf);
            FL_STREAM16(act + 2 * H + j0, zg);
            FL_STREAM16(act + 3 * H + j0, zo);
        } else
#else
        (void)stream;
#endif
        if (act) {
            memcpy(act + j0, zi, m * sizeof(REAL));
            memcpy(act + H + j0, zf, m * sizeof(REAL));
            memcpy(act + 2 * H + j0, zg, m * sizeof(REAL));
            memcpy(act + 3 * H + j0, zo, m * sizeof(REAL));
        }
    }
}

__attribute__((unused)) static void FL_NAME(cell_forward)(
    REAL *act, REAL *c, REAL *h, REAL *out, unsigned char *clipped,
    const REAL *zx, const REAL *zh, const REAL *c_prev, const REAL *peep,
    REAL clip, int n, int H, int zx_stride, int zh_stride, int stream)
{
    int j0 = 0;
    if (peep == NULL && !(clip > 0)) {
        /* The plain cell, compiled apart: with no peepholes nor clipping the chunk is
         * straight-line code whose arrays stay in registers. */
        for (; j0 + FL_CHUNK <= n; j0 += FL_CHUNK)
            FL_NAME(cell_forward_chunk)(act, c, h, out, NULL, zx, zh, c_prev, NULL, 0, H,
                                        zx_stride, zh_stride, stream, j0, FL_CHUNK);
    } else {
        for (; j0 + FL_CHUNK <= n; j0 += FL_CHUNK)
            FL_NAME(cell_forward_chunk)(act, c, h, out, clipped, zx, zh, c_prev, peep, clip,
                                        H, zx_stride, zh_stride, stream, j0, FL_CHUNK);
    }
    if (j0 < n)
        FL_NAME(cell_forward_chunk)(act, c, h, out, clipped, zx, zh, c_prev, peep, clip, H,
                                    zx_stride, zh_stride, stream, j0, n - j0);
}

/* Backward cell for one row. dz: OUT 4 blocks at stride H (pre-activation gradients);
 * dc: IN dL/dc_t from later steps, OUT dL/dc_{t-1}; dpeep: IN/OUT accumulated, 3 blocks
 * at stride H, or NULL; dh: IN dL/dh_t from later steps (n,); dh_out: dL/dh_t from the
 * output (n,), added to dh, or NULL; act, clipped: 4 blocks at stride H (clipped may be
 * NULL); c, c_prev: (n,); peep as in the forward. */
static inline __attribute__((always_inline)) void FL_NAME(cell_backward_chunk)(
    REAL *dz, REAL *dc, REAL *dpeep,
    const REAL *dh, const REAL *dh_out, const REAL *act, const unsigned char *clipped,
    const REAL *c, const REAL *c_prev, const REAL *peep, int H, int j0, const int m)
{
    REAL dzi[FL_CHUNK], dzf[FL_CHUNK], dzg[FL_CHUNK], dzo[FL_CHUNK], dct[FL_CHUNK];
    {
        for (int j = 0; j < m; j++) {
            const REAL i = act[j0 + j], f = act[H + j0 + j];
            const REAL g = act[2 * H + j0 + j], o = act[3 * H + j0 + j];
            const REAL tanh_c = FL_TANH(c[j0 + j]);
            const REAL dht = dh_out ? dh[j0 + j] + dh_out[j0 + j] : dh[j0 + j];
            dzo[j] = dht * tanh_c * o * (1 - o);
            dct[j] = dc[j0 + j] + dht * o * (1 - tanh_c * tanh_c);
            dzi[j] = i * (1 - i);
            dzf[j] = f * (1 - f);
            dzg[j] = (1 - g * g);
        }
        if (clipped) {
            for (int j = 0; j < m; j++)
                dzo[j] = clipped[3 * H + j0 + j] ? 0 : dzo[j];
        }
        if (peep) {
            for (int j = 0; j < m; j++)
                dct[j] += dzo[j] * peep[2 * H + j0 + j];
        }
        for (int j = 0; j < m; j++) {
            const REAL i = act[j0 + j], f = act[H + j0 + j], g = act[2 * H + j0 + j];
            dzi[j] *= dct[j] * g;
            dzf[j] *= dct[j] * c_prev[j0 + j];
            dzg[j] *= dct[j] * i;
            dct[j] *= f;
        }
        if (clipped) {
            for (int j = 0; j < m; j++) {
                dzi[j] = clipped[j0 + j] ? 0 : dzi[j];
                dzf[j] = clipped[H + j0 + j] ? 0 : dzf[j];
                dzg[j] = clipped[2 * H + j0 + j] ? 0 : dzg[j];
            }
        }
        if (peep) {
            for (int j = 0; j < m; j++) {
                dct[j] += dzi[j] * peep[j0 + j] + dzf[j] * peep[H + j0 + j];
                dpeep[j0 + j] += dzi[j] * c_prev[j0 + j];
                dpeep[H + j0 + j] += dzf[j] * c_prev[j0 + j];
                dpeep[2 * H + j0 + j] += dzo[j] * c[j0 + j];
            }
        }
        memcpy(dc + j0, dct, m * sizeof(REAL));
        memcpy(dz + j0, dzi, m * sizeof(REAL));
        memcpy(dz + H + j0, dzf, m * sizeof(REAL));
        memcpy(dz + 2 * H + j0, dzg, m * sizeof(REAL));
        memcpy(dz + 3 * H + j0, dzo, m * sizeof(REAL));
    }
}

__attribute__((unused)) static void FL_NAME(cell_backward)(
    REAL *dz, REAL *dc, REAL *dpeep,
    const REAL *dh, const REAL *dh_out, const REAL *act, const unsigned char *clipped,
    const REAL *c, const REAL *c_prev, const REAL *peep, int n, int H)
{
    int j0 = 0;
    if (peep == NULL && clipped == NULL) {     /* the plain cell, as in the forward */
        for (; j0 + FL_CHUNK <= n; j0 += FL_CHUNK)
            FL_NAME(cell_backward_chunk)(dz, dc, NULL, dh, dh_out, act, NULL, c, c_prev, NULL,
                                         H, j0, FL_CHUNK);
    } else {
        for (; j0 + FL_CHUNK <= n; j0 += FL_CHUNK)
            FL_NAME(cell_backward_chunk)(dz, dc, dpeep, dh, dh_out, act, clipped, c, c_prev,
                                         peep, H, j0, FL_CHUNK);
    }
    if (j0 < n)
        FL_NAME(cell_backward_chunk)(dz, dc, dpeep, dh, dh_out, act, clipped, c, c_prev, peep,
                                     H, j0, n - j0);
}
