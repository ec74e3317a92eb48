/* mha.c: the MHA family (MHA, GQA, MQA) for one layer, with the plan's window and shared caches.
 * q = Wq·h (+bq), roped; a writing layer also computes k, v (+biases), ropes k and writes both into its store
 * (ring slots for window layers); a reading layer uses its writer's store. out = Wo·attn (+bo).
 * Shapes: h (T, C) → q (T, H*D); k, v (T, G*D); att (T, H*D) → h (T, C). */
#include <math.h>

#include "../model/session_state.h"
#include "attention.h"
#include "xattn.h"

/* The attention spec for T queries at the session's position against layer l's store. */
mx_attn_spec mx_attn_spec_for(const mx_session *s, int l, int T, int head_dim, int v_dim, int n_kv_head) {
    const mx_config *c = &s->m->cfg;
    const mx_kv_layer *kv = &s->kv.layers[l];
    int last = s->pos + T - 1, oldest = last - kv->n_slots + 1;
    return (mx_attn_spec){
        .n_q = T,
        .n_head = c->n_head,
        .n_kv_head = n_kv_head,
        .head_dim = head_dim,
        .v_dim = v_dim,
        .q_pos0 = s->pos,
        .n_slots = kv->n_slots,
        .window = c->plan[l].window,
        .causal = true,
        .kv_lo = oldest > 0 ? oldest : 0,
        .kv_hi = last,
        .scale = 1.0f / sqrtf((float)head_dim),
        .q_stride = (size_t)c->n_head * head_dim,
        .k_stride = kv->k_row,
        .v_stride = kv->v_row,
        .o_stride = (size_t)c->n_head * v_dim,
    };
}

void mx_attention_mha(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    mx_kv_layer *kv = &s->kv.layers[l];
    int H = c->n_head, G = c->n_kv_head, D = c->head_dim;
    float *q = s->buf[0], *k = s->buf[1], *v = s->buf[2], *att = s->buf[3];

    bool writes_kv = c->plan[l].kv_from == l;
    const mx_tensor *w[3] = {&L->wq, &L->wk, &L->wv}; /* one input: one group (a reader needs Q only) */
    float *y[3] = {q, k, v};
    mx_matmul_group(be, writes_kv ? 3 : 1, w, s->h, y, T);
    if (L->bq.data) be->add_bias(be, q, &L->bq, T, H * D);
    if (c->use_rope)
        be->rope(be, q, T, H, D, c->rope_dim, s->pos + s->pos_offset, c->rope_theta, c->rope_mode);
    if (writes_kv) {
        if (L->bk.data) be->add_bias(be, k, &L->bk, T, G * D);
        if (L->bv.data) be->add_bias(be, v, &L->bv, T, G * D);
        if (c->use_rope)
            be->rope(be, k, T, G, D, c->rope_dim, s->pos + s->pos_offset, c->rope_theta, c->rope_mode);
        be->kv_write(be, kv->k, k, T, G * D, s->pos, kv->n_slots);
        be->kv_write(be, kv->v, v, T, G * D, s->pos, kv->n_slots);
    }
    if (s->star) {
        mx_attention_star(s, l, T, q, att);
    } else if (s->xattn) {
        mx_attention_xattn(s, l, T, q, att);
    } else {
        mx_attn_spec spec = mx_attn_spec_for(s, l, T, D, D, G);
        be->attention(be, &spec, q, kv->k, kv->v, att, NULL);
    }
    be->matmul(be, &L->wo, att, s->h, T);
    if (L->bo.data) be->add_bias(be, s->h, &L->bo, T, c->d_model);
}
