/* cuda_train.cu: the CUDA implementation of the training op contract (backend_train.h), except attention
 * (cuda_train_attn.cu) and the ops of the MLA, MKA and MoE blocks (cuda_train_blocks.cu). fp32 buffers
 * throughout; the matmuls go through cuBLAS, in fp32 (CUBLAS_COMPUTE_32F) or, with set_bf16, on bf16 tensor
 * cores with fp32 accumulation, on bf16 copies of the operands made first (MX_CUDA_TRAIN_GEMM=fast16bf:
 * CUBLAS_COMPUTE_32F_FAST_16BF on the fp32 operands). The output head then
 * also keeps its logits' gradient in bf16. Norms, softmax, the loss and AdamW are fp32 with fixed reduction orders:
 * two runs with one seed give the same bits (no atomics; column sums are per-chunk partials summed in order).
 * Shapes as in backend_train.h: N rows, C width, V vocabulary; weights [out, in] row-major. */
#include <cublas_v2.h>
#include <math.h>
#include <string.h>

#include "cuda_train.h"

enum { ROW_WARPS = 8, CHUNKS = 64, SUMSQ_BLOCKS = 1024, XENT_ROWS = 2048 };

/* ---- the training state of a CUDA backend (mx_cuda_ctx.train) ---- */

typedef struct {
    cublasHandle_t blas;
    bool bf16;
    int *tok; /* tokens of the step (embedding forward) */
    size_t tok_cap;
    int *csr; /* embedding backward: rows grouped by token (uniq tokens, offsets, rows) */
    size_t csr_cap;
    int *csr_host; /* staging, same layout */
    size_t csr_host_cap;
    float *part; /* column-sum partials (CHUNKS x width) */
    size_t part_cap;
    double *dsum; /* sum-of-squares partials, per-row losses */
    size_t dsum_cap;
    double *dsum_host;
    size_t dsum_host_cap;
    float *logits; /* XENT_ROWS x V rounded up to 64 */
    size_t logits_cap;
    __nv_bfloat16 *glog; /* the logits' gradient in bf16 (bf16 operands), same shape */
    size_t glog_cap;
    __nv_bfloat16 *opa, *opb, *opc; /* bf16 copies of GEMM operands (opc: a matmul backward's dy) */
    size_t opa_cap, opb_cap, opc_cap;
    mx_tr_seg *segs; /* adamw segments */
    int segs_cap;
    void *blocks; /* cuda_train_blocks.cu's scratch (NULL until used) */
    float2 *rope; /* (T, D/2) (cos, sin) of each position and frequency, for rope_T, rope_D, rope_theta */
    size_t rope_cap;
    int rope_T, rope_D;
    float rope_theta;
} cu_train;

static cu_train *tr(mx_backend *be) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!c->train) {
        cu_train *t = (cu_train *)calloc(1, sizeof *t);
        if (!t) mx_cuda_fatal("calloc", "out of host memory", __FILE__, __LINE__);
        if (cublasCreate(&t->blas) != CUBLAS_STATUS_SUCCESS)
            mx_cuda_fatal("cublasCreate", "cannot initialize cuBLAS", __FILE__, __LINE__);
        LT_CHECK(cublasSetStream(t->blas, c->stream));
        c->train = t;
    }
    return (cu_train *)c->train;
}

cublasHandle_t mx_cuda_train_blas(mx_backend *be, cublasComputeType_t *compute) {
    cu_train *t = tr(be);
    *compute = t->bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    return t->blas;
}

void **mx_cuda_train_blocks(mx_backend *be) {
    return &tr(be)->blocks;
}

bool mx_cuda_train_bf16(mx_backend *be) {
    return tr(be)->bf16;
}

void mx_cuda_train_free(mx_cuda_ctx *c) {
    cu_train *t = (cu_train *)c->train;
    if (!t) return;
    cublasDestroy(t->blas);
    cudaFree(t->tok), cudaFree(t->csr), cudaFree(t->part), cudaFree(t->dsum), cudaFree(t->logits),
        cudaFree(t->glog);
    cudaFree(t->opa), cudaFree(t->opb), cudaFree(t->opc);
    cudaFree(t->segs); /* device memory too (grow) */
    cudaFree(t->rope);
    free(t->csr_host), free(t->dsum_host);
    mx_cuda_train_blocks_free(t->blocks);
    free(t);
    c->train = NULL;
}

/* ---- GEMMs (row-major through column-major cuBLAS: a row-major (r, c) matrix is a column-major (c, r)) ---- */

/* dst[i] = bf16(src[i]), rounded to nearest even */
static __global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

/* The same, four at a time: src 16-byte and dst 8-byte aligned, n4 groups of four. */
static __global__ void k_to_bf16_x4(uint2 *dst, const float4 *src, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        float4 f = src[i];
        __nv_bfloat162 lo = __floats2bfloat162_rn(f.x, f.y), hi = __floats2bfloat162_rn(f.z, f.w);
        dst[i] = make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
    }
}

