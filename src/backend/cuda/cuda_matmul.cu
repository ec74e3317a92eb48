/* cuda_matmul.cu: y[T, n_out] = x[T, n_in] · Wᵀ and the embedding lookup, for every GGUF weight type mixatt reads.
 *
 * - Decode (T <= GEMV_MAX_T): our own GEMV reading the weights as stored (quantized blocks, F32/F16/BF16); one
 *   warp per output row, each lane dequantizes 8-element units in fp32 and multiplies them with fp32
 *   activations; fp32 accumulation. Bound by reading the weights once.
 * - Prefill (larger T): x is rounded to bf16 and multiplied with the bf16 copy of W made at upload through
 *   cuBLASLt (bf16 inputs, fp32 accumulation and output). Descriptors and the chosen algorithm are cached per
 *   shape.
 * Block layouts are ggml's (src/io/quant_impl.h); each unit function below mirrors the CPU dequantizer. */
#include <string.h>

#include "cuda_common.h"

enum { GEMV_MAX_T = 8 };

__device__ __forceinline__ float h2f(const uint8_t *p) { return __half2float(*(const __half *)p); }

/* Unit u (8 elements) of a row of type TY: the weights w[0..8) of elements p0..p0+3 (w[0..4)) and p1..p1+3
 * (w[4..8)). */
template <int TY>
__device__ __forceinline__ void unit8(const uint8_t *__restrict__ row, int u, float *w, int &p0, int &p1) {
    if (TY == MX_F32) {
        const float4 *r = (const float4 *)row + 2 * u;
        float4 a = r[0], b = r[1];
        w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
        p0 = 8 * u, p1 = 8 * u + 4;
    } else if (TY == MX_F16 || TY == MX_BF16) {
        uint4 v = ((const uint4 *)row)[u];
        const uint32_t vv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t lo = (uint16_t)(vv[i] & 0xFFFF), hi = (uint16_t)(vv[i] >> 16);
            if (TY == MX_F16) {
                w[2 * i] = __half2float(__ushort_as_half(lo));
                w[2 * i + 1] = __half2float(__ushort_as_half(hi));
            } else {
                w[2 * i] = __uint_as_float((uint32_t)lo << 16);
                w[2 * i + 1] = __uint_as_float((uint32_t)hi << 16);
            }
        }
        p0 = 8 * u, p1 = 8 * u + 4;
    } else if (TY == MX_Q4_0 || TY == MX_Q4_1 || TY == MX_Q5_0 || TY == MX_Q5_1) {
        int b = u >> 2, q = u & 3;
        const int bs = TY == MX_Q4_0 ? 18 : TY == MX_Q4_1 ? 20 : TY == MX_Q5_0 ? 22 : 24;
        const int qs_off = TY == MX_Q4_0 ? 2 : TY == MX_Q4_1 ? 4 : TY == MX_Q5_0 ? 6 : 8;
        const uint8_t *blk = row + (size_t)b * bs;
        float d = h2f(blk), m = 0.0f;
        if (TY == MX_Q4_1 || TY == MX_Q5_1) m = h2f(blk + 2);
        const uint8_t *qs = blk + qs_off + 4 * q;
        uint32_t qh = 0;
        if (TY == MX_Q5_0) qh = blk[2] | blk[3] << 8 | blk[4] << 16 | (uint32_t)blk[5] << 24;
        if (TY == MX_Q5_1) qh = *(const uint32_t *)(blk + 4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int lo = qs[i] & 0xF, hi = qs[i] >> 4;
            if (TY == MX_Q5_0 || TY == MX_Q5_1) {
                lo |= (int)((qh >> (4 * q + i)) & 1) << 4;
                hi |= (int)((qh >> (16 + 4 * q + i)) & 1) << 4;
            }
            if (TY == MX_Q4_0) {
                w[i] = d * (float)(lo - 8), w[4 + i] = d * (float)(hi - 8);
            } else if (TY == MX_Q5_0) {
                w[i] = d * (float)(lo - 16), w[4 + i] = d * (float)(hi - 16);
            } else {
                w[i] = __fadd_rn(__fmul_rn(d, (float)lo), m), w[4 + i] = __fadd_rn(__fmul_rn(d, (float)hi), m);
            }
        }
        p0 = 32 * b + 4 * q, p1 = 32 * b + 16 + 4 * q;
    } else if (TY == MX_Q8_0) {
        int b = u >> 2, q = u & 3;
        const uint8_t *blk = row + (size_t)b * 34;
        float d = h2f(blk);
        const int8_t *qs = (const int8_t *)(blk + 2 + 8 * q);
#pragma unroll
        for (int i = 0; i < 8; i++) w[i] = (float)qs[i] * d;
        p0 = 32 * b + 8 * q, p1 = p0 + 4;
    } else if (TY == MX_Q4_K || TY == MX_Q5_K) {
        int sb = u >> 5, uu = u & 31, j = uu >> 2, r = uu & 3;
        const uint8_t *blk = row + (size_t)sb * (TY == MX_Q4_K ? 144 : 176);
        float d = h2f(blk), dmin = h2f(blk + 2);
        const uint8_t *sc = blk + 4;
        int s, m;
        if (j < 4) {
            s = sc[j] & 63, m = sc[j + 4] & 63;
        } else {
            s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
            m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        float dl = __fmul_rn(d, (float)s), ml = __fmul_rn(dmin, (float)m);
        const uint8_t *qs = blk + (TY == MX_Q4_K ? 16 : 48) + (j / 2) * 32 + 8 * r;
        const uint8_t *qh = blk + 16 + 8 * r;
        int shift = (j & 1) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int qv = (qs[i] >> shift) & 0xF;
            if (TY == MX_Q5_K) qv |= ((qh[i] >> j) & 1) << 4;
            w[i] = __fsub_rn(__fmul_rn(dl, (float)qv), ml);
        }
        p0 = 256 * sb + 32 * j + 8 * r, p1 = p0 + 4;
    } else if (TY == MX_Q6_K) {
        int sb = u >> 5, uu = u & 31;
        const uint8_t *blk = row + (size_t)sb * 210;
        int e0 = 8 * uu, h = e0 / 128, rr = e0 % 128, k = rr / 32, l0 = rr % 32;
        float d = h2f(blk + 208);
        float ds = __fmul_rn(d, (float)((const int8_t *)(blk + 192))[e0 / 16]);
        const uint8_t *ql = blk + h * 64 + (k & 1) * 32 + l0, *qh = blk + 128 + h * 32 + l0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int lo = k < 2 ? ql[i] & 0xF : ql[i] >> 4;
            int v = lo | ((qh[i] >> (2 * k)) & 3) << 4;
            w[i] = ds * (float)(v - 32);
        }
        p0 = 256 * sb + e0, p1 = p0 + 4;
    }
}

