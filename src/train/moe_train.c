/* moe_train.c: the mixture-of-experts MLP of training with its load-balancing loss (moe_train.h), composed of the
 * training ops (backend_train.h), so it runs wherever the model is placed.
 * Shapes: x (N, C) rows, E experts of width F, k choices per row; assignments a = n*k + j are kept grouped
 * by expert (order, start) so that every expert runs one matmul over its gathered rows (n_e, C). The routing
 * decisions (ids, and the grouping derived from them) are host integers: each expert's matmul needs its row
 * count on the host to be launched; every number stays where the model runs. */
#include "moe_train.h"

#include <stdlib.h>
#include <string.h>

#include "op_profile.h"

typedef struct mx_moe_tacts {
    float *prob;      /* (L, N, E) router probabilities */
    float *wsel;      /* (L, N, k) the chosen experts' weights */
    float *g, *u, *y; /* (L, N*k, F), (L, N*k, F), (L, N*k, C) per position */
    /* scratch */
    float *xg, *dxg, *dy;      /* (N*k, C) */
    float *act, *da, *dg, *du; /* (N*k, F) */
    float *dp, *dw;            /* (N, E), (N, k) */
    /* host */
    int *ids;        /* (L, N, k) chosen experts */
    int *order;      /* (L, N*k) assignments grouped by expert (token order inside a group) */
    int *pos;        /* (L, N*k) position of assignment a in order */
    int *start;      /* (L, E + 1) each expert's first position */
    int *rows;       /* (N*k) the token row of each position of one layer (order / k) */
    double *f;       /* (E) pooled top-k fractions of the last forward */
    double *colp;    /* (E) one layer's column sums of prob */
    double *psum;    /* (E) Σ over layers and rows of prob[., e] */
    float *aux_grad; /* (E) the auxiliary loss's gradient of each probability */
    float aux_scale; /* gradient scale of the auxiliary loss */
} mx_moe_tacts;

int mx_moe_tacts_alloc(mx_tmodel *m, mx_err *err) {
    const mx_train_config *c = &m->cfg;
    if (c->n_expert == 0) return MX_OK;
    size_t L = (size_t)c->n_layer, N = (size_t)m->acts.B * m->acts.T, E = (size_t)c->n_expert,
           K = (size_t)c->n_expert_used, C = (size_t)c->d_model, F = (size_t)c->d_ff, NK = N * K;
    mx_moe_tacts *a = calloc(1, sizeof *a);
    if (!(m->acts.moe = a)) return mx_err_set(err, MX_ERR_NOMEM, "out of memory for the experts");
    a->ids = malloc(sizeof(int) * L * NK);
    a->order = malloc(sizeof(int) * L * NK);
    a->pos = malloc(sizeof(int) * L * NK);
    a->start = malloc(sizeof(int) * L * (E + 1));
    a->rows = malloc(sizeof(int) * NK);
    a->f = calloc(E, sizeof(double));
    a->colp = calloc(E, sizeof(double));
    a->psum = calloc(E, sizeof(double));
    a->aux_grad = calloc(E, sizeof(float));
    bool ok =
        a->ids && a->order && a->pos && a->start && a->rows && a->f && a->colp && a->psum && a->aux_grad;
    if (!ok) return mx_err_set(err, MX_ERR_NOMEM, "out of host memory for the experts' routing");
    struct {
        float **p;
        size_t n;
    } bufs[] = {{&a->prob, L * N * E}, {&a->wsel, L * NK}, {&a->g, L * NK * F}, {&a->u, L * NK * F},
                {&a->y, L * NK * C},   {&a->xg, NK * C},   {&a->dxg, NK * C},   {&a->dy, NK * C},
                {&a->act, NK * F},     {&a->da, NK * F},   {&a->dg, NK * F},    {&a->du, NK * F},
                {&a->dp, N * E},       {&a->dw, NK}};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0] && ok; i++)
        ok = (*bufs[i].p = mx_tmodel_alloc(m, bufs[i].n));
    return ok ? MX_OK
              : mx_err_set(err, MX_ERR_NOMEM,
                           "out of %s memory for the experts' activations of batch %d x %d",
                           mx_tmodel_where(m), m->acts.B, m->acts.T);
}