void mx_cuda_to_bf16(cudaStream_t st, __nv_bfloat16 *dst, const float *src, size_t n) {
    size_t n4 = ((uintptr_t)src & 15) == 0 && ((uintptr_t)dst & 7) == 0 ? n / 4 : 0;
    if (n4) {
        k_to_bf16_x4<<<blocks_for(n4, 256), 256, 0, st>>>((uint2 *)dst, (const float4 *)src, n4);
        CU_LAUNCHED();
    }
    if (n > 4 * n4) {
        k_to_bf16<<<blocks_for(n - 4 * n4, 256), 256, 0, st>>>(dst + 4 * n4, src + 4 * n4, n - 4 * n4);
        CU_LAUNCHED();
    }
}

/* The bf16 copy of the n floats at src, in *buf (grown as needed). */
static const __nv_bfloat16 *as_bf16(mx_backend *be, __nv_bfloat16 **buf, size_t *cap, const float *src,
                                    size_t n) {
    *buf = grow(*buf, cap, n);
    mx_cuda_to_bf16(stream_of(be), *buf, src, n);
    return *buf;
}

/* C = op(A) · op(B) + beta · C (column-major, m x n, inner k) on bf16 operands, products on tensor cores
 * accumulated in fp32, C fp32. */
static void gemm_bf16(mx_backend *be, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                      const __nv_bfloat16 *A, int lda, const __nv_bfloat16 *B, int ldb, float beta, float *C,
                      int ldc) {
    float alpha = 1.0f;
    LT_CHECK(cublasGemmEx(tr(be)->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                          &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* Whether the bf16 GEMMs round their operands to bf16 copies first (the default; MX_CUDA_TRAIN_GEMM=fast16bf
 * leaves the rounding to cuBLAS's COMPUTE_32F_FAST_16BF on the fp32 operands). */
static bool bf16_operands(mx_backend *be) {
    return tr(be)->bf16 && !cu_ctx(be)->tune.train_gemm_fast16bf;
}

/* C = op(A) · op(B) + beta · C in cuBLAS's column-major terms (m x n, inner k), fp32 in memory. fp32: exact fp32
 * products; bf16: each operand rounded to a bf16 copy, products on bf16 tensor cores accumulated in fp32
 * (MX_CUDA_TRAIN_GEMM=fast16bf: COMPUTE_32F_FAST_16BF on the fp32 operands). The operands are dense: A is
 * (ta == N ? k : m) columns of lda floats, B (tb == N ? n : k) columns of ldb. */
static void gemm(mx_backend *be, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    cu_train *t = tr(be);
    float alpha = 1.0f;
    if (bf16_operands(be)) {
        size_t na = (size_t)lda * (ta == CUBLAS_OP_N ? k : m), nb = (size_t)ldb * (tb == CUBLAS_OP_N ? n : k);
        const __nv_bfloat16 *a = as_bf16(be, &t->opa, &t->opa_cap, A, na),
                            *b = as_bf16(be, &t->opb, &t->opb_cap, B, nb);
        gemm_bf16(be, ta, tb, m, n, k, a, lda, b, ldb, beta, C, ldc);
        return;
    }
    cublasComputeType_t ct = t->bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    LT_CHECK(cublasGemmEx(t->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                          CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT));
}

/* y (N, out) = x (N, in) · Wᵀ: column-major yᵀ (out, N) = W' (out, in) · xᵀ, W' = the stored (in, out)ᵀ */
static void gemm_xwt(mx_backend *be, float *y, const float *x, const float *W, int N, int in, int out,
                     float beta) {
    gemm(be, CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, W, in, x, in, beta, y, out);
}
/* dx (N, in) = dy (N, out) · W (out, in) */
static void gemm_dyw(mx_backend *be, float *dx, const float *dy, const float *W, int N, int in, int out,
                     float beta) {
    gemm(be, CUBLAS_OP_N, CUBLAS_OP_N, in, N, out, W, in, dy, out, beta, dx, in);
}
/* dW (out, in) += dyᵀ (out, N) · x (N, in) */
static void gemm_dytx(mx_backend *be, float *dW, const float *dy, const float *x, int N, int in, int out) {
    gemm(be, CUBLAS_OP_N, CUBLAS_OP_T, in, out, N, x, in, dy, out, 1.0f, dW, in);
}

/* ---- column sums: dst[c] += Σ_rows f(row, c), as CHUNKS partials summed in order (deterministic) ---- */

/* part[chunk, c] = Σ_{n in chunk} src[n, c] (and, with x: Σ src·xhat for the norms' weight gradient, xhat =
 * (x - mean) * rstd; mean NULL for RMSNorm). */
static __global__ void k_colsum_partial(float *part, float *part2, const float *src, const float *x,
                                        const float *mean, const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int per = (N + CHUNKS - 1) / CHUNKS, n0 = chunk * per, n1 = min(N, n0 + per);
    float s = 0.0f, s2 = 0.0f;
    for (int n = n0; n < n1; n++) {
        float d = src[(size_t)n * C + c];
        s += d;
        if (x) s2 += d * ((x[(size_t)n * C + c] - (mean ? mean[n] : 0.0f)) * rstd[n]);
    }
    part[(size_t)chunk * C + c] = s;
    if (part2) part2[(size_t)chunk * C + c] = s2;
}

static __global__ void k_colsum_finish(float *dst, const float *part, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int k = 0; k < CHUNKS; k++) s += part[(size_t)k * C + c];
    dst[c] += s;
}

/* db[c] += Σ_n src[n, c]; with x also dw[c] += Σ_n src[n, c] · xhat[n, c] (db may be NULL then). */
static void column_sums(mx_backend *be, float *db, float *dw, const float *src, const float *x,
                        const float *mean, const float *rstd, int N, int C) {
    cu_train *t = tr(be);
    t->part = grow(t->part, &t->part_cap, (size_t)2 * CHUNKS * C);
    float *p1 = t->part, *p2 = t->part + (size_t)CHUNKS * C;
    dim3 grid((C + 127) / 128, CHUNKS);
    k_colsum_partial<<<grid, 128, 0, stream_of(be)>>>(p1, x ? p2 : NULL, src, x, mean, rstd, N, C);
    CU_LAUNCHED();
    if (db) k_colsum_finish<<<(C + 127) / 128, 128, 0, stream_of(be)>>>(db, p1, C);
    if (x) k_colsum_finish<<<(C + 127) / 128, 128, 0, stream_of(be)>>>(dw, p2, C);
    CU_LAUNCHED();
}

/* ---- forward ---- */

static __global__ void k_embed_fwd(float *out, const float *wte, const float *wpe, const int *tok, int T,
                                   int C) {
    int row = blockIdx.x;
    const float *e = wte + (size_t)tok[row] * C, *p = wpe ? wpe + (size_t)(row % T) * C : NULL;
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[(size_t)row * C + i] = e[i] + (p ? p[i] : 0.0f);
}

static void t_embed_fwd(mx_backend *be, float *out, const float *wte, const float *wpe, const int *tok, int B,
                        int T, int C) {
    cu_train *t = tr(be);
    size_t N = (size_t)B * T;
    t->tok = grow(t->tok, &t->tok_cap, N);
    CU_CHECK(cudaMemcpyAsync(t->tok, tok, sizeof(int) * N, cudaMemcpyHostToDevice, stream_of(be)));
    k_embed_fwd<<<(unsigned)N, 256, 0, stream_of(be)>>>(out, wte, wpe, t->tok, T, C);
    CU_LAUNCHED();
}

/* One warp per row: mean and variance in fp32 (two passes over the row, which stays in L1). */
static __global__ void k_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w,
                                       const float *b, int N, int C, float eps) {
    int n = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (size_t)n * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += 32) s += xr[i];
    float mu = warp_sum_f(s) / C, v = 0.0f;
    for (int i = lane; i < C; i += 32) v += (xr[i] - mu) * (xr[i] - mu);
    float r = rsqrtf(warp_sum_f(v) / C + eps);
    for (int i = lane; i < C; i += 32) out[(size_t)n * C + i] = (xr[i] - mu) * r * w[i] + (b ? b[i] : 0.0f);
    if (lane == 0) mean[n] = mu, rstd[n] = r;
}

static void t_layernorm_fwd(mx_backend *be, float *out, float *mean, float *rstd, const float *x,
                            const float *w, const float *b, int N, int C, float eps) {
    k_layernorm_fwd<<<(N + ROW_WARPS - 1) / ROW_WARPS, 32 * ROW_WARPS, 0, stream_of(be)>>>(out, mean, rstd, x,
                                                                                           w, b, N, C, eps);
    CU_LAUNCHED();
}

static __global__ void k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C,
                                     float eps) {
    int n = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *xr = x + (size_t)n * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += 32) s += xr[i] * xr[i];
    float r = rsqrtf(warp_sum_f(s) / C + eps);
    for (int i = lane; i < C; i += 32) out[(size_t)n * C + i] = xr[i] * r * w[i];
    if (lane == 0) rstd[n] = r;
}

