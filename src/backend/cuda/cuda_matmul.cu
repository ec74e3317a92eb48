/* cuda_matmul.cu: y[T, n_out] = x[T, n_in] · Wᵀ and the embedding lookup, for every GGUF weight type mixatt
 * reads.
 *
 * - Decode (T <= GEMV_MAX_T): our own GEMV reading the weights as stored (quantized blocks, F32/F16/BF16);
 * one warp per output row, each lane dequantizes 8-element units in fp32 and multiplies them with fp32
 *   activations; fp32 accumulation. Bound by reading the weights once.
 * - Prefill (larger T): x is rounded to bf16 and multiplied with the bf16 copy of W made at upload through
 *   cuBLASLt (bf16 inputs, fp32 accumulation and output). Descriptors and the chosen algorithm are cached per
 *   shape, token-count bucket and alignment (lt_plan). mx_cuda_gemm_bf16 (the MoE experts, cuda_moe.cu) takes
 * bf16 activations as they are and writes bf16 or fp32, on any stream. Block layouts are ggml's
 * (src/io/quant_impl.h); each unit function below mirrors the CPU dequantizer. */
#include <string.h>
#include <time.h>

#include "cuda_common.h"

enum { GEMV_MAX_T = 8 };

__device__ __forceinline__ float h2f(const uint8_t *p) {
    return __half2float(*(const __half *)p);
}

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
                w[i] = __fadd_rn(__fmul_rn(d, (float)lo), m),
                w[4 + i] = __fadd_rn(__fmul_rn(d, (float)hi), m);
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

#define TYPE_CASE(T_, ...)                                                                                   \
    case T_: {                                                                                               \
        constexpr int TY = T_;                                                                               \
        __VA_ARGS__;                                                                                         \
    } break;
#define TYPE_SWITCH(type, ...)                                                                               \
    switch (type) {                                                                                          \
        TYPE_CASE(MX_F32, __VA_ARGS__)                                                                       \
        TYPE_CASE(MX_F16, __VA_ARGS__)                                                                       \
        TYPE_CASE(MX_BF16, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q4_0, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q4_1, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q5_0, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q5_1, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q8_0, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q4_K, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q5_K, __VA_ARGS__)                                                                      \
        TYPE_CASE(MX_Q6_K, __VA_ARGS__)                                                                      \
    default:                                                                                                 \
        fprintf(stderr, "mixatt: the CUDA backend has no kernel for weights of type %s\n",                   \
                mx_dtype_name(type));                                                                        \
        abort();                                                                                             \
    }

/* Dequantizes rows (ids[r] when ids, else r) into fp32 (outf) or bf16 (outb), one thread per unit. */
template <int TY>
__global__ void k_dequant(const uint8_t *__restrict__ W, size_t row_bytes, int n_in,
                          const int *__restrict__ ids, int rows, float *__restrict__ outf,
                          __nv_bfloat16 *__restrict__ outb) {
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
    float v = type == MX_F32   ? ((const float *)row)[i]
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
__global__ void __launch_bounds__(128)
    k_gemv(const uint8_t *__restrict__ W, size_t row_bytes, int n_in, int n_out, const float *__restrict__ x,
           float *__restrict__ y, int T) {
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
        TYPE_SWITCH(w->type, (k_gemv<TY, 1><<<grid, 128, 0, c->stream>>>(
                                 (const uint8_t *)w->q, w->row_bytes, (int)w->n_in, (int)w->n_out, x, y, T)));
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

/* cuBLASLt plans: descriptors and the heuristic's algorithm per (shape, token bucket, output type,
 * alignments). MoE experts see a different token count at nearly every call, and a heuristic query costs far
 * more than the GEMM's launch, so the algorithm is chosen once per bucket of T (lt_bucket: four buckets per
 * power of two, T rounded up to the bucket's top) and the layouts' column count is set to the exact T before
 * each call. Should cuBLASLt refuse the bucket's algorithm at some T, that call asks the heuristic for its
 * exact T (counted in the MX_CUDA_LT_STATS=1 report). MX_CUDA_LT_BUCKET=0: one plan per exact T (the former
 * behaviour, for A/B). */
typedef struct {
    int n_in, n_out, Tb, trans; /* trans: matmul_t, y[T, n_in] = x[T, n_out] · W; Tb: the bucket's T */
    int out_bf16;               /* y is bf16 (else fp32) */
    uint32_t align_a, align_b,
        align_cd; /* the bytes W's bf16 copy, x and y are aligned to (views start anywhere) */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, cd;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

enum { LT_CACHE = 1024 };
typedef struct {
    lt_plan p[LT_CACHE];
    int n, next;
    long n_heur, n_calls, n_refused; /* heuristic queries, matmuls, bucket algorithms cuBLASLt refused */
    double heur_s;                   /* host seconds in heuristic queries and plan creation */
} lt_cache;

static void lt_plan_destroy(lt_plan *p) {
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->cd);
}

/* The largest power of two (at most 256, cuBLASLt's default assumption) that divides p. */
static uint32_t align_of(const void *p) {
    uintptr_t a = (uintptr_t)p & 255u;
    return a ? (uint32_t)(a & (~a + 1)) : 256u;
}

static double lt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* The T a plan's algorithm is chosen for: T itself up to 16, then T rounded up to a quarter of its power of
 * two (17..20 -> 20, 1000 -> 1024, 1100 -> 1280, 4096 -> 4096). */
static int lt_bucket(const mx_cuda_ctx *c, int T) {
    if (!c->tune.lt_bucket || T <= 16) return T;
    int p = 16;
    while (p <= T / 2) p *= 2;
    int step = p / 4;
    return (T + step - 1) / step * step;
}

/* Sets the layouts b and cd to T tokens. */
static void lt_set_T(lt_plan *p, int T) {
    uint64_t cols = (uint64_t)T;
    LT_CHECK(cublasLtMatrixLayoutSetAttribute(p->b, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
    LT_CHECK(cublasLtMatrixLayoutSetAttribute(p->cd, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
}

/* The best algorithm cuBLASLt's heuristic gives for p's shape at T tokens. */
static cublasLtMatmulAlgo_t lt_heuristic(mx_cuda_ctx *c, lt_plan *p, int T) {
    lt_cache *lc = (lt_cache *)c->lt_cache;
    double t0 = lt_now();
    lt_set_T(p, T);
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &c->lt_ws_bytes, sizeof c->lt_ws_bytes));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                  &p->align_a, sizeof p->align_a));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                  &p->align_b, sizeof p->align_b));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                  &p->align_cd, sizeof p->align_cd));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                  &p->align_cd, sizeof p->align_cd));
    cublasLtMatmulHeuristicResult_t res;
    int got = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->cd, p->cd, pref, 1, &res, &got));
    cublasLtMatmulPreferenceDestroy(pref);
    if (got < 1)
        mx_cuda_fatal("cublasLtMatmulAlgoGetHeuristic", "no algorithm for this shape", __FILE__, __LINE__);
    lc->n_heur++;
    lc->heur_s += lt_now() - t0;
    return res.algo;
}

