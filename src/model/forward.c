/* forward.c: the transformer forward pass, written once against the op contract (backend.h).
 * Llama block: x += Wo·attn(rope(Wq·n1(x)), rope(Wk·n1(x)), Wv·n1(x));  x += Wd·(silu(Wg·n2(x)) ⊙ Wu·n2(x)).
 * Attention reads the KV store named by the layer's plan (its own, or an earlier layer's), with its window. */
#include <math.h>

#include "session.h"

static void attention_block(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    const mx_layer_plan *p = &c->plan[l];
    mx_backend *be = s->be;
    mx_kv_layer *kv = &s->kv.layers[l];
    int H = c->n_head, G = c->n_kv_head, D = c->head_dim, C = c->d_model;

    be->rmsnorm(be, s->x, &L->attn_norm, s->h, T, C, c->norm_eps);
    be->matmul(be, &L->wq, s->h, s->q, T);                       /* q (T, H*D) */
    be->rope(be, s->q, T, H, D, c->rope_dim, s->pos, c->rope_theta, c->rope_mode);
    if (p->kv_from == l) {                                        /* this layer writes its cache */
        be->matmul(be, &L->wk, s->h, s->k, T);                   /* k (T, G*D) */
        be->matmul(be, &L->wv, s->h, s->v, T);                   /* v (T, G*D) */
        be->rope(be, s->k, T, G, D, c->rope_dim, s->pos, c->rope_theta, c->rope_mode);
        be->kv_write(be, kv->k, s->k, T, G * D, s->pos, kv->n_slots);
        be->kv_write(be, kv->v, s->v, T, G * D, s->pos, kv->n_slots);
    }
    int last = s->pos + T - 1, oldest = last - kv->n_slots + 1;
    mx_attn_spec spec = {
        .n_q = T, .n_head = H, .n_kv_head = G, .head_dim = D, .v_dim = D, .q_pos0 = s->pos,
        .n_slots = kv->n_slots, .window = p->window, .causal = true, .kv_lo = oldest > 0 ? oldest : 0,
        .kv_hi = last, .scale = 1.0f / sqrtf((float)D), .q_stride = (size_t)H * D, .k_stride = kv->k_row,
        .v_stride = kv->v_row, .o_stride = (size_t)H * D,
    };
    be->attention(be, &spec, s->q, kv->k, kv->v, s->att, NULL);  /* att (T, H*D) */
    be->matmul(be, &L->wo, s->att, s->h, T);                     /* (T, C) */
    be->add(be, s->x, s->h, T * C);
}

static void mlp_block(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    be->rmsnorm(be, s->x, &L->ffn_norm, s->h, T, c->d_model, c->norm_eps);
    be->matmul(be, &L->w_gate, s->h, s->g, T);                   /* (T, F) */
    be->matmul(be, &L->w_up, s->h, s->u, T);                     /* (T, F) */
    be->swiglu(be, s->g, s->u, T * c->d_ff);
    be->matmul(be, &L->w_down, s->g, s->h, T);                   /* (T, C) */
    be->add(be, s->x, s->h, T * c->d_model);
}

void mx_forward(mx_session *s, const int *tokens, int T, float *logits, bool all_logits) {
    const mx_config *c = &s->m->cfg;
    mx_backend *be = s->be;
    int C = c->d_model;
    be->embed(be, &s->m->w.tok_embd, tokens, T, s->x);           /* x (T, C) */
    for (int l = 0; l < c->n_layer; l++) {
        attention_block(s, l, T);
        mlp_block(s, l, T);
    }
    s->pos += T;
    if (!logits) return;
    int rows = all_logits ? T : 1;
    const float *xr = all_logits ? s->x : s->x + (size_t)(T - 1) * C;
    be->rmsnorm(be, xr, &s->m->w.out_norm, s->h, rows, C, c->norm_eps);
    be->matmul(be, &s->m->w.output, s->h, s->logits, rows);      /* (rows, vocab) */
    be->to_host(be, logits, s->logits, (size_t)rows * c->vocab);
}
