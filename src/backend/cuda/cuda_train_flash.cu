/* cuda_train_flash.cu: bf16 attention of training as fused tensor-core kernels (backend_train.h: attn_fwd,
 * attn_bwd under set_bf16; MX_CUDA_TRAIN_ATTN=gemm turns them off), for Dk = Dv = 64 or 128:
 *   forward:  k_fwd, one block per 64 queries of a head of a sequence: FlashAttention-2's online softmax over
 *             the key blocks they see, writing out and the natural log-sum-exp lse, for the whole batch in one
 *             launch (the inference kernel k_fa_wgmma, once per sequence, took 6.6 ms a GPT-2 step against 5.2);
 *   backward: FlashAttention-2's recurrences without the T x T matrices, on mma.sync m16n8k16 (bf16 operands,
 *             fp32 accumulators held in registers; any GPU of compute capability 8.0 or later), on bf16 copies of
 *             q, k, v and dout, in two kernels so that every gradient row has one owner and nothing is atomic
 *             (two runs give the same bits):
 *     k_bwd_dkv, one block per 64 keys of a KV head: for each query head of the group and each block of 64
 *       queries that sees those keys, Sᵀ = K Qᵀ, Pᵀ = exp(scale Sᵀ - lse), dPᵀ = V dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ - Δ),
 *       dV += Pᵀ dO, dK += dSᵀ Q; then dK *= scale and both are ADDED to dk, dv (shared caches);
 *     k_bwd_dq, one block per 64 queries of a head: for each block of 64 keys it sees, S = Q Kᵀ,
 *       P = exp(scale S - lse), dP = dO Vᵀ, dS = P ∘ (dP - Δ), dQ += dS K; then dq = scale dQ (overwritten).
 *   Δ = rowsum(dO ∘ O) comes from cuda_train_attn.cu. All of them read bf16 copies of their fp32 inputs. S, P,
 *   dP and every sum stay fp32 in registers; P and dS are rounded to bf16 as they enter a product. The streamed
 *   tiles are double-buffered through cp.async.
 * Each block has 4 warps, each owning 16 of the block's 64 rows (its rows of S, P, dP and its accumulators),
 * so only the staging of a tile needs the whole block. Shapes as in backend_train.h: q (B, T, H, D),
 * k, v (B, T, G, D), out, dout (B, T, H, D), lse, delta (B, T, H). */
#include "cuda_attn_common.cuh"
#include "cuda_train.h"

namespace {

enum { FB = 64, FWARPS = 4, NTH = FWARPS * 32, NT = FB / 8 };

/* Rows r0 .. r0 + FB - 1 of head `head` (of nh per row) of the bf16 x (B, T, nh, D) in batch b into the
 * swizzled tile dst (FB x D) by cp.async; rows past T are zeros. The whole block takes part; the caller
 * commits. */
template <int D>
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *x, int b, int T, int nh, int head, int r0) {
    constexpr int CH = D / 8;
    for (int e = threadIdx.x; e < FB * CH; e += NTH) {
        int r = e / CH, c = e % CH, t = r0 + r;
        bool ok = t < T;
        const bf16 *src = x + (((size_t)b * T + (ok ? t : 0)) * nh + head) * D + c * 8;
        cp_async16(smem_u32(dst + swz<D>(r, c)), src, ok ? 16 : 0);
    }
}

/* s (16 x FB, one warp's C fragments) = A · Bᵀ: A the 16 rows ra .. ra + 15 of tile a, B the FB rows of tile b
 * (both FB x D, swizzled). */
template <int D>
__device__ __forceinline__ void warp_scores(float (&s)[NT][4], const bf16 *a, int ra, const bf16 *b) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < NT; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t fa[4];
        int r = ra + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * kk + (lane >> 4);
        ldsm_x4(smem_u32(a + swz<D>(r, c)), fa[0], fa[1], fa[2], fa[3]);
#pragma unroll
        for (int jj = 0; jj < NT / 2; jj++) {
            int rb = 16 * jj + (lane & 7) + (lane >> 4) * 8, cb = 2 * kk + ((lane >> 3) & 1);
            uint32_t b0, b1, b2, b3;
            ldsm_x4(smem_u32(b + swz<D>(rb, cb)), b0, b1, b2, b3);
            mma16816(s[2 * jj], fa, b0, b1);
            mma16816(s[2 * jj + 1], fa, b2, b3);
        }
    }
}

/* acc (16 x D, one warp's C fragments) += P · B: P the warp's 16 x FB fragments (rounded to bf16 here), B the
 * tile b (FB x D, swizzled) read transposed. */
