/* star_attend.c: the attention of one MHA/GQA layer in Star Attention's phase 2 (see star.h). attention/mha.c
 * calls it instead of the dense attention when the session carries s->star. Per rank:
 *   part 1: the T queries against this rank's context keys (slots 0..n_local-1), NOT causal: every context
 *           key is in the past of every query;
 *   part 2 (query host only): against the query and generated tokens' keys (slots n_local..pos+T-1), causal;
 * the two are merged locally, then (out, lse) of every rank is all-gathered and merged in rank order, so
 * every rank holds the same exact attention output and runs the rest of the model identically. Shapes: q (T,
 * H*D); att (T, H*D); the per-rank message is (T, H*D) outputs followed by (T, H) lse. */
#include <string.h>

#include "../model/session.h"
#include "star.h"

mx_attn_spec mx_attn_spec_for(const mx_session *s, int l, int T, int head_dim, int v_dim, int n_kv_head);

/* The T queries against this rank's part of the keys: context (and query tokens on the query host),
 * merged into out (T, H*D) and lse (T, H). */
static void local_parts(mx_session *s, int l, int T, const float *q, float *out, float *lse) {
    const mx_config *c = &s->m->cfg;
    mx_star *st = s->star;
    mx_backend *be = s->be;
    const mx_kv_layer *kv = &s->kv.layers[l];
    int H = c->n_head, D = c->head_dim;
    mx_attn_spec ctx = mx_attn_spec_for(s, l, T, D, D, c->n_kv_head);
    ctx.causal = false;
    ctx.kv_lo = 0;
    ctx.kv_hi = st->n_local - 1; /* no context here: every row gets lse = −inf */
    if (!st->query_host) {
        be->attention(be, &ctx, q, kv->k, kv->v, out, lse);
        return;
    }
    be->attention(be, &ctx, q, kv->k, kv->v, st->out1, st->lse1);
    mx_attn_spec own = mx_attn_spec_for(s, l, T, D, D, c->n_kv_head);
    own.kv_lo = st->n_local;
    be->attention(be, &own, q, kv->k, kv->v, st->out2, st->lse2);
    const float *outs[2] = {st->out1, st->out2}, *lses[2] = {st->lse1, st->lse2};
    mx_star_merge(2, outs, lses, T, H, D, (size_t)H * D, out, lse);
}

void mx_attention_star(mx_session *s, int l, int T, const float *q, float *att) {
    const mx_config *c = &s->m->cfg;
    mx_star *st = s->star;
    mx_comm *comm = st->comm;
    int H = c->n_head, D = c->head_dim, R = comm->size;
    size_t n_out = (size_t)T * H * D, n_msg = n_out + (size_t)T * H;
    local_parts(s, l, T, q, st->send, st->send + n_out);
    if (R == 1) {
        memcpy(att, st->send, n_out * sizeof(float)); /* one rank: its local merge is the answer */
        return;
    }
    mx_err err = {0};
    if (comm->allgather(comm, st->send, st->recv, n_msg, &err)) {
        mx_err_wrap(&err, "Star Attention, layer %d: gathering (out, lse) of %d rows", l, T);
        comm->abort(comm, err.msg, 1);
    }
    for (int r = 0; r < R; r++) {
        st->part_out[r] = st->recv + (size_t)r * n_msg;
        st->part_lse[r] = st->part_out[r] + n_out;
    }
    mx_star_merge(R, st->part_out, st->part_lse, T, H, D, (size_t)H * D, att, NULL);
}
