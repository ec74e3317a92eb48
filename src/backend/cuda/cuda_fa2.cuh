/* cuda_fa2.cuh: internal to src/backend/cuda (and bench/cuda/fa_variants.cu). k_fa2, the mma.sync prefill
 * attention kernel for D = Dv = 64 or 128, as a template over its tile configuration, and launch_fa2.
 * cuda_attention.cu instantiates the configuration it runs (the prefill kernel on GPUs other than compute
 * capability 9.0, and where k_fa_wgmma declines); bench/cuda/fa_variants.cu instantiates the others to compare
 * them. */
#ifndef MX_CUDA_FA2_CUH
#define MX_CUDA_FA2_CUH

#include "cuda_attn_common.cuh"

/* k_fa2 (prefill, D = Dv = 64 or 128; issue #5): the successor of k_flash (now in bench/cuda/fa_variants.cu),
 * itself succeeded on Hopper by k_fa_wgmma (cuda_fa_wgmma.cu, about twice as fast there); it stays the prefill
 * kernel on other GPUs and for the cases k_fa_wgmma declines. Differences from k_flash, each measured
 * (bench/RESULTS.md, docs/PERFORMANCE.md):
 * - WM m16 tiles (16 * WM query rows) per warp, NW warps, BM = 16 * WM * NW rows per block: with WM = 2 every K
 *   (S = QKᵀ) and V (O += PV) fragment loaded by ldmatrix feeds two mma instead of one, halving the shared-memory
 *   traffic per tensor-core operation (16 rows per warp left k_flash bound by ldmatrix bandwidth). Q stays in
 *   registers while WM * D <= 128 (32 registers), else it is re-read from shared memory per k-step.
 * - key tiles of BN positions (64 or 32 for D 128, where the WM = 2 accumulators take 128 registers);
 * - the softmax scale folded into the exponent (exp2(s * scale_log2 - m) as one FFMA + ex2; the max is taken
 *   on the raw scores, valid for scale > 0, which the dispatch checks);
 * - the ring-slot modulo once per tile per thread instead of once per 16-byte chunk;
 * - the grid (H, query blocks): heads vary fastest, so the heaviest causal query blocks of every head start in
 *   the first wave and the light ones fill the tail (k_flash ran head by head, each head heavy to light).
 * Shapes: q [n_q, q_stride] fp32 (head h at h * D), K/V [n_slots, k/v_stride] bf16 (KV head at kvh * D),
 * out [n_q, o_stride] fp32, lse [n_q, H]. */
template <int D, int BN, int NTH>
__device__ __forceinline__ void fa2_load_kv(const AttnP &p, const bf16 *__restrict__ K,
                                            const bf16 *__restrict__ V, bf16 *sK, bf16 *sV, int kvh, int p0,
                                            int hi_blk) {
    constexpr int CH = D / 8;
    const int n = p.n_slots;
    int s0 = p0 % n; /* p0 >= 0 */
#pragma unroll
    for (int idx = threadIdx.x; idx < BN * CH; idx += NTH) {
        int r = idx / CH, c = idx % CH, pos = p0 + r;
        bool ok = pos <= hi_blk;
        int sl = s0 + r;
        if (sl >= n) sl -= n;
        if (sl >= n) sl %= n; /* n_slots < BN */
        size_t slot = ok ? (size_t)sl : 0;
        const bf16 *ks = K + slot * p.k_stride + (size_t)kvh * D + c * 8;
        const bf16 *vs = V + slot * p.v_stride + (size_t)kvh * D + c * 8;
        cp_async16(smem_u32(sK + swz<D>(r, c)), ks, ok ? 16 : 0);
        cp_async16(smem_u32(sV + swz<D>(r, c)), vs, ok ? 16 : 0);
    }
}

