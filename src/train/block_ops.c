/* block_ops.c: the CPU implementation of the block ops of the training contract (backend_train.h, "the MLA,
 * MKA and MoE blocks"): strided column copies, tanh, row softmax, the causal running mean, MKA's three-way
 * mixing, and MoE's top-k choice, row gather and combine and router gradient. fp32 on host buffers,
 * deterministic (fixed reduction orders, sums in double where the contract says so). */
#include <math.h>
#include <string.h>

#include "../backend/topk_row.h"
#include "train_ops.h"

void mx_tr_copy_cols(mx_backend *be, float *dst, size_t ds, const float *src, size_t ss, int w, long rows,
                     bool accumulate) {
#pragma omp parallel for if (rows * w > 65536)
    for (long i = 0; i < rows; i++) {
        float *d = dst + (size_t)i * ds;
        const float *s = src + (size_t)i * ss;
        if (accumulate)
            for (int j = 0; j < w; j++) d[j] += s[j];
        else
            memcpy(d, s, sizeof(float) * (size_t)w);
    }
}

void mx_tr_tanh_fwd(mx_backend *be, float *out, const float *x, long n) {
#pragma omp parallel for if (n > 65536)
    for (long i = 0; i < n; i++) out[i] = tanhf(x[i]);
}

void mx_tr_tanh_bwd(mx_backend *be, float *dx, const float *dout, const float *y, long n) {
#pragma omp parallel for if (n > 65536)
    for (long i = 0; i < n; i++) dx[i] = dout[i] * (1.0f - y[i] * y[i]);
}

void mx_tr_softmax_fwd(mx_backend *be, float *x, int N, int E) {
#pragma omp parallel for if ((long)N * E > 65536)
    for (int n = 0; n < N; n++) {
        float *r = x + (size_t)n * E, mx = -INFINITY;
        for (int e = 0; e < E; e++) mx = r[e] > mx ? r[e] : mx;
        double sum = 0;
        for (int e = 0; e < E; e++) sum += exp((double)r[e] - mx);
        for (int e = 0; e < E; e++) r[e] = (float)(exp((double)r[e] - mx) / sum);
    }
}

void mx_tr_softmax_bwd(mx_backend *be, float *dp, const float *p, int N, int E) {
#pragma omp parallel for if ((long)N * E > 65536)
    for (int n = 0; n < N; n++) {
        float *d = dp + (size_t)n * E;
        const float *r = p + (size_t)n * E;
        double s = 0;
        for (int e = 0; e < E; e++) s += (double)r[e] * d[e];
        for (int e = 0; e < E; e++) d[e] = (float)(r[e] * (d[e] - s));
    }
}

void mx_tr_cummean_fwd(mx_backend *be, float *out, const float *x, int B, int T, int C) {
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int t = 0; t < T; t++) {
                size_t i = ((size_t)b * T + t) * C + c;
                s += x[i];
                out[i] = (float)(s / (t + 1));
            }
        }
}

void mx_tr_cummean_bwd(mx_backend *be, float *dx, const float *dout, int B, int T, int C) {
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int t = T - 1; t >= 0; t--) {
                size_t i = ((size_t)b * T + t) * C + c;
                s += dout[i] / (t + 1);
                dx[i] += (float)s;
            }
        }
}

/* bias[g(h), e] for element i of a row of H*D: the bias row of query head h's group */
static float bias_at(const float *bias, int i, int D, int group) {
    return bias ? bias[(i / D / group) * D + i % D] : 0.0f;
}

void mx_tr_mix3_fwd(mx_backend *be, float *out, const float *r, const float *a, const float *b,
                    const float *bias, int N, int H, int G, int D) {
    int HD = H * D, group = H / G;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *rn = r + (size_t)n * 3;
        for (int i = 0; i < HD; i++) {
            size_t j = (size_t)n * HD + i;
            out[j] = rn[0] * a[j] + rn[1] * b[j] + rn[2] * bias_at(bias, i, D, group);
        }
    }
}

