/* star.c: Star Attention's exact log-sum-exp merge of partial attentions, and the buffers of a rank's phase-2
 * state (see star.h). */
#include "star.h"

#include <math.h>
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

int mx_star_init(mx_star *st, mx_comm *comm, mx_backend *be, int n_local, bool query_host, int rows,
                 int n_head, int v_dim, mx_err *err) {
    memset(st, 0, sizeof *st);
    st->comm = comm;
    st->be = be;
    st->n_local = n_local;
    st->query_host = query_host;
    st->rows = rows;
    st->n_head = n_head;
    st->v_dim = v_dim;
    size_t msg = (size_t)rows * ((size_t)n_head * v_dim + n_head) * sizeof(float);
    st->local = query_host ? be->alloc(be, 2 * msg) : NULL;
    st->send = be->alloc(be, msg);
    st->recv = comm->size > 1 ? be->alloc(be, (size_t)comm->size * msg) : NULL;
    if ((query_host && !st->local) || !st->send || (comm->size > 1 && !st->recv)) {
        mx_star_free(st);
        return mx_err_set(err, MX_ERR_NOMEM,
                          "out of %s memory allocating Star Attention buffers for %d rows of %d heads x %d",
                          be->name, rows, n_head, v_dim);
    }
    return MX_OK;
}

void mx_star_free(mx_star *st) {
    float *bufs[] = {st->local, st->send, st->recv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) st->be->free(st->be, bufs[i]);
    memset(st, 0, sizeof *st);
}
