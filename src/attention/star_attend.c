/* star_attend.c: the attention of one MHA/GQA layer in Star Attention's phase 2, and the rank's phase-2
 * buffers (see star_attend.h). attention/mha.c
 * calls it instead of the dense attention when the session carries s->star. Per rank:
 *   part 1: the T queries against this rank's context keys (slots 0..n_local-1), NOT causal: every context
 *           key is in the past of every query;
 *   part 2 (query host only): against the query and generated tokens' keys (slots n_local..pos+T-1), causal;
 * the two are merged locally, then (out, lse) of every rank is all-gathered and merged in rank order, so
 * every rank holds the same exact attention output and runs the rest of the model identically. Every buffer
 * is the backend's and every step a backend op (attention, lse_merge) or a collective on backend memory (NCCL
 * on CUDA), so the same code runs on the CPU and the GPU. Shapes: q (T, H*D); att (T, H*D); the per-rank
 * message is (T, H*D) outputs followed by (T, H) lse. */
#include "star_attend.h"

#include <string.h>

#include "../model/session_state.h"
#include "attention.h"

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

/* The T queries against this rank's part of the keys: context (and query tokens on the query host), merged
 * into out (T, H*D) and, when not NULL, lse (T, H). msg: floats of one message of T rows. */
static void local_parts(mx_session *s, int l, int T, size_t msg, const float *q, float *out, float *lse) {
    const mx_config *c = &s->m->cfg;
    mx_star *st = s->star;
    mx_backend *be = s->be;
    const mx_kv_layer *kv = &s->kv.layers[l];
    int H = c->n_head, D = c->head_dim;
    size_t n_out = (size_t)T * H * D;
    mx_attn_spec ctx = mx_attn_spec_for(s, l, T, D, D, c->n_kv_head);
    ctx.causal = false;
    ctx.kv_lo = 0;
    ctx.kv_hi = st->n_local - 1; /* no context here: every row gets lse = −inf */
    if (!st->query_host) {
        be->attention(be, &ctx, q, kv->k, kv->v, out, lse);
        return;
    }
    float *part1 = st->local, *part2 = st->local + msg; /* each: (T, H*D) outputs, then (T, H) lse */
    be->attention(be, &ctx, q, kv->k, kv->v, part1, part1 + n_out);
    mx_attn_spec own = mx_attn_spec_for(s, l, T, D, D, c->n_kv_head);
    own.kv_lo = st->n_local;
    be->attention(be, &own, q, kv->k, kv->v, part2, part2 + n_out);
    be->lse_merge(be, part1, part1 + n_out, msg, 2, T, H, D, out, lse);
}

void mx_attention_star(mx_session *s, int l, int T, const float *q, float *att) {
    const mx_config *c = &s->m->cfg;
    mx_star *st = s->star;
    mx_comm *comm = st->comm;
    int H = c->n_head, D = c->head_dim, R = comm->size;
    size_t n_out = (size_t)T * H * D, msg = n_out + (size_t)T * H;
    if (R == 1) { /* one rank: its local merge is the answer */
        local_parts(s, l, T, msg, q, att, NULL);
        return;
    }
    local_parts(s, l, T, msg, q, st->send, st->send + n_out);
    mx_err err = {0};
    if (comm->allgather(comm, st->send, st->recv, msg, &err)) {
        mx_err_wrap(&err, "Star Attention, layer %d: gathering (out, lse) of %d rows", l, T);
        comm->abort(comm, err.msg, 1);
    }
    s->be->lse_merge(s->be, st->recv, st->recv + n_out, msg, R, T, H, D, att, NULL);
}
