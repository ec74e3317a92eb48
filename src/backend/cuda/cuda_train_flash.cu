/* cuda_train_flash.cu: bf16 attention of training as fused tensor-core kernels (backend_train.h: attn_fwd,
 * attn_bwd under set_bf16; MX_CUDA_TRAIN_ATTN=gemm turns them off), for Dk = Dv = 64 or 128:
 *   forward:  the inference prefill kernel k_fa_wgmma (cuda_fa_wgmma.cuh) per sequence of the batch, on bf16
 *             copies of K and V (Q is rounded inside it), writing out and the natural log-sum-exp lse;
 *   backward: FlashAttention-2's recurrences without the T x T matrices, on WMMA bf16 tiles with fp32
 *             accumulation, in two kernels so that every gradient row has one owner and nothing is atomic:
 *     k_flash_dkv, one block per 64 keys of a KV head: for each query head of the group and each block of
 *       64 queries that sees those keys, Sᵀ = K Qᵀ, Pᵀ = exp(scale Sᵀ - lse), dV += Pᵀ dO, dPᵀ = V dOᵀ,
 *       dSᵀ = Pᵀ ∘ (dPᵀ - Δ), dK += dSᵀ Q; then dK *= scale and both are ADDED to dk, dv (shared caches);
 *     k_flash_dq, one block per 64 queries of a head: for each block of 64 keys it sees, S = Q Kᵀ,
 *       P = exp(scale S - lse), dP = dO Vᵀ, dS = P ∘ (dP - Δ), dQ += dS K; then dq = scale dQ (overwritten).
 *   Δ = rowsum(dO ∘ O) comes from cuda_train_attn.cu. Q, K, V and dO are rounded to bf16 as they are staged
 *   in shared memory, P and dS as they enter a product; S, P, dP and every sum stay fp32.
 * Each block has 4 warps, each owning 16 of the block's 64 rows (its rows of S, P, dP and its accumulators),
 * so only the staging of a tile needs the whole block. Shapes as in backend_train.h: q (B, T, H, D),
 * k, v (B, T, G, D), out, dout (B, T, H, D), lse, delta (B, T, H). */
#include <mma.h>

#include "cuda_train.h"

using namespace nvcuda;

namespace {

enum { FB = 64, FWARPS = 4, LDS = FB + 4, LDP = FB + 8 };

typedef __nv_bfloat16 bf16;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_t;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b_col;

/* The shared memory of both kernels: four bf16 tiles of FB rows of D (row stride D + 8), the fp32 S/P and dP
 * tiles (FB x FB, stride FB + 4), the bf16 P/dS tile (stride FB + 8) and the rows' lse and Δ. Every array
 * starts on a 128-byte boundary and every 16-row fragment on a 32-byte one, as WMMA needs. */
template <int D> struct Smem {
    static constexpr int LDH = D + 8;
    static constexpr size_t TILE = (size_t)FB * LDH * sizeof(bf16);
    static constexpr size_t SCORES = (size_t)FB * LDS * sizeof(float);
    static constexpr size_t PROBS = (size_t)FB * LDP * sizeof(bf16);
    static constexpr size_t BYTES = 4 * TILE + 2 * SCORES + PROBS + 2 * FB * sizeof(float);
    bf16 *t[4]; /* the kernel's two staged tiles of its own rows and the two it streams */
    float *S, *dP, *lse, *delta;
    bf16 *P;
    __device__ explicit Smem(unsigned char *base) {
        for (int i = 0; i < 4; i++) t[i] = (bf16 *)(base + i * TILE);
        S = (float *)(base + 4 * TILE);
        dP = (float *)(base + 4 * TILE + SCORES);
        P = (bf16 *)(base + 4 * TILE + 2 * SCORES);
        lse = (float *)(base + 4 * TILE + 2 * SCORES + PROBS);
        delta = lse + FB;
    }
};

/* Rows r0 .. r0 + FB - 1 of head `head` (of nh per row) of x (B, T, nh, D) in batch b, rounded to bf16 into
 * dst (FB x LDH); rows past T are zeros. The whole block takes part. */
template <int D>
__device__ __forceinline__ void stage(bf16 *dst, const float *x, int b, int T, int nh, int head, int r0) {
    constexpr int LDH = D + 8, Q4 = D / 4;
    for (int e = threadIdx.x; e < FB * Q4; e += blockDim.x) {
        int r = e / Q4, c = (e % Q4) * 4, t = r0 + r;
        float4 f = make_float4(0.f, 0.f, 0.f, 0.f);
        if (t < T) f = *reinterpret_cast<const float4 *>(x + (((size_t)b * T + t) * nh + head) * D + c);
        __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst + r * LDH + c);
        d2[0] = __floats2bfloat162_rn(f.x, f.y), d2[1] = __floats2bfloat162_rn(f.z, f.w);
    }
}

