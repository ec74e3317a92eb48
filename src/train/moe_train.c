/* moe_train.c: the mixture-of-experts MLP of training with its load-balancing loss (moe_train.h).
 * Shapes: x (N, C) rows, E experts of width F, k choices per row; assignments a = n*k + j are kept grouped
 * by expert (order, start) so that every expert runs one matmul over its gathered rows (n_e, C). */
#include "moe_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_ops.h"

typedef struct mx_moe_tacts {
    float *prob;      /* (L, N, E) router probabilities */
    int *ids;         /* (L, N, k) chosen experts */
    float *wsel;      /* (L, N, k) their weights */
    int *order;       /* (L, N*k) assignments grouped by expert (token order inside a group) */
    int *pos;         /* (L, N*k) position of assignment a in order */
    int *start;       /* (L, E + 1) each expert's first position */
    float *g, *u, *y; /* (L, N*k, F), (L, N*k, F), (L, N*k, C) per position */
    double *f;        /* (E) pooled top-k fractions of the last forward */
    float aux_scale;  /* gradient scale of the auxiliary loss */
    /* scratch */
    float *xg, *dxg, *dy;      /* (N*k, C) */
    float *act, *da, *dg, *du; /* (N*k, F) */
    float *dp, *dw;            /* (N, E), (N, k) */
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
    a->f = calloc(E, sizeof(double));
    struct {
        float **p;
        size_t n;
    } bufs[] = {{&a->prob, L * N * E}, {&a->wsel, L * NK}, {&a->g, L * NK * F}, {&a->u, L * NK * F},
                {&a->y, L * NK * C},   {&a->xg, NK * C},   {&a->dxg, NK * C},   {&a->dy, NK * C},
                {&a->act, NK * F},     {&a->da, NK * F},   {&a->dg, NK * F},    {&a->du, NK * F},
                {&a->dp, N * E},       {&a->dw, NK}};
    bool ok = a->ids && a->order && a->pos && a->start && a->f;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0] && ok; i++) ok = (*bufs[i].p = calloc(bufs[i].n, 4));
    return ok ? MX_OK : mx_err_set(err, MX_ERR_NOMEM, "out of memory for the experts' activations");
}

void mx_moe_tacts_free(mx_tmodel *m) {
    mx_moe_tacts *a = m->acts.moe;
    if (!a) return;
    void *bufs[] = {a->prob, a->ids, a->wsel, a->order, a->pos, a->start, a->g,  a->u,  a->y, a->f,
                    a->xg,   a->dxg, a->dy,   a->act,   a->da,  a->dg,    a->du, a->dp, a->dw};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(a);
    m->acts.moe = NULL;
}

/* The rows of p (N, E) into softmax probabilities, in place. */
static void softmax_rows(float *p, int N, int E) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *r = p + (size_t)n * E, mx = -INFINITY;
        for (int e = 0; e < E; e++) mx = r[e] > mx ? r[e] : mx;
        double sum = 0;
        for (int e = 0; e < E; e++) sum += exp((double)r[e] - mx);
        for (int e = 0; e < E; e++) r[e] = (float)(exp((double)r[e] - mx) / sum);
    }
}

/* ids, w (N, k): the k largest probabilities of each row (ties: the lower index), renormalized if asked. */
static void top_k(const float *p, int N, int E, int k, bool norm, int *ids, float *w) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *r = p + (size_t)n * E;
        int *id = ids + (size_t)n * k;
        float *wr = w + (size_t)n * k, sum = 0.0f;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int i = 0; i < j; i++) taken |= id[i] == e;
                if (!taken && (best < 0 || r[e] > r[best])) best = e;
            }
            id[j] = best;
            wr[j] = r[best];
            sum += r[best];
        }
        if (norm)
            for (int j = 0; j < k; j++) wr[j] /= sum;
    }
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
static void gather(float *xg, const float *x, const int *order, int NK, int K, int C) {
#pragma omp parallel for
    for (int i = 0; i < NK; i++)
        memcpy(xg + (size_t)i * C, x + (size_t)(order[i] / K) * C, sizeof(float) * C);
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
    mx_tr_matmul_fwd(p, x, L->router->w, NULL, d.N, d.C, d.E);
    softmax_rows(p, d.N, d.E);
    top_k(p, d.N, d.E, d.K, m->cfg.expert_norm_topk, ids, w);
    group(ids, NK, d.E, order, pos, start);
    gather(a->xg, x, order, NK, d.K, d.C);
    for (int e = 0; e < d.E; e++) {
        int s = start[e], n = start[e + 1] - s;
        if (n == 0) continue;
        size_t rf = (size_t)s * d.F, wf = (size_t)e * d.F * d.C;
        mx_tr_matmul_fwd(g + rf, a->xg + (size_t)s * d.C, L->gate_exps->w + wf, NULL, n, d.C, d.F);
        mx_tr_matmul_fwd(u + rf, a->xg + (size_t)s * d.C, L->up_exps->w + wf, NULL, n, d.C, d.F);
        mx_tr_swiglu_fwd(a->act + rf, g + rf, u + rf, (long)n * d.F);
        mx_tr_matmul_fwd(y + (size_t)s * d.C, a->act + rf, L->down_exps->w + wf, NULL, n, d.F, d.C);
    }
#pragma omp parallel for
    for (int t = 0; t < d.N; t++) { /* out[t] = Σ_j w_j y[pos(t, j)], in j order: deterministic */
        float *o = A->tmp + (size_t)t * d.C;
        memset(o, 0, sizeof(float) * d.C);
        for (int j = 0; j < d.K; j++) {
            const float *yr = y + (size_t)pos[t * d.K + j] * d.C;
            float wj = w[t * d.K + j];
            for (int i = 0; i < d.C; i++) o[i] += wj * yr[i];
        }
    }
}