static lt_plan *lt_get(mx_cuda_ctx *c, int n_in, int n_out, int T, int trans, int out_bf16, uint32_t align_a,
                       uint32_t align_b, uint32_t align_cd) {
    lt_cache *lc = (lt_cache *)c->lt_cache;
    if (!lc) {
        lc = (lt_cache *)calloc(1, sizeof *lc);
        if (!lc) mx_cuda_fatal("calloc", "out of memory", __FILE__, __LINE__);
        c->lt_cache = lc;
    }
    int Tb = lt_bucket(c, T);
    for (int i = 0; i < lc->n; i++) {
        lt_plan *q = &lc->p[i];
        if (q->n_in == n_in && q->n_out == n_out && q->Tb == Tb && q->trans == trans &&
            q->out_bf16 == out_bf16 && q->align_a == align_a && q->align_b == align_b &&
            q->align_cd == align_cd)
            return q;
    }
    lt_plan *p;
    if (lc->n < LT_CACHE) {
        p = &lc->p[lc->n++];
    } else {
        p = &lc->p[lc->next];
        lc->next = (lc->next + 1) % LT_CACHE;
        lt_plan_destroy(p);
    }
    memset(p, 0, sizeof *p);
    p->n_in = n_in, p->n_out = n_out, p->Tb = Tb, p->trans = trans, p->out_bf16 = out_bf16;
    p->align_a = align_a, p->align_b = align_b, p->align_cd = align_cd;
    LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = trans ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    /* column-major view: D (n_out x T) = op(A) · B with A = W stored (n_in x n_out), B = x stored (n_in x T)
     */
    /* trans: D (n_in x T) = A · B with A = W (n_in x n_out), B = x stored (n_out x T) */
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, n_in, n_out, n_in));
    int kb = trans ? n_out : n_in, md = trans ? n_in : n_out;
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, kb, Tb, kb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->cd, out_bf16 ? CUDA_R_16BF : CUDA_R_32F, md, Tb, md));
    p->algo = lt_heuristic(c, p, Tb);
    return p;
}

/* y = op(W) · x through plan p at T tokens on stream st with workspace ws (of c->lt_ws_bytes). */
static void lt_run(mx_cuda_ctx *c, lt_plan *p, int T, const __nv_bfloat16 *w, const __nv_bfloat16 *x, void *y,
                   cudaStream_t st, void *ws) {
    lt_cache *lc = (lt_cache *)c->lt_cache;
    float alpha = 1.0f, beta = 0.0f;
    lt_set_T(p, T);
    lc->n_calls++;
    cublasStatus_t s = cublasLtMatmul(c->lt, p->op, &alpha, w, p->a, x, p->b, &beta, y, p->cd, y, p->cd,
                                      &p->algo, ws, c->lt_ws_bytes, st);
    if (s == CUBLAS_STATUS_SUCCESS) return;
    lc->n_refused++; /* the bucket's algorithm does not run at this T: the heuristic's own choice for it */
    cublasLtMatmulAlgo_t algo = lt_heuristic(c, p, T);
    LT_CHECK(cublasLtMatmul(c->lt, p->op, &alpha, w, p->a, x, p->b, &beta, y, p->cd, y, p->cd, &algo, ws,
                            c->lt_ws_bytes, st));
}