#define TYPE_CASE(T_, ...)             \
    case T_: {                         \
        constexpr int TY = T_;         \
        __VA_ARGS__;                   \
    } break;
#define TYPE_SWITCH(type, ...)                                                                                   \
    switch (type) {                                                                                              \
        TYPE_CASE(MX_F32, __VA_ARGS__)                                                                           \
        TYPE_CASE(MX_F16, __VA_ARGS__)                                                                           \
        TYPE_CASE(MX_BF16, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q4_0, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q4_1, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q5_0, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q5_1, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q8_0, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q4_K, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q5_K, __VA_ARGS__)                                                                          \
        TYPE_CASE(MX_Q6_K, __VA_ARGS__)                                                                          \
    default:                                                                                                     \
        fprintf(stderr, "mixatt: the CUDA backend has no kernel for weights of type %s\n", mx_dtype_name(type)); \
        abort();                                                                                                 \
    }

/* Dequantizes rows (ids[r] when ids, else r) into fp32 (outf) or bf16 (outb), one thread per unit. */
template <int TY>
__global__ void k_dequant(const uint8_t *__restrict__ W, size_t row_bytes, int n_in, const int *__restrict__ ids,
                          int rows, float *__restrict__ outf, __nv_bfloat16 *__restrict__ outb) {
    int units = n_in / 8;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * units) return;
    int r = (int)(idx / units), u = (int)(idx % units);
    size_t src = ids ? (size_t)ids[r] : (size_t)r;
    float w[8];
    int p0, p1;
    unit8<TY>(W + src * row_bytes, u, w, p0, p1);
    size_t o = (size_t)r * n_in;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (outf) {
            outf[o + p0 + i] = w[i];
            outf[o + p1 + i] = w[4 + i];
        } else {
            outb[o + p0 + i] = __float2bfloat16_rn(w[i]);
            outb[o + p1 + i] = __float2bfloat16_rn(w[4 + i]);
        }
    }
}