template <int D, int WM, int NW, int BN, int MB, bool QREG>
__global__ void __launch_bounds__(32 * NW, MB)
    k_fa2(AttnP p, const float *__restrict__ q, const bf16 *__restrict__ K, const bf16 *__restrict__ V,
          float *__restrict__ out, float *__restrict__ lse, const int *__restrict__ dyn) {
    if (dyn) p.q_pos0 = dyn[0], p.kv_lo = dyn[1], p.kv_hi = dyn[2];
    constexpr int NTH = 32 * NW, BM = 16 * WM * NW, CH = D / 8, NT = BN / 8, DT = D / 8;
    constexpr bool QR =
        QREG; /* Q fragments held in registers (WM * D / 4 of them), else re-read per k-step */
    extern __shared__ __align__(128) uint8_t fa_smem[];
    bf16 *sQ = (bf16 *)fa_smem;
    bf16 *sK = sQ + BM * D;     /* 2 buffers of BN x D */
    bf16 *sV = sK + 2 * BN * D; /* 2 buffers */
    const int h = blockIdx.x, kvh = h / (p.H / p.G);
    const int m0 = (gridDim.y - 1 - blockIdx.y) * BM; /* heaviest (latest) rows first */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int last_row = min(m0 + BM, p.n_q) - 1;

    int lo_first, hi_first, lo_last, hi_last;
    row_range(p, p.q_pos0 + m0, lo_first, hi_first);
    row_range(p, p.q_pos0 + last_row, lo_last, hi_last);
    const int lo_blk = lo_first, hi_blk = hi_last;
    const int n_tiles = hi_blk >= lo_blk ? (hi_blk - lo_blk) / BN + 1 : 0;

    if (n_tiles > 0) {
        fa2_load_kv<D, BN, NTH>(p, K, V, sK, sV, kvh, lo_blk, hi_blk);
        cp_commit();
    }
    for (int idx = threadIdx.x; idx < BM * CH; idx += NTH) {
        int r = idx / CH, c = idx % CH;
        float4 a = make_float4(0, 0, 0, 0), b = a;
        if (m0 + r < p.n_q) {
            const float *src = q + (size_t)(m0 + r) * p.q_stride + (size_t)h * D + c * 8;
            a = *(const float4 *)src;
            b = *(const float4 *)(src + 4);
        }
        uint4 v =
            make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y), pack_bf16(b.z, b.w));
        *(uint4 *)(sQ + swz<D>(r, c)) = v;
    }
    __syncthreads();
    /* warp w owns rows [w * 16 * WM, (w + 1) * 16 * WM): m-tile mt = rows w * 16 * WM + 16 * mt + [0, 16) */
    const int wrow = warp * 16 * WM;
    uint32_t qf[QR ? WM : 1][QR ? D / 16 : 1][4];
    if (QR) {
#pragma unroll
        for (int mt = 0; mt < WM; mt++)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                int r = wrow + 16 * mt + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * kk + (lane >> 4);
                ldsm_x4(smem_u32(sQ + swz<D>(r, c)), qf[QR ? mt : 0][QR ? kk : 0][0],
                        qf[QR ? mt : 0][QR ? kk : 0][1], qf[QR ? mt : 0][QR ? kk : 0][2],
                        qf[QR ? mt : 0][QR ? kk : 0][3]);
            }
    }

    float o[WM][DT][4];
#pragma unroll
    for (int mt = 0; mt < WM; mt++)
#pragma unroll
        for (int j = 0; j < DT; j++) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    float m_r[WM][2], l_r[WM][2];
#pragma unroll
    for (int mt = 0; mt < WM; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) m_r[mt][hf] = -INFINITY, l_r[mt][hf] = 0.0f;
    const int max_lo = lo_last, min_hi = hi_first;
    const float sl2 = p.scale_log2;

    for (int n = 0; n < n_tiles; n++) {
        cp_wait_all();
        __syncthreads();
        const int p0 = lo_blk + n * BN;
        if (n + 1 < n_tiles) {
            int b = (n + 1) & 1;
            fa2_load_kv<D, BN, NTH>(p, K, V, sK + b * BN * D, sV + b * BN * D, kvh, p0 + BN, hi_blk);
            cp_commit();
        }
        const bf16 *k_s = sK + (n & 1) * BN * D, *v_s = sV + (n & 1) * BN * D;

        float s[WM][NT][4];
#pragma unroll
        for (int mt = 0; mt < WM; mt++)
#pragma unroll
            for (int j = 0; j < NT; j++) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[WM][4];
#pragma unroll
            for (int mt = 0; mt < WM; mt++) {
                if (QR) {
#pragma unroll
                    for (int e = 0; e < 4; e++) qa[mt][e] = qf[QR ? mt : 0][QR ? kk : 0][e];
                } else {
                    int r = wrow + 16 * mt + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * kk + (lane >> 4);
                    ldsm_x4(smem_u32(sQ + swz<D>(r, c)), qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3]);
                }
            }
