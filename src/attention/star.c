/* star.c: Star Attention's exact log-sum-exp merge of partial attentions, and the buffers of a rank's phase-2
 * state (see star.h). */
#include "star.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Merges the n parts of one query row and head: out[0..Dv) and the merged lse. */
static float merge_one(int n, const float *const *outs, const float *const *lses, size_t o_off, size_t l_off,
                       int Dv, float *out) {
    float mx = -INFINITY;
    for (int r = 0; r < n; r++)
        if (lses[r][l_off] > mx) mx = lses[r][l_off];
    for (int i = 0; i < Dv; i++) out[i] = 0.0f;
    if (mx == -INFINITY) return -INFINITY;
    double sum = 0;
    for (int r = 0; r < n; r++) sum += exp((double)lses[r][l_off] - mx);
    double lse = mx + log(sum);
    for (int r = 0; r < n; r++) {
        if (lses[r][l_off] == -INFINITY) continue;
        float w = (float)exp((double)lses[r][l_off] - lse);
        const float *o = outs[r] + o_off;
        for (int i = 0; i < Dv; i++) out[i] += w * o[i];
    }
    return (float)lse;
}

void mx_star_merge(int n, const float *const *outs, const float *const *lses, int T, int H, int Dv,
                   size_t o_stride, float *out, float *lse) {
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            size_t o_off = (size_t)t * o_stride + (size_t)h * Dv, l_off = (size_t)t * H + h;
            float l = merge_one(n, outs, lses, o_off, l_off, Dv, out + o_off);
            if (lse) lse[l_off] = l;
        }
}

int mx_star_init(mx_star *st, mx_comm *comm, int n_local, bool query_host, int rows, int n_head, int v_dim,
                 mx_err *err) {
    memset(st, 0, sizeof *st);
    st->comm = comm;
    st->n_local = n_local;
    st->query_host = query_host;
    st->rows = rows;
    st->n_head = n_head;
    st->v_dim = v_dim;
    size_t R = (size_t)rows, HD = (size_t)n_head * v_dim, F = sizeof(float);
    st->out1 = malloc(R * HD * F);
    st->lse1 = malloc(R * n_head * F);
    st->out2 = malloc(R * HD * F);
    st->lse2 = malloc(R * n_head * F);
    st->send = malloc(R * (HD + n_head) * F);
    st->recv = malloc((size_t)comm->size * R * (HD + n_head) * F);
    st->part_out = calloc((size_t)comm->size, sizeof *st->part_out);
    st->part_lse = calloc((size_t)comm->size, sizeof *st->part_lse);
    if (!st->out1 || !st->lse1 || !st->out2 || !st->lse2 || !st->send || !st->recv || !st->part_out ||
        !st->part_lse) {
        mx_star_free(st);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating Star Attention buffers for %d rows",
                          rows);
    }
    return MX_OK;
}

void mx_star_free(mx_star *st) {
    float *bufs[] = {st->out1, st->lse1, st->out2, st->lse2, st->send, st->recv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(st->part_out);
    free(st->part_lse);
    memset(st, 0, sizeof *st);
}