template <int D>
__device__ __forceinline__ void warp_accumulate(float (&acc)[D / 8][4], const float (&p)[NT][4],
                                                const bf16 *b) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int kk = 0; kk < FB / 16; kk++) {
        uint32_t a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                         pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                         pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int jd = 0; jd < D / 16; jd++) {
            int r = 16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * jd + (lane >> 4);
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(smem_u32(b + swz<D>(r, c)), b0, b1, b2, b3);
            mma16816(acc[2 * jd], a, b0, b1);
            mma16816(acc[2 * jd + 1], a, b2, b3);
        }
    }
}

/* Whether query t sees key j (causal, windowed). */
__device__ __forceinline__ bool visible(int t, int j, int T, int window) {
    return t < T && j <= t && (window <= 0 || t - j < window);
}

/* Whether some (query, key) pair of the tiles at i0 and j0 is not visible. */
__device__ __forceinline__ bool tile_masked(int i0, int j0, int T, int window) {
    return !(j0 + FB - 1 <= i0 && i0 + FB <= T && (window <= 0 || i0 + FB - 1 - j0 < window));
}

/* Rows row .. (this thread's rows of a warp's 16 x D accumulators), times scale, stored (add: added) into head
 * `head` of y (B, T, nh, D) for the rows below T. */
template <int D>
__device__ __forceinline__ void write_rows(const float (&acc)[D / 8][4], float scale, float *y, int b, int T,
                                           int nh, int head, int row0, bool add) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int t = row0 + (lane >> 2) + 8 * hf;
        if (t >= T) continue;
        float *dst = y + (((size_t)b * T + t) * nh + head) * D + 2 * (lane & 3);
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            float2 v = make_float2(acc[j][2 * hf] * scale, acc[j][2 * hf + 1] * scale);
            if (add) {
                float2 o = *(float2 *)(dst + 8 * j);
                v.x += o.x, v.y += o.y;
            }
            *(float2 *)(dst + 8 * j) = v;
        }
    }
}

template <int D> constexpr size_t fwd_smem() {
    return sizeof(bf16) * 5 * FB * D; /* Q, 2 x K, 2 x V */
}
template <int D> constexpr size_t dq_smem() {
    return sizeof(bf16) * 6 * FB * D; /* Q, dO, 2 x K, 2 x V */
}
template <int D> constexpr size_t dkv_smem() {
    return sizeof(bf16) * 6 * FB * D + sizeof(float) * 4 * FB; /* K, V, 2 x Q, 2 x dO; 2 x (lse, Δ) */
}

/* A block of FB queries of head h of sequence b (grid (H, B, ceil(T / FB)), the heaviest blocks first), the key
 * blocks j_first .. it sees (n_tiles of them), this thread's warp, lane and two query rows. */
struct QueryBlock {
    int h, b, g, i0, w, lane, j_first, n_tiles, row[2];
};

__device__ __forceinline__ QueryBlock query_block(const mx_tr_attn_shape &s) {
    QueryBlock qb;
    qb.h = blockIdx.x, qb.b = blockIdx.y, qb.i0 = (gridDim.z - 1 - blockIdx.z) * FB,
    qb.g = qb.h / (s.H / s.G);
    qb.w = threadIdx.x >> 5, qb.lane = threadIdx.x & 31;
    qb.j_first = s.window > 0 ? max(0, qb.i0 - s.window + 1) / FB * FB : 0;
    qb.n_tiles = (min(s.T - 1, qb.i0 + FB - 1) - qb.j_first) / FB + 1;
    for (int hf = 0; hf < 2; hf++) qb.row[hf] = qb.i0 + 16 * qb.w + (qb.lane >> 2) + 8 * hf;
    return qb;
}

/* Key block n of a query block, streamed through the two K and V buffers (sK, sV, 2 x FB x D each; block 0 was
 * loaded with the block's prologue): waits for block n (and for every warp to be done with block n - 1), starts
 * loading block n + 1 into the other buffers, and returns block n's first key; k_s, v_s are its tiles. */
template <int D>
__device__ __forceinline__ int kv_step(const QueryBlock &qb, const mx_tr_attn_shape &s, int n, bf16 *sK,
                                       bf16 *sV, const bf16 *k, const bf16 *v, const bf16 *&k_s,
                                       const bf16 *&v_s) {
    cp_wait_all();
    __syncthreads();
    const int j0 = qb.j_first + n * FB;
    if (n + 1 < qb.n_tiles) {
        int nb = (n + 1) & 1;
        load_tile<D>(sK + nb * FB * D, k, qb.b, s.T, s.G, qb.g, j0 + FB);
        load_tile<D>(sV + nb * FB * D, v, qb.b, s.T, s.G, qb.g, j0 + FB);
        cp_commit();
    }
    k_s = sK + (n & 1) * FB * D, v_s = sV + (n & 1) * FB * D;
    return j0;
}

