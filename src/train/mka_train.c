/* mka_train.c: MKA and FastMKA for training, forward and backward (mka_train.h), composed of the training ops
 * (backend_train.h), so they run wherever the model is placed.
 * Shapes: x, L2, mem, the router's hidden layer (N, C); r (N, 3); q, o_1, o_2, mix (N, H*D); K/V (N, G*D).
 * The causal running mean's backward is a reverse cumulative sum: dx_u += Σ_{t ≥ u} dL2_t / (t + 1). */
#include "mka_train.h"

#include <stdlib.h>

#include "mup.h"
#include "op_profile.h"

typedef struct {
    float *hr, *r, *l2, *mem, *q, *k1, *v1, *k2, *v2, *o1, *o2, *lse1, *lse2, *mix;
} mka_layer;

typedef struct mx_mka_tacts {
    mka_layer *l;                                                                /* n_layer */
    float *dmix, *do1, *dq, *dq2, *dk1, *dv1, *dk2, *dv2, *dm, *dmem, *dr, *dhr; /* scratch */
} mx_mka_tacts;

typedef struct {
    int B, T, N, C, H, G, D;
    bool fast, rope;
} mka_dims;

static mka_dims dims_of(const mx_tmodel *m, int l) {
    const mx_train_config *c = &m->cfg;
    int B = m->acts.B, T = m->acts.T;
    return (mka_dims){B,
                      T,
                      B * T,
                      c->d_model,
                      c->n_head,
                      c->n_kv_head,
                      m->head_dim,
                      m->plan[l].kind == MX_ATTN_FASTMKA,
                      c->arch == MX_TARCH_LLAMA};
}

static bool is_mka(const mx_tmodel *m, int l) {
    return m->plan[l].kind == MX_ATTN_MKA || m->plan[l].kind == MX_ATTN_FASTMKA;
}

int mx_mka_tacts_alloc(mx_tmodel *m, mx_err *err) {
    int L = m->cfg.n_layer;
    bool any = false;
    for (int l = 0; l < L; l++) any |= is_mka(m, l);
    if (!any) return MX_OK;
    mka_dims d = dims_of(m, 0);
    size_t N = (size_t)d.N, C = (size_t)d.C, HD = (size_t)d.H * d.D, GD = (size_t)d.G * d.D, H = (size_t)d.H;
    mx_mka_tacts *a = calloc(1, sizeof *a);
    if (!(m->acts.mka = a) || !(a->l = calloc((size_t)L, sizeof *a->l))) goto nomem;
    for (int l = 0; l < L; l++) {
        if (!is_mka(m, l)) continue;
        mka_layer *y = &a->l[l];
        bool two = m->plan[l].kind == MX_ATTN_MKA;
        struct {
            float **p;
            size_t n;
        } b[] = {{&y->hr, N * C},
                 {&y->r, N * 3},
                 {&y->l2, N * C},
                 {&y->mem, two ? 0 : N * C},
                 {&y->q, N * HD},
                 {&y->k1, N * GD},
                 {&y->v1, N * GD},
                 {&y->k2, two ? N * GD : 0},
                 {&y->v2, two ? N * GD : 0},
                 {&y->o1, N * HD},
                 {&y->o2, two ? N * HD : 0},
                 {&y->lse1, N * H},
                 {&y->lse2, two ? N * H : 0},
                 {&y->mix, N * HD}};
        for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
            if (b[i].n && !(*b[i].p = mx_tmodel_alloc(m, b[i].n))) goto nomem;
    }
    struct {
        float **p;
        size_t n;
    } s[] = {{&a->dmix, N * HD}, {&a->do1, N * HD}, {&a->dq, N * HD},  {&a->dq2, N * HD},
             {&a->dk1, N * GD},  {&a->dv1, N * GD}, {&a->dk2, N * GD}, {&a->dv2, N * GD},
             {&a->dm, N * C},    {&a->dmem, N * C}, {&a->dr, N * 3},   {&a->dhr, N * C}};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (!(*s[i].p = mx_tmodel_alloc(m, s[i].n))) goto nomem;
    return MX_OK;
nomem:
    return mx_err_set(err, MX_ERR_NOMEM, "out of %s memory for the MKA activations of batch %d x %d",
                      mx_tmodel_where(m), m->acts.B, m->acts.T);
}