void mx_tr_mix3_bwd(mx_backend *be, float *da, float *db, float *dr, float *dbias, const float *dout,
                    const float *r, const float *a, const float *b, const float *bias, int N, int H, int G,
                    int D) {
    int HD = H * D, group = H / G;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *rn = r + (size_t)n * 3;
        double s0 = 0, s1 = 0, s2 = 0;
        for (int i = 0; i < HD; i++) {
            size_t j = (size_t)n * HD + i;
            float g = dout[j];
            s0 += (double)g * a[j];
            s1 += (double)g * b[j];
            s2 += (double)g * bias_at(bias, i, D, group);
            da[j] = rn[0] * g;
            db[j] = rn[1] * g;
        }
        dr[n * 3] = (float)s0, dr[n * 3 + 1] = (float)s1, dr[n * 3 + 2] = (float)s2;
    }
    if (!dbias) return;
#pragma omp parallel for
    for (int i = 0; i < G * D; i++) { /* dbias[g, e] += Σ_n r2(n) Σ_{h of g} dout[n, h, e] */
        int g = i / D, e = i % D;
        double s = 0;
        for (int n = 0; n < N; n++)
            for (int h = g * group; h < (g + 1) * group; h++)
                s += (double)r[n * 3 + 2] * dout[(size_t)n * HD + h * D + e];
        dbias[i] += (float)s;
    }
}

void mx_tr_topk(mx_backend *be, const float *p, int N, int E, int k, bool norm, int *ids, float *w) {
#pragma omp parallel for if ((long)N * E > 65536)
    for (int n = 0; n < N; n++)
        mx_topk_row(p + (size_t)n * E, E, k, norm, ids + (size_t)n * k, w + (size_t)n * k);
}

void mx_tr_gather_rows(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n) {
#pragma omp parallel for if ((long)rows * n > 65536)
    for (int i = 0; i < rows; i++)
        memcpy(dst + (size_t)i * n, src + (size_t)idx[i] * n, sizeof(float) * (size_t)n);
}

void mx_tr_combine_rows(mx_backend *be, float *out, const float *src, const float *w, const int *idx, int N,
                        int k, int n) {
#pragma omp parallel for if ((long)N * n > 65536)
    for (int t = 0; t < N; t++) {
        float *o = out + (size_t)t * n;
        memset(o, 0, sizeof(float) * (size_t)n);
        for (int j = 0; j < k; j++) {
            const float *s = src + (size_t)idx[t * k + j] * n;
            float wj = w ? w[t * k + j] : 1.0f;
            for (int i = 0; i < n; i++) o[i] += wj * s[i];
        }
    }
}

void mx_tr_combine_rows_bwd(mx_backend *be, float *dsrc, float *dw, const float *dout, const float *src,
                            const float *w, const int *order, int N, int k, int n) {
#pragma omp parallel for if ((long)N * k * n > 65536)
    for (int i = 0; i < N * k; i++) {
        int a = order[i];
        const float *d = dout + (size_t)(a / k) * n, *s = src + (size_t)i * n;
        float *ds = dsrc + (size_t)i * n, dot = 0.0f;
        float wa = w ? w[a] : 1.0f;
        for (int c = 0; c < n; c++) ds[c] = wa * d[c], dot += d[c] * s[c];
        dw[a] = dot;
    }
}

void mx_tr_router_grad(mx_backend *be, float *dp, const float *dw, const float *p, const float *w,
                       const int *ids, const float *aux, int N, int E, int k, bool norm) {
#pragma omp parallel for if ((long)N * E > 65536)
    for (int n = 0; n < N; n++) {
        float *dr = dp + (size_t)n * E;
        const int *id = ids + (size_t)n * k;
        const float *dwn = dw + (size_t)n * k, *wn = w + (size_t)n * k;
        for (int e = 0; e < E; e++) dr[e] = aux[e];
        double sum = 0, dot = 0; /* w_j = p_j / S: dp_i = (dw_i - Σ_j dw_j w_j) / S */
        for (int j = 0; j < k; j++) sum += p[(size_t)n * E + id[j]], dot += (double)dwn[j] * wn[j];
        for (int j = 0; j < k; j++) dr[id[j]] += norm ? (float)((dwn[j] - dot) / sum) : dwn[j];
    }
}

void mx_tr_colsum(mx_backend *be, double *out, const float *x, int N, int E) {
    for (int e = 0; e < E; e++) out[e] = 0.0;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) out[e] += x[(size_t)n * E + e];
}