/* grid (H, B, ceil(T / FB)), the heaviest query blocks first: out and lse of queries i0 .. i0 + FB - 1 of head
 * h, FlashAttention-2's online softmax over the key blocks they see (the max in log2 units, P rounded to bf16
 * for P V). */
template <int D>
__global__ void __launch_bounds__(NTH)
    k_fwd(mx_tr_attn_shape s, float *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sQ = (bf16 *)smem_raw, *sK = sQ + FB * D, *sV = sK + 2 * FB * D;
    const QueryBlock qb = query_block(s);
    const int h = qb.h, b = qb.b, i0 = qb.i0, T = s.T, w = qb.w, lane = qb.lane;
    const int *row = qb.row;
    load_tile<D>(sQ, q, b, T, s.H, h, i0);
    load_tile<D>(sK, k, b, T, s.G, qb.g, qb.j_first);
    load_tile<D>(sV, v, b, T, s.G, qb.g, qb.j_first);
    cp_commit();
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    const float sl2 = s.scale * LOG2E;
    for (int n = 0; n < qb.n_tiles; n++) {
        const bf16 *k_s, *v_s;
        const int j0 = kv_step<D>(qb, s, n, sK, sV, k, v, k_s, v_s);
        float sc[NT][4];
        warp_scores<D>(sc, sQ, 16 * w, k_s);
        if (tile_masked(i0, j0, T, s.window)) {
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (!visible(row[e >> 1], j0 + 8 * j + 2 * (lane & 3) + (e & 1), T, s.window))
                        sc[j][e] = -INFINITY;
        }
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(sc[j][2 * hf], sc[j][2 * hf + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(m[hf], mx * sl2), m_use = m_new == -INFINITY ? 0.0f : m_new;
            float alpha = exp2f(m[hf] - m_use), sum = 0.0f;
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 2 * hf; e < 2 * hf + 2; e++) {
                    sc[j][e] = exp2f(fmaf(sc[j][e], sl2, -m_use));
                    sum += sc[j][e];
                }
            l[hf] = l[hf] * alpha + sum, m[hf] = m_new;
#pragma unroll
            for (int j = 0; j < D / 8; j++) o[j][2 * hf] *= alpha, o[j][2 * hf + 1] *= alpha;
        }
        warp_accumulate<D>(o, sc, v_s);
    }
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        float sum = l[hf];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l[hf] = sum;
        if (row[hf] < T && (lane & 3) == 0)
            lse[((size_t)b * T + row[hf]) * s.H + h] = sum > 0.0f ? (m[hf] + log2f(sum)) * LN2 : -INFINITY;
    }
    float inv[2] = {l[0] > 0.0f ? 1.0f / l[0] : 0.0f, l[1] > 0.0f ? 1.0f / l[1] : 0.0f};
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[j][e] *= inv[e >> 1];
    write_rows<D>(o, 1.0f, out, b, T, s.H, h, i0 + 16 * w, false);
}

/* grid (H, B, ceil(T / FB)), the heaviest query blocks first: dq of queries i0 .. i0 + FB - 1 of head h. */
template <int D>
__global__ void __launch_bounds__(NTH)
    k_bwd_dq(mx_tr_attn_shape s, float *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
             const float *lse, const float *delta) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sQ = (bf16 *)smem_raw, *sdO = sQ + FB * D, *sK = sdO + FB * D, *sV = sK + 2 * FB * D;
    const QueryBlock qb = query_block(s);
    const int h = qb.h, b = qb.b, i0 = qb.i0, T = s.T, w = qb.w, lane = qb.lane;
    const int *row = qb.row;
    load_tile<D>(sQ, q, b, T, s.H, h, i0);
    load_tile<D>(sdO, dout, b, T, s.H, h, i0);
    load_tile<D>(sK, k, b, T, s.G, qb.g, qb.j_first);
    load_tile<D>(sV, v, b, T, s.G, qb.g, qb.j_first);
    cp_commit();
    float lse2[2], dl[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        size_t i = ((size_t)b * T + row[hf]) * s.H + h;
        lse2[hf] = row[hf] < T ? lse[i] * LOG2E : 0.0f;
        dl[hf] = row[hf] < T ? delta[i] : 0.0f;
    }
    float acc[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    const float sl2 = s.scale * LOG2E;
    for (int n = 0; n < qb.n_tiles; n++) {
        const bf16 *k_s, *v_s;
        const int j0 = kv_step<D>(qb, s, n, sK, sV, k, v, k_s, v_s);
        float sc[NT][4], dp[NT][4];
        warp_scores<D>(sc, sQ, 16 * w, k_s);
        warp_scores<D>(dp, sdO, 16 * w, v_s);
        const bool masked = tile_masked(i0, j0, T, s.window);
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int hf = e >> 1, key = j0 + 8 * j + 2 * (lane & 3) + (e & 1);
                float p = exp2f(fmaf(sc[j][e], sl2, -lse2[hf]));
                if (masked && !visible(row[hf], key, T, s.window)) p = 0.0f;
                sc[j][e] = p * (dp[j][e] - dl[hf]); /* dS */
            }
        warp_accumulate<D>(acc, sc, k_s);
    }
    write_rows<D>(acc, s.scale, dq, b, T, s.H, h, i0 + 16 * w, false);
}

