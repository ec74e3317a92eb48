/* cpu_batch.c: the server's batched decode ops on the CPU (backend.h: matmul_rows, attention_batch).
 *
 * matmul_rows streams each weight tile of ROWS_PER_TASK rows from memory once and runs every token of the
 * batch against it while it sits in cache, with exactly the per-row kernel that mx_cpu_matmul uses for one
 * token (8-bit activations, or fp32 when exact): a row's result does not depend on the batch around it.
 * attention_batch runs the reference attention (cpu_attention.c) per sequence, the sequences spread over the
 * threads (each row's arithmetic is then the same code on the same data as alone). */
#include <cblas.h>
#include <stdlib.h>

#include "../../io/quant.h"
#include "cpu_ops.h"

enum { ROWS_PER_TASK = 16 };

/* F32 weights: mx_cpu_matmul's one-token call (cblas_sgemm with one row), row by row. */
static void rows_f32_weights(const mx_tensor *w, const float *x, float *y, int T) {
    int n_in = (int)w->ne[0], n_out = (int)w->ne[1];
    for (int t = 0; t < T; t++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, n_out, n_in, 1.0f, x + (size_t)t * n_in, n_in,
                    w->data, n_in, 0.0f, y + (size_t)t * n_out, n_out);
}

/* Block-quantized weights with fp32 activations (exact): per tile, per token, mx_quant_dot_rows_f32. */
static void rows_exact(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    int n_tasks = (n_out + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < n_tasks; task++) {
        int r0 = task * ROWS_PER_TASK, nr = n_out - r0 < ROWS_PER_TASK ? n_out - r0 : ROWS_PER_TASK;
        const char *wr = (const char *)w->data + w_bytes * r0;
        for (int t = 0; t < T; t++)
            mx_quant_dot_rows_f32(w->type, wr, w_bytes, nr, x + (size_t)t * n_in, n_in,
                                  y + (size_t)t * n_out + r0);
    }
}

/* 8-bit activations: each token quantized on its own, then per tile, per token, mx_quant_dot_rows. */
static void rows_act8(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    uint32_t act = mx_quant_act_type(w->type);
    size_t act_bytes = mx_dtype_row_bytes(act, n_in), w_bytes = mx_dtype_row_bytes(w->type, n_in);
    char *xq = malloc(act_bytes * (size_t)T);
    if (!xq) abort(); /* a few KB per token: failing means the machine is out of memory */
    for (int t = 0; t < T; t++) mx_quant_act_row(act, x + (size_t)t * n_in, xq + act_bytes * t, n_in);
    int n_tasks = (n_out + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < n_tasks; task++) {
        int r0 = task * ROWS_PER_TASK, nr = n_out - r0 < ROWS_PER_TASK ? n_out - r0 : ROWS_PER_TASK;
        const char *wr = (const char *)w->data + w_bytes * r0;
        for (int t = 0; t < T; t++)
            mx_quant_dot_rows(w->type, wr, w_bytes, nr, xq + act_bytes * t, n_in, y + (size_t)t * n_out + r0);
    }
    free(xq);
}

static void cpu_matmul_rows(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    if (T == 1)
        mx_cpu_matmul(be, w, x, y, 1);
    else if (w->type == MX_F32)
        rows_f32_weights(w, x, y, T);
    else if (be->act8 && !be->exact && !w->exact)
        rows_act8(w, x, y, T);
    else
        rows_exact(w, x, y, T);
}

static void cpu_attention_batch(mx_backend *be, int n, const mx_attn_spec *specs, const float *q,
                                const void *const *k, const void *const *v, float *out) {
    if (n <= 0) return;
    size_t qs = specs[0].q_stride, os = specs[0].o_stride;
    if (n <
        be->n_threads) { /* too few sequences to share out: each call spreads its heads over the threads */
        for (int i = 0; i < n; i++)
            mx_cpu_attention(be, &specs[i], q + i * qs, k[i], v[i], out + i * os, NULL);
        return;
    }
    /* the call's own parallel region runs on one thread here (nested regions are off) */
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) mx_cpu_attention(be, &specs[i], q + i * qs, k[i], v[i], out + i * os, NULL);
}

void mx_cpu_batch_register(mx_backend *be) {
    be->matmul_rows = cpu_matmul_rows;
    be->attention_batch = cpu_attention_batch;
}