static void t_rmsnorm_fwd(mx_backend *be, float *out, float *rstd, const float *x, const float *w, int N,
                          int C, float eps) {
    k_rmsnorm_fwd<<<(N + ROW_WARPS - 1) / ROW_WARPS, 32 * ROW_WARPS, 0, stream_of(be)>>>(out, rstd, x, w, N,
                                                                                         C, eps);
    CU_LAUNCHED();
}

static __global__ void k_add_bias(float *y, const float *b, size_t rows, int n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < rows * n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % n];
}

static void t_matmul_fwd(mx_backend *be, float *y, const float *x, const float *W, const float *b, int N,
                         int in, int out) {
    gemm_xwt(be, y, x, W, N, in, out, 0.0f);
    if (!b) return;
    size_t n = (size_t)N * out;
    k_add_bias<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(y, b, (size_t)N, out);
    CU_LAUNCHED();
}

/* Rotate-half RoPE; the frequency as Hugging Face forms it (fp32 of a double power), the angle in fp32. */
/* cs[t, i] = (cos, sin) of t · theta^(-2i/D), as Hugging Face: inv_freq and the angle in fp32 (the CPU's
 * mx_tr_rope forms the same values the same way). */
static __global__ void k_rope_table(float2 *cs, int T, int D, float theta) {
    int half = D / 2;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < T * half; idx += gridDim.x * blockDim.x) {
        int t = idx / half, i = idx % half;
        float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / D));
        float ang = (float)t * inv_freq;
        cs[idx] = make_float2(cosf(ang), sinf(ang));
    }
}