/* grid (G, B, ceil(T / FB)), the heaviest key blocks (the first) first: the gradients of keys j0 .. j0 + FB - 1
 * of KV head g, over every query head of its group. */
template <int D>
__global__ void __launch_bounds__(NTH)
    k_bwd_dkv(mx_tr_attn_shape s, float *dk, float *dv, const bf16 *q, const bf16 *k, const bf16 *v,
              const bf16 *dout, const float *lse, const float *delta) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sK = (bf16 *)smem_raw, *sV = sK + FB * D, *sQ = sV + FB * D, *sdO = sQ + 2 * FB * D;
    float *rows = (float *)(sdO + 2 * FB * D); /* per buffer: FB lse (log2 units), FB Δ */
    const int g = blockIdx.x, b = blockIdx.y, j0 = blockIdx.z * FB;
    const int T = s.T, rep = s.H / s.G, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t_last = s.window > 0 ? min(T - 1, j0 + FB - 1 + s.window - 1) : T - 1;
    const int per_head = (t_last - j0) / FB + 1, n_tiles = rep * per_head;
    /* tile n: query head g * rep + n / per_head, queries from j0 + (n % per_head) * FB */
    auto stage = [&](int n, int buf) {
        int h = g * rep + n / per_head, i0 = j0 + (n % per_head) * FB;
        load_tile<D>(sQ + buf * FB * D, q, b, T, s.H, h, i0);
        load_tile<D>(sdO + buf * FB * D, dout, b, T, s.H, h, i0);
        for (int r = threadIdx.x; r < FB; r += NTH) {
            int t = i0 + r;
            size_t i = ((size_t)b * T + t) * s.H + h;
            rows[buf * 2 * FB + r] = t < T ? lse[i] * LOG2E : 0.0f;
            rows[buf * 2 * FB + FB + r] = t < T ? delta[i] : 0.0f;
        }
    };
    load_tile<D>(sK, k, b, T, s.G, g, j0);
    load_tile<D>(sV, v, b, T, s.G, g, j0);
    stage(0, 0);
    cp_commit();
    int key[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) key[hf] = j0 + 16 * w + (lane >> 2) + 8 * hf;
    float dK[D / 8][4], dV[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[j][e] = dV[j][e] = 0.0f;
    const float sl2 = s.scale * LOG2E;
    for (int n = 0; n < n_tiles; n++) {
        cp_wait_all();
        __syncthreads(); /* tile n is in; every warp is done with tile n - 1 */
        if (n + 1 < n_tiles) {
            stage(n + 1, (n + 1) & 1);
            cp_commit();
        }
        const int cur = n & 1, i0 = j0 + (n % per_head) * FB;
        const bf16 *q_s = sQ + cur * FB * D, *do_s = sdO + cur * FB * D;
        const float *lse_s = rows + cur * 2 * FB, *dl_s = lse_s + FB;
        float st[NT][4], dpt[NT][4];
        warp_scores<D>(st, sK, 16 * w, q_s);   /* Sᵀ: this warp's 16 keys x FB queries */
        warp_scores<D>(dpt, sV, 16 * w, do_s); /* dPᵀ = V dOᵀ */
        const bool masked = tile_masked(i0, j0, T, s.window);
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = 8 * j + 2 * (lane & 3) + (e & 1);
                float p = exp2f(fmaf(st[j][e], sl2, -lse_s[c]));
                if (masked && !visible(i0 + c, key[e >> 1], T, s.window)) p = 0.0f;
                st[j][e] = p;
                dpt[j][e] = p * (dpt[j][e] - dl_s[c]); /* dSᵀ */
            }
        warp_accumulate<D>(dV, st, do_s); /* dV += Pᵀ dO */
        warp_accumulate<D>(dK, dpt, q_s); /* dK += dSᵀ Q */
    }
    write_rows<D>(dK, s.scale, dk, b, T, s.G, g, j0 + 16 * w, true);
    write_rows<D>(dV, 1.0f, dv, b, T, s.G, g, j0 + 16 * w, true);
}

