/* mla_train.c: MLA's explicit form for training, forward and backward (mla_train.h), composed of the training
 * ops (backend_train.h), so it runs wherever the model is placed. Per layer kept: qa, qn (N, Q) and their rstd,
 * q (N, H, n + r) after RoPE, c (N, R), cn (N, R) and its rstd, K (N, H, n + r), V (N, H, v), att (N, H, v),
 * lse (N, H). */
#include "mla_train.h"

#include <stdlib.h>
#include <string.h>

#include "mup.h"
#include "op_profile.h"

typedef struct {
    float *qa, *qn, *q_rstd, *q, *c, *cn, *c_rstd, *K, *V, *att, *lse;
} mla_layer;

typedef struct mx_mla_tacts {
    mla_layer *l; /* n_layer */
    /* scratch */
    float *lat, *kvb, *rot, *dq, *dK, *dV, *datt, *dkvb, *dcn, *dc, *dlat, *dqn, *dqa;
} mx_mla_tacts;

typedef struct {
    int B, T, N, C, H, R, r, n, v, Q;
} mla_dims;

static mla_dims dims_of(const mx_tmodel *m) {
    const mx_train_config *c = &m->cfg;
    int B = m->acts.B, T = m->acts.T;
    return (mla_dims){B,
                      T,
                      B * T,
                      c->d_model,
                      c->n_head,
                      c->mla_kv_rank,
                      c->mla_rope_dim,
                      c->mla_nope_dim,
                      c->mla_v_dim,
                      c->mla_q_rank};
}

static bool any_mla(const mx_tmodel *m) {
    for (int l = 0; l < m->cfg.n_layer; l++)
        if (m->plan[l].kind == MX_ATTN_MLA) return true;
    return false;
}

typedef struct {
    float **p;
    size_t n;
} buf_req;

static bool alloc_all(mx_tmodel *m, buf_req *b, size_t nb) {
    for (size_t i = 0; i < nb; i++)
        if (b[i].n && !(*b[i].p = mx_tmodel_alloc(m, b[i].n))) return false;
    return true;
}

int mx_mla_tacts_alloc(mx_tmodel *m, mx_err *err) {
    if (!any_mla(m)) return MX_OK;
    mla_dims d = dims_of(m);
    size_t N = (size_t)d.N, H = (size_t)d.H, kq = (size_t)(d.n + d.r), L = (size_t)m->cfg.n_layer;
    size_t Qn = (size_t)d.Q, R = (size_t)d.R, kvb = H * (size_t)(d.n + d.v);
    mx_mla_tacts *a = calloc(1, sizeof *a);
    if (!(m->acts.mla = a) || !(a->l = calloc(L, sizeof *a->l))) goto nomem;
    for (size_t l = 0; l < L; l++) {
        mla_layer *y = &a->l[l];
        buf_req b[] = {{&y->qa, N * Qn},       {&y->qn, N * Qn},    {&y->q_rstd, Qn ? N : 0},
                       {&y->q, N * H * kq},    {&y->c, N * R},      {&y->cn, N * R},
                       {&y->c_rstd, N},        {&y->K, N * H * kq}, {&y->V, N * H * d.v},
                       {&y->att, N * H * d.v}, {&y->lse, N * H}};
        if (!alloc_all(m, b, sizeof b / sizeof b[0])) goto nomem;
    }
    buf_req s[] = {{&a->lat, N * (R + d.r)}, {&a->kvb, N * kvb},        {&a->rot, N * H * d.r},
                   {&a->dq, N * H * kq},     {&a->dK, N * H * kq},      {&a->dV, N * H * d.v},
                   {&a->datt, N * H * d.v},  {&a->dkvb, N * kvb},       {&a->dcn, N * R},
                   {&a->dc, N * R},          {&a->dlat, N * (R + d.r)}, {&a->dqn, N * Qn},
                   {&a->dqa, N * Qn}};
    if (!alloc_all(m, s, sizeof s / sizeof s[0])) goto nomem;
    return MX_OK;
nomem:
    return mx_err_set(err, MX_ERR_NOMEM, "out of %s memory for the MLA activations of batch %d x %d",
                      mx_tmodel_where(m), m->acts.B, m->acts.T);
}