/* lse and Δ of rows r0 .. r0 + FB - 1 of head h (rows past T: never visible, values unused). */
__device__ __forceinline__ void stage_rows(float *lse_s, float *delta_s, const float *lse, const float *delta,
                                           int b, int T, int H, int h, int r0) {
    for (int r = threadIdx.x; r < FB; r += blockDim.x) {
        int t = r0 + r;
        size_t i = ((size_t)b * T + t) * H + h;
        lse_s[r] = t < T ? lse[i] : 0.0f;
        delta_s[r] = t < T ? delta[i] : 0.0f;
    }
}

/* out (16 x FB, stride LDS) = A (16 x D rows of a, stride LDH) · Bᵀ where B is FB rows of D (stride LDH): the
 * 16 rows of one warp against a staged tile. */
template <int D>
__device__ __forceinline__ void rows_times_tile_t(float *out, const bf16 *a, const bf16 *bt) {
    constexpr int LDH = D + 8;
    a_row fa[D / 16];
    for (int kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(fa[kk], a + kk * 16, LDH);
    for (int c = 0; c < FB / 16; c++) {
        acc_t acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D / 16; kk++) {
            b_col fb;
            wmma::load_matrix_sync(fb, bt + c * 16 * LDH + kk * 16, LDH);
            wmma::mma_sync(acc, fa[kk], fb, acc);
        }
        wmma::store_matrix_sync(out + c * 16, acc, LDS, wmma::mem_row_major);
    }
}

/* acc[c] (16 x D in tiles of 16) += p (16 x FB, bf16, stride LDP) · B, B FB rows of D (stride LDH). */
template <int D>
__device__ __forceinline__ void accumulate_p_times_tile(acc_t *acc, const bf16 *p, const bf16 *b) {
    constexpr int LDH = D + 8;
    a_row fa[FB / 16];
    for (int kk = 0; kk < FB / 16; kk++) wmma::load_matrix_sync(fa[kk], p + kk * 16, LDP);
    for (int c = 0; c < D / 16; c++)
        for (int kk = 0; kk < FB / 16; kk++) {
            b_row fb;
            wmma::load_matrix_sync(fb, b + kk * 16 * LDH + c * 16, LDH);
            wmma::mma_sync(acc[c], fa[kk], fb, acc[c]);
        }
}

/* Whether query t sees key j (causal, windowed). */
__device__ __forceinline__ bool visible(int t, int j, int T, int window) {
    return t < T && j <= t && (window <= 0 || t - j < window);
}

/* The warp's 16 x D accumulators, times scale, stored (add: added) into rows row0 .. row0 + 15 of head `head` of
 * y (B, T, nh, D), rows < T; scratch is the warp's 16 x FB fp32 rows (stride LDS). */
template <int D>
__device__ __forceinline__ void write_rows(acc_t *acc, float scale, float *scratch, float *y, int b, int T,
                                           int nh, int head, int row0, bool add) {
    int lane = threadIdx.x % 32;
    for (int c0 = 0; c0 < D / 16; c0 += FB / 16) {
        for (int c = c0; c < c0 + FB / 16 && c < D / 16; c++) {
            for (int i = 0; i < acc[c].num_elements; i++) acc[c].x[i] *= scale;
            wmma::store_matrix_sync(scratch + (c - c0) * 16, acc[c], LDS, wmma::mem_row_major);
        }
        __syncwarp();
        int cols = min(FB, D - c0 * 16);
        for (int e = lane; e < 16 * cols; e += 32) {
            int r = e / cols, col = e % cols, t = row0 + r;
            if (t >= T) continue;
            float *dst = y + (((size_t)b * T + t) * nh + head) * D + c0 * 16 + col;
            float val = scratch[r * LDS + col];
            *dst = add ? *dst + val : val;
        }
        __syncwarp();
    }
}