static void gemm(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T, int trans = 0) {
    size_t nx = (size_t)T * (trans ? w->n_out : w->n_in);
    __nv_bfloat16 *xb = (__nv_bfloat16 *)mx_cuda_scratch(c, (void **)&c->xbf, &c->xbf_cap, nx * 2);
    k_to_bf16<<<(unsigned)((nx / 4 + 256) / 256), 256, 0, c->stream>>>(x, xb, nx);
    CU_LAUNCHED();
    lt_plan *p =
        lt_get(c, (int)w->n_in, (int)w->n_out, T, trans, 0, align_of(w->bf), align_of(xb), align_of(y));
    lt_run(c, p, T, w->bf, xb, y, c->stream, c->lt_ws);
}

void mx_cuda_gemm_bf16(mx_cuda_ctx *c, cudaStream_t st, void *ws, const __nv_bfloat16 *w, int n_in, int n_out,
                       const __nv_bfloat16 *x, void *y, bool y_bf16, int T) {
    if (T <= 0) return;
    lt_plan *p = lt_get(c, n_in, n_out, T, 0, y_bf16, align_of(w), align_of(x), align_of(y));
    lt_run(c, p, T, w, x, y, st, ws);
}

void mx_cuda_matmul_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T) {
    if (T <= 0) return;
    bool vec_ok = w->n_in % 8 == 0 && ((uintptr_t)x & 15) == 0;
    if (T <= GEMV_MAX_T && vec_ok)
        gemv(c, w, x, y, T);
    else if (!w->bf) /* a weight without a bf16 copy (a vector): the GEMV, GEMV_MAX_T tokens at a time */
        for (int t0 = 0; t0 < T; t0 += GEMV_MAX_T)
            gemv(c, w, x + (size_t)t0 * w->n_in, y + (size_t)t0 * w->n_out,
                 T - t0 < GEMV_MAX_T ? T - t0 : GEMV_MAX_T);
    else
        gemm(c, w, x, y, T);
}

void mx_cuda_matmul_t_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T) {
    if (T <= 0) return;
    if (w->bf && ((uintptr_t)x & 15) == 0 && w->n_out % 8 == 0 && w->n_in % 8 == 0) {
        gemm(c, w, x, y, T, 1);
        return;
    }
    size_t n = (size_t)w->n_in * w->n_out;
    float *wf = (float *)mx_cuda_scratch(c, (void **)&c->wf, &c->wf_cap, n * sizeof(float));
    dequant_rows(c, w, NULL, (int)w->n_out, wf, NULL);
    mx_cuda_matmul_t_f32_k(c, wf, x, y, (int)w->n_in, (int)w->n_out, T);
}

void mx_cuda_matmul_cache_free(mx_cuda_ctx *c) {
    lt_cache *lc = (lt_cache *)c->lt_cache;
    if (!lc) return;
    if (c->tune.lt_stats)
        fprintf(stderr,
                "mixatt cuda: cuBLASLt %ld matmuls, %d plans, %ld heuristic queries (%.1f ms host), %ld "
                "bucket algorithms refused\n",
                lc->n_calls, lc->n, lc->n_heur, 1e3 * lc->heur_s, lc->n_refused);
    for (int i = 0; i < lc->n; i++) lt_plan_destroy(&lc->p[i]);
    free(lc);
    c->lt_cache = NULL;
}

/* ---- fused decode GEMVs (one token; recognized by cuda_graph.cu in recorded op sequences) ----
 * k_fused: input = rmsnorm(x) · nw (norm) or x itself, staged once per block in shared memory (block 0 also
 * writes the normalized row to h, as the rmsnorm op would); each warp computes two rows at once and applies
 * the mode's epilogue: FM_PLAIN   y[row] = v                                  (pairs of consecutive rows)
 *   FM_ADD     y[row] = v, res[row] += v                   (the residual add after o/down projections)
 *   FM_SWIGLU  rows j of W0 (gate) and W1 (up): y1[j] = u, y0[j] = silu(g) * u
 *   FM_QKV     heads of W0 (q, H heads), W1 (k, G heads), W2 (v, G heads) of D rows; each pair is a RoPE pair
 *              (rotated like k_rope, at the recorded positions); q/k/v written fp32 to y0/y1/y2, k and v also
 * to their bf16 KV stores at slot pos % n_slots (as k_kv_write). Launched with programmatic dependent launch
 * (PDL, MX_CUDA_PDL=0 turns it off): before waiting on the previous kernel, each warp copies its two weight
 * rows into shared memory with cp.async (MX_CUDA_WSTAGE=0: only prefetches them into L2), so the weight reads
 * overlap the previous kernel and the launch instead of following them. k_fused<true> (FM_PLAIN/FM_ADD whose
 * grid would exceed one resident wave, the LM head): the grid is capped at occupancy x SMs and each warp
 * loops over pairs pr, pr + stride, ..., staging the next pair's rows into its second buffer (dbuf) while
 * computing one; k_fused<false> is the one-pass kernel of every other decode GEMV. */