#pragma unroll
            for (int jj = 0; jj < NT / 2; jj++) {
                int r = 16 * jj + (lane & 7) + (lane >> 4) * 8, c = 2 * kk + ((lane >> 3) & 1);
                uint32_t b0, b1, b2, b3;
                ldsm_x4(smem_u32(k_s + swz<D>(r, c)), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < WM; mt++) {
                    mma16816(s[mt][2 * jj], qa[mt], b0, b1);
                    mma16816(s[mt][2 * jj + 1], qa[mt], b2, b3);
                }
            }
        }
        const bool need_mask = p0 < max_lo || p0 + BN - 1 > min_hi;
        if (need_mask) {
#pragma unroll
            for (int mt = 0; mt < WM; mt++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    int lo,
                        hi; /* this lane's row (recomputed here: boundary tiles only, registers are scarce) */
                    row_range(p, p.q_pos0 + m0 + wrow + 16 * mt + 8 * hf + (lane >> 2), lo, hi);
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int e = 2 * hf; e < 2 * hf + 2; e++) {
                            int pos = p0 + 8 * j + 2 * (lane & 3) + (e & 1);
                            s[mt][j][e] = pos >= lo && pos <= hi ? s[mt][j][e] : -INFINITY;
                        }
                }
        }
#pragma unroll
        for (int mt = 0; mt < WM; mt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(s[mt][j][2 * hf], s[mt][j][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                float m_new = fmaxf(m_r[mt][hf], mx * sl2); /* log2 units */
                float m_use = m_new == -INFINITY ? 0.0f : m_new;
                float alpha = exp2f(m_r[mt][hf] - m_use);
                float sum = 0.0f;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    float e0 = exp2f(fmaf(s[mt][j][2 * hf], sl2, -m_use));
                    float e1 = exp2f(fmaf(s[mt][j][2 * hf + 1], sl2, -m_use));
                    s[mt][j][2 * hf] = e0;
                    s[mt][j][2 * hf + 1] = e1;
                    sum += e0 + e1;
                }
                l_r[mt][hf] = l_r[mt][hf] * alpha + sum;
                m_r[mt][hf] = m_new;
#pragma unroll
                for (int j = 0; j < DT; j++) {
                    o[mt][j][2 * hf] *= alpha;
                    o[mt][j][2 * hf + 1] *= alpha;
                }
            }
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[WM][4];
#pragma unroll
            for (int mt = 0; mt < WM; mt++) {
                a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int jd = 0; jd < DT / 2; jd++) {
                int r = 16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * jd + (lane >> 4);
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(smem_u32(v_s + swz<D>(r, c)), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < WM; mt++) {
                    mma16816(o[mt][2 * jd], a[mt], b0, b1);
                    mma16816(o[mt][2 * jd + 1], a[mt], b2, b3);
                }
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < WM; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float l = l_r[mt][hf];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            int row = m0 + wrow + 16 * mt + 8 * hf + (lane >> 2);
            if (row >= p.n_q) continue;
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
            float *dst = out + (size_t)row * p.o_stride + (size_t)h * D + 2 * (lane & 3);
#pragma unroll
            for (int j = 0; j < DT; j++)
                *(float2 *)(dst + 8 * j) = make_float2(o[mt][j][2 * hf] * inv, o[mt][j][2 * hf + 1] * inv);
            if (lse && (lane & 3) == 0)
                lse[(size_t)row * p.H + h] = l > 0.0f ? (m_r[mt][hf] + log2f(l)) * LN2 : -INFINITY;
        }
}

/* Launches k_fa2 in the configuration of its template arguments on c's stream. */
template <int D, int WM, int NW, int BN, int MB, bool QREG = (WM * D <= 128)>
static void launch_fa2(mx_cuda_ctx *c, const AttnP &p, const float *q, const bf16 *k, const bf16 *v,
                       float *out, float *lse, const int *dyn) {
    constexpr int BM = 16 * WM * NW;
    size_t smem = sizeof(bf16) * (size_t)(BM * D + 4 * BN * D);
    static bool attr_set = false; /* per process and instantiation */
    if (!attr_set) {
        CU_CHECK(cudaFuncSetAttribute(k_fa2<D, WM, NW, BN, MB, QREG>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid(p.H, (p.n_q + BM - 1) / BM);
    k_fa2<D, WM, NW, BN, MB, QREG><<<grid, 32 * NW, smem, c->stream>>>(p, q, k, v, out, lse, dyn);
    CU_LAUNCHED();
}

#endif
