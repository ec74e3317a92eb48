/* mka_train.c: MKA and FastMKA for training, forward and backward (mka_train.h).
 * Shapes: x, L2, mem, the router's hidden layer (N, C); r (N, 3); q, o_1, o_2, mix (N, H*D); K/V (N, G*D).
 * The causal running mean's backward is a reverse cumulative sum: dx_u += Σ_{t ≥ u} dL2_t / (t + 1). */
#include "mka_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mup.h"
#include "train_ops.h"

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
            if (b[i].n && !(*b[i].p = calloc(b[i].n, sizeof(float)))) goto nomem;
    }
    struct {
        float **p;
        size_t n;
    } s[] = {{&a->dmix, N * HD}, {&a->do1, N * HD}, {&a->dq, N * HD},  {&a->dq2, N * HD},
             {&a->dk1, N * GD},  {&a->dv1, N * GD}, {&a->dk2, N * GD}, {&a->dv2, N * GD},
             {&a->dm, N * C},    {&a->dmem, N * C}, {&a->dr, N * 3},   {&a->dhr, N * C}};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (!(*s[i].p = calloc(s[i].n, sizeof(float)))) goto nomem;
    return MX_OK;
nomem:
    return mx_err_set(err, MX_ERR_NOMEM, "out of memory for the MKA activations");
}

void mx_mka_tacts_free(mx_tmodel *m) {
    mx_mka_tacts *a = m->acts.mka;
    if (!a) return;
    for (int l = 0; a->l && l < m->cfg.n_layer; l++) {
        mka_layer *y = &a->l[l];
        float *b[] = {y->hr, y->r,  y->l2, y->mem, y->q,    y->k1,   y->v1,
                      y->k2, y->v2, y->o1, y->o2,  y->lse1, y->lse2, y->mix};
        for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) free(b[i]);
    }
    float *s[] = {a->dmix, a->do1, a->dq, a->dq2,  a->dk1, a->dv1,
                  a->dk2,  a->dv2, a->dm, a->dmem, a->dr,  a->dhr};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) free(s[i]);
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
static void router_fwd(const mx_tlayer *L, const float *x, float *hr, float *r, int N, int C) {
    mx_tr_matmul_fwd(hr, x, L->mka_w1->w, L->mka_b1->w, N, C, C);
#pragma omp parallel for
    for (long i = 0; i < (long)N * C; i++) hr[i] = tanhf(hr[i]);
    mx_tr_matmul_fwd(r, hr, L->mka_w2->w, L->mka_b2->w, N, C, 3);
    for (int n = 0; n < N; n++) {
        float *z = r + (size_t)n * 3, mx = fmaxf(z[0], fmaxf(z[1], z[2]));
        double e0 = exp((double)z[0] - mx), e1 = exp((double)z[1] - mx), e2 = exp((double)z[2] - mx),
               s = e0 + e1 + e2;
        z[0] = (float)(e0 / s), z[1] = (float)(e1 / s), z[2] = (float)(e2 / s);
    }
}

/* l2[b, t] = mean(x[b, 0..t]) (B, T, C), sums in double. */
static void prefix_mean(float *l2, const float *x, int B, int T, int C) {
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int t = 0; t < T; t++) {
                size_t i = ((size_t)b * T + t) * C + c;
                s += x[i];
                l2[i] = (float)(s / (t + 1));
            }
        }
}

/* dx[b, u] += Σ_{t ≥ u} dl2[b, t] / (t + 1). */
static void prefix_mean_bwd(float *dx, const float *dl2, int B, int T, int C) {
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int t = T - 1; t >= 0; t--) {
                size_t i = ((size_t)b * T + t) * C + c;
                s += dl2[i] / (t + 1);
                dx[i] += (float)s;
            }
        }
}

/* k, v (N, G*D) of the rows `in` (N, C), RoPE'd on llama blocks. */
static void kv_fwd(const mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const float *in, float *k,
                   float *v) {
    mx_tr_matmul_fwd(k, in, L->wk->w, wt(L->bk), d->N, d->C, d->G * d->D);
    mx_tr_matmul_fwd(v, in, L->wv->w, wt(L->bv), d->N, d->C, d->G * d->D);
    if (d->rope) mx_tr_rope(k, d->B, d->T, d->G, d->D, m->cfg.rope_theta, false);
}

/* din (N, C) (= or += when acc) ← the backward of kv_fwd given dk (un-RoPE'd in place), dv. */
static void kv_bwd(const mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const float *in, float *dk,
                   const float *dv, float *din, bool acc) {
    if (d->rope) mx_tr_rope(dk, d->B, d->T, d->G, d->D, m->cfg.rope_theta, true);
    mx_tr_matmul_bwd(din, L->wk->g, gr(L->bk), dk, in, L->wk->w, d->N, d->C, d->G * d->D, acc);
    mx_tr_matmul_bwd(din, L->wv->g, gr(L->bv), dv, in, L->wv->w, d->N, d->C, d->G * d->D, true);
}