/* Rotates the pairs (i, i + D/2) of every head of x (B, T, nh, D) by cs[t, i] (inverse: the negative angle). */
static __global__ void k_rope(float *x, const float2 *cs, int T, int nh, int D, bool inverse, size_t total) {
    int half = D / 2;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t rh = idx / half; /* (row, head) */
        int t = (int)((rh / nh) % T);
        float2 a = cs[(size_t)t * half + i];
        float c = a.x, s = inverse ? -a.y : a.y;
        float *v = x + rh * D;
        float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x0 * s + x1 * c;
    }
}

/* The (cos, sin) table of (T, D, theta), made once and kept until another shape asks. */
static const float2 *rope_table(mx_backend *be, int T, int D, float theta) {
    cu_train *t = tr(be);
    if (!t->rope || t->rope_T != T || t->rope_D != D || t->rope_theta != theta) {
        size_t n = (size_t)T * (D / 2);
        t->rope = grow(t->rope, &t->rope_cap, n);
        k_rope_table<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(t->rope, T, D, theta);
        CU_LAUNCHED();
        t->rope_T = T, t->rope_D = D, t->rope_theta = theta;
    }
    return t->rope;
}

static void t_rope(mx_backend *be, float *x, int B, int T, int nh, int D, float theta, bool inverse) {
    size_t total = (size_t)B * T * nh * (D / 2);
    if (!total) return;
    const float2 *cs = rope_table(be, T, D, theta);
    k_rope<<<blocks_for(total, 256), 256, 0, stream_of(be)>>>(x, cs, T, nh, D, inverse, total);
    CU_LAUNCHED();
}

/* GPT-2's tanh GELU and its derivative, in fp32 as the CPU's vmath. */
__device__ __forceinline__ float gelu_f(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_grad(float x) {
    const float k = 0.7978845608028654f;
    float u = k * (x + 0.044715f * x * x * x), th = tanhf(u);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * k * (1.0f + 3.0f * 0.044715f * x * x);
}

#define ELEMENTWISE(name, params, body)                                                                      \
    static __global__ void name params {                                                                     \
        for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) \
            body;                                                                                            \
    }

ELEMENTWISE(k_gelu_fwd, (float *out, const float *x, long n), out[i] = gelu_f(x[i]))
ELEMENTWISE(k_gelu_bwd, (float *dx, const float *dout, const float *x, long n),
            dx[i] = gelu_grad(x[i]) * dout[i])
ELEMENTWISE(k_swiglu_fwd, (float *out, const float *g, const float *u, long n),
            out[i] = g[i] / (1.0f + expf(-g[i])) * u[i])
ELEMENTWISE(k_add, (float *out, const float *a, const float *b, long n), out[i] = a[i] + b[i])
ELEMENTWISE(k_scale, (float *out, const float *x, float s, long n), out[i] = s * x[i])

static __global__ void k_swiglu_bwd(float *dg, float *du, const float *dout, const float *g, const float *u,
                                    long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float sig = 1.0f / (1.0f + expf(-g[i])), silu = g[i] * sig;
        dg[i] = dout[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
        du[i] = dout[i] * silu;
    }
}

static void t_gelu_fwd(mx_backend *be, float *out, const float *x, long n) {
    k_gelu_fwd<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(out, x, n);
    CU_LAUNCHED();
}
static void t_swiglu_fwd(mx_backend *be, float *out, const float *g, const float *u, long n) {
    k_swiglu_fwd<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(out, g, u, n);
    CU_LAUNCHED();
}
static void t_add(mx_backend *be, float *out, const float *a, const float *b, long n) {
    k_add<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(out, a, b, n);
    CU_LAUNCHED();
}
static void t_scale(mx_backend *be, float *out, const float *x, float s, long n) {
    k_scale<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(out, x, s, n);
    CU_LAUNCHED();
}

/* ---- backward ---- */

/* Block u sums the rows of token uniq[u] (rows[off[u] .. off[u+1])) in order into dwte's row. */
static __global__ void k_embed_bwd_wte(float *dwte, const float *dout, const int *uniq, const int *off,
                                       const int *rows, int C) {
    int u = blockIdx.x, tok = uniq[u];
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float s = 0.0f;
        for (int r = off[u]; r < off[u + 1]; r++) s += dout[(size_t)rows[r] * C + i];
        dwte[(size_t)tok * C + i] += s;
    }
}

static __global__ void k_embed_bwd_wpe(float *dwpe, const float *dout, int B, int T, int C) {
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += dout[((size_t)b * T + t) * C + i];
        dwpe[(size_t)t * C + i] += s;
    }
}