/* grid (ceil(T / FB), G, B), FWARPS warps: the gradients of keys j0 .. j0 + FB - 1 of KV head g. */
template <int D>
__global__ void __launch_bounds__(FWARPS * 32)
    k_flash_dkv(mx_tr_attn_shape s, float *dk, float *dv, const float *dout, const float *q, const float *k,
                const float *v, const float *lse, const float *delta) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    Smem<D> sm(smem_raw);
    constexpr int LDH = D + 8;
    bf16 *Ks = sm.t[0], *Vs = sm.t[1], *Qs = sm.t[2], *dOs = sm.t[3];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = blockIdx.y, b = blockIdx.z;
    int j0 = blockIdx.x * FB, T = s.T, rep = s.H / s.G;
    stage<D>(Ks, k, b, T, s.G, g, j0);
    stage<D>(Vs, v, b, T, s.G, g, j0);
    acc_t dK[D / 16], dV[D / 16];
    for (int c = 0; c < D / 16; c++) wmma::fill_fragment(dK[c], 0.0f), wmma::fill_fragment(dV[c], 0.0f);
    int t_last = s.window > 0 ? min(T - 1, j0 + FB - 1 + s.window - 1) : T - 1;
    float *S = sm.S + w * 16 * LDS, *dP = sm.dP + w * 16 * LDS;
    bf16 *P = sm.P + w * 16 * LDP;
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int i0 = j0; i0 <= t_last; i0 += FB) {
            __syncthreads(); /* the previous tiles are read */
            stage<D>(Qs, q, b, T, s.H, h, i0);
            stage<D>(dOs, dout, b, T, s.H, h, i0);
            stage_rows(sm.lse, sm.delta, lse, delta, b, T, s.H, h, i0);
            __syncthreads();
            rows_times_tile_t<D>(S, Ks + w * 16 * LDH, Qs); /* Sᵀ: this warp's 16 keys x FB queries */
            __syncwarp();
            for (int e = lane; e < 16 * FB; e += 32) {
                int r = e / FB, c = e % FB;
                bool ok = j0 + w * 16 + r < T && visible(i0 + c, j0 + w * 16 + r, T, s.window);
                float p = ok ? __expf(s.scale * S[r * LDS + c] - sm.lse[c]) : 0.0f;
                S[r * LDS + c] = p;
                P[r * LDP + c] = __float2bfloat16_rn(p);
            }
            __syncwarp();
            accumulate_p_times_tile<D>(dV, P, dOs);           /* dV += Pᵀ dO */
            rows_times_tile_t<D>(dP, Vs + w * 16 * LDH, dOs); /* dPᵀ = V dOᵀ */
            __syncwarp();
            for (int e = lane; e < 16 * FB; e += 32) {
                int r = e / FB, c = e % FB;
                P[r * LDP + c] = __float2bfloat16_rn(S[r * LDS + c] * (dP[r * LDS + c] - sm.delta[c]));
            }
            __syncwarp();
            accumulate_p_times_tile<D>(dK, P, Qs); /* dK += dSᵀ Q */
        }
    write_rows<D>(dK, s.scale, S, dk, b, T, s.G, g, j0 + w * 16, true);
    write_rows<D>(dV, 1.0f, S, dv, b, T, s.G, g, j0 + w * 16, true);
}

/* grid (ceil(T / FB), H, B), FWARPS warps: dq of queries i0 .. i0 + FB - 1 of head h. */
template <int D>
__global__ void __launch_bounds__(FWARPS * 32)
    k_flash_dq(mx_tr_attn_shape s, float *dq, const float *dout, const float *q, const float *k,
               const float *v, const float *lse, const float *delta) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    Smem<D> sm(smem_raw);
    constexpr int LDH = D + 8;
    bf16 *Qs = sm.t[0], *dOs = sm.t[1], *Ks = sm.t[2], *Vs = sm.t[3];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y, b = blockIdx.z;
    int i0 = blockIdx.x * FB, T = s.T, g = h / (s.H / s.G);
    stage<D>(Qs, q, b, T, s.H, h, i0);
    stage<D>(dOs, dout, b, T, s.H, h, i0);
    stage_rows(sm.lse, sm.delta, lse, delta, b, T, s.H, h, i0);
    acc_t dQ[D / 16];
    for (int c = 0; c < D / 16; c++) wmma::fill_fragment(dQ[c], 0.0f);
    int j_first = s.window > 0 ? max(0, i0 - s.window + 1) / FB * FB : 0;
    int j_last = min(T - 1, i0 + FB - 1);
    float *S = sm.S + w * 16 * LDS, *dP = sm.dP + w * 16 * LDS;
    bf16 *P = sm.P + w * 16 * LDP;
    const float *L = sm.lse + w * 16, *Dl = sm.delta + w * 16;
    for (int j0 = j_first; j0 <= j_last; j0 += FB) {
        __syncthreads();
        stage<D>(Ks, k, b, T, s.G, g, j0);
        stage<D>(Vs, v, b, T, s.G, g, j0);
        __syncthreads();
        rows_times_tile_t<D>(S, Qs + w * 16 * LDH, Ks);   /* S: 16 queries x FB keys */
        rows_times_tile_t<D>(dP, dOs + w * 16 * LDH, Vs); /* dP = dO Vᵀ */
        __syncwarp();
        for (int e = lane; e < 16 * FB; e += 32) {
            int r = e / FB, c = e % FB;
            bool ok = j0 + c < T && visible(i0 + w * 16 + r, j0 + c, T, s.window);
            float p = ok ? __expf(s.scale * S[r * LDS + c] - L[r]) : 0.0f;
            P[r * LDP + c] = __float2bfloat16_rn(p * (dP[r * LDS + c] - Dl[r]));
        }
        __syncwarp();
        accumulate_p_times_tile<D>(dQ, P, Ks); /* dQ += dS K */
    }
    write_rows<D>(dQ, s.scale, S, dq, b, T, s.H, h, i0 + w * 16, false);
}

