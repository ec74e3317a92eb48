/* cpu_matmul.c: y[T, n_out] = x[T, n_in] · Wᵀ for weights of any supported type, on the CPU. No fp32 copy of
 * a quantized model is ever made; three paths:
 *
 * - Prefill (T >= PREFILL_MIN_T): exact fp32. The tokens are packed once (io/quant.h, mx_gemm_pack); output
 *   rows are split across threads in tiles of TILE_ROWS; each thread dequantizes its tile into fp32 rows that
 *   stay in its L2 cache and runs the register-blocked fp32 kernel mx_gemm_packed over all tokens. Compute
 *   bound, the dequantization amortized over T tokens. (OpenBLAS sgemm only on builds without that AVX512
 *   kernel: Debian's 0.3.21 does not recognize recent Xeons and runs its SSE3 kernels there.)
 * - Decode with fp32 activations (T < PREFILL_MIN_T and !be->act8, or be->exact): mx_quant_dot_rows_f32,
 *   weight blocks dequantized in registers and multiplied with fp32 x. Exact.
 * - Decode with 8-bit activations (be->act8 and not exact): llama.cpp's scheme. The activations are quantized
 *   once into the weight type's 8-bit activation format and each row is an integer dot product. About 2x
 *   the kernel throughput of the fp32 path; costs ~3e-2 mean (up to ~0.2) relative L2 on the logits.
 * Both decode paths stream the weights once; threads split rows in tasks of ROWS_PER_TASK. Several weights of
 * one input (mx_cpu_matmul_group: Q, K and V; gate and up) share the quantized activations and one parallel
 * pass over all their tasks, so a decode layer forks and joins the threads fewer times; every row is computed
 * by the same task code as a single matmul, so the result is bitwise the same. */
#include <cblas.h>
#include <stdlib.h>

#include "../../io/quant.h"
#include "cpu_ops.h"

enum { ROWS_PER_TASK = 16, TOKENS_PER_TILE = 64, TILE_ROWS = 48, PREFILL_MIN_T = 8 };

static void *alloc_floats(size_t n) {
    void *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) abort(); /* a few MB at most: failing means the machine is out of memory */
    return p;
}

/* Rows [r0, r0 + nr) of w as fp32: the weights themselves for F32, else dequantized into tile. */
static const float *rows_f32(const mx_tensor *w, int r0, int nr, float *tile) {
    int64_t n_in = w->ne[0];
    if (w->type == MX_F32) return (const float *)w->data + (size_t)r0 * (size_t)n_in;
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    for (int r = 0; r < nr; r++)
        mx_dequant_row(w->type, (const char *)w->data + w_bytes * (size_t)(r0 + r), tile + (size_t)r * n_in,
                       n_in);
    return tile;
}

/* Builds without the SIMD kernel: OpenBLAS sgemm (single-threaded) on each thread's tile. */
static void tile_sgemm(const float *tile, int nr, int n_in, const float *x, int T, float *y, int n_out) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nr, n_in, 1.0f, x, n_in, tile, n_in, 0.0f, y,
                n_out);
}

/* Exact prefill: packed tokens x per-thread fp32 tiles of TILE_ROWS rows. */
static void matmul_prefill(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    int n_tiles = (n_out + TILE_ROWS - 1) / TILE_ROWS;
    bool simd = mx_gemm_packed_is_simd();
    int n_groups = simd ? (T + MX_GEMM_TOK - 1) / MX_GEMM_TOK : 0;
    float *xp = simd ? alloc_floats(mx_gemm_packed_floats(T, n_in)) : NULL;
#pragma omp parallel
    {
        float *tile = w->type == MX_F32 ? NULL : alloc_floats((size_t)TILE_ROWS * (size_t)n_in);
#pragma omp for schedule(static)
        for (int g = 0; g < n_groups; g++) mx_gemm_pack(x, T, n_in, xp, g, g + 1);
#pragma omp for schedule(static)
        for (int b = 0; b < n_tiles; b++) {
            int r0 = b * TILE_ROWS, nr = n_out - r0 < TILE_ROWS ? n_out - r0 : TILE_ROWS;
            const float *rows = rows_f32(w, r0, nr, tile);
            if (simd)
                mx_gemm_packed(rows, nr, n_in, xp, T, y + r0, (size_t)n_out);
            else
                tile_sgemm(rows, nr, (int)n_in, x, T, y + r0, n_out);
        }
        free(tile);
    }
    free(xp);
}

/* Exact decode: fp32 activations, weights dequantized in registers. */
static void matmul_decode_f32(const mx_tensor *w, const float *x, float *y, int T) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    int n_tasks = (n_out + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < n_tasks; task++) {
        int r0 = task * ROWS_PER_TASK;
        int nr = n_out - r0 < ROWS_PER_TASK ? n_out - r0 : ROWS_PER_TASK;
        const char *wr = (const char *)w->data + w_bytes * r0;
        for (int t = 0; t < T; t++)
            mx_quant_dot_rows_f32(w->type, wr, w_bytes, nr, x + (size_t)t * n_in, n_in,
                                  y + (size_t)t * n_out + r0);
    }
}