/* The rows of each token, grouped on the host (a counting sort of N ids): [uniq (U) | off (U+1) | rows (N)]. */
static int group_rows(cu_train *t, const int *tok, int N, int *U) {
    int vmax = 0;
    for (int i = 0; i < N; i++) vmax = tok[i] > vmax ? tok[i] : vmax;
    size_t need = (size_t)N + (size_t)vmax + 2 + (size_t)N + 1 + (size_t)N;
    t->csr_host = grow_host(t->csr_host, &t->csr_host_cap, need + (size_t)vmax + 1);
    int *count = t->csr_host + need; /* vmax + 1 counters after the layout */
    memset(count, 0, sizeof(int) * ((size_t)vmax + 1));
    for (int i = 0; i < N; i++) count[tok[i]]++;
    int u = 0;
    for (int v = 0; v <= vmax; v++) u += count[v] > 0;
    int *uniq = t->csr_host, *off = uniq + u, *rows = off + u + 1;
    int k = 0, pos = 0;
    for (int v = 0; v <= vmax; v++) {
        if (!count[v]) continue;
        uniq[k] = v, off[k] = pos;
        pos += count[v];
        count[v] = off[k++]; /* now the next slot of token v */
    }
    off[u] = pos;
    for (int i = 0; i < N; i++) rows[count[tok[i]]++] = i; /* rows of a token in increasing order */
    *U = u;
    return u + (u + 1) + N;
}

static void t_embed_bwd(mx_backend *be, float *dwte, float *dwpe, const float *dout, const int *tok, int B,
                        int T, int C) {
    cu_train *t = tr(be);
    int N = B * T, U = 0, len = group_rows(t, tok, N, &U);
    t->csr = grow(t->csr, &t->csr_cap, (size_t)len);
    CU_CHECK(cudaMemcpyAsync(t->csr, t->csr_host, sizeof(int) * len, cudaMemcpyHostToDevice, stream_of(be)));
    CU_CHECK(cudaStreamSynchronize(stream_of(be))); /* csr_host is reused by the next call */
    k_embed_bwd_wte<<<U, 256, 0, stream_of(be)>>>(dwte, dout, t->csr, t->csr + U, t->csr + 2 * U + 1, C);
    CU_LAUNCHED();
    if (dwpe) {
        k_embed_bwd_wpe<<<T, 256, 0, stream_of(be)>>>(dwpe, dout, B, T, C);
        CU_LAUNCHED();
    }
}

/* dx += LayerNorm (mean != NULL) or RMSNorm backward, one warp per row; the means of g = dout·w and g·xhat in
 * fp32 (the CPU sums them in double). */
static __global__ void k_norm_bwd_dx(float *dx, const float *dout, const float *x, const float *mean,
                                     const float *rstd, const float *w, int N, int C) {
    int n = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const float *d = dout + (size_t)n * C, *xr = x + (size_t)n * C;
    float mu = mean ? mean[n] : 0.0f, r = rstd[n], sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float g = d[i] * w[i];
        sg += g;
        sgx += g * (xr[i] - mu) * r;
    }
    sg = mean ? warp_sum_f(sg) / C : 0.0f;
    sgx = warp_sum_f(sgx) / C;
    float *o = dx + (size_t)n * C;
    for (int i = lane; i < C; i += 32) {
        float xhat = (xr[i] - mu) * r;
        o[i] += r * (d[i] * w[i] - sg - xhat * sgx);
    }
}

static void t_layernorm_bwd(mx_backend *be, float *dx, float *dw, float *db, const float *dout,
                            const float *x, const float *mean, const float *rstd, const float *w, int N,
                            int C) {
    column_sums(be, db, dw, dout, x, mean, rstd, N, C);
    k_norm_bwd_dx<<<(N + ROW_WARPS - 1) / ROW_WARPS, 32 * ROW_WARPS, 0, stream_of(be)>>>(dx, dout, x, mean,
                                                                                         rstd, w, N, C);
    CU_LAUNCHED();
}

static void t_rmsnorm_bwd(mx_backend *be, float *dx, float *dw, const float *dout, const float *x,
                          const float *rstd, const float *w, int N, int C) {
    column_sums(be, NULL, dw, dout, x, NULL, rstd, N, C);
    k_norm_bwd_dx<<<(N + ROW_WARPS - 1) / ROW_WARPS, 32 * ROW_WARPS, 0, stream_of(be)>>>(dx, dout, x, NULL,
                                                                                         rstd, w, N, C);
    CU_LAUNCHED();
}

/* The backward of a matmul on bf16 operands: dy rounded once for both products. */
static void matmul_bwd_bf16(mx_backend *be, float *dx, float *dW, const float *dy, const float *x,
                            const float *W, int N, int in, int out, bool accumulate) {
    cu_train *t = tr(be);
    const __nv_bfloat16 *dyb = as_bf16(be, &t->opc, &t->opc_cap, dy, (size_t)N * out);
    if (dx) {
        const __nv_bfloat16 *wb = as_bf16(be, &t->opa, &t->opa_cap, W, (size_t)out * in);
        gemm_bf16(be, CUBLAS_OP_N, CUBLAS_OP_N, in, N, out, wb, in, dyb, out, accumulate ? 1.0f : 0.0f, dx,
                  in);
    }
    const __nv_bfloat16 *xb = as_bf16(be, &t->opb, &t->opb_cap, x, (size_t)N * in);
    gemm_bf16(be, CUBLAS_OP_N, CUBLAS_OP_T, in, out, N, xb, in, dyb, out, 1.0f, dW, in);
}