enum { FM_PLAIN, FM_ADD, FM_SWIGLU, FM_QKV };
enum { FUSED_WARPS = 8 };

struct FusedSeg {
    const uint8_t *W;
    size_t row_bytes;
    int type, n_out;
    float *y;
};
struct FusedP {
    const float *x, *nw;
    float *h, *res;
    int n_in, norm, mode;
    float eps;
    FusedSeg s[3];
    /* FM_QKV */
    int H, G, D, rope_dim, adjacent, n_slots, rope_q, rope_k;
    float theta;
    __nv_bfloat16 *kst, *vst;
    const int *pos_q, *pos_k, *pos_kw, *pos_vw;
    int n_pairs;
    int xs_floats; /* the input row's floats in shared memory (n_in rounded up to 4) */
    int stage;     /* bytes of shared memory per warp for its two weight rows (0: read them from global) */
    int dbuf; /* FM_PLAIN/FM_ADD with a capped grid: each warp has two such buffers (the next pair's rows) */
    int nw_stage; /* the norm weights are copied to shared memory (after xs) before the wait */
    int ks;       /* warps per pair (one-pass kernel; fused_launch) */
};

template <int TY>
__device__ __forceinline__ void dot2_t(const uint8_t *ra, const uint8_t *rb, const float *xs, int units,
                                       int u0, int step, float &a, float &b) {
    for (int u = u0; u < units; u += step) {
        float wa[8], wb[8];
        int p0, p1;
        unit8<TY>(ra, u, wa, p0, p1);
        if (rb) unit8<TY>(rb, u, wb, p0, p1);
        float4 x0 = *(const float4 *)(xs + p0), x1 = *(const float4 *)(xs + p1);
        a += wa[0] * x0.x + wa[1] * x0.y + wa[2] * x0.z + wa[3] * x0.w + wa[4] * x1.x + wa[5] * x1.y +
             wa[6] * x1.z + wa[7] * x1.w;
        if (rb)
            b += wb[0] * x0.x + wb[1] * x0.y + wb[2] * x0.z + wb[3] * x0.w + wb[4] * x1.x + wb[5] * x1.y +
                 wb[6] * x1.z + wb[7] * x1.w;
    }
}

/* Two rows of one type (rb may be NULL). */
__device__ __forceinline__ void dot2(int type, const uint8_t *ra, const uint8_t *rb, const float *xs,
                                     int n_in, int lane, float &a, float &b, int u0 = -1, int step = 32) {
    int units = n_in / 8;
    a = 0.0f, b = 0.0f;
    if (u0 < 0) u0 = lane;
    switch (type) {
    case MX_F32:
        dot2_t<MX_F32>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_F16:
        dot2_t<MX_F16>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_BF16:
        dot2_t<MX_BF16>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q4_0:
        dot2_t<MX_Q4_0>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q4_1:
        dot2_t<MX_Q4_1>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q5_0:
        dot2_t<MX_Q5_0>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q5_1:
        dot2_t<MX_Q5_1>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q8_0:
        dot2_t<MX_Q8_0>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q4_K:
        dot2_t<MX_Q4_K>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q5_K:
        dot2_t<MX_Q5_K>(ra, rb, xs, units, u0, step, a, b);
        break;
    case MX_Q6_K:
        dot2_t<MX_Q6_K>(ra, rb, xs, units, u0, step, a, b);
        break;
    default:
        break;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
}

/* Copies row bytes [src, src + n) into shared memory at dst (the aligned 16-byte superset, cp.async), returns
 * where src's first byte landed (same address mod 16 as src, so the unit readers see the alignment they see
 * in global). */
__device__ __forceinline__ const uint8_t *stage_row(uint8_t *dst, const uint8_t *src, size_t n, int lane,
                                                    int step = 32) {
    uintptr_t a = (uintptr_t)src & ~(uintptr_t)15, e = ((uintptr_t)src + n + 15) & ~(uintptr_t)15;
    int n16 = (int)((e - a) / 16);
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    for (int i = lane; i < n16; i += step)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d + 16 * i),
                     "l"(a + 16 * (uintptr_t)i)
                     : "memory");
    return dst + ((uintptr_t)src - a);
}
__device__ __forceinline__ void prefetch_row(const uint8_t *src, size_t n, int lane) {
    uintptr_t a = (uintptr_t)src & ~(uintptr_t)127, e = (uintptr_t)src + n;
    for (uintptr_t l = a + 128 * (uintptr_t)lane; l < e; l += 4096)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(l));
}