void mx_mka_tacts_free(mx_tmodel *m) {
    mx_mka_tacts *a = m->acts.mka;
    if (!a) return;
    for (int l = 0; a->l && l < m->cfg.n_layer; l++) {
        mka_layer *y = &a->l[l];
        float *b[] = {y->hr, y->r,  y->l2, y->mem, y->q,    y->k1,   y->v1,
                      y->k2, y->v2, y->o1, y->o2,  y->lse1, y->lse2, y->mix};
        for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) mx_tmodel_release(m, b[i]);
    }
    float *s[] = {a->dmix, a->do1, a->dq, a->dq2,  a->dk1, a->dv1,
                  a->dk2,  a->dv2, a->dm, a->dmem, a->dr,  a->dhr};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) mx_tmodel_release(m, s[i]);
    free(a->l);
    free(a);
    m->acts.mka = NULL;
}

static const float *wt(const mx_param *p) {
    return p ? p->w : NULL;
}

static float *gr(const mx_param *p) {
    return p ? p->g : NULL;
}

/* hr = tanh(W1 · x + b1) (N, C); r = softmax(W2 · hr + b2) (N, 3). */
static void router_fwd(mx_tmodel *m, const mx_tlayer *L, const float *x, float *hr, float *r, int N, int C) {
    MX_OP(m, matmul_fwd, hr, x, L->mka_w1->w, L->mka_b1->w, N, C, C);
    MX_OP(m, tanh_fwd, hr, hr, (long)N * C);
    MX_OP(m, matmul_fwd, r, hr, L->mka_w2->w, L->mka_b2->w, N, C, 3);
    MX_OP(m, softmax_fwd, r, N, 3);
}

/* k, v (N, G*D) of the rows `in` (N, C), RoPE'd on llama blocks. */
static void kv_fwd(mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const float *in, float *k, float *v) {
    MX_OP(m, matmul_fwd, k, in, L->wk->w, wt(L->bk), d->N, d->C, d->G * d->D);
    MX_OP(m, matmul_fwd, v, in, L->wv->w, wt(L->bv), d->N, d->C, d->G * d->D);
    if (d->rope) MX_OP(m, rope, k, d->B, d->T, d->G, d->D, m->cfg.rope_theta, false);
}

/* din (N, C) (= or += when acc) ← the backward of kv_fwd given dk (un-RoPE'd in place), dv. */
static void kv_bwd(mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const float *in, float *dk,
                   const float *dv, float *din, bool acc) {
    if (d->rope) MX_OP(m, rope, dk, d->B, d->T, d->G, d->D, m->cfg.rope_theta, true);
    MX_OP(m, matmul_bwd, din, L->wk->g, gr(L->bk), dk, in, L->wk->w, d->N, d->C, d->G * d->D, acc);
    MX_OP(m, matmul_bwd, din, L->wv->g, gr(L->bv), dv, in, L->wv->w, d->N, d->C, d->G * d->D, true);
}

void mx_mka_tr_fwd(mx_tmodel *m, int l) {
    mx_tacts *A = &m->acts;
    mka_layer *y = &A->mka->l[l];
    const mx_tlayer *L = &m->layers[l];
    mka_dims d = dims_of(m, l);
    const float *x = A->ln1 + mx_tmodel_slot(m, l) * d.N * d.C;
    router_fwd(m, L, x, y->hr, y->r, d.N, d.C);
    MX_OP(m, cummean_fwd, y->l2, x, d.B, d.T, d.C);
    MX_OP(m, matmul_fwd, y->q, x, L->wq->w, wt(L->bq), d.N, d.C, d.H * d.D);
    if (d.rope) MX_OP(m, rope, y->q, d.B, d.T, d.H, d.D, m->cfg.rope_theta, false);
    mx_tr_attn_shape sh = {d.B, d.T, d.H, d.G, d.D, d.D, m->plan[l].window, mx_attn_scale(m, d.D)};
    if (d.fast) { /* mem = r_1 x + r_2 l2 */
        MX_OP(m, mix3_fwd, y->mem, y->r, x, y->l2, NULL, d.N, 1, 1, d.C);
        kv_fwd(m, L, &d, y->mem, y->k1, y->v1);
        MX_OP(m, attn_fwd, &sh, y->mix, y->lse1, y->q, y->k1, y->v1);
    } else { /* mix = r_1 o_1 + r_2 o_2 + r_3 bv (bv of each query head's KV head; 0 without biases) */
        kv_fwd(m, L, &d, x, y->k1, y->v1);
        kv_fwd(m, L, &d, y->l2, y->k2, y->v2);
        MX_OP(m, attn_fwd, &sh, y->o1, y->lse1, y->q, y->k1, y->v1);
        MX_OP(m, attn_fwd, &sh, y->o2, y->lse2, y->q, y->k2, y->v2);
        MX_OP(m, mix3_fwd, y->mix, y->r, y->o1, y->o2, wt(L->bv), d.N, d.H, d.G, d.D);
    }
    MX_OP(m, matmul_fwd, A->tmp, y->mix, L->wo->w, wt(L->bo), d.N, d.H * d.D, d.C);
}