/* Float types whose rows are not a whole number of 8-element units: element-wise. */
__global__ void k_dequant_float(const uint8_t *__restrict__ W, uint32_t type, size_t row_bytes, int n_in,
                                const int *__restrict__ ids, int rows, float *__restrict__ outf,
                                __nv_bfloat16 *__restrict__ outb) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * n_in) return;
    int r = (int)(idx / n_in), i = (int)(idx % n_in);
    const uint8_t *row = W + (ids ? (size_t)ids[r] : (size_t)r) * row_bytes;
    float v = type == MX_F32 ? ((const float *)row)[i]
              : type == MX_F16 ? __half2float(((const __half *)row)[i])
                               : __uint_as_float((uint32_t)((const uint16_t *)row)[i] << 16);
    if (outf)
        outf[idx] = v;
    else
        outb[idx] = __float2bfloat16_rn(v);
}

static void dequant_rows(mx_cuda_ctx *c, const mx_cuda_weight *w, const int *ids, int rows, float *outf,
                         __nv_bfloat16 *outb) {
    if (rows <= 0) return;
    if (w->n_in % 8) {
        size_t total = (size_t)rows * w->n_in;
        k_dequant_float<<<(unsigned)((total + 255) / 256), 256, 0, c->stream>>>(
            (const uint8_t *)w->q, w->type, w->row_bytes, (int)w->n_in, ids, rows, outf, outb);
        CU_LAUNCHED();
        return;
    }
    size_t total = (size_t)rows * (w->n_in / 8);
    unsigned grid = (unsigned)((total + 255) / 256);
    TYPE_SWITCH(w->type, (k_dequant<TY><<<grid, 256, 0, c->stream>>>((const uint8_t *)w->q, w->row_bytes,
                                                                       (int)w->n_in, ids, rows, outf, outb)));
    CU_LAUNCHED();
}

void mx_cuda_dequant_bf16(mx_cuda_ctx *c, const mx_cuda_weight *w, __nv_bfloat16 *dst) {
    dequant_rows(c, w, NULL, (int)w->n_out, NULL, dst);
}

void mx_cuda_embed_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const int *d_ids, int T, float *out) {
    if (T <= 0) return;
    dequant_rows(c, w, d_ids, T, out, NULL);
}

/* ---- decode GEMV ---- */

template <int TY, int MAXT>
__global__ void __launch_bounds__(128) k_gemv(const uint8_t *__restrict__ W, size_t row_bytes, int n_in, int n_out,
                                              const float *__restrict__ x, float *__restrict__ y, int T) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * 4 + warp;
    if (row >= n_out) return;
    const uint8_t *wr = W + (size_t)row * row_bytes;
    int units = n_in / 8;
    float acc[MAXT];
#pragma unroll
    for (int t = 0; t < MAXT; t++) acc[t] = 0.0f;
    for (int u = lane; u < units; u += 32) {
        float w[8];
        int p0, p1;
        unit8<TY>(wr, u, w, p0, p1);
#pragma unroll
        for (int t = 0; t < MAXT; t++) {
            if (t < T) {
                float4 a = *(const float4 *)(x + (size_t)t * n_in + p0);
                float4 b = *(const float4 *)(x + (size_t)t * n_in + p1);
                acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y +
                          w[6] * b.z + w[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MAXT; t++) {
        if (t < T) {
            float v = acc[t];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) y[(size_t)t * n_out + row] = v;
        }
    }
}

static void gemv(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T) {
    unsigned grid = (unsigned)((w->n_out + 3) / 4);
    if (T == 1) {
        TYPE_SWITCH(w->type, (k_gemv<TY, 1><<<grid, 128, 0, c->stream>>>((const uint8_t *)w->q, w->row_bytes,
                                                                          (int)w->n_in, (int)w->n_out, x, y, T)));
    } else {
        TYPE_SWITCH(w->type, (k_gemv<TY, GEMV_MAX_T><<<grid, 128, 0, c->stream>>>(
                                 (const uint8_t *)w->q, w->row_bytes, (int)w->n_in, (int)w->n_out, x, y, T)));
    }
    CU_LAUNCHED();
}

/* ---- prefill GEMM (cuBLASLt) ---- */

__global__ void k_to_bf16(const float *__restrict__ x, __nv_bfloat16 *__restrict__ y, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i + 3 < n) {
        float4 v = *(const float4 *)(x + i);
        __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
        *(__nv_bfloat162 *)(y + i) = a;
        *(__nv_bfloat162 *)(y + i + 2) = b;
    } else {
        for (; i < n; i++) y[i] = __float2bfloat16_rn(x[i]);
    }
}