/* The KS warps of a group computed partial dot products of one pair (units kq, kq + KS, ... in steps of 32):
 * the leader (kq == 0) gets the sums and goes on (true); the others are done (false). A named barrier per
 * group (1 + grp). */
__device__ __forceinline__ bool group_sum(float &a, float &b, int KS, int warp, int grp, int kq, int lane,
                                          float2 *part) {
    if (KS == 1) return true;
    if (lane == 0) part[warp] = make_float2(a, b);
    asm volatile("bar.sync %0, %1;" ::"r"(1 + grp), "r"(32 * KS) : "memory");
    if (kq != 0) return false;
    for (int w = 1; w < KS; w++) {
        float2 v = part[warp + w];
        a += v.x, b += v.y;
    }
    return true;
}

template <bool LOOP> __global__ void __launch_bounds__(FUSED_WARPS * 32) k_fused(FusedP p) {
    extern __shared__ __align__(16) float xs[];
    __shared__ float red[32];
    __shared__ float2 part[FUSED_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* KS warps per pair (p.ks, the one-pass kernel): more warps in flight on these latency-bound rows */
    const int KS = LOOP ? 1 : p.ks, grp = warp / KS, kq = warp % KS;
    const int n = p.n_in;
    pdl_trigger();
    /* this group's rows (independent of earlier kernels): fetch them into shared memory (or L2) before the
     * wait */
    const int pr = blockIdx.x * (FUSED_WARPS / KS) + grp;
    const bool active = pr < p.n_pairs;
    const uint8_t *ra = NULL, *rb = NULL;
    size_t ba = 0, bb = 0;
    int ta = 0, tb = 0, qkv_seg = 0, qkv_ra = 0, qkv_rb = 0, qkv_j = 0;
    if (active) {
        if (p.mode == FM_PLAIN || p.mode == FM_ADD) {
            const FusedSeg &s = p.s[0];
            int r0 = 2 * pr;
            ra = s.W + (size_t)r0 * s.row_bytes, ba = s.row_bytes, ta = s.type;
            if (r0 + 1 < s.n_out) rb = ra + s.row_bytes, bb = s.row_bytes, tb = s.type;
        } else if (p.mode == FM_SWIGLU) {
            ra = p.s[0].W + (size_t)pr * p.s[0].row_bytes, ba = p.s[0].row_bytes, ta = p.s[0].type;
            rb = p.s[1].W + (size_t)pr * p.s[1].row_bytes, bb = p.s[1].row_bytes, tb = p.s[1].type;
        } else {
            const int half_d = p.D / 2, hp = pr / half_d, j = pr % half_d;
            int seg = hp < p.H ? 0 : hp < p.H + p.G ? 1 : 2;
            int head = seg == 0 ? hp : seg == 1 ? hp - p.H : hp - p.H - p.G;
            int rd2 = p.rope_dim / 2, da, db;
            if (j < rd2) {
                da = p.adjacent ? 2 * j : j;
                db = p.adjacent ? 2 * j + 1 : j + rd2;
            } else {
                da = p.rope_dim + 2 * (j - rd2);
                db = da + 1;
            }
            const FusedSeg &s = p.s[seg];
            qkv_seg = seg, qkv_j = j, qkv_ra = head * p.D + da, qkv_rb = head * p.D + db;
            ra = s.W + (size_t)qkv_ra * s.row_bytes, rb = s.W + (size_t)qkv_rb * s.row_bytes;
            ba = bb = s.row_bytes, ta = tb = s.type;
        }
        if (p.stage) {
            uint8_t *ws =
                (uint8_t *)(xs + p.xs_floats * (1 + p.nw_stage)) + (size_t)grp * p.stage * (1 + p.dbuf);
            ra = stage_row(ws, ra, ba, lane + 32 * kq, 32 * KS);
            if (rb) rb = stage_row(ws + p.stage / 2, rb, bb, lane + 32 * kq, 32 * KS);
            asm volatile("cp.async.commit_group;\n" ::: "memory");
        } else {
            prefetch_row(ra, ba, lane);
            if (rb) prefetch_row(rb, bb, lane);
        }
    }
    if (p.nw_stage) { /* the norm weights: cp.async too, 16 bytes per thread and step (n_in % 8 == 0) */
        unsigned d = (unsigned)__cvta_generic_to_shared(xs + p.xs_floats);
        for (int i = threadIdx.x; i < n / 4; i += blockDim.x)
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d + 16 * i), "l"(p.nw + 4 * i)
                         : "memory");
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    /* the positions come from the dynamic table, uploaded before the graph starts: RoPE's angle before the
     * wait */
    float rope_cs = 1.0f, rope_sn = 0.0f;
    int kv_slot = 0;
    if (active && p.mode == FM_QKV && lane == 0) {
        const int seg = qkv_seg, j = qkv_j;
        if (seg < 2 && j < p.rope_dim / 2 && (seg == 0 ? p.rope_q : p.rope_k)) {
            int pos0 = seg == 0 ? *p.pos_q : *p.pos_k;
            float inv_freq = (float)(1.0 / pow((double)p.theta, (double)(2 * j) / p.rope_dim));
            sincosf((float)pos0 * inv_freq, &rope_sn, &rope_cs);
        }
        if (seg > 0) kv_slot = (seg == 1 ? *p.pos_kw : *p.pos_vw) % p.n_slots;
    }
    pdl_wait();
    float res_a = 0.0f, res_b = 0.0f; /* the residual: loaded now, alongside the input row */
    if (active && p.mode == FM_ADD) {
        if (lane == 0) res_a = p.res[2 * pr];
        if (lane == 1 && rb) res_b = p.res[2 * pr + 1];
    }
    /* norm: xs = x * nw and the sum of squares in one pass; rms(x) scales the dot products at the end
     * (dot(w, x * nw) / rms = dot(w, x / rms * nw)), one barrier fewer than normalizing xs first */
    float in_scale = 1.0f;
    if (p.norm) {
        const float *nw = p.nw;
        if (p.nw_stage) {
            asm volatile("cp.async.wait_all;\n" ::: "memory");
            __syncthreads();
            nw = xs + p.xs_floats;
        }
        float ss = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float v = p.x[i];
            xs[i] = v * nw[i];
            ss += v * v;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0) red[warp] = ss;
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) xs[i] = p.x[i];
    }
    if (p.stage) asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
    if (p.norm) {
        float ss = 0.0f;
        for (int w = 0; w < FUSED_WARPS; w++) ss += red[w];
        in_scale = 1.0f / sqrtf(ss / n + p.eps);
        if (blockIdx.x == 0)
            for (int i = threadIdx.x; i < n; i += blockDim.x) p.h[i] = xs[i] * in_scale;
    }
    if (!active) return;
    /* rows ra (type a) and rb (type b; NULL: none) dotted with the input by this group's KS warps, summed in the
     * leader (false for the others: they are done), scaled by the input's norm; separate: two single-row walks
     * (rows of different tensors, SwiGLU) rather than one paired walk of one tensor's rows */
    auto pair_dot = [&](int type_a, const uint8_t *row_a, int type_b, const uint8_t *row_b, bool separate,
                        float &a, float &b) {
        float tmp;
        if (separate) {
            dot2(type_a, row_a, NULL, xs, n, lane, a, tmp, lane + 32 * kq, 32 * KS);
            dot2(type_b, row_b, NULL, xs, n, lane, b, tmp, lane + 32 * kq, 32 * KS);
        } else {
            dot2(type_a, row_a, row_b, xs, n, lane, a, b, lane + 32 * kq, 32 * KS);
        }
        if (!group_sum(a, b, KS, warp, grp, kq, lane, part)) return false;
        a *= in_scale, b *= in_scale;
        return true;
    };
    if (p.mode == FM_PLAIN || p.mode == FM_ADD) {
        /* pairs pr, pr + stride, ...: one pass unless the launch capped the grid (large n_out, the LM head);
         * then the next pair's rows are staged in the warp's other buffer (dbuf) or prefetched into L2 while
         * this pair is computed */
        const FusedSeg &s = p.s[0];
        const int stride = LOOP ? gridDim.x * FUSED_WARPS : p.n_pairs;
        uint8_t *wbase =
            (uint8_t *)(xs + p.xs_floats * (1 + p.nw_stage)) + (size_t)grp * p.stage * (1 + p.dbuf);
        int buf = 0;
        for (int cur = pr; cur < p.n_pairs; cur += stride) {
            const int nx = cur + stride;
            const uint8_t *na = NULL, *nb = NULL;
            if (LOOP && nx < p.n_pairs) {
                na = s.W + (size_t)(2 * nx) * s.row_bytes;
                nb = 2 * nx + 1 < s.n_out ? na + s.row_bytes : NULL;
                if (p.stage && p.dbuf) {
                    uint8_t *ws = wbase + (size_t)(buf ^ 1) * p.stage;
                    na = stage_row(ws, na, s.row_bytes, lane);
                    if (nb) nb = stage_row(ws + p.stage / 2, nb, s.row_bytes, lane);
                    asm volatile("cp.async.commit_group;\n" ::: "memory");
                    asm volatile("cp.async.wait_group 1;\n" ::: "memory"); /* this pair's rows have landed */
                } else {
                    prefetch_row(na, s.row_bytes, lane);
                    if (nb) prefetch_row(nb, s.row_bytes, lane);
                }
            } else if (LOOP && p.stage && p.dbuf) {
                asm volatile("cp.async.wait_group 0;\n" ::: "memory");
            }
            __syncwarp(); /* every lane's copies into this pair's buffer are visible to the warp */
            const int r0 = 2 * cur, r1 = r0 + 1;
            if (cur != pr && p.mode == FM_ADD) {
                if (lane == 0) res_a = p.res[r0];
                if (lane == 1 && rb) res_b = p.res[r1];
            }
            float a, b;
            if (!pair_dot(ta, ra, tb, rb, false, a, b)) return;
            if (lane == 0) {
                s.y[r0] = a;
                if (p.mode == FM_ADD) p.res[r0] = res_a + a;
            } else if (lane == 1 && rb) {
                s.y[r1] = b;
                if (p.mode == FM_ADD) p.res[r1] = res_b + b;
            }
            __syncwarp(); /* the warp is done with this buffer before the next pass stages into it */
            ra = na, rb = nb, buf ^= 1;
        }
    } else if (p.mode == FM_SWIGLU) {
        const FusedSeg &g = p.s[0], &u = p.s[1];
        float a, b;
        if (!pair_dot(ta, ra, tb, rb, true, a, b)) return;
        if (lane == 0) {
            u.y[pr] = b;
            g.y[pr] = a / (1.0f + expf(-a)) * b;
        }
    } else { /* FM_QKV */
        const int seg = qkv_seg, j = qkv_j;
        const FusedSeg &s = p.s[seg];
        int rd2 = p.rope_dim / 2;
        bool rot = seg < 2 && j < rd2 && (seg == 0 ? p.rope_q : p.rope_k);
        float a, b;
        if (!pair_dot(ta, ra, tb, rb, false, a, b)) return;
        if (lane == 0) {
            if (rot) {
                const float cs = rope_cs, sn = rope_sn;
                float x0 = a, x1 = b;
                a = x0 * cs - x1 * sn;
                b = x0 * sn + x1 * cs;
            }
            s.y[qkv_ra] = a;
            s.y[qkv_rb] = b;
            if (seg > 0) {
                __nv_bfloat16 *st = (seg == 1 ? p.kst : p.vst) + (size_t)kv_slot * (p.G * p.D);
                st[qkv_ra] = __float2bfloat16_rn(a);
                st[qkv_rb] = __float2bfloat16_rn(b);
            }
        }
    }
}

