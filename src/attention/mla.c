/* mla.c: Multi-head Latent Attention (DeepSeek-V2/V3, arXiv 2405.04434) for one layer, through the op
 * contract. R = kv_rank, r = rope_dim, n = nope_dim, v = v_dim, H heads, N = pos + T keys. q = wq_b ·
 * norm(wq_a · h) (or wq · h)        (T, H, n + r); RoPE on the last r of each head lat = [norm(c_kv) ;
 * RoPE(k_rope)] = wkv_a · h  (T, R + r)    → the cache holds only lat (R + r per token) Explicit form
 * (prompts): per-head keys and values are up-projected from the cached latents of all N keys, [k_nope ; v]_h
 * = wkv_b_h · c_kv  (N, H, n + v);  K_h = [k_nope_h ; k_rope] (k_rope shared by all heads) and ordinary
 * attention runs with D = n + r, Dv = v on stores of ubatch slots (kv->mla_k, kv->mla_v). Absorbed form
 * (decode): W_uk folds into the query and attention runs on the latent itself as MQA: q_abs_h = [W_uk_hᵀ
 * q_nope_h ; q_rope_h]  (T, H, R + r);  o_lat = attn(q_abs, K = lat, V = lat[:R]) (T, H, R) o_h = W_uv_h ·
 * o_lat_h  (T, H, v) Both score with 1/sqrt(n + r) and end with h = wo · o. W_uk_h / W_uv_h are row ranges of
 * wkv_b (ne {R, H*(n + v)}: head h's rows are n key rows then v value rows). The form is s->kv.mla_form
 * (auto: explicit when T > 1 and the N keys fit the explicit stores, absorbed otherwise). */
#include <math.h>

#include "../io/dtype.h"
#include "../model/session_state.h"
#include "attention.h"

typedef struct {
    int H, R, r, n, v; /* heads, kv_rank, rope, nope, v dims */
} mla_dims;

static mla_dims dims_of(const mx_config *c) {
    return (mla_dims){c->n_head, c->mla_kv_rank, c->mla_rope_dim, c->mla_nope_dim, c->mla_v_dim};
}

/* Rows [r0, r0 + nr) of a matrix ne {n_in, n_out} as a matrix ne {n_in, nr}. */
static mx_tensor rows_view(const mx_tensor *t, int r0, int nr) {
    mx_tensor w = *t;
    size_t row = mx_dtype_row_bytes(t->type, t->ne[0]);
    w.ne[1] = nr;
    w.data = (const char *)t->data + row * (size_t)r0;
    w.nbytes = row * (size_t)nr;
    w.dev = t->dev ? (char *)t->dev + row * (size_t)r0 : NULL; /* backend.h: row_views */
    return w;
}

/* Copies n0 columns of `rows` rows: dst (row stride ds) ← src (row stride ss). */
static void copy_cols(mx_backend *be, float *dst, size_t ds, const float *src, size_t ss, int n0, int rows) {
    be->copy3d(be, dst, src, n0, rows, 1, ds, ss, 0, 0);
}

/* q (T, H*(n + r)) from h, RoPE'd; tmp and tmp2 scratch of (T, q_rank). */
static void mla_query(mx_session *s, int l, int T, float *q, float *tmp, float *tmp2) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    mla_dims d = dims_of(c);
    if (c->mla_q_rank > 0) {
        be->matmul(be, &L->wq_a, s->h, tmp, T);
        be->rmsnorm(be, tmp, &L->q_a_norm, tmp2, T, c->mla_q_rank, c->norm_eps);
        be->matmul(be, &L->wq_b, tmp2, q, T);
    } else {
        be->matmul(be, &L->wq, s->h, q, T);
    }
    be->rope(be, q + d.n, T, d.H, d.n + d.r, d.r, s->pos, c->rope_theta, c->rope_mode);
}

/* The latents of the T new tokens into the layer's store; lat (T, R + r), c and cn scratch of (T, R). */
static void mla_write_latent(mx_session *s, int l, int T, float *lat, float *c_kv, float *cn) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    mx_kv_layer *kv = &s->kv.layers[l];
    mla_dims d = dims_of(c);
    size_t w = (size_t)d.R + d.r;
    be->matmul(be, &L->wkv_a, s->h, lat, T);
    copy_cols(be, c_kv, d.R, lat, w, d.R, T);
    be->rmsnorm(be, c_kv, &L->kv_a_norm, cn, T, d.R, c->norm_eps);
    copy_cols(be, lat, w, cn, d.R, d.R, T);
    be->rope(be, lat + d.R, T, 1, (int)w, d.r, s->pos, c->rope_theta, c->rope_mode);
    be->kv_write(be, kv->k, lat, T, (int)w, s->pos, kv->n_slots);
}