typedef struct {
    int n_in, n_out, T;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, cd;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

enum { LT_CACHE = 64 };
typedef struct {
    lt_plan p[LT_CACHE];
    int n, next;
} lt_cache;

static void lt_plan_destroy(lt_plan *p) {
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->cd);
}

static const lt_plan *lt_get(mx_cuda_ctx *c, int n_in, int n_out, int T) {
    lt_cache *lc = (lt_cache *)c->lt_cache;
    if (!lc) {
        lc = (lt_cache *)calloc(1, sizeof *lc);
        if (!lc) mx_cuda_fatal("calloc", "out of memory", __FILE__, __LINE__);
        c->lt_cache = lc;
    }
    for (int i = 0; i < lc->n; i++)
        if (lc->p[i].n_in == n_in && lc->p[i].n_out == n_out && lc->p[i].T == T) return &lc->p[i];
    lt_plan *p;
    if (lc->n < LT_CACHE) {
        p = &lc->p[lc->n++];
    } else {
        p = &lc->p[lc->next];
        lc->next = (lc->next + 1) % LT_CACHE;
        lt_plan_destroy(p);
    }
    p->n_in = n_in, p->n_out = n_out, p->T = T;
    LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    /* column-major view: D (n_out x T) = op(A) · B with A = W stored (n_in x n_out), B = x stored (n_in x T) */
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, n_in, n_out, n_in));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, n_in, T, n_in));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->cd, CUDA_R_32F, n_out, T, n_out));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c->lt_ws_bytes,
                                                  sizeof c->lt_ws_bytes));
    cublasLtMatmulHeuristicResult_t res;
    int got = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->cd, p->cd, pref, 1, &res, &got));
    cublasLtMatmulPreferenceDestroy(pref);
    if (got < 1) mx_cuda_fatal("cublasLtMatmulAlgoGetHeuristic", "no algorithm for this shape", __FILE__, __LINE__);
    p->algo = res.algo;
    return p;
}

static void gemm(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T) {
    size_t nx = (size_t)T * w->n_in;
    __nv_bfloat16 *xb = (__nv_bfloat16 *)mx_cuda_scratch(c, (void **)&c->xbf, &c->xbf_cap, nx * 2);
    k_to_bf16<<<(unsigned)((nx / 4 + 256) / 256), 256, 0, c->stream>>>(x, xb, nx);
    CU_LAUNCHED();
    const lt_plan *p = lt_get(c, (int)w->n_in, (int)w->n_out, T);
    float alpha = 1.0f, beta = 0.0f;
    LT_CHECK(cublasLtMatmul(c->lt, p->op, &alpha, w->bf, p->a, xb, p->b, &beta, y, p->cd, y, p->cd, &p->algo,
                            c->lt_ws, c->lt_ws_bytes, c->stream));
}

void mx_cuda_matmul_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T) {
    if (T <= 0) return;
    bool vec_ok = w->n_in % 8 == 0 && ((uintptr_t)x & 15) == 0;
    if (T <= GEMV_MAX_T && vec_ok)
        gemv(c, w, x, y, T);
    else if (!w->bf) /* a weight without a bf16 copy (a vector): the GEMV, GEMV_MAX_T tokens at a time */
        for (int t0 = 0; t0 < T; t0 += GEMV_MAX_T)
            gemv(c, w, x + (size_t)t0 * w->n_in, y + (size_t)t0 * w->n_out, T - t0 < GEMV_MAX_T ? T - t0 : GEMV_MAX_T);
    else
        gemm(c, w, x, y, T);
}

void mx_cuda_matmul_cache_free(mx_cuda_ctx *c) {
    lt_cache *lc = (lt_cache *)c->lt_cache;
    if (!lc) return;
    for (int i = 0; i < lc->n; i++) lt_plan_destroy(&lc->p[i]);
    free(lc);
    c->lt_cache = NULL;
}