static bool fusable_type(uint32_t t) {
    switch (t) {
    case MX_F32:
    case MX_F16:
    case MX_BF16:
    case MX_Q4_0:
    case MX_Q4_1:
    case MX_Q5_0:
    case MX_Q5_1:
    case MX_Q8_0:
    case MX_Q4_K:
    case MX_Q5_K:
    case MX_Q6_K:
        return true;
    default:
        return false;
    }
}

bool mx_cuda_fused_ok(const mx_cuda_weight *w, int n_in) {
    bool k_quant = w && (w->type == MX_Q4_K || w->type == MX_Q5_K || w->type == MX_Q6_K);
    return w && fusable_type(w->type) && w->n_in == n_in && n_in % 8 == 0 && n_in <= 12288 && n_in > 0 &&
           (!k_quant || n_in % 256 == 0) && w->n_out > 0;
}

static void seg_of(FusedSeg &s, const mx_cuda_weight *w, float *y) {
    s.W = (const uint8_t *)w->q, s.row_bytes = w->row_bytes, s.type = (int)w->type, s.n_out = (int)w->n_out,
    s.y = y;
}

static void fused_launch(mx_cuda_ctx *c, FusedP &p) {
    const bool stage_on = c->tune.wstage;
    if (p.n_pairs <= 0) return;
    unsigned grid = (unsigned)((p.n_pairs + FUSED_WARPS - 1) / FUSED_WARPS);
    p.xs_floats = (p.n_in + 3) & ~3;
    p.dbuf = 0;
    bool loop = false; /* k_fused<true>: the grid is capped, warps loop over the pairs */
    size_t rb = 0;
    for (int i = 0; i < 3; i++)
        if (p.s[i].W && p.s[i].row_bytes > rb) rb = p.s[i].row_bytes;
    size_t per_row = ((rb + 15) & ~(size_t)15) + 16;
    size_t smem = sizeof(float) * (size_t)p.xs_floats;
    p.stage = 0;
    p.nw_stage = stage_on && p.norm && ((uintptr_t)p.nw & 15) == 0 && p.n_in % 4 == 0 &&
                 2 * smem + FUSED_WARPS * 2 * per_row <= 48 * 1024;
    if (p.nw_stage) smem *= 2;
    if (stage_on && smem + FUSED_WARPS * 2 * per_row <= 48 * 1024) {
        p.stage = (int)(2 * per_row);
        smem += FUSED_WARPS * 2 * per_row;
    }
    /* FM_PLAIN/FM_ADD with more blocks than fit on the GPU at once (the LM head: 3072 blocks of 8 warps): one
     * resident wave that loops over the pairs, the next pair's rows in flight while one is computed, instead
     * of waves of short blocks each waiting on its own rows */
    if (p.mode == FM_PLAIN || p.mode == FM_ADD) {
        size_t smem2 = smem + (p.stage ? (size_t)FUSED_WARPS * p.stage : 0);
        if (p.stage && smem2 <= 48 * 1024) p.dbuf = 1;
        size_t sm = p.dbuf ? smem2 : smem;
        static size_t occ_smem = (size_t)-1;
        static int occ = 0;
        if (sm != occ_smem) {
            CU_CHECK(
                cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k_fused<true>, FUSED_WARPS * 32, sm));
            occ_smem = sm;
        }
        unsigned cap = (unsigned)(occ > 0 ? occ : 1) * (unsigned)c->n_sm;
        if (grid > cap) {
            grid = cap;
            smem = sm;
            loop = true;
        } else {
            p.dbuf = 0;
        }
    }
    /* the one-pass kernel: KS warps per pair, each every KS-th unit of the rows (a decode GEMV's warp
     * otherwise walks its two rows alone, a chain of dependent smem loads and FMAs: bench/RESULTS.md) until
     * each warp has ~1.5 units of 32 lanes; MX_CUDA_FUSED_KS=1, 2, 4 or 8 forces
     * it */
    p.ks = 1;
    if (!loop && !p.dbuf) {
        /* MX_CUDA_FUSED_KS_UNITS: units per warp that earn another warp; MX_CUDA_FUSED_KS forces KS */
        const int ks_units = c->tune.fused_ks_units, units = p.n_in / 8;
        while (p.ks < FUSED_WARPS && units >= ks_units * p.ks) p.ks *= 2;
        if (c->tune.fused_ks) p.ks = c->tune.fused_ks;
        const int per_block = FUSED_WARPS / p.ks;
        grid = (unsigned)((p.n_pairs + per_block - 1) / per_block);
        if (p.stage)
            smem -= (size_t)(FUSED_WARPS - per_block) * p.stage; /* staging per group, not per warp */
    }
    cudaLaunchAttribute at;
    cudaLaunchConfig_t cfg = mx_cuda_pdl_config(c, dim3(grid), dim3(FUSED_WARPS * 32), smem, &at);
    if (p.dbuf || loop)
        CU_CHECK(cudaLaunchKernelEx(&cfg, k_fused<true>, p));
    else
        CU_CHECK(cudaLaunchKernelEx(&cfg, k_fused<false>, p));
}

