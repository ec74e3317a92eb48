/* cpu_blocks.c: the CPU ops the MoE, MLA and MKA blocks add to the contract (see ../backend.h):
 * fill, copy3d (strided copies: splitting heads, broadcasting MLA's shared k_rope), matmul_t (x · W, MLA's
 * absorbed query), kv_read, moe_route (softmax, top-k, renormalize, scale), gather_rows / scatter_add_rows
 * (experts on their own tokens), tanh_, softmax_rows and scale_add_rows (the MKA router and its mixing) and
 * prefix_mean (MKA's causal running mean, carried across calls). fp32, sums of softmax in double.
 * mx_cpu_blocks_register fills these slots of a CPU backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../io/dtype.h"
#include "../../io/quant.h"
#include "cpu_ops.h"

static void cpu_fill(mx_backend *be, float *x, size_t n, float value) {
    for (size_t i = 0; i < n; i++) x[i] = value;
}

static void cpu_copy3d(mx_backend *be, float *dst, const float *src, int n0, int n1, int n2, size_t ds1,
                       size_t ss1, size_t ds2, size_t ss2) {
#pragma omp parallel for if ((size_t)n0 * n1 * n2 > 65536)
    for (int i2 = 0; i2 < n2; i2++)
        for (int i1 = 0; i1 < n1; i1++)
            memcpy(dst + i2 * ds2 + i1 * ds1, src + i2 * ss2 + i1 * ss1, sizeof(float) * (size_t)n0);
}

/* y[T, n_in] = x[T, n_out] · W: each weight row o (dequantized once) adds x[t, o] · W[o, :] to y[t, :].
 * Threads split the output columns into chunks so that no two write the same y element. */
static void cpu_matmul_t(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    size_t row_bytes = mx_dtype_row_bytes(w->type, n_in);
    memset(y, 0, sizeof(float) * (size_t)T * (size_t)n_in);
    float *row = malloc(sizeof(float) * (size_t)n_in);
    if (!row) abort(); /* one weight row */
    for (int o = 0; o < n_out; o++) {
        const float *wr = row;
        if (w->type == MX_F32)
            wr = (const float *)w->data + (size_t)o * n_in;
        else
            mx_dequant_row(w->type, (const char *)w->data + row_bytes * (size_t)o, row, n_in);
        for (int t = 0; t < T; t++) {
            float a = x[(size_t)t * n_out + o];
            float *yr = y + (size_t)t * n_in;
#pragma omp simd
            for (int64_t i = 0; i < n_in; i++) yr[i] += a * wr[i];
        }
    }
    free(row);
}

static void cpu_kv_read(mx_backend *be, const void *kv_store, float *dst, int T, int n, int pos0,
                        int n_slots) {
    const float *store = kv_store;
    for (int t = 0; t < T; t++)
        memcpy(dst + (size_t)t * n, store + (size_t)((pos0 + t) % n_slots) * n, (size_t)n * sizeof(float));
}

/* Softmax of one row of n in place (max-subtracted, sum in double). */
static void softmax_row(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

static void cpu_moe_route(mx_backend *be, const float *logits, int T, int E, int k, bool norm, float scale,
                          int *ids, float *w) {
    float *p = malloc(sizeof(float) * (size_t)E);
    if (!p) abort(); /* E floats */
    for (int t = 0; t < T; t++) {
        memcpy(p, logits + (size_t)t * E, sizeof(float) * (size_t)E);
        softmax_row(p, E);
        int *id = ids + (size_t)t * k;
        float *wt = w + (size_t)t * k;
        double sum = 0;
        for (int j = 0; j < k;
             j++) { /* selection: k is small; NaN scores (NaN weights) still pick an expert */
            int best = -1;
            for (int e = 0; e < E; e++)
                if (p[e] != -2.0f && (best < 0 || p[e] > p[best])) best = e;
            id[j] = best;
            wt[j] = p[best];
            sum += p[best];
            p[best] = -2.0f; /* taken (a softmax output is never negative) */
        }
        float f = norm ? (float)(scale / sum) : scale;
        for (int j = 0; j < k; j++) wt[j] *= f;
    }
    free(p);
}

static void cpu_gather_rows(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n) {
    for (int i = 0; i < rows; i++)
        memcpy(dst + (size_t)i * n, src + (size_t)idx[i] * n, sizeof(float) * (size_t)n);
}

static void cpu_scatter_add_rows(mx_backend *be, float *dst, const float *src, const int *idx, const float *w,
                                 int rows, int n) {
    for (int i = 0; i < rows; i++) {
        float *d = dst + (size_t)idx[i] * n;
        const float *s = src + (size_t)i * n;
        float a = w[i];
#pragma omp simd
        for (int j = 0; j < n; j++) d[j] += a * s[j];
    }
}

static void cpu_tanh(mx_backend *be, float *x, int n) {
#pragma omp parallel for simd if (n > 65536)
    for (int i = 0; i < n; i++) x[i] = tanhf(x[i]);
}

static void cpu_softmax_rows(mx_backend *be, float *x, int T, int n) {
    for (int t = 0; t < T; t++) softmax_row(x + (size_t)t * n, n);
}

static void cpu_scale_add_rows(mx_backend *be, float *y, const float *x, size_t x_stride, const float *w,
                               size_t w_stride, int T, int n) {
    for (int t = 0; t < T; t++) {
        float a = w[(size_t)t * w_stride];
        float *yr = y + (size_t)t * n;
        const float *xr = x + (size_t)t * x_stride;
#pragma omp simd
        for (int i = 0; i < n; i++) yr[i] += a * xr[i];
    }
}

static void cpu_prefix_mean(mx_backend *be, const float *x, int T, int C, float *sums, int pos0, int n_slots,
                            float *mean) {
    for (int t = 0; t < T; t++) {
        int p = pos0 + t;
        float *cur = sums + (size_t)(p % n_slots) * C;
        const float *prev = p > 0 ? sums + (size_t)((p - 1) % n_slots) * C : NULL;
        const float *xr = x + (size_t)t * C;
        float *m = mean + (size_t)t * C, inv = 1.0f / (float)(p + 1);
        for (int i = 0; i < C; i++) {
            cur[i] = (prev ? prev[i] : 0.0f) + xr[i];
            m[i] = cur[i] * inv;
        }
    }
}

void mx_cpu_blocks_register(mx_backend *be) {
    be->fill = cpu_fill;
    be->copy3d = cpu_copy3d;
    be->matmul_t = cpu_matmul_t;
    be->kv_read = cpu_kv_read;
    be->moe_route = cpu_moe_route;
    be->gather_rows = cpu_gather_rows;
    be->scatter_add_rows = cpu_scatter_add_rows;
    be->tanh_ = cpu_tanh;
    be->softmax_rows = cpu_softmax_rows;
    be->scale_add_rows = cpu_scale_add_rows;
    be->prefix_mean = cpu_prefix_mean;
}