static void t_matmul_bwd(mx_backend *be, float *dx, float *dW, float *db, const float *dy, const float *x,
                         const float *W, int N, int in, int out, bool accumulate) {
    if (bf16_operands(be)) {
        matmul_bwd_bf16(be, dx, dW, dy, x, W, N, in, out, accumulate);
    } else {
        if (dx) gemm_dyw(be, dx, dy, W, N, in, out, accumulate ? 1.0f : 0.0f);
        gemm_dytx(be, dW, dy, x, N, in, out);
    }
    if (db) column_sums(be, db, NULL, dy, NULL, NULL, NULL, N, out);
}

static void t_gelu_bwd(mx_backend *be, float *dx, const float *dout, const float *x, long n) {
    k_gelu_bwd<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(dx, dout, x, n);
    CU_LAUNCHED();
}
static void t_swiglu_bwd(mx_backend *be, float *dg, float *du, const float *dout, const float *g,
                         const float *u, long n) {
    k_swiglu_bwd<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(dg, du, dout, g, u, n);
    CU_LAUNCHED();
}

/* ---- the head with softmax cross-entropy ---- */

/* One block per row of logits (V): loss[r] = log Σ exp(l - max) + max - l[y] (double); with grad the row
 * becomes scale · (softmax - onehot(y)), in place, or rounded to bf16 into the same row of gout when given. */
static __global__ void k_xent_rows(float *logits, double *loss, const int *targets, int V, int ld, bool grad,
                                   float scale, __nv_bfloat16 *gout) {
    __shared__ float red[32];
    __shared__ double redd[32];
    int r = blockIdx.x, lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    float *lr = logits + (size_t)r * ld;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, lr[i]);
    mx = block_max_f(mx, red);
    double s = 0.0; /* the sum of exponentials in double, as the CPU's */
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += (double)expf(lr[i] - mx);
    s = warp_sum_d(s);
    if (lane == 0) redd[wid] = s;
    __syncthreads();
    double sum = 0.0;
    for (int k = 0; k < nw; k++) sum += redd[k];
    int y = targets[r];
    float ly = lr[y];
    __syncthreads(); /* every thread has read lr[y] before it is overwritten */
    if (threadIdx.x == 0) loss[r] = log(sum) + mx - ly;
    if (!grad) return;
    float k = (float)(scale / sum);
    __nv_bfloat16 *gr = gout ? gout + (size_t)r * ld : NULL;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = expf(lr[i] - mx) * k - (i == y ? scale : 0.0f);
        if (gr)
            gr[i] = __float2bfloat16_rn(g);
        else
            lr[i] = g;
    }
    if (gr) /* the padding columns are an inner dimension of dx's product: zeros */
        for (int i = V + threadIdx.x; i < ld; i += blockDim.x) gr[i] = __float2bfloat16_rn(0.0f);
}

/* The rows r0 .. r0 + rows - 1 of the head on bf16 operands: W already rounded (wb, padded with zero rows to ld),
 * the rows rounded here, the logits fp32 and their gradient rounded to bf16 (t->glog) for dx and dW. The padded
 * vocabulary is the logits' row count and dx's inner dimension: an odd V (GPT-2's 50257) there keeps cuBLAS off
 * its fast kernels. */
static void head_rows_bf16(mx_backend *be, const __nv_bfloat16 *wb, const float *xr, const int *target,
                           int rows, int C, int V, int ld, float scale, double *loss, float *dx, float *dW) {
    cu_train *t = tr(be);
    const __nv_bfloat16 *xb = as_bf16(be, &t->opa, &t->opa_cap, xr, (size_t)rows * C);
    gemm_bf16(be, CUBLAS_OP_T, CUBLAS_OP_N, ld, rows, C, wb, C, xb, C, 0.0f, t->logits, ld);
    k_xent_rows<<<rows, 512, 0, stream_of(be)>>>(t->logits, loss, target, V, ld, dx != NULL, scale,
                                                 dx ? t->glog : NULL);
    CU_LAUNCHED();
    if (!dx) return;
    gemm_bf16(be, CUBLAS_OP_N, CUBLAS_OP_N, C, rows, ld, wb, C, t->glog, ld, 0.0f, dx, C);
    gemm_bf16(be, CUBLAS_OP_N, CUBLAS_OP_T, C, V, rows, xb, C, t->glog, ld, 1.0f, dW, C);
}

