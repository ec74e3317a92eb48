/* mka.c: MKA and FastMKA attention for one layer (docs/attention.md, "MKA and FastMKA"), causal, through the
 * op contract. r = softmax(W2 · tanh(W1 · x + b1) + b2)          (T, 3), x = s->h the normed layer input (T,
 * C) L1 = x;  L2(t) = mean(x_0..x_t) (prefix sums carried in the cache);  L3 = 0 (K/V = the biases) q =
 * RoPE(Wq · x + bq)                               (T, H*D) MKA:     K_i/V_i from L_i (L1 and L2 cached: k, v
 * and k2, v2), o_i = attn(q, K_i, V_i), o_3 = bv; h = Wo · Σ_i r_i o_i + bo FastMKA: mem = r_1 x + r_2 L2;
 * K/V from mem (cached); h = Wo · attn(q, K, V) + bo Layers reading another layer's cache compute neither K/V
 * nor prefix sums. */
#include "../model/session_state.h"
#include "attention.h"

/* r (T, 3) = the router's mixing weights; tmp scratch of (T, C). */
static void mka_router(mx_session *s, int l, int T, float *r, float *tmp) {
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    be->matmul(be, &L->mka_w1, s->h, tmp, T);
    be->add_bias(be, tmp, &L->mka_b1, T, s->m->cfg.d_model);
    be->tanh_(be, tmp, T * s->m->cfg.d_model);
    be->matmul(be, &L->mka_w2, tmp, r, T);
    be->add_bias(be, r, &L->mka_b2, T, 3);
    be->softmax_rows(be, r, T, 3);
}

/* K/V of the T rows of mem (T, C), RoPE'd at the session's positions, written into (ks, vs). */
static void mka_write_kv(mx_session *s, int l, int T, const float *mem, void *ks, void *vs, float *k,
                         float *v) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    const mx_kv_layer *kv = &s->kv.layers[l];
    int G = c->n_kv_head, D = c->head_dim;
    be->matmul(be, &L->wk, mem, k, T);
    be->matmul(be, &L->wv, mem, v, T);
    if (L->bk.data) be->add_bias(be, k, &L->bk, T, G * D);
    if (L->bv.data) be->add_bias(be, v, &L->bv, T, G * D);
    if (c->use_rope) be->rope(be, k, T, G, D, c->rope_dim, s->pos, c->rope_theta, c->rope_mode);
    be->kv_write(be, ks, k, T, G * D, s->pos, kv->n_slots);
    be->kv_write(be, vs, v, T, G * D, s->pos, kv->n_slots);
}

static void mka_query(mx_session *s, int l, int T, float *q) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    be->matmul(be, &L->wq, s->h, q, T);
    if (L->bq.data) be->add_bias(be, q, &L->bq, T, c->n_head * c->head_dim);
    if (c->use_rope)
        be->rope(be, q, T, c->n_head, c->head_dim, c->rope_dim, s->pos, c->rope_theta, c->rope_mode);
}

/* acc (T, H*D) += r_3 · bv broadcast to the query heads (pass 3: o_3 = bv exactly); row and row2 scratch. */
static void mka_add_bias_pass(mx_session *s, int l, int T, float *acc, const float *r, float *row,
                              float *row2) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    int G = c->n_kv_head, D = c->head_dim, group = c->n_head / c->n_kv_head;
    if (!L->bv.data) return;
    be->fill(be, row, (size_t)G * D, 0.0f);
    be->add_bias(be, row, &L->bv, 1, G * D);
    be->copy3d(be, row2, row, D, group, G, D, 0, (size_t)group * D, D); /* (G, D) → (H, D) */
    be->scale_add_rows(be, acc, row2, 0, r + 2, 3, T, c->n_head * D);
}

void mx_attention_mka(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    mx_kv_layer *kv = &s->kv.layers[l];
    bool fast = c->plan[l].kind == MX_ATTN_FASTMKA, writes = c->plan[l].kv_from == l;
    int C = c->d_model, HD = c->n_head * c->head_dim;
    float *q = s->buf[0], *k = s->buf[1], *v = s->buf[2], *att = s->buf[3], *mem = s->buf[4], *r = s->buf[5];

    mka_router(s, l, T, r, k);
    if (writes) {
        be->prefix_mean(be, s->h, T, C, kv->sums, s->pos, kv->n_slots, mem); /* L2 */
        if (fast) {
            be->fill(be, att, (size_t)T * C, 0.0f);
            be->scale_add_rows(be, att, s->h, C, r + 0, 3, T, C);
            be->scale_add_rows(be, att, mem, C, r + 1, 3, T, C);
            mka_write_kv(s, l, T, att, kv->k, kv->v, k, v);
        } else {
            mka_write_kv(s, l, T, s->h, kv->k, kv->v, k, v);
            mka_write_kv(s, l, T, mem, kv->k2, kv->v2, k, v);
        }
    }
    mka_query(s, l, T, q);
    mx_attn_spec spec = mx_attn_spec_for(s, l, T, c->head_dim, c->head_dim, c->n_kv_head);
    be->attention(be, &spec, q, kv->k, kv->v, att, NULL);
    float *out = att;
    if (!fast) { /* mix the passes: mem = r_1 o_1 + r_2 o_2 + r_3 bv */
        out = mem;
        be->fill(be, out, (size_t)T * HD, 0.0f);
        be->scale_add_rows(be, out, att, HD, r + 0, 3, T, HD);
        be->attention(be, &spec, q, kv->k2, kv->v2, att, NULL);
        be->scale_add_rows(be, out, att, HD, r + 1, 3, T, HD);
        mka_add_bias_pass(s, l, T, out, r, k, v);
    }
    be->matmul(be, &L->wo, out, s->h, T);
    if (L->bo.data) be->add_bias(be, s->h, &L->bo, T, C);
}
