/* cpu_matmul.c: y[T, n_out] = x[T, n_in] · Wᵀ for weights of any supported type, on the CPU. No fp32 copy of
 * a quantized model is ever made; two paths:
 *
 * - Prefill (T >= PREFILL_MIN_T) and exact mode: exact fp32. Output rows are split across threads in blocks
 *   of TILE_ROWS; each thread dequantizes its block of W into an fp32 tile that stays in its L2 cache and
 *   multiplies it with all T tokens by OpenBLAS sgemm (single-threaded inside our threads). Compute-bound,
 *   so the dequantization is amortized over T tokens.
 * - Decode (small T): llama.cpp's scheme. The activations are quantized once into the weight type's 8-bit
 *   activation format (io/quant.h) and each row is an integer dot product: the GEMV is bound by reading the
 *   weights once. Costs ~1e-2 relative error on the logits against fp32; --exact turns it off. */
#include <cblas.h>
#include <stdlib.h>

#include "../../io/quant.h"
#include "cpu_ops.h"

enum { ROWS_PER_TASK = 16, TOKENS_PER_TILE = 64, TILE_ROWS = 64, PREFILL_MIN_T = 8 };

static void matmul_f32(const mx_tensor *w, const float *x, float *y, int T) {
    int n_in = (int)w->ne[0], n_out = (int)w->ne[1];
    if (T == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n_out, n_in, 1.0f, w->data, n_in, x, 1, 0.0f, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, n_in, w->data, n_in, 0.0f,
                    y, n_out);
}

/* Exact: per-thread fp32 tiles of TILE_ROWS dequantized rows, times all tokens. */
static void matmul_dequant_tiles(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    int n_tiles = (n_out + TILE_ROWS - 1) / TILE_ROWS;
#pragma omp parallel
    {
        float *tile = aligned_alloc(64, sizeof(float) * TILE_ROWS * (size_t)n_in);
        if (!tile) abort(); /* a few hundred KB: failing means the machine is out of memory */
#pragma omp for schedule(static)
        for (int b = 0; b < n_tiles; b++) {
            int r0 = b * TILE_ROWS, nr = n_out - r0 < TILE_ROWS ? n_out - r0 : TILE_ROWS;
            for (int r = 0; r < nr; r++)
                mx_dequant_row(w->type, (const char *)w->data + w_bytes * (size_t)(r0 + r), tile + (size_t)r * n_in,
                               n_in);
            if (T == 1)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, nr, (int)n_in, 1.0f, tile, (int)n_in, x, 1, 0.0f, y + r0, 1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nr, (int)n_in, 1.0f, x, (int)n_in, tile,
                            (int)n_in, 0.0f, y + r0, n_out);
        }
        free(tile);
    }
}

/* Fast decode: 8-bit activations, integer dot products per weight block. */
static void matmul_quant_act(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    uint32_t act = mx_quant_act_type(w->type);
    size_t act_bytes = mx_dtype_row_bytes(act, n_in);
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    char *xq = malloc(act_bytes * (size_t)T);
    if (!xq) abort(); /* a few KB per token */
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
    else if (be->exact || T >= PREFILL_MIN_T)
        matmul_dequant_tiles(w, x, y, T);
    else
        matmul_quant_act(w, x, y, T);
}