/* Explicit form: q (T, H*(n + r)) → att (T, H*v). Uses buf[1..5]. */
static void mla_explicit(mx_session *s, int l, int T, const float *q, float *att) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    mx_kv_layer *kv = &s->kv.layers[l];
    mla_dims d = dims_of(c);
    int N = s->pos + T, kq = d.n + d.r, kvb_w = d.n + d.v;
    size_t w = (size_t)d.R + d.r, H = (size_t)d.H;
    float *lat = s->buf[1], *c_all = s->buf[2], *kvb = s->buf[3], *K = s->buf[4], *V = s->buf[5];

    be->kv_read(be, kv->k, lat, N, (int)w, 0, kv->n_slots); /* (N, R + r) */
    copy_cols(be, c_all, d.R, lat, w, d.R, N);
    be->matmul(be, &L->wkv_b, c_all, kvb, N); /* (N, H, n + v) */
    be->copy3d(be, K, kvb, d.n, d.H, N, kq, kvb_w, H * kq, H * kvb_w);
    be->copy3d(be, K + d.n, lat + d.R, d.r, d.H, N, kq, 0, H * kq, w); /* the shared k_rope, every head */
    be->copy3d(be, V, kvb + d.n, d.v, d.H, N, d.v, kvb_w, H * d.v, H * kvb_w);
    be->kv_write(be, s->kv.mla_k, K, N, (int)(H * kq), 0, s->kv.mla_slots);
    be->kv_write(be, s->kv.mla_v, V, N, (int)(H * d.v), 0, s->kv.mla_slots);

    mx_attn_spec spec = mx_attn_spec_for(s, l, T, kq, d.v, d.H);
    spec.n_slots = s->kv.mla_slots;
    spec.k_stride = H * kq;
    spec.v_stride = H * d.v;
    spec.scale = 1.0f / sqrtf((float)kq);
    be->attention(be, &spec, q, s->kv.mla_k, s->kv.mla_v, att, NULL);
}

/* Absorbed form: q (T, H*(n + r)) → att (T, H*v) (att may alias q). Uses buf[2..5]. */
static void mla_absorbed(mx_session *s, int l, int T, const float *q, float *att) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    mx_kv_layer *kv = &s->kv.layers[l];
    mla_dims d = dims_of(c);
    int kq = d.n + d.r, kvb_w = d.n + d.v;
    size_t w = (size_t)d.R + d.r, H = (size_t)d.H;
    float *tmp = s->buf[2], *qa = s->buf[3], *o_lat = s->buf[4], *tmp2 = s->buf[5];

    for (int h = 0; h < d.H; h++) { /* q_lat_h = W_uk_hᵀ q_nope_h */
        mx_tensor uk = rows_view(&L->wkv_b, h * kvb_w, d.n);
        copy_cols(be, tmp, d.n, q + (size_t)h * kq, H * kq, d.n, T);
        be->matmul_t(be, &uk, tmp, tmp2, T); /* (T, R) */
        copy_cols(be, qa + (size_t)h * w, H * w, tmp2, d.R, d.R, T);
    }
    be->copy3d(be, qa + d.R, q + d.n, d.r, d.H, T, w, kq, H * w, H * kq); /* q_rope */

    mx_attn_spec spec = mx_attn_spec_for(s, l, T, (int)w, d.R, 1);
    spec.scale = 1.0f / sqrtf((float)kq);
    be->attention(be, &spec, qa, kv->k, kv->k, o_lat, NULL); /* (T, H, R) */

    for (int h = 0; h < d.H; h++) { /* o_h = W_uv_h o_lat_h */
        mx_tensor uv = rows_view(&L->wkv_b, h * kvb_w + d.n, d.v);
        copy_cols(be, tmp, d.R, o_lat + (size_t)h * d.R, H * d.R, d.R, T);
        be->matmul(be, &uv, tmp, tmp2, T); /* (T, v) */
        copy_cols(be, att + (size_t)h * d.v, H * d.v, tmp2, d.v, d.v, T);
    }
}

/* Whether this call runs the explicit form. */
static bool use_explicit(const mx_session *s, int l, int T) {
    int N = s->pos + T;
    bool fits = N <= s->kv.mla_slots && N <= s->kv.layers[l].n_slots;
    switch (s->kv.mla_form) {
    case MX_MLA_EXPLICIT:
        return fits;
    case MX_MLA_ABSORBED:
        return false;
    default:
        return fits && T > 1;
    }
}

void mx_attention_mla(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    float *q = s->buf[0];
    mla_query(s, l, T, q, s->buf[1], s->buf[2]);
    if (c->plan[l].kv_from == l) mla_write_latent(s, l, T, s->buf[1], s->buf[2], s->buf[3]);
    if (use_explicit(s, l, T)) {
        float *att = s->buf[2];
        mla_explicit(s, l, T, q, att);
        be->matmul(be, &L->wo, att, s->h, T);
    } else {
        mla_absorbed(s, l, T, q, q);
        be->matmul(be, &L->wo, q, s->h, T);
    }
}