/* norm (nw != NULL): input rmsnorm(x) (written to h too); y = W · input (+ res += y when res) */
void mx_cuda_fused_gemv(mx_cuda_ctx *c, const float *x, const float *nw, float *h, float eps,
                        const mx_cuda_weight *w, float *y, float *res) {
    FusedP p;
    memset(&p, 0, sizeof p);
    p.x = x, p.nw = nw, p.h = h, p.eps = eps, p.norm = nw != NULL, p.n_in = (int)w->n_in;
    p.mode = res ? FM_ADD : FM_PLAIN, p.res = res;
    seg_of(p.s[0], w, y);
    p.n_pairs = (int)((w->n_out + 1) / 2);
    fused_launch(c, p);
}

void mx_cuda_fused_gateup(mx_cuda_ctx *c, const float *x, const float *nw, float *h, float eps,
                          const mx_cuda_weight *wg, float *g, const mx_cuda_weight *wu, float *u) {
    FusedP p;
    memset(&p, 0, sizeof p);
    p.x = x, p.nw = nw, p.h = h, p.eps = eps, p.norm = nw != NULL, p.n_in = (int)wg->n_in, p.mode = FM_SWIGLU;
    seg_of(p.s[0], wg, g);
    seg_of(p.s[1], wu, u);
    p.n_pairs = (int)wg->n_out;
    fused_launch(c, p);
}