/* mix (N, H*D) = r_1 o_1 + r_2 o_2 + r_3 bv (bv of each query head's KV head; 0 without biases). */
static void mix_fwd(const mx_tlayer *L, const mka_dims *d, const mka_layer *y) {
    int HD = d->H * d->D, group = d->H / d->G;
    const float *bv = wt(L->bv);
#pragma omp parallel for
    for (int n = 0; n < d->N; n++) {
        const float *r = y->r + (size_t)n * 3;
        for (int i = 0; i < HD; i++) {
            size_t j = (size_t)n * HD + i;
            float b = bv ? bv[(i / d->D / group) * d->D + i % d->D] : 0.0f;
            y->mix[j] = r[0] * y->o1[j] + r[1] * y->o2[j] + r[2] * b;
        }
    }
}

void mx_mka_tr_fwd(mx_tmodel *m, int l) {
    mx_tacts *A = &m->acts;
    mka_layer *y = &A->mka->l[l];
    const mx_tlayer *L = &m->layers[l];
    mka_dims d = dims_of(m, l);
    const float *x = A->ln1 + mx_tmodel_slot(m, l) * d.N * d.C;
    router_fwd(L, x, y->hr, y->r, d.N, d.C);
    prefix_mean(y->l2, x, d.B, d.T, d.C);
    mx_tr_matmul_fwd(y->q, x, L->wq->w, wt(L->bq), d.N, d.C, d.H * d.D);
    if (d.rope) mx_tr_rope(y->q, d.B, d.T, d.H, d.D, m->cfg.rope_theta, false);
    mx_tr_attn_shape sh = {d.B, d.T, d.H, d.G, d.D, d.D, m->plan[l].window, mx_attn_scale(m, d.D)};
    if (d.fast) {
#pragma omp parallel for
        for (long i = 0; i < (long)d.N * d.C; i++) {
            const float *r = y->r + (size_t)(i / d.C) * 3;
            y->mem[i] = r[0] * x[i] + r[1] * y->l2[i];
        }
        kv_fwd(m, L, &d, y->mem, y->k1, y->v1);
        mx_tr_attn_fwd(&sh, y->mix, y->lse1, y->q, y->k1, y->v1);
    } else {
        kv_fwd(m, L, &d, x, y->k1, y->v1);
        kv_fwd(m, L, &d, y->l2, y->k2, y->v2);
        mx_tr_attn_fwd(&sh, y->o1, y->lse1, y->q, y->k1, y->v1);
        mx_tr_attn_fwd(&sh, y->o2, y->lse2, y->q, y->k2, y->v2);
        mix_fwd(L, &d, y);
    }
    mx_tr_matmul_fwd(A->tmp, y->mix, L->wo->w, wt(L->bo), d.N, d.H * d.D, d.C);
}

/* MKA's mixing backward: dr (N, 3), do1 = r_1 dmix, dq2 (borrowed) = r_2 dmix, bv's gradient of pass 3. */
static void mix_bwd(const mx_tlayer *L, const mka_dims *d, const mka_layer *y, mx_mka_tacts *a) {
    int HD = d->H * d->D, group = d->H / d->G;
    const float *bv = wt(L->bv);
#pragma omp parallel for
    for (int n = 0; n < d->N; n++) {
        const float *r = y->r + (size_t)n * 3;
        double s0 = 0, s1 = 0, s2 = 0;
        for (int i = 0; i < HD; i++) {
            size_t j = (size_t)n * HD + i;
            float g = a->dmix[j];
            s0 += (double)g * y->o1[j];
            s1 += (double)g * y->o2[j];
            if (bv) s2 += (double)g * bv[(i / d->D / group) * d->D + i % d->D];
            a->do1[j] = r[0] * g;
            a->dq2[j] = r[1] * g;
        }
        a->dr[n * 3] = (float)s0, a->dr[n * 3 + 1] = (float)s1, a->dr[n * 3 + 2] = (float)s2;
    }
    if (!bv) return;
#pragma omp parallel for
    for (int i = 0; i < d->G * d->D; i++) { /* dbv[g, e] += Σ_n r_3(n) Σ_{h in g} dmix[n, h, e] */
        int g = i / d->D, e = i % d->D;
        double s = 0;
        for (int n = 0; n < d->N; n++)
            for (int h = g * group; h < (g + 1) * group; h++)
                s += (double)y->r[n * 3 + 2] * a->dmix[(size_t)n * HD + h * d->D + e];
        L->bv->g[i] += (float)s;
    }
}