/* The same rows with fp32 operands (gemm: fp32, or COMPUTE_32F_FAST_16BF), the gradient in place. */
static void head_rows_fp32(mx_backend *be, const float *W, const float *xr, const int *target, int rows,
                           int C, int V, int ld, float scale, double *loss, float *dx, float *dW) {
    cu_train *t = tr(be);
    gemm(be, CUBLAS_OP_T, CUBLAS_OP_N, V, rows, C, W, C, xr, C, 0.0f, t->logits, ld);
    k_xent_rows<<<rows, 512, 0, stream_of(be)>>>(t->logits, loss, target, V, ld, dx != NULL, scale, NULL);
    CU_LAUNCHED();
    if (!dx) return;
    gemm(be, CUBLAS_OP_N, CUBLAS_OP_N, C, rows, V, W, C, t->logits, ld, 0.0f, dx, C);
    gemm(be, CUBLAS_OP_N, CUBLAS_OP_T, C, V, rows, xr, C, t->logits, ld, 1.0f, dW, C);
}

static double t_head_xent(mx_backend *be, const float *x, const float *W, const int *targets, int N, int C,
                          int V, float scale, float *dx, float *dW) {
    cu_train *t = tr(be);
    int R = N < XENT_ROWS ? N : XENT_ROWS;
    /* logit rows padded to a multiple of 64: an odd V (GPT-2's 50257) as a leading dimension keeps cuBLAS off
     * its fast tensor-core kernels (the head ran at about 90 TFLOP/s) */
    int ld = (V + 63) / 64 * 64;
    bool bf = bf16_operands(be);
    t->logits = grow(t->logits, &t->logits_cap, (size_t)R * ld);
    if (bf) t->glog = grow(t->glog, &t->glog_cap, (size_t)R * ld);
    t->dsum = grow(t->dsum, &t->dsum_cap, (size_t)N);
    const __nv_bfloat16 *wb = NULL;
    if (bf) { /* W rounded, then ld - V zero rows */
        t->opb = grow(t->opb, &t->opb_cap, (size_t)ld * C);
        mx_cuda_to_bf16(stream_of(be), t->opb, W, (size_t)V * C);
        CU_CHECK(
            cudaMemsetAsync(t->opb + (size_t)V * C, 0, sizeof(__nv_bfloat16) * (ld - V) * C, stream_of(be)));
        wb = t->opb;
    }
    int *dtarget = NULL;
    CU_CHECK(cudaMallocAsync((void **)&dtarget, sizeof(int) * N, stream_of(be)));
    CU_CHECK(cudaMemcpyAsync(dtarget, targets, sizeof(int) * N, cudaMemcpyHostToDevice, stream_of(be)));
    for (int r0 = 0; r0 < N; r0 += R) {
        int rows = N - r0 < R ? N - r0 : R;
        const float *xr = x + (size_t)r0 * C;
        float *dxr = dx ? dx + (size_t)r0 * C : NULL;
        if (bf)
            head_rows_bf16(be, wb, xr, dtarget + r0, rows, C, V, ld, scale, t->dsum + r0, dxr, dW);
        else
            head_rows_fp32(be, W, xr, dtarget + r0, rows, C, V, ld, scale, t->dsum + r0, dxr, dW);
    }
    t->dsum_host = grow_host(t->dsum_host, &t->dsum_host_cap, (size_t)N);
    CU_CHECK(
        cudaMemcpyAsync(t->dsum_host, t->dsum, sizeof(double) * N, cudaMemcpyDeviceToHost, stream_of(be)));
    CU_CHECK(cudaFreeAsync(dtarget, stream_of(be)));
    CU_CHECK(cudaStreamSynchronize(stream_of(be)));
    double loss = 0.0;
    for (int i = 0; i < N; i++) loss += t->dsum_host[i];
    return loss;
}

/* ---- buffers and the optimizer ---- */

static void t_upload(mx_backend *be, float *dst, const float *src, size_t n) {
    CU_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyHostToDevice, stream_of(be)));
    CU_CHECK(cudaStreamSynchronize(stream_of(be)));
}

static void t_zero(mx_backend *be, float *x, size_t n) {
    CU_CHECK(cudaMemsetAsync(x, 0, sizeof(float) * n, stream_of(be)));
}

/* SUMSQ_BLOCKS partial sums in double, each over a fixed stride of elements, then summed in order. */
static __global__ void k_sumsq(double *part, const float *x, size_t n) {
    __shared__ double red[32];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = warp_sum_d(s);
    int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
    if (lane == 0) red[wid] = s;
    __syncthreads();
    if (wid == 0) {
        double v = lane < (int)(blockDim.x / 32) ? red[lane] : 0.0;
        v = warp_sum_d(v);
        if (lane == 0) part[blockIdx.x] = v;
    }
}

static double t_sumsq(mx_backend *be, const float *x, size_t n) {
    cu_train *t = tr(be);
    t->dsum = grow(t->dsum, &t->dsum_cap, (size_t)SUMSQ_BLOCKS);
    k_sumsq<<<SUMSQ_BLOCKS, 256, 0, stream_of(be)>>>(t->dsum, x, n);
    CU_LAUNCHED();
    t->dsum_host = grow_host(t->dsum_host, &t->dsum_host_cap, (size_t)SUMSQ_BLOCKS);
    CU_CHECK(cudaMemcpyAsync(t->dsum_host, t->dsum, sizeof(double) * SUMSQ_BLOCKS, cudaMemcpyDeviceToHost,
                             stream_of(be)));
    CU_CHECK(cudaStreamSynchronize(stream_of(be)));
    double s = 0.0;
    for (int i = 0; i < SUMSQ_BLOCKS; i++) s += t->dsum_host[i];
    return s;
}