double mx_moe_tr_aux(mx_tmodel *m, float grad_scale) {
    mx_moe_tacts *a = m->acts.moe;
    moe_dims d = dims_of(m);
    int Ln = m->cfg.n_layer;
    double R = (double)Ln * d.N, aux = 0;
    for (int e = 0; e < d.E; e++) {
        long cnt = 0;
        double P = 0;
        for (int l = 0; l < Ln; l++) {
            const int *st = a->start + (size_t)l * (d.E + 1);
            const float *p = a->prob + (size_t)l * d.N * d.E;
            cnt += st[e + 1] - st[e];
            for (int n = 0; n < d.N; n++) P += p[(size_t)n * d.E + e];
        }
        a->f[e] = (double)cnt / R;
        aux += a->f[e] * (P / R);
    }
    a->aux_scale = grad_scale * m->cfg.moe_aux_weight;
    return aux * d.E;
}

/* dp (N, E) → dz, the gradient of the router logits, in place: dz = p ⊙ (dp - Σ p·dp). */
static void softmax_bwd(float *dp, const float *p, int N, int E) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *d = dp + (size_t)n * E;
        const float *r = p + (size_t)n * E;
        double s = 0;
        for (int e = 0; e < E; e++) s += (double)r[e] * d[e];
        for (int e = 0; e < E; e++) d[e] = (float)(r[e] * (d[e] - s));
    }
}

/* The gradient of the router probabilities: through the chosen weights (dw) and the auxiliary loss. */
static void router_prob_grad(const mx_tmodel *m, int l, const float *dw, float *dp) {
    const mx_moe_tacts *a = m->acts.moe;
    moe_dims d = dims_of(m);
    const float *p = a->prob + (size_t)l * d.N * d.E, *w = a->wsel + (size_t)l * d.N * d.K;
    const int *ids = a->ids + (size_t)l * d.N * d.K;
    bool norm = m->cfg.expert_norm_topk;
    double R = (double)m->cfg.n_layer * d.N;
#pragma omp parallel for
    for (int n = 0; n < d.N; n++) {
        float *dr = dp + (size_t)n * d.E;
        const int *id = ids + (size_t)n * d.K;
        const float *dwn = dw + (size_t)n * d.K, *wn = w + (size_t)n * d.K;
        for (int e = 0; e < d.E; e++) dr[e] = (float)(a->aux_scale * d.E * a->f[e] / R);
        double sum = 0, dot = 0; /* w_j = p_j / S: dp_i = (dw_i - Σ_j dw_j w_j) / S */
        for (int j = 0; j < d.K; j++) sum += p[(size_t)n * d.E + id[j]], dot += (double)dwn[j] * wn[j];
        for (int j = 0; j < d.K; j++) dr[id[j]] += norm ? (float)((dwn[j] - dot) / sum) : dwn[j];
    }
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
#pragma omp parallel for
    for (int i = 0; i < NK; i++) { /* dy = w · dout; dw = dout · y */
        int as = order[i], t = as / d.K;
        const float *dout = A->dx + (size_t)t * d.C, *yr = y + (size_t)i * d.C;
        float *dyr = a->dy + (size_t)i * d.C, s = 0.0f;
        for (int c = 0; c < d.C; c++) dyr[c] = w[as] * dout[c], s += dout[c] * yr[c];
        a->dw[as] = s;
    }
    gather(a->xg, x, order, NK, d.K, d.C);
    for (int e = 0; e < d.E; e++) {
        int s = start[e], n = start[e + 1] - s;
        if (n == 0) continue;
        size_t rf = (size_t)s * d.F, rc = (size_t)s * d.C, wf = (size_t)e * d.F * d.C;
        mx_tr_swiglu_fwd(a->act + rf, g + rf, u + rf, (long)n * d.F);
        mx_tr_matmul_bwd(a->da + rf, L->down_exps->g + wf, NULL, a->dy + rc, a->act + rf,
                         L->down_exps->w + wf, n, d.F, d.C, false);
        mx_tr_swiglu_bwd(a->dg + rf, a->du + rf, a->da + rf, g + rf, u + rf, (long)n * d.F);
        mx_tr_matmul_bwd(a->dxg + rc, L->gate_exps->g + wf, NULL, a->dg + rf, a->xg + rc,
                         L->gate_exps->w + wf, n, d.C, d.F, false);
        mx_tr_matmul_bwd(a->dxg + rc, L->up_exps->g + wf, NULL, a->du + rf, a->xg + rc, L->up_exps->w + wf, n,
                         d.C, d.F, true);
    }
#pragma omp parallel for
    for (int t = 0; t < d.N; t++) { /* dln[t] = Σ_j dxg[pos(t, j)] */
        float *o = A->dln + (size_t)t * d.C;
        memset(o, 0, sizeof(float) * d.C);
        for (int j = 0; j < d.K; j++) {
            const float *r = a->dxg + (size_t)pos[t * d.K + j] * d.C;
            for (int c = 0; c < d.C; c++) o[c] += r[c];
        }
    }
    router_prob_grad(m, l, a->dw, a->dp);
    softmax_bwd(a->dp, a->prob + (size_t)l * d.N * d.E, d.N, d.E);
    mx_tr_matmul_bwd(A->dln, L->router->g, NULL, a->dp, x, L->router->w, d.N, d.C, d.E, true);
}

const int *mx_moe_tr_ids(const mx_tmodel *m, int l) {
    const mx_moe_tacts *a = m->acts.moe;
    return a->ids + (size_t)l * m->acts.B * m->acts.T * m->cfg.n_expert_used;
}