/* Router backward from dr (N, 3): parameter gradients, and dx (N, C) += the input's. */
static void router_bwd(const mx_tlayer *L, const mka_layer *y, mx_mka_tacts *a, const float *x, float *dx,
                       int N, int C) {
    for (int n = 0; n < N; n++) { /* dz = r ⊙ (dr - Σ r·dr), in place */
        const float *r = y->r + (size_t)n * 3;
        float *dz = a->dr + (size_t)n * 3, s = r[0] * dz[0] + r[1] * dz[1] + r[2] * dz[2];
        for (int i = 0; i < 3; i++) dz[i] = r[i] * (dz[i] - s);
    }
    mx_tr_matmul_bwd(a->dhr, L->mka_w2->g, L->mka_b2->g, a->dr, y->hr, L->mka_w2->w, N, C, 3, false);
#pragma omp parallel for
    for (long i = 0; i < (long)N * C; i++) a->dhr[i] *= 1.0f - y->hr[i] * y->hr[i];
    mx_tr_matmul_bwd(dx, L->mka_w1->g, L->mka_b1->g, a->dhr, x, L->mka_w1->w, N, C, C, true);
}

/* FastMKA from dmix: dx (= A->dln) and dl2 (= a->dm), dr. */
static void fast_bwd(const mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const mka_layer *y,
                     mx_mka_tacts *a, const float *x, float *dx, const mx_tr_attn_shape *sh) {
    memset(a->dk1, 0, sizeof(float) * (size_t)d->N * d->G * d->D);
    memset(a->dv1, 0, sizeof(float) * (size_t)d->N * d->G * d->D);
    mx_tr_attn_bwd(sh, a->dq, a->dk1, a->dv1, a->dmix, y->q, y->k1, y->v1, y->mix, y->lse1);
    kv_bwd(m, L, d, y->mem, a->dk1, a->dv1, a->dmem, false);
#pragma omp parallel for
    for (int n = 0; n < d->N; n++) { /* mem = r_1 x + r_2 l2 */
        const float *r = y->r + (size_t)n * 3;
        double s0 = 0, s1 = 0;
        for (int c = 0; c < d->C; c++) {
            size_t i = (size_t)n * d->C + c;
            s0 += (double)a->dmem[i] * x[i];
            s1 += (double)a->dmem[i] * y->l2[i];
            dx[i] = r[0] * a->dmem[i];
            a->dm[i] = r[1] * a->dmem[i];
        }
        a->dr[n * 3] = (float)s0, a->dr[n * 3 + 1] = (float)s1, a->dr[n * 3 + 2] = 0.0f;
    }
}

/* MKA (two attention passes) from dmix: dx (= A->dln), dl2 (= a->dm), dr. */
static void full_bwd(const mx_tmodel *m, const mx_tlayer *L, const mka_dims *d, const mka_layer *y,
                     mx_mka_tacts *a, const float *x, float *dx, const mx_tr_attn_shape *sh) {
    size_t nkv = (size_t)d->N * d->G * d->D, nq = (size_t)d->N * d->H * d->D;
    mix_bwd(L, d, y, a); /* do1 and, in dq2, do2 */
    memset(a->dk1, 0, sizeof(float) * nkv), memset(a->dv1, 0, sizeof(float) * nkv);
    memset(a->dk2, 0, sizeof(float) * nkv), memset(a->dv2, 0, sizeof(float) * nkv);
    mx_tr_attn_bwd(sh, a->dq, a->dk1, a->dv1, a->do1, y->q, y->k1, y->v1, y->o1, y->lse1);
    memcpy(a->do1, a->dq2, sizeof(float) * nq); /* do2 */
    mx_tr_attn_bwd(sh, a->dq2, a->dk2, a->dv2, a->do1, y->q, y->k2, y->v2, y->o2, y->lse2);
    mx_tr_add(a->dq, a->dq, a->dq2, (long)nq);
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
    mx_tr_matmul_bwd(a->dmix, L->wo->g, gr(L->bo), A->dx, y->mix, L->wo->w, d.N, d.H * d.D, d.C, false);
    if (d.fast)
        fast_bwd(m, L, &d, y, a, x, A->dln, &sh);
    else
        full_bwd(m, L, &d, y, a, x, A->dln, &sh);
    if (d.rope) mx_tr_rope(a->dq, d.B, d.T, d.H, d.D, m->cfg.rope_theta, true);
    mx_tr_matmul_bwd(A->dln, L->wq->g, gr(L->bq), a->dq, x, L->wq->w, d.N, d.C, d.H * d.D, true);
    prefix_mean_bwd(A->dln, a->dm, d.B, d.T, d.C);
    router_bwd(L, y, a, x, A->dln, d.N, d.C);
}
