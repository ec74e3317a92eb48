/* cpu_matmul.c: y[T, n_out] = x[T, n_in] · Wᵀ for weights of any supported type, on the CPU.
 *
 * Float weights (F32) go to OpenBLAS sgemm. Quantized and half weights stay in their file type (no fp32 copy
 * of the model): the activations are quantized once into the weight type's activation format (Q8_0/Q8_1/Q8_K,
 * see io/quant.h), then the output rows are split across threads in blocks; each block computes a tile of
 * rows × tokens with integer dot products (mx_quant_gemm_tile). Decode (T = 1) is the same path with one
 * token: a GEMV bound by reading the weights once. */
#include <cblas.h>
#include <stdlib.h>

#include "../../io/quant.h"
#include "cpu_ops.h"

enum { ROWS_PER_TASK = 16, TOKENS_PER_TILE = 64 };

static void matmul_f32(const mx_tensor *w, const float *x, float *y, int T) {
    int n_in = (int)w->ne[0], n_out = (int)w->ne[1];
    if (T == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n_out, n_in, 1.0f, w->data, n_in, x, 1, 0.0f, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, n_in, w->data, n_in, 0.0f,
                    y, n_out);
}

static void matmul_quant(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    uint32_t act = mx_quant_act_type(w->type);
    size_t act_bytes = mx_dtype_row_bytes(act, n_in);
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    char *xq = malloc(act_bytes * (size_t)T);
    if (!xq) abort(); /* a few KB per token: failing here means the machine is out of memory */
#pragma omp parallel for if (T > 1)
    for (int t = 0; t < T; t++) mx_quant_act_row(act, x + (size_t)t * n_in, xq + act_bytes * t, n_in);

    int n_tasks = (n_out + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < n_tasks; task++) {
        int r0 = task * ROWS_PER_TASK;
        int nr = n_out - r0 < ROWS_PER_TASK ? n_out - r0 : ROWS_PER_TASK;
        const char *wr = (const char *)w->data + w_bytes * r0;
        if (T == 1) {
            mx_quant_dot_rows(w->type, wr, w_bytes, nr, xq, n_in, y + r0);
            continue;
        }
        for (int t0 = 0; t0 < T; t0 += TOKENS_PER_TILE) {
            int nt = T - t0 < TOKENS_PER_TILE ? T - t0 : TOKENS_PER_TILE;
            mx_quant_gemm_tile(w->type, wr, w_bytes, nr, xq + act_bytes * t0, act_bytes, nt, n_in,
                               y + (size_t)t0 * n_out + r0, (size_t)n_out);
        }
    }
    free(xq);
}

void mx_cpu_matmul(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    if (w->type == MX_F32)
        matmul_f32(w, x, y, T);
    else
        matmul_quant(w, x, y, T);
}