void mx_moe_tacts_free(mx_tmodel *m) {
    mx_moe_tacts *a = m->acts.moe;
    if (!a) return;
    float *bufs[] = {a->prob, a->wsel, a->g,  a->u,  a->y,  a->xg, a->dxg,
                     a->dy,   a->act,  a->da, a->dg, a->du, a->dp, a->dw};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mx_tmodel_release(m, bufs[i]);
    void *host[] = {a->ids, a->order, a->pos, a->start, a->rows, a->f, a->colp, a->psum, a->aux_grad};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(a);
    m->acts.moe = NULL;
}

/* Groups the N*k assignments by expert: order, pos (N*k), start (E + 1). A counting sort, stable. */
static void group(const int *ids, int NK, int E, int *order, int *pos, int *start) {
    memset(start, 0, sizeof(int) * (size_t)(E + 1));
    for (int a = 0; a < NK; a++) start[ids[a] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    for (int a = 0; a < NK; a++) pos[a] = start[ids[a]]++; /* start[e] becomes the end of e's group */
    for (int e = E; e > 0; e--) start[e] = start[e - 1];   /* back to the starts */
    start[0] = 0;
    for (int a = 0; a < NK; a++) order[pos[a]] = a;
}

typedef struct {
    int N, C, F, E, K;
} moe_dims;

static moe_dims dims_of(const mx_tmodel *m) {
    const mx_train_config *c = &m->cfg;
    return (moe_dims){m->acts.B * m->acts.T, c->d_model, c->d_ff, c->n_expert, c->n_expert_used};
}

/* xg[i] = x[order[i] / k]: the rows of every assignment, grouped by expert. */
static void gather(mx_tmodel *m, float *xg, const float *x, const int *order, int NK, int K, int C) {
    int *rows = m->acts.moe->rows;
    for (int i = 0; i < NK; i++) rows[i] = order[i] / K;
    MX_OP(m, gather_rows, xg, x, rows, NK, C);
}

void mx_moe_tr_fwd(mx_tmodel *m, int l) {
    mx_tacts *A = &m->acts;
    mx_moe_tacts *a = A->moe;
    const mx_tlayer *L = &m->layers[l];
    moe_dims d = dims_of(m);
    int NK = d.N * d.K;
    size_t fo = (size_t)l * NK * d.F;
    const float *x = A->ln2 + mx_tmodel_slot(m, l) * d.N * d.C;
    float *p = a->prob + (size_t)l * d.N * d.E, *w = a->wsel + (size_t)l * NK, *g = a->g + fo, *u = a->u + fo,
          *y = a->y + (size_t)l * NK * d.C;
    int *ids = a->ids + (size_t)l * NK, *order = a->order + (size_t)l * NK, *pos = a->pos + (size_t)l * NK,
        *start = a->start + (size_t)l * (d.E + 1);
    MX_OP(m, matmul_fwd, p, x, L->router->w, NULL, d.N, d.C, d.E);
    MX_OP(m, softmax_fwd, p, d.N, d.E);
    MX_OP(m, topk, p, d.N, d.E, d.K, m->cfg.expert_norm_topk, ids, w);
    group(ids, NK, d.E, order, pos, start);
    gather(m, a->xg, x, order, NK, d.K, d.C);
    for (int e = 0; e < d.E; e++) {
        int s = start[e], n = start[e + 1] - s;
        if (n == 0) continue;
        size_t rf = (size_t)s * d.F, wf = (size_t)e * d.F * d.C;
        MX_OP(m, matmul_fwd, g + rf, a->xg + (size_t)s * d.C, L->gate_exps->w + wf, NULL, n, d.C, d.F);
        MX_OP(m, matmul_fwd, u + rf, a->xg + (size_t)s * d.C, L->up_exps->w + wf, NULL, n, d.C, d.F);
        MX_OP(m, swiglu_fwd, a->act + rf, g + rf, u + rf, (long)n * d.F);
        MX_OP(m, matmul_fwd, y + (size_t)s * d.C, a->act + rf, L->down_exps->w + wf, NULL, n, d.F, d.C);
    }
    /* out[t] = Σ_j w_j y[pos(t, j)], in j order: deterministic */
    MX_OP(m, combine_rows, A->tmp, y, w, pos, d.N, d.K, d.C);
}

double mx_moe_tr_aux(mx_tmodel *m, float grad_scale) {
    mx_moe_tacts *a = m->acts.moe;
    moe_dims d = dims_of(m);
    int Ln = m->cfg.n_layer;
    double R = (double)Ln * d.N, aux = 0;
    double *P = a->psum;
    for (int e = 0; e < d.E; e++) a->f[e] = P[e] = 0.0;
    for (int l = 0; l < Ln; l++) {
        const int *st = a->start + (size_t)l * (d.E + 1);
        MX_OP(m, colsum, a->colp, a->prob + (size_t)l * d.N * d.E, d.N, d.E);
        for (int e = 0; e < d.E; e++) a->f[e] += st[e + 1] - st[e], P[e] += a->colp[e];
    }
    a->aux_scale = grad_scale * m->cfg.moe_aux_weight;
    for (int e = 0; e < d.E; e++) {
        a->f[e] /= R;
        aux += a->f[e] * (P[e] / R);
        a->aux_grad[e] = (float)(a->aux_scale * d.E * a->f[e] / R);
    }
    return aux * d.E;
}

void mx_moe_tr_bwd(mx_tmodel *m, int l) {
    mx_tacts *A = &m->acts;
    mx_moe_tacts *a = A->moe;
    const mx_tlayer *L = &m->layers[l];
    moe_dims d = dims_of(m);
    int NK = d.N * d.K;
    size_t fo = (size_t)l * NK * d.F;
    const float *x = A->ln2 + mx_tmodel_slot(m, l) * d.N * d.C, *w = a->wsel + (size_t)l * NK, *g = a->g + fo,
                *u = a->u + fo, *y = a->y + (size_t)l * NK * d.C;
    const int *order = a->order + (size_t)l * NK, *pos = a->pos + (size_t)l * NK,
              *start = a->start + (size_t)l * (d.E + 1);
    MX_OP(m, combine_rows_bwd, a->dy, a->dw, A->dx, y, w, order, d.N, d.K,
          d.C); /* dy = w · dout; dw = dout · y */
    gather(m, a->xg, x, order, NK, d.K, d.C);
    for (int e = 0; e < d.E; e++) {
        int s = start[e], n = start[e + 1] - s;
        if (n == 0) continue;
        size_t rf = (size_t)s * d.F, rc = (size_t)s * d.C, wf = (size_t)e * d.F * d.C;
        MX_OP(m, swiglu_fwd, a->act + rf, g + rf, u + rf, (long)n * d.F);
        MX_OP(m, matmul_bwd, a->da + rf, L->down_exps->g + wf, NULL, a->dy + rc, a->act + rf,
              L->down_exps->w + wf, n, d.F, d.C, false);
        MX_OP(m, swiglu_bwd, a->dg + rf, a->du + rf, a->da + rf, g + rf, u + rf, (long)n * d.F);
        MX_OP(m, matmul_bwd, a->dxg + rc, L->gate_exps->g + wf, NULL, a->dg + rf, a->xg + rc,
              L->gate_exps->w + wf, n, d.C, d.F, false);
        MX_OP(m, matmul_bwd, a->dxg + rc, L->up_exps->g + wf, NULL, a->du + rf, a->xg + rc,
              L->up_exps->w + wf, n, d.C, d.F, true);
    }
    MX_OP(m, combine_rows, A->dln, a->dxg, NULL, pos, d.N, d.K, d.C); /* dln[t] = Σ_j dxg[pos(t, j)] */
    /* the router probabilities' gradient, through the chosen weights (dw) and the auxiliary loss */
    const float *p = a->prob + (size_t)l * d.N * d.E;
    MX_OP(m, router_grad, a->dp, a->dw, p, w, a->ids + (size_t)l * NK, a->aux_grad, d.N, d.E, d.K,
          m->cfg.expert_norm_topk);
    MX_OP(m, softmax_bwd, a->dp, p, d.N, d.E);
    MX_OP(m, matmul_bwd, A->dln, L->router->g, NULL, a->dp, x, L->router->w, d.N, d.C, d.E, true);
}

const int *mx_moe_tr_ids(const mx_tmodel *m, int l) {
    const mx_moe_tacts *a = m->acts.moe;
    return a->ids + (size_t)l * m->acts.B * m->acts.T * m->cfg.n_expert_used;
}