/* Fast decode: 8-bit activations, integer dot products per weight block. */
typedef struct {
    const mx_tensor *w;
    float *y;
    int task0; /* the first task of this weight in a pass over several */
} act8_part;

/* The activations x (T, n_in) quantized into w's 8-bit activation format, malloc'd. */
static char *quantize_act(const mx_tensor *w, const float *x, int T) {
    int64_t n_in = w->ne[0];
    uint32_t act = mx_quant_act_type(w->type);
    size_t act_bytes = mx_dtype_row_bytes(act, n_in);
    char *xq = malloc(act_bytes * (size_t)T);
    if (!xq) abort(); /* a few KB per token */
    for (int t = 0; t < T; t++) mx_quant_act_row(act, x + (size_t)t * n_in, xq + act_bytes * t, n_in);
    return xq;
}

static int act8_tasks(const mx_tensor *w) {
    return ((int)w->ne[1] + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
}

/* Task `task` of one weight: its ROWS_PER_TASK output rows for all T tokens. */
static void act8_task(const mx_tensor *w, const char *xq, float *y, int T, int task) {
    int64_t n_in = w->ne[0];
    int n_out = (int)w->ne[1];
    size_t act_bytes = mx_dtype_row_bytes(mx_quant_act_type(w->type), n_in);
    size_t w_bytes = mx_dtype_row_bytes(w->type, n_in);
    int r0 = task * ROWS_PER_TASK;
    int nr = n_out - r0 < ROWS_PER_TASK ? n_out - r0 : ROWS_PER_TASK;
    const char *wr = (const char *)w->data + w_bytes * r0;
    if (T == 1) {
        mx_quant_dot_rows(w->type, wr, w_bytes, nr, xq, n_in, y + r0);
        return;
    }
    for (int t0 = 0; t0 < T; t0 += TOKENS_PER_TILE) {
        int nt = T - t0 < TOKENS_PER_TILE ? T - t0 : TOKENS_PER_TILE;
        mx_quant_gemm_tile(w->type, wr, w_bytes, nr, xq + act_bytes * t0, act_bytes, nt, n_in,
                           y + (size_t)t0 * n_out + r0, (size_t)n_out);
    }
}

/* The n parts' tasks in one parallel pass (parts[n].task0 = the total); xq serves every part. */
static void act8_pass(const act8_part *parts, int n, const char *xq, int T) {
    int n_tasks = parts[n].task0;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < n_tasks; task++) {
        int i = 0;
        while (task >= parts[i + 1].task0) i++;
        act8_task(parts[i].w, xq, parts[i].y, T, task - parts[i].task0);
    }
}

static void matmul_quant_act(const mx_tensor *w, const float *x, float *y, int T) {
    char *xq = quantize_act(w, x, T);
    act8_part parts[2] = {{w, y, 0}, {NULL, NULL, act8_tasks(w)}};
    act8_pass(parts, 1, xq, T);
    free(xq);
}

void mx_cpu_matmul(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    int n_in = (int)w->ne[0], n_out = (int)w->ne[1];
    if (T >= PREFILL_MIN_T)
        matmul_prefill(w, x, y, T);
    else if (w->type == MX_F32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, n_in, w->data, n_in,
                    0.0f, y, n_out);
    else if (be->act8 && !be->exact && !w->exact)
        matmul_quant_act(w, x, y, T);
    else
        matmul_decode_f32(w, x, y, T);
}

/* Whether the n weights of one input all take the 8-bit decode path with one activation format. */
static bool act8_group(const mx_backend *be, int n, const mx_tensor *const *w, int T) {
    if (T >= PREFILL_MIN_T || !be->act8 || be->exact || n > MX_MATMUL_GROUP_MAX) return false;
    for (int i = 0; i < n; i++)
        if (w[i]->type == MX_F32 || w[i]->exact || w[i]->ne[0] != w[0]->ne[0] ||
            mx_quant_act_type(w[i]->type) != mx_quant_act_type(w[0]->type))
            return false;
    return true;
}

void mx_cpu_matmul_group(mx_backend *be, int n, const mx_tensor *const *w, const float *x, float *const *y,
                         int T) {
    if (!act8_group(be, n, w, T)) {
        for (int i = 0; i < n; i++) mx_cpu_matmul(be, w[i], x, y[i], T);
        return;
    }
    char *xq = quantize_act(w[0], x, T); /* once for all: the same format */
    act8_part parts[MX_MATMUL_GROUP_MAX + 1];
    int task0 = 0;
    for (int i = 0; i < n; i++) {
        parts[i] = (act8_part){w[i], y[i], task0};
        task0 += act8_tasks(w[i]);
    }
    parts[n] = (act8_part){NULL, NULL, task0};
    act8_pass(parts, n, xq, T);
    free(xq);
}