/* Router backward from dr (N, 3): parameter gradients, and dx (N, C) += the input's. */
static void router_bwd(mx_tmodel *m, const mx_tlayer *L, const mka_layer *y, mx_mka_tacts *a, const float *x,
                       float *dx, int N, int C) {
    MX_OP(m, softmax_bwd, a->dr, y->r, N, 3);
    MX_OP(m, matmul_bwd, a->dhr, L->mka_w2->g, L->mka_b2->g, a->dr, y->hr, L->mka_w2->w, N, C, 3, false);
    MX_OP(m, tanh_bwd, a->dhr, a->dhr, y->hr, (long)N * C);
    MX_OP(m, matmul_bwd, dx, L->mka_w1->g, L->mka_b1->g, a->dhr, x, L->mka_w1->w, N, C, C, true);
}

/* FastMKA from dmix: dx (= A->dln) and dl2 (= a->dm), dr. */
static void fast_bwd(mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const mka_layer *y, mx_mka_tacts *a,
                     const float *x, float *dx, const mx_tr_attn_shape *sh) {
    MX_OP(m, zero, a->dk1, (size_t)d->N * d->G * d->D);
    MX_OP(m, zero, a->dv1, (size_t)d->N * d->G * d->D);
    MX_OP(m, attn_bwd, sh, a->dq, a->dk1, a->dv1, a->dmix, y->q, y->k1, y->v1, y->mix, y->lse1);
    kv_bwd(m, L, d, y->mem, a->dk1, a->dv1, a->dmem, false);
    MX_OP(m, mix3_bwd, dx, a->dm, a->dr, NULL, a->dmem, y->r, x, y->l2, NULL, d->N, 1, 1, d->C);
}

/* MKA (two attention passes) from dmix: dx (= A->dln), dl2 (= a->dm), dr. */
static void full_bwd(mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const mka_layer *y, mx_mka_tacts *a,
                     const float *x, float *dx, const mx_tr_attn_shape *sh) {
    size_t nkv = (size_t)d->N * d->G * d->D, nq = (size_t)d->N * d->H * d->D;
    /* do1 and, borrowing dq2, do2; dr; bv's gradient of the third term */
    MX_OP(m, mix3_bwd, a->do1, a->dq2, a->dr, gr(L->bv), a->dmix, y->r, y->o1, y->o2, wt(L->bv), d->N, d->H,
          d->G, d->D);
    float *zeroed[] = {a->dk1, a->dv1, a->dk2, a->dv2};
    for (int i = 0; i < 4; i++) MX_OP(m, zero, zeroed[i], nkv);
    MX_OP(m, attn_bwd, sh, a->dq, a->dk1, a->dv1, a->do1, y->q, y->k1, y->v1, y->o1, y->lse1);
    mx_tmodel_copy(m, a->do1, a->dq2, nq); /* do2 */
    MX_OP(m, attn_bwd, sh, a->dq2, a->dk2, a->dv2, a->do1, y->q, y->k2, y->v2, y->o2, y->lse2);
    MX_OP(m, add, a->dq, a->dq, a->dq2, (long)nq);
    kv_bwd(m, L, d, x, a->dk1, a->dv1, dx, false);
    kv_bwd(m, L, d, y->l2, a->dk2, a->dv2, a->dm, false);
}

void mx_mka_tr_bwd(mx_tmodel *m, int l) {
    mx_tacts *A = &m->acts;
    mx_mka_tacts *a = A->mka;
    mka_layer *y = &a->l[l];
    const mx_tlayer *L = &m->layers[l];
    mka_dims d = dims_of(m, l);
    const float *x = A->ln1 + mx_tmodel_slot(m, l) * d.N * d.C;
    mx_tr_attn_shape sh = {d.B, d.T, d.H, d.G, d.D, d.D, m->plan[l].window, mx_attn_scale(m, d.D)};
    MX_OP(m, matmul_bwd, a->dmix, L->wo->g, gr(L->bo), A->dx, y->mix, L->wo->w, d.N, d.H * d.D, d.C, false);
    if (d.fast)
        fast_bwd(m, L, &d, y, a, x, A->dln, &sh);
    else
        full_bwd(m, L, &d, y, a, x, A->dln, &sh);
    if (d.rope) MX_OP(m, rope, a->dq, d.B, d.T, d.H, d.D, m->cfg.rope_theta, true);
    MX_OP(m, matmul_bwd, A->dln, L->wq->g, gr(L->bq), a->dq, x, L->wq->w, d.N, d.C, d.H * d.D, true);
    MX_OP(m, cummean_bwd, A->dln, a->dm, d.B, d.T, d.C);
    router_bwd(m, L, y, a, x, A->dln, d.N, d.C);
}