/* One launch for every parameter: blockIdx.y is the segment, the x blocks stride over its elements. */
static __global__ void k_adamw(const mx_tr_seg *segs, float *w, const float *g, float *m, float *v,
                               mx_tr_adamw h, float step_size, float bc2_sqrt) {
    mx_tr_seg s = segs[blockIdx.y];
    float plr = h.lr * s.lr_mult, ps = step_size * s.lr_mult;
    float decay = s.decay ? 1.0f - plr * h.weight_decay : 1.0f;
    for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < s.n;
         j += (size_t)gridDim.x * blockDim.x) {
        size_t i = s.off + j;
        float gj = g[i], wj = w[i] * decay;
        float mj = m[i] * h.beta1 + (1.0f - h.beta1) * gj;
        float vj = v[i] * h.beta2 + (1.0f - h.beta2) * gj * gj;
        m[i] = mj, v[i] = vj;
        w[i] = wj - ps * (mj / (sqrtf(vj) / bc2_sqrt + h.eps));
    }
}

static void t_adamw(mx_backend *be, const mx_tr_seg *segs, int n_seg, float *w, const float *g, float *m,
                    float *v, const mx_tr_adamw *h) {
    if (n_seg == 0) return; /* an empty range (ZeRO-1's tail on one rank): no grid of zero blocks */
    cu_train *t = tr(be);
    size_t cap = (size_t)t->segs_cap;
    t->segs = grow(t->segs, &cap, (size_t)n_seg);
    t->segs_cap = (int)cap;
    CU_CHECK(cudaMemcpyAsync(t->segs, segs, sizeof *segs * n_seg, cudaMemcpyHostToDevice, stream_of(be)));
    float bc1 = 1.0f - powf(h->beta1, (float)h->t), bc2 = 1.0f - powf(h->beta2, (float)h->t);
    dim3 grid(64, n_seg);
    k_adamw<<<grid, 256, 0, stream_of(be)>>>(t->segs, w, g, m, v, *h, h->lr / bc1, sqrtf(bc2));
    CU_LAUNCHED();
    CU_CHECK(cudaStreamSynchronize(stream_of(be))); /* segs (host) may change before the next call */
}

static void t_set_bf16(mx_backend *be, bool bf16) {
    tr(be)->bf16 = bf16;
}

const mx_train_ops mx_cuda_train_ops = {
    /* .embed_fwd = */ t_embed_fwd,
    /* .layernorm_fwd = */ t_layernorm_fwd,
    /* .rmsnorm_fwd = */ t_rmsnorm_fwd,
    /* .matmul_fwd = */ t_matmul_fwd,
    /* .rope = */ t_rope,
    /* .attn_fwd = */ mx_cuda_train_attn_fwd,
    /* .gelu_fwd = */ t_gelu_fwd,
    /* .swiglu_fwd = */ t_swiglu_fwd,
    /* .add = */ t_add,
    /* .scale = */ t_scale,
    /* .embed_bwd = */ t_embed_bwd,
    /* .layernorm_bwd = */ t_layernorm_bwd,
    /* .rmsnorm_bwd = */ t_rmsnorm_bwd,
    /* .matmul_bwd = */ t_matmul_bwd,
    /* .attn_bwd = */ mx_cuda_train_attn_bwd,
    /* .gelu_bwd = */ t_gelu_bwd,
    /* .swiglu_bwd = */ t_swiglu_bwd,
    /* .head_xent = */ t_head_xent,
    /* .copy_cols = */ mx_cuda_train_copy_cols,
    /* .tanh_fwd = */ mx_cuda_train_tanh_fwd,
    /* .tanh_bwd = */ mx_cuda_train_tanh_bwd,
    /* .softmax_fwd = */ mx_cuda_train_softmax_fwd,
    /* .softmax_bwd = */ mx_cuda_train_softmax_bwd,
    /* .cummean_fwd = */ mx_cuda_train_cummean_fwd,
    /* .cummean_bwd = */ mx_cuda_train_cummean_bwd,
    /* .mix3_fwd = */ mx_cuda_train_mix3_fwd,
    /* .mix3_bwd = */ mx_cuda_train_mix3_bwd,
    /* .topk = */ mx_cuda_train_topk,
    /* .gather_rows = */ mx_cuda_train_gather_rows,
    /* .combine_rows = */ mx_cuda_train_combine_rows,
    /* .combine_rows_bwd = */ mx_cuda_train_combine_rows_bwd,
    /* .router_grad = */ mx_cuda_train_router_grad,
    /* .colsum = */ mx_cuda_train_colsum,
    /* .upload = */ t_upload,
    /* .zero = */ t_zero,
    /* .sumsq = */ t_sumsq,
    /* .adamw = */ t_adamw,
    /* .set_bf16 = */ t_set_bf16,
};