template <int D>
void launch_bwd(cudaStream_t st, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                const float *dout, const float *q, const float *k, const float *v, const float *lse,
                const float *delta) {
    size_t bytes = Smem<D>::BYTES;
    CU_CHECK(cudaFuncSetAttribute(k_flash_dkv<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    CU_CHECK(cudaFuncSetAttribute(k_flash_dq<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    unsigned nb = (unsigned)((s->T + FB - 1) / FB);
    k_flash_dkv<D><<<dim3(nb, s->G, s->B), FWARPS * 32, bytes, st>>>(*s, dk, dv, dout, q, k, v, lse, delta);
    CU_LAUNCHED();
    k_flash_dq<D><<<dim3(nb, s->H, s->B), FWARPS * 32, bytes, st>>>(*s, dq, dout, q, k, v, lse, delta);
    CU_LAUNCHED();
}

bool aligned16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

/* The shapes the fused kernels take: one head dim of 64 or 128 for q, k and v, whole KV groups. */
bool takes(const mx_tr_attn_shape *s) {
    return s->Dk == s->Dv && (s->Dk == 64 || s->Dk == 128) && s->G > 0 && s->H % s->G == 0 && s->scale > 0.0f;
}

} // namespace

bool mx_cuda_train_flash_fwd(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse,
                             const float *q, const float *k, const float *v) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!takes(s)) return false;
    size_t nkv = (size_t)s->B * s->T * s->G * s->Dk, per_kv = (size_t)s->T * s->G * s->Dk,
           per_q = (size_t)s->T * s->H * s->Dk, per_l = (size_t)s->T * s->H;
    bf16 *kb = NULL, *vb = NULL;
    CU_CHECK(cudaMallocAsync((void **)&kb, sizeof(bf16) * nkv, c->stream));
    CU_CHECK(cudaMallocAsync((void **)&vb, sizeof(bf16) * nkv, c->stream));
    mx_cuda_to_bf16(c->stream, kb, k, nkv);
    mx_cuda_to_bf16(c->stream, vb, v, nkv);
    mx_attn_spec sp = {};
    sp.n_q = s->T, sp.n_head = s->H, sp.n_kv_head = s->G, sp.head_dim = s->Dk, sp.v_dim = s->Dv;
    sp.q_pos0 = 0, sp.n_slots = s->T, sp.window = s->window, sp.causal = true, sp.kv_lo = 0,
    sp.kv_hi = s->T - 1;
    sp.scale = s->scale;
    sp.q_stride = (size_t)s->H * s->Dk, sp.k_stride = sp.v_stride = (size_t)s->G * s->Dk;
    sp.o_stride = (size_t)s->H * s->Dv;
    bool ok = true;
    for (int b = 0; b < s->B && ok; b++) {
        ok = mx_cuda_attention_wgmma(c, &sp, q + b * per_q, kb + b * per_kv, vb + b * per_kv, out + b * per_q,
                                     lse + b * per_l, NULL);
        if (!ok && b > 0)
            mx_cuda_fatal("training attention", "k_fa_wgmma refused a later sequence", __FILE__, __LINE__);
    }
    CU_CHECK(cudaFreeAsync(kb, c->stream));
    CU_CHECK(cudaFreeAsync(vb, c->stream));
    return ok;
}

bool mx_cuda_train_flash_bwd(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k, const float *v,
                             const float *lse, const float *delta) {
    if (!takes(s)) return false;
    const void *ptrs[] = {dq, dk, dv, dout, q, k, v};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++)
        if (!aligned16(ptrs[i])) return false;
    cudaStream_t st = cu_ctx(be)->stream;
    if (s->Dk == 64)
        launch_bwd<64>(st, s, dq, dk, dv, dout, q, k, v, lse, delta);
    else
        launch_bwd<128>(st, s, dq, dk, dv, dout, q, k, v, lse, delta);
    return true;
}