void mx_mla_tacts_free(mx_tmodel *m) {
    mx_mla_tacts *a = m->acts.mla;
    if (!a) return;
    for (int l = 0; a->l && l < m->cfg.n_layer; l++) {
        mla_layer *y = &a->l[l];
        float *b[] = {y->qa, y->qn, y->q_rstd, y->q, y->c, y->cn, y->c_rstd, y->K, y->V, y->att, y->lse};
        for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) mx_tmodel_release(m, b[i]);
    }
    float *s[] = {a->lat,  a->kvb, a->rot, a->dq,   a->dK,  a->dV, a->datt,
                  a->dkvb, a->dcn, a->dc,  a->dlat, a->dqn, a->dqa};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) mx_tmodel_release(m, s[i]);
    free(a->l);
    free(a);
    m->acts.mla = NULL;
}

/* Copies w elements of each of `rows` rows: dst (row stride ds) ← src (row stride ss). */
static void cols(mx_tmodel *m, float *dst, size_t ds, const float *src, size_t ss, int w, long rows) {
    MX_OP(m, copy_cols, dst, ds, src, ss, w, rows, false);
}

/* RoPE (or its inverse) on dims [off, off + r) of each of nh heads of stride hs in x (B, T, nh, hs). */
static void rope_part(mx_tmodel *m, float *x, float *rot, const mla_dims *d, int nh, int hs, int off,
                      float theta, bool inverse) {
    long rows = (long)d->N * nh;
    cols(m, rot, (size_t)d->r, x + off, (size_t)hs, d->r, rows);
    MX_OP(m, rope, rot, d->B, d->T, nh, d->r, theta, inverse);
    cols(m, x + off, (size_t)hs, rot, (size_t)d->r, d->r, rows);
}

void mx_mla_tr_fwd(mx_tmodel *m, int l) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *A = &m->acts;
    mx_mla_tacts *a = A->mla;
    mla_layer *y = &a->l[l];
    const mx_tlayer *L = &m->layers[l];
    mla_dims d = dims_of(m);
    int kq = d.n + d.r, kvw = d.n + d.v;
    long NH = (long)d.N * d.H;
    const float *x = A->ln1 + mx_tmodel_slot(m, l) * d.N * d.C;
    if (d.Q > 0) {
        MX_OP(m, matmul_fwd, y->qa, x, L->wq_a->w, NULL, d.N, d.C, d.Q);
        MX_OP(m, rmsnorm_fwd, y->qn, y->q_rstd, y->qa, L->q_a_norm->w, d.N, d.Q, c->norm_eps);
        MX_OP(m, matmul_fwd, y->q, y->qn, L->wq_b->w, NULL, d.N, d.Q, d.H * kq);
    } else {
        MX_OP(m, matmul_fwd, y->q, x, L->wq->w, NULL, d.N, d.C, d.H * kq);
    }
    rope_part(m, y->q, a->rot, &d, d.H, kq, d.n, c->rope_theta, false);
    MX_OP(m, matmul_fwd, a->lat, x, L->wkv_a->w, NULL, d.N, d.C, d.R + d.r);
    cols(m, y->c, (size_t)d.R, a->lat, (size_t)(d.R + d.r), d.R, d.N);
    MX_OP(m, rmsnorm_fwd, y->cn, y->c_rstd, y->c, L->kv_a_norm->w, d.N, d.R, c->norm_eps);
    rope_part(m, a->lat, a->rot, &d, 1, d.R + d.r, d.R, c->rope_theta, false); /* k_r, RoPE'd in place */
    MX_OP(m, matmul_fwd, a->kvb, y->cn, L->wkv_b->w, NULL, d.N, d.R, d.H * kvw);
    cols(m, y->K, (size_t)kq, a->kvb, (size_t)kvw, d.n, NH);
    cols(m, y->V, (size_t)d.v, a->kvb + d.n, (size_t)kvw, d.v, NH);
    for (int h = 0; h < d.H; h++) /* the shared k_r into every head */
        cols(m, y->K + (size_t)h * kq + d.n, (size_t)d.H * kq, a->lat + d.R, (size_t)(d.R + d.r), d.r, d.N);
    mx_tr_attn_shape sh = {d.B, d.T, d.H, d.H, kq, d.v, m->plan[l].window, mx_attn_scale(m, kq)};
    MX_OP(m, attn_fwd, &sh, y->att, y->lse, y->q, y->K, y->V);
    MX_OP(m, matmul_fwd, A->tmp, y->att, L->wo->w, NULL, d.N, d.H * d.v, d.C);
}