void mx_cuda_fused_qkv(mx_cuda_ctx *c, const float *x, const float *nw, float *h, float eps,
                       const mx_cuda_weight *wq, float *q, const mx_cuda_weight *wk, float *k,
                       const mx_cuda_weight *wv, float *v, int H, int G, int D, int rope_dim, int adjacent,
                       float theta, int rope_q, int rope_k, const int *pos_q, const int *pos_k, void *kst,
                       void *vst, int n_slots, const int *pos_kw, const int *pos_vw) {
    FusedP p;
    memset(&p, 0, sizeof p);
    p.x = x, p.nw = nw, p.h = h, p.eps = eps, p.norm = nw != NULL, p.n_in = (int)wq->n_in, p.mode = FM_QKV;
    seg_of(p.s[0], wq, q);
    seg_of(p.s[1], wk, k);
    seg_of(p.s[2], wv, v);
    p.H = H, p.G = G, p.D = D, p.rope_dim = rope_dim, p.adjacent = adjacent, p.theta = theta;
    p.rope_q = rope_q, p.rope_k = rope_k, p.pos_q = pos_q, p.pos_k = pos_k;
    p.kst = (__nv_bfloat16 *)kst, p.vst = (__nv_bfloat16 *)vst, p.n_slots = n_slots;
    p.pos_kw = pos_kw, p.pos_vw = pos_vw;
    p.n_pairs = (H + 2 * G) * (D / 2);
    fused_launch(c, p);
}