template <int D>
void launch_bwd(cudaStream_t st, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv, const bf16 *q,
                const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse, const float *delta) {
    CU_CHECK(
        cudaFuncSetAttribute(k_bwd_dkv<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dkv_smem<D>()));
    CU_CHECK(
        cudaFuncSetAttribute(k_bwd_dq<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dq_smem<D>()));
    unsigned nb = (unsigned)((s->T + FB - 1) / FB);
    k_bwd_dkv<D><<<dim3(s->G, s->B, nb), NTH, dkv_smem<D>(), st>>>(*s, dk, dv, q, k, v, dout, lse, delta);
    CU_LAUNCHED();
    k_bwd_dq<D><<<dim3(s->H, s->B, nb), NTH, dq_smem<D>(), st>>>(*s, dq, q, k, v, dout, lse, delta);
    CU_LAUNCHED();
}

bool aligned8(const void *p) {
    return ((uintptr_t)p & 7) == 0;
}

/* The shapes the fused kernels take: one head dim of 64 or 128 for q, k and v, whole KV groups. */
bool takes(const mx_tr_attn_shape *s) {
    return s->Dk == s->Dv && (s->Dk == 64 || s->Dk == 128) && s->G > 0 && s->H % s->G == 0 && s->scale > 0.0f;
}

/* A bf16 copy of n floats on stream st (stream-ordered allocation; the caller frees it). */
bf16 *bf16_copy(cudaStream_t st, const float *x, size_t n) {
    bf16 *y = NULL;
    CU_CHECK(cudaMallocAsync((void **)&y, sizeof(bf16) * n, st));
    mx_cuda_to_bf16(st, y, x, n);
    return y;
}

} // namespace

template <int D>
void launch_fwd(cudaStream_t st, const mx_tr_attn_shape *s, float *out, float *lse, const bf16 *q,
                const bf16 *k, const bf16 *v) {
    CU_CHECK(cudaFuncSetAttribute(k_fwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fwd_smem<D>()));
    unsigned nb = (unsigned)((s->T + FB - 1) / FB);
    k_fwd<D><<<dim3(s->H, s->B, nb), NTH, fwd_smem<D>(), st>>>(*s, out, lse, q, k, v);
    CU_LAUNCHED();
}

bool mx_cuda_train_flash_fwd(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse,
                             const float *q, const float *k, const float *v) {
    if (!takes(s) || !aligned8(out)) return false;
    cudaStream_t st = cu_ctx(be)->stream;
    size_t nq = (size_t)s->B * s->T * s->H * s->Dk, nkv = (size_t)s->B * s->T * s->G * s->Dk;
    bf16 *qb = bf16_copy(st, q, nq), *kb = bf16_copy(st, k, nkv), *vb = bf16_copy(st, v, nkv);
    if (s->Dk == 64)
        launch_fwd<64>(st, s, out, lse, qb, kb, vb);
    else
        launch_fwd<128>(st, s, out, lse, qb, kb, vb);
    bf16 *tmp[] = {qb, kb, vb};
    for (int i = 0; i < 3; i++) CU_CHECK(cudaFreeAsync(tmp[i], st));
    return true;
}

bool mx_cuda_train_flash_bwd(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k, const float *v,
                             const float *lse, const float *delta) {
    if (!takes(s)) return false;
    const void *ptrs[] = {dq, dk, dv};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++)
        if (!aligned8(ptrs[i])) return false;
    cudaStream_t st = cu_ctx(be)->stream;
    size_t nq = (size_t)s->B * s->T * s->H * s->Dk, nkv = (size_t)s->B * s->T * s->G * s->Dk;
    bf16 *qb = bf16_copy(st, q, nq), *kb = bf16_copy(st, k, nkv), *vb = bf16_copy(st, v, nkv),
         *dob = bf16_copy(st, dout, nq);
    if (s->Dk == 64)
        launch_bwd<64>(st, s, dq, dk, dv, qb, kb, vb, dob, lse, delta);
    else
        launch_bwd<128>(st, s, dq, dk, dv, qb, kb, vb, dob, lse, delta);
    bf16 *tmp[] = {qb, kb, vb, dob};
    for (int i = 0; i < 4; i++) CU_CHECK(cudaFreeAsync(tmp[i], st));
    return true;
}