void mx_mla_tr_bwd(mx_tmodel *m, int l) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *A = &m->acts;
    mx_mla_tacts *a = A->mla;
    mla_layer *y = &a->l[l];
    const mx_tlayer *L = &m->layers[l];
    mla_dims d = dims_of(m);
    int kq = d.n + d.r, kvw = d.n + d.v, lw = d.R + d.r;
    long NH = (long)d.N * d.H;
    const float *x = A->ln1 + mx_tmodel_slot(m, l) * d.N * d.C;
    MX_OP(m, matmul_bwd, a->datt, L->wo->g, NULL, A->dx, y->att, L->wo->w, d.N, d.H * d.v, d.C, false);
    MX_OP(m, zero, a->dK, (size_t)NH * kq);
    MX_OP(m, zero, a->dV, (size_t)NH * d.v);
    mx_tr_attn_shape sh = {d.B, d.T, d.H, d.H, kq, d.v, m->plan[l].window, mx_attn_scale(m, kq)};
    MX_OP(m, attn_bwd, &sh, a->dq, a->dK, a->dV, a->datt, y->q, y->K, y->V, y->att, y->lse);
    /* keys and values → dlat = [dc ; d k_r] */
    cols(m, a->dkvb, (size_t)kvw, a->dK, (size_t)kq, d.n, NH);
    cols(m, a->dkvb + d.n, (size_t)kvw, a->dV, (size_t)d.v, d.v, NH);
    for (int h = 0; h < d.H; h++) /* d k_r = Σ_h dK_h[n:], in h order */
        MX_OP(m, copy_cols, a->dlat + d.R, (size_t)lw, a->dK + (size_t)h * kq + d.n, (size_t)d.H * kq, d.r,
              d.N, h > 0);
    rope_part(m, a->dlat, a->rot, &d, 1, lw, d.R, c->rope_theta, true);
    MX_OP(m, matmul_bwd, a->dcn, L->wkv_b->g, NULL, a->dkvb, y->cn, L->wkv_b->w, d.N, d.R, d.H * kvw, false);
    MX_OP(m, zero, a->dc, (size_t)d.N * d.R);
    MX_OP(m, rmsnorm_bwd, a->dc, L->kv_a_norm->g, a->dcn, y->c, y->c_rstd, L->kv_a_norm->w, d.N, d.R);
    cols(m, a->dlat, (size_t)lw, a->dc, (size_t)d.R, d.R, d.N);
    MX_OP(m, matmul_bwd, A->dln, L->wkv_a->g, NULL, a->dlat, x, L->wkv_a->w, d.N, d.C, lw, false);
    /* queries */
    rope_part(m, a->dq, a->rot, &d, d.H, kq, d.n, c->rope_theta, true);
    if (d.Q > 0) {
        MX_OP(m, matmul_bwd, a->dqn, L->wq_b->g, NULL, a->dq, y->qn, L->wq_b->w, d.N, d.Q, d.H * kq, false);
        MX_OP(m, zero, a->dqa, (size_t)d.N * d.Q);
        MX_OP(m, rmsnorm_bwd, a->dqa, L->q_a_norm->g, a->dqn, y->qa, y->q_rstd, L->q_a_norm->w, d.N, d.Q);
        MX_OP(m, matmul_bwd, A->dln, L->wq_a->g, NULL, a->dqa, x, L->wq_a->w, d.N, d.C, d.Q, true);
    } else {
        MX_OP(m, matmul_bwd, A->dln, L->wq->g, NULL, a->dq, x, L->wq->w, d.N, d.C, d.H * kq, true);
    }
}
