/* cuda_attention.cu: softmax attention over bf16 KV stores (see backend.h: mx_attn_spec; the CPU twin is
 * src/backend/cpu/cpu_attention.c). The kernels:
 *
 * - k_fa_wgmma (prefill, D = Dv = 64 or 128, Hopper only; the default on compute capability 9.0): in
 *   cuda_fa_wgmma.cu (wgmma + TMA, warp-specialized, 128 or 192 query rows per block); see its top comment.
 * - k_fa2 (prefill, D = Dv = 64 or 128; the default elsewhere and where k_fa_wgmma declines): k_flash with
 *   two m16 tiles (32 query rows) per warp, 256-row blocks, scale folded into exp2, heads-fastest grid; see
 *   its comment below.
 * - k_flash (prefill, D = Dv = 64 or 128; MX_CUDA_FA_VAR=0): FlashAttention-2 style. A block owns 128 query rows of one head
 *   (8 warps x 16 rows); K/V tiles of 64 key positions stream through shared memory (cp.async, double
 *   buffered, XOR-swizzled rows), S = QKᵀ and O += PV on tensor cores (mma.sync m16n8k16 bf16, fp32
 *   accumulators), online softmax in fp32 in the log2 domain. The block's key range is the union of its rows'
 *   ranges (causal end, window start, kv_lo/kv_hi), so causal and windowed blocks skip whole tiles; only tiles
 *   that straddle a boundary are masked element-wise. Key position p is read from slot p % n_slots (ring
 *   buffers); GQA reads KV head h / (H/G) directly (no copies). Q is rounded to bf16, as is P before PV.
 * - k_decode (1..few queries, D = Dv = 64 or 128): split-KV. A block owns one KV head and one chunk of key
 *   positions and serves every query row that reads that KV head (the H/G heads of the group times the
 *   queries): each K/V row is loaded once for all of them. Scores in fp32 (lane per key), PV with a lane per
 *   Dv/32 dims; warps merge in shared memory; splits merge by log-sum-exp in k_merge.
 * - k_decode2 (1..few queries, up to 8 query rows per KV head): the bandwidth-bound successor of k_decode, which
 *   stays for 9..16 rows; see its comment below.
 * - k_generic: any D/Dv/stride (one block per query row and head, fp32 throughout); slow, for odd shapes.
 * lse (natural log) is written when requested; rows with no visible key get zeros and lse = -inf. */
#include <math.h>
#include <string.h>

#include "cuda_common.h"

typedef __nv_bfloat16 bf16;

struct AttnP {
    int n_q, H, G, D, Dv, q_pos0, n_slots, window, causal, kv_lo, kv_hi;
    float scale, scale_log2;
    long long q_stride, k_stride, v_stride, o_stride;
    int chunk, n_split; /* decode */
    int pf;             /* k_decode2: L2 prefetch distance in loop iterations (0: none; MX_CUDA_DEC_PF) */
};

__device__ __forceinline__ void row_range(const AttnP &p, int qpos, int &lo, int &hi) {
    hi = p.causal && qpos < p.kv_hi ? qpos : p.kv_hi;
    lo = p.kv_lo;
    if (p.window > 0 && qpos - p.window + 1 > lo) lo = qpos - p.window + 1;
}

#define LOG2E 1.4426950408889634f
#define LN2   0.6931471805599453f

/* ------------------------------------------------------------------ prefill (tensor cores) */

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                        uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                          uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::);
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* element offset of 16-byte chunk c of row r in a swizzled tile of rows of D bf16 */
template <int D> __device__ __forceinline__ int swz(int r, int c) {
    return r * D + ((c ^ (r & 7)) << 3);
}

enum { FA_BM = 128, FA_BN = 64, FA_THREADS = 256 };

template <int D>
__device__ __forceinline__ void fa_load_kv(const AttnP &p, const bf16 *__restrict__ K,
                                           const bf16 *__restrict__ V, bf16 *sK, bf16 *sV, int kvh, int p0,
                                           int hi_blk) {
    constexpr int CH = D / 8; /* chunks per row */
    for (int idx = threadIdx.x; idx < FA_BN * CH; idx += FA_THREADS) {
        int r = idx / CH, c = idx % CH, pos = p0 + r;
        bool ok = pos <= hi_blk;
        size_t slot = ok ? (size_t)(pos % p.n_slots) : 0;
        const bf16 *ks = K + slot * p.k_stride + (size_t)kvh * D + c * 8;
        const bf16 *vs = V + slot * p.v_stride + (size_t)kvh * D + c * 8;
        cp_async16(smem_u32(sK + swz<D>(r, c)), ks, ok ? 16 : 0);
        cp_async16(smem_u32(sV + swz<D>(r, c)), vs, ok ? 16 : 0);
    }
}

template <int D>
__global__ void __launch_bounds__(FA_THREADS, D == 128 ? 1 : 2)
    k_flash(AttnP p, const float *__restrict__ q, const bf16 *__restrict__ K, const bf16 *__restrict__ V,
            float *__restrict__ out, float *__restrict__ lse, const int *__restrict__ dyn) {
    if (dyn) p.q_pos0 = dyn[0], p.kv_lo = dyn[1], p.kv_hi = dyn[2];
    extern __shared__ __align__(128) uint8_t fa_smem[];
    bf16 *sQ = (bf16 *)fa_smem;
    bf16 *sK = sQ + FA_BM * D;     /* 2 buffers of FA_BN x D */
    bf16 *sV = sK + 2 * FA_BN * D; /* 2 buffers */
    constexpr int CH = D / 8, NT = FA_BN / 8, DT = D / 8;
    const int h = blockIdx.y, kvh = h / (p.H / p.G);
    const int m0 = (gridDim.x - 1 - blockIdx.x) * FA_BM; /* heaviest (latest) rows first */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int last_row = min(m0 + FA_BM, p.n_q) - 1;

    int lo_first, hi_first, lo_last, hi_last;
    row_range(p, p.q_pos0 + m0, lo_first, hi_first);
    row_range(p, p.q_pos0 + last_row, lo_last, hi_last);
    const int lo_blk = lo_first, hi_blk = hi_last; /* both monotone in the query position */
    const int n_tiles = hi_blk >= lo_blk ? (hi_blk - lo_blk) / FA_BN + 1 : 0;

    if (n_tiles > 0) {
        fa_load_kv<D>(p, K, V, sK, sV, kvh, lo_blk, hi_blk);
        cp_commit();
    }
    /* Q tile: fp32 -> bf16, swizzled */
    for (int idx = threadIdx.x; idx < FA_BM * CH; idx += FA_THREADS) {
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
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * kk + (lane >> 4);
        ldsm_x4(smem_u32(sQ + swz<D>(r, c)), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
    }

    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};
    const int ra = warp * 16 + (lane >> 2);
    int lo_a, hi_a, lo_b, hi_b;
    row_range(p, p.q_pos0 + m0 + ra, lo_a, hi_a);
    row_range(p, p.q_pos0 + m0 + ra + 8, lo_b, hi_b);
    const int max_lo = lo_last, min_hi = hi_first;

    for (int n = 0; n < n_tiles; n++) {
        cp_wait_all();
        __syncthreads();
        const int p0 = lo_blk + n * FA_BN;
        if (n + 1 < n_tiles) {
            int b = (n + 1) & 1;
            fa_load_kv<D>(p, K, V, sK + b * FA_BN * D, sV + b * FA_BN * D, kvh, p0 + FA_BN, hi_blk);
            cp_commit();
        }
        const bf16 *k_s = sK + (n & 1) * FA_BN * D, *v_s = sV + (n & 1) * FA_BN * D;

        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int jj = 0; jj < NT / 2; jj++) {
                int r = 16 * jj + (lane & 7) + (lane >> 4) * 8, c = 2 * kk + ((lane >> 3) & 1);
                uint32_t b0, b1, b2, b3;
                ldsm_x4(smem_u32(k_s + swz<D>(r, c)), b0, b1, b2, b3);
                mma16816(s[2 * jj], qf[kk], b0, b1);
                mma16816(s[2 * jj + 1], qf[kk], b2, b3);
            }
        }
        const bool need_mask = p0 < max_lo || p0 + FA_BN - 1 > min_hi;
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[j][e] * p.scale_log2;
                if (need_mask) {
                    int pos = p0 + 8 * j + 2 * (lane & 3) + (e & 1);
                    bool ok = e < 2 ? (pos >= lo_a && pos <= hi_a) : (pos >= lo_b && pos <= hi_b);
                    v = ok ? v : -INFINITY;
                }
                s[j][e] = v;
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(m_r[half], mx);
            float m_use = m_new == -INFINITY ? 0.0f : m_new;
            float alpha = exp2f(m_r[half] - m_use);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                float e0 = exp2f(s[j][2 * half] - m_use), e1 = exp2f(s[j][2 * half + 1] - m_use);
                s[j][2 * half] = e0;
                s[j][2 * half + 1] = e1;
                sum += e0 + e1;
            }
            l_r[half] = l_r[half] * alpha + sum;
            m_r[half] = m_new;
#pragma unroll
            for (int j = 0; j < DT; j++) {
                o[j][2 * half] *= alpha;
                o[j][2 * half + 1] *= alpha;
            }
        }
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; kk++) {
            uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                             pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int jd = 0; jd < DT / 2; jd++) {
                int r = 16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * jd + (lane >> 4);
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(smem_u32(v_s + swz<D>(r, c)), b0, b1, b2, b3);
                mma16816(o[2 * jd], a, b0, b1);
                mma16816(o[2 * jd + 1], a, b2, b3);
            }
        }
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        float l = l_r[half];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        int row = m0 + ra + 8 * half;
        if (row >= p.n_q) continue;
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *dst = out + (size_t)row * p.o_stride + (size_t)h * D + 2 * (lane & 3);
#pragma unroll
        for (int j = 0; j < DT; j++)
            *(float2 *)(dst + 8 * j) = make_float2(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
        if (lse && (lane & 3) == 0)
            lse[(size_t)row * p.H + h] = l > 0.0f ? (m_r[half] + log2f(l)) * LN2 : -INFINITY;
    }
}

/* k_fa2 (prefill, D = Dv = 64 or 128; issue #5): the successor of k_flash, itself succeeded on Hopper by
 * k_fa_wgmma (cuda_fa_wgmma.cu, about twice as fast there); it stays the prefill kernel on other GPUs and for the
 * cases k_fa_wgmma declines. Differences from k_flash, each measured on the H100 (docs/PERFORMANCE.md):
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

/* ------------------------------------------------------------------ decode (split KV) */

enum { DEC_THREADS = 128, DEC_WARPS = 4, DEC_MAXR = 16 };

template <int D>
__global__ void __launch_bounds__(DEC_THREADS)
    k_decode(AttnP p, const float *__restrict__ q, const bf16 *__restrict__ K, const bf16 *__restrict__ V,
             float *__restrict__ out, float *__restrict__ lse, float *__restrict__ part,
             const int *__restrict__ dyn) {
    if (dyn) p.q_pos0 = dyn[0], p.kv_lo = dyn[1], p.kv_hi = dyn[2];
    constexpr int DL = D / 32; /* output dims per lane */
    __shared__ __align__(16) float q_s[DEC_MAXR][D];
    __shared__ float m_s[DEC_WARPS][DEC_MAXR], l_s[DEC_WARPS][DEC_MAXR];
    __shared__ __align__(16) float o_s[DEC_WARPS][DEC_MAXR][D];
    const int kvh = blockIdx.y, split = blockIdx.x, group = p.H / p.G, R = group * p.n_q;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < R * D; i += DEC_THREADS) {
        int r = i / D, d = i % D, t = r / group, hh = kvh * group + r % group;
        q_s[r][d] = q[(size_t)t * p.q_stride + (size_t)hh * D + d] * p.scale_log2;
    }
    int lo_all, hi_all, tmp;
    row_range(p, p.q_pos0, lo_all, tmp);
    row_range(p, p.q_pos0 + p.n_q - 1, tmp, hi_all);
    const int beg = lo_all + split * p.chunk, end = min(hi_all, beg + p.chunk - 1);
    __syncthreads();

    float m_r[DEC_MAXR], l_r[DEC_MAXR], acc[DEC_MAXR][DL];
#pragma unroll
    for (int r = 0; r < DEC_MAXR; r++) {
        m_r[r] = -INFINITY, l_r[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DL; i++) acc[r][i] = 0.0f;
    }
    for (int t0 = beg + 32 * warp; t0 <= end; t0 += 32 * DEC_WARPS) {
        const int pos = t0 + lane;
        const bool valid = pos <= end;
        const size_t slot = valid ? (size_t)(pos % p.n_slots) : 0;
        float s[DEC_MAXR];
#pragma unroll
        for (int r = 0; r < DEC_MAXR; r++) s[r] = 0.0f;
        const uint4 *kr = (const uint4 *)(K + slot * p.k_stride + (size_t)kvh * D);
#pragma unroll 4
        for (int c = 0; c < D / 8; c++) {
            uint4 kv = kr[c];
            const __nv_bfloat162 *k2 = (const __nv_bfloat162 *)&kv;
            float kf[8];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float2 f = __bfloat1622float2(k2[i]);
                kf[2 * i] = f.x, kf[2 * i + 1] = f.y;
            }
#pragma unroll
            for (int r = 0; r < DEC_MAXR; r++) {
                if (r < R) {
                    float4 qa = *(const float4 *)&q_s[r][8 * c], qb = *(const float4 *)&q_s[r][8 * c + 4];
                    s[r] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                            qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
                }
            }
        }
        const int n_keys = min(32, end - t0 + 1);
#pragma unroll
        for (int r = 0; r < DEC_MAXR; r++) {
            if (r < R) {
                int lo, hi;
                row_range(p, p.q_pos0 + r / group, lo, hi);
                float v = valid && pos >= lo && pos <= hi ? s[r] : -INFINITY;
                float mx = v;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                float m_new = fmaxf(m_r[r], mx), m_use = m_new == -INFINITY ? 0.0f : m_new;
                float alpha = exp2f(m_r[r] - m_use);
                float e = exp2f(v - m_use);
                s[r] = e;
                l_r[r] = l_r[r] * alpha + e;
                m_r[r] = m_new;
#pragma unroll
                for (int i = 0; i < DL; i++) acc[r][i] *= alpha;
            }
        }
        /* PV: V rows are loaded 8 keys at a time before they are used, so that their latencies overlap */
        for (int j0 = 0; j0 < n_keys; j0 += 8) {
            float vf[8][DL];
#pragma unroll
            for (int jj = 0; jj < 8; jj++) {
                int j = j0 + jj < n_keys ? j0 + jj : n_keys - 1; /* clamped: weight 0 below */
                const bf16 *vr =
                    V + (size_t)((t0 + j) % p.n_slots) * p.v_stride + (size_t)kvh * D + lane * DL;
                if (DL == 4) {
                    uint2 raw = *(const uint2 *)vr;
                    float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&raw.x);
                    float2 b = __bfloat1622float2(*(const __nv_bfloat162 *)&raw.y);
                    vf[jj][0] = a.x, vf[jj][1 % DL] = a.y, vf[jj][2 % DL] = b.x, vf[jj][3 % DL] = b.y;
                } else {
#pragma unroll
                    for (int i = 0; i < DL; i += 2) {
                        float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)(vr + i));
                        vf[jj][i] = a.x, vf[jj][(i + 1) % DL] = a.y;
                    }
                }
            }
#pragma unroll
            for (int jj = 0; jj < 8; jj++) {
#pragma unroll
                for (int r = 0; r < DEC_MAXR; r++) {
                    if (r < R) {
                        float pj = __shfl_sync(0xffffffffu, s[r], (j0 + jj) & 31);
                        if (j0 + jj >= n_keys) pj = 0.0f;
#pragma unroll
                        for (int i = 0; i < DL; i++) acc[r][i] += pj * vf[jj][i];
                    }
                }
            }
        }
    }
    /* merge the warps */
#pragma unroll
    for (int r = 0; r < DEC_MAXR; r++) {
        if (r < R) {
            float l = l_r[r];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
            if (lane == 0) m_s[warp][r] = m_r[r], l_s[warp][r] = l;
#pragma unroll
            for (int i = 0; i < DL; i++) o_s[warp][r][lane * DL + i] = acc[r][i];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R * D; i += DEC_THREADS) {
        int r = i / D, d = i % D, t = r / group, hh = kvh * group + r % group;
        float M = -INFINITY;
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, m_s[w][r]);
        float mu = M == -INFINITY ? 0.0f : M, L = 0.0f, O = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) {
            float f = exp2f(m_s[w][r] - mu);
            L += f * l_s[w][r];
            O += f * o_s[w][r][d];
        }
        size_t row = (size_t)t * p.H + hh;
        if (p.n_split == 1) {
            out[(size_t)t * p.o_stride + (size_t)hh * D + d] = L > 0.0f ? O / L : 0.0f;
            if (lse && d == 0) lse[row] = L > 0.0f ? (M + log2f(L)) * LN2 : -INFINITY;
        } else {
            size_t rows = (size_t)p.n_q * p.H;
            float *po = part + ((size_t)split * rows + row) * (D + 2);
            po[2 + d] = O;
            if (d == 0) po[0] = M, po[1] = L;
        }
    }
}

/* One block per (query row, head): merge the splits' (m, l, o) by log-sum-exp. */
__global__ void k_merge(AttnP p, const float *__restrict__ part, float *__restrict__ out,
                        float *__restrict__ lse) {
    const int row = blockIdx.x, t = row / p.H, hh = row % p.H, Dv = p.Dv;
    const size_t rows = (size_t)p.n_q * p.H;
    float M = -INFINITY;
    for (int s = 0; s < p.n_split; s++) M = fmaxf(M, part[((size_t)s * rows + row) * (Dv + 2)]);
    float mu = M == -INFINITY ? 0.0f : M, L = 0.0f;
    for (int s = 0; s < p.n_split; s++) {
        const float *ps = part + ((size_t)s * rows + row) * (Dv + 2);
        L += exp2f(ps[0] - mu) * ps[1];
    }
    float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
        float O = 0.0f;
        for (int s = 0; s < p.n_split; s++) {
            const float *ps = part + ((size_t)s * rows + row) * (Dv + 2);
            O += exp2f(ps[0] - mu) * ps[2 + d];
        }
        out[(size_t)t * p.o_stride + (size_t)hh * Dv + d] = O * inv;
    }
    if (lse && threadIdx.x == 0) lse[row] = L > 0.0f ? (M + log2f(L)) * LN2 : -INFINITY;
}

/* ------------------------------------------------------------------ decode v2 (bandwidth-bound split KV)
 * k_decode2: for R = (H/G) * n_q <= 8 query rows per KV head. A key row of D bf16 is read by D/8 lanes, 16 bytes
 * each (one coalesced 256-byte row for D 128), so a warp load covers 32/(D/8) keys; each warp issues U such K loads
 * and U V loads before using any (8 x 16 bytes in flight per lane, 16 warps per SM). Scores reduce over the D/8
 * lanes of a key by shuffles; online softmax per row in the log2 domain (m is warp-uniform). The block's warps
 * merge in shared memory; the KV split's partial (m, l, o) goes to `part`, and the last block of a KV head to finish
 * (an atomic ticket in cnt[kvh], reset by that block) merges all splits by log-sum-exp: one launch per call. That
 * merge runs in parallel (weights per split in shared memory, float4 columns x groups of splits, independent loads):
 * the earlier one-thread-per-element loop over the splits was a chain of dependent L2 round trips (KV 32K: 61.4 ->
 * 54.7-56.0 us on the H100). Before the PDL wait, the positions are read and the first two iterations' K/V rows
 * prefetched into L2. */

enum { DEC2_THREADS = 256, DEC2_WARPS = 8, DEC2_MAXR = 8 };

__device__ __forceinline__ uint4 ld_stream16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ void bf8_to_f(const uint4 &v, float *f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
}

template <int D, int RM, int U>
__global__ void __launch_bounds__(DEC2_THREADS, RM <= 4 ? 2 : 1)
    k_decode2(AttnP p, const float *__restrict__ q, const bf16 *__restrict__ K, const bf16 *__restrict__ V,
              float *__restrict__ out, float *__restrict__ lse, float *__restrict__ part,
              int *__restrict__ cnt, const int *__restrict__ dyn) {
    pdl_trigger();
    /* the positions come from the dynamic table, uploaded before the graph starts: read before the wait */
    if (dyn) p.q_pos0 = dyn[0], p.kv_lo = dyn[1], p.kv_hi = dyn[2];
    constexpr int LPK = D / 8, KPL = 32 / LPK, KPI = KPL * U, STEP = KPI * DEC2_WARPS;
    __shared__ float m_s[DEC2_WARPS][RM], l_s[DEC2_WARPS][RM];
    __shared__ __align__(16) float o_s[DEC2_WARPS][RM][D];
    __shared__ __align__(16) float4 red4[DEC2_THREADS];
    __shared__ float mr_s[RM], lr_s[RM];
    __shared__ int last_s;
    const int kvh = blockIdx.y, split = blockIdx.x, group = p.H / p.G, R = group * p.n_q;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = lane / LPK, ch = lane % LPK;
    int lo_all, hi_all, tmp;
    row_range(p, p.q_pos0, lo_all, tmp);
    row_range(p, p.q_pos0 + p.n_q - 1, tmp, hi_all);
    /* splits past the span (static split sized by n_slots, short contexts) have no keys: they leave at once and
     * the merge counts only the n_act others; with one, it writes the output itself (no partials, no merge).
     * Split 0 always has keys and waits on the previous kernel, so this kernel never completes before it. */
    const int n_act = max(1, min(p.n_split, (hi_all - lo_all + 1 + p.chunk - 1) / p.chunk));
    if (split >= n_act) return;
    const int beg = lo_all + split * p.chunk, end = min(hi_all, beg + p.chunk - 1);
    const size_t head_off = (size_t)kvh * D + ch * 8;
    /* L2 prefetch of this warp's key/value rows (one lane per 128-byte line) for iteration `t0` */
    auto prefetch_iter = [&](int t0) {
        if ((ch & 7) != 0) return;
#pragma unroll
        for (int u = 0; u < U; u++) {
            int pos = t0 + u * KPL + sub;
            if (pos > end) break;
            size_t slot = (size_t)(pos % p.n_slots);
            asm volatile("prefetch.global.L2 [%0];" ::"l"(K + slot * p.k_stride + head_off));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(V + slot * p.v_stride + head_off));
        }
    };
    /* before the wait: the first two iterations' rows (older keys do not depend on the previous kernel; the row it
     * writes is the point of coherence's anyway, L2) */
    prefetch_iter(beg + warp * KPI);
    prefetch_iter(beg + warp * KPI + STEP);
    pdl_wait(); /* q and the KV row just written come from the previous kernel */

    float qr[RM][8];
#pragma unroll
    for (int r = 0; r < RM; r++) {
#pragma unroll
        for (int i = 0; i < 8; i++) qr[r][i] = 0.0f;
        if (r < R) {
            int t = r / group, hh = kvh * group + r % group;
            const float *src = q + (size_t)t * p.q_stride + (size_t)hh * D + ch * 8;
#pragma unroll
            for (int i = 0; i < 8; i++) qr[r][i] = src[i] * p.scale_log2;
        }
    }

    float m_r[RM], l_r[RM], acc[RM][8];
#pragma unroll
    for (int r = 0; r < RM; r++) {
        m_r[r] = -INFINITY, l_r[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[r][i] = 0.0f;
    }
    for (int t0 = beg + warp * KPI; t0 <= end; t0 += STEP) {
        if (p.pf) prefetch_iter(t0 + p.pf * STEP); /* p.pf iterations ahead */
        uint4 kq[U], vq[U];
        int pos_u[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int pos = t0 + u * KPL + sub;
            pos_u[u] = pos;
            int pc = pos <= end ? pos : end;
            size_t slot = (size_t)(pc % p.n_slots);
            kq[u] = ld_stream16(K + slot * p.k_stride + head_off);
            vq[u] = ld_stream16(V + slot * p.v_stride + head_off);
        }
        float s[U][RM];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8];
            bf8_to_f(kq[u], kf);
#pragma unroll
            for (int r = 0; r < RM; r++) {
                float a = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++) a = fmaf(qr[r][i], kf[i], a);
                s[u][r] = a;
            }
        }
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1)
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < RM; r++) s[u][r] += __shfl_xor_sync(0xffffffffu, s[u][r], o);
#pragma unroll
        for (int r = 0; r < RM; r++) {
            float mx = -INFINITY;
            int lo_q, hi_q;
            row_range(p, p.q_pos0 + r / group, lo_q, hi_q);
#pragma unroll
            for (int u = 0; u < U; u++) {
                int pos = pos_u[u];
                bool ok = r < R && pos <= end && pos >= lo_q && pos <= hi_q;
                s[u][r] = ok ? s[u][r] : -INFINITY;
                mx = fmaxf(mx, s[u][r]);
            }
#pragma unroll
            for (int o = LPK; o < 32; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float m_new = fmaxf(m_r[r], mx), m_use = m_new == -INFINITY ? 0.0f : m_new;
            float alpha = exp2f(m_r[r] - m_use), ls = 0.0f;
#pragma unroll
            for (int u = 0; u < U; u++) {
                float e = exp2f(s[u][r] - m_use);
                s[u][r] = e;
                ls += e;
            }
            l_r[r] = l_r[r] * alpha + ls;
            m_r[r] = m_new;
#pragma unroll
            for (int i = 0; i < 8; i++) acc[r][i] *= alpha;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[8];
            bf8_to_f(vq[u], vf);
#pragma unroll
            for (int r = 0; r < RM; r++)
#pragma unroll
                for (int i = 0; i < 8; i++) acc[r][i] = fmaf(s[u][r], vf[i], acc[r][i]);
        }
    }
    /* the warp's key groups (sub) -> one; then the block's warps */
#pragma unroll
    for (int r = 0; r < RM; r++) {
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) {
            l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], o);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], o);
        }
        if (r < R) {
            if (lane == 0) m_s[warp][r] = m_r[r], l_s[warp][r] = l_r[r];
            if (sub == 0) {
                *(float4 *)&o_s[warp][r][ch * 8] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
                *(float4 *)&o_s[warp][r][ch * 8 + 4] =
                    make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
            }
        }
    }
    __syncthreads();
    /* partials of split s (n_act > 1): o at part[(s * rows + row) * D + d], (m, l) at ml[(s * rows + row) * 2] */
    const size_t rows = (size_t)p.n_q * p.H;
    float *ml = part + (size_t)p.n_split * rows * D;
    for (int i = threadIdx.x; i < R * D; i += DEC2_THREADS) {
        int r = i / D, d = i % D, t = r / group, hh = kvh * group + r % group;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC2_WARPS; w++) M = fmaxf(M, m_s[w][r]);
        float mu = M == -INFINITY ? 0.0f : M, L = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC2_WARPS; w++) {
            float f = exp2f(m_s[w][r] - mu);
            L += f * l_s[w][r];
            O += f * o_s[w][r][d];
        }
        size_t row = (size_t)t * p.H + hh;
        if (n_act == 1) {
            out[(size_t)t * p.o_stride + (size_t)hh * D + d] = L > 0.0f ? O / L : 0.0f;
            if (lse && d == 0) lse[row] = L > 0.0f ? (M + log2f(L)) * LN2 : -INFINITY;
        } else {
            part[((size_t)split * rows + row) * D + d] = O;
            if (d == 0)
                ml[((size_t)split * rows + row) * 2] = M, ml[((size_t)split * rows + row) * 2 + 1] = L;
        }
    }
    if (n_act == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int prev = atomicAdd(&cnt[kvh], 1);
        last_s = prev == n_act - 1;
        if (last_s) cnt[kvh] = 0; /* ready for the next launch (same stream: ordered) */
    }
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    /* the merge of the n_act splits, in parallel: (1) every split's (m, l) of the R rows into shared memory (o_s,
     * free now: launch_decode2 keeps 2 * n_split * R <= DEC2_WARPS * RM * D); (2) warp r: the row's max M and sum L,
     * each split's weight exp2(m - M) / L in place of its m; (3) R * D / 4 float4 columns x KG groups of splits,
     * the splits' loads independent; (4) the groups' sums -> out */
    float *mw = &o_s[0][0][0], *lw = mw + n_act * R;
    for (int i = threadIdx.x; i < n_act * R; i += DEC2_THREADS) {
        int sp = i / R, r = i % R;
        size_t row = (size_t)(r / group) * p.H + kvh * group + r % group;
        const float2 v = __ldcg((const float2 *)(ml + ((size_t)sp * rows + row) * 2));
        mw[i] = v.x, lw[i] = v.y;
    }
    __syncthreads();
    if (warp < R) {
        const int r = warp;
        float M = -INFINITY;
        for (int sp = lane; sp < n_act; sp += 32) M = fmaxf(M, mw[sp * R + r]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        const float mu = M == -INFINITY ? 0.0f : M;
        float L = 0.0f;
        for (int sp = lane; sp < n_act; sp += 32) L += exp2f(mw[sp * R + r] - mu) * lw[sp * R + r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        __syncwarp();
        for (int sp = lane; sp < n_act; sp += 32) mw[sp * R + r] = exp2f(mw[sp * R + r] - mu) * inv;
        if (lane == 0) mr_s[r] = M, lr_s[r] = L;
    }
    __syncthreads();
    const int n_col = R * D / 4, KG = max(1, DEC2_THREADS / n_col);
    const int col = threadIdx.x % n_col, kg = threadIdx.x / n_col;
    if (kg < KG) {
        const int r = col / (D / 4), d4 = col % (D / 4);
        const size_t row = (size_t)(r / group) * p.H + kvh * group + r % group;
        float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
        for (int sp = kg; sp < n_act; sp += KG) {
            const float4 o = __ldcg((const float4 *)(part + ((size_t)sp * rows + row) * D) + d4);
            const float f = mw[sp * R + r];
            a.x = fmaf(f, o.x, a.x), a.y = fmaf(f, o.y, a.y), a.z = fmaf(f, o.z, a.z),
            a.w = fmaf(f, o.w, a.w);
        }
        red4[threadIdx.x] = a;
    }
    __syncthreads();
    if (threadIdx.x < n_col) {
        const int r = col / (D / 4), d4 = col % (D / 4), t = r / group, hh = kvh * group + r % group;
        float4 a = red4[threadIdx.x];
        for (int g = 1; g < KG; g++) {
            const float4 b = red4[threadIdx.x + g * n_col];
            a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
        }
        float *o = out + (size_t)t * p.o_stride + (size_t)hh * D + 4 * d4; /* out: 4-byte alignment only */
        o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
        const float M = mr_s[r], L = lr_s[r];
        if (lse && d4 == 0) lse[(size_t)t * p.H + hh] = L > 0.0f ? (M + log2f(L)) * LN2 : -INFINITY;
    }
}

template <int D, int RM>
static void launch_decode2(mx_cuda_ctx *c, AttnP p, const float *q, const bf16 *k, const bf16 *v, float *out,
                           float *lse, int span, const int *dyn) {
    constexpr int U = 4, KPI = (32 / (D / 8)) * U * DEC2_WARPS; /* keys per block iteration */
    int per_sm = RM <= 4 ? 2 : 1;
    int max_split = (per_sm * c->n_sm + p.G - 1) / p.G;
    if (max_split > 4 * D) max_split = 4 * D; /* the merge's (m, l) of n_split x R rows fit in o_s */
    int n_split = (span + 255) / 256;
    if (n_split > max_split) n_split = max_split;
    if (n_split < 1) n_split = 1;
    int chunk = (span + n_split - 1) / n_split;
    chunk = (chunk + KPI - 1) / KPI * KPI;
    n_split = (span + chunk - 1) / chunk;
    if (n_split < 1) n_split = 1;
    p.chunk = chunk, p.n_split = n_split;
    static int pf = -1;
    if (pf < 0) {
        const char *e = getenv("MX_CUDA_DEC_PF");
        pf = e && *e ? atoi(e)
                     : 0; /* H100, 2026-11-22: 0 fastest (KV 32K 54.7 us; 1: 59.9, 2: 59.5, 3: 63.3) */
        if (pf < 0 || pf > 8) pf = 0;
    }
    p.pf = pf;
    float *part = NULL;
    if (n_split > 1) {
        size_t need = sizeof(float) * (size_t)n_split * p.n_q * p.H * (D + 2);
        part = (float *)mx_cuda_scratch(c, (void **)&c->part, &c->part_cap, need);
    }
    cudaLaunchAttribute at; /* the kernel waits (griddepcontrol) before reading anything */
    cudaLaunchConfig_t cfg = mx_cuda_pdl_config(c, dim3(n_split, p.G), dim3(DEC2_THREADS), 0, &at);
    static int skip = -1;
    if (skip < 0) skip = mx_cuda_skip("attn");
    if (skip) return;
    CU_CHECK(cudaLaunchKernelEx(&cfg, k_decode2<D, RM, U>, p, q, k, v, out, lse, part, c->dec_cnt, dyn));
}

/* ------------------------------------------------------------------ generic fallback */

enum { GEN_THREADS = 128 };

__global__ void __launch_bounds__(GEN_THREADS)
    k_generic(AttnP p, const float *__restrict__ q, const bf16 *__restrict__ K, const bf16 *__restrict__ V,
              float *__restrict__ out, float *__restrict__ lse, const int *__restrict__ dyn) {
    if (dyn) p.q_pos0 = dyn[0], p.kv_lo = dyn[1], p.kv_hi = dyn[2];
    extern __shared__ float g_smem[]; /* q[D], o[Dv], pr[GEN_THREADS] */
    float *qs = g_smem, *os = qs + p.D, *pr = os + p.Dv;
    __shared__ float red[32];
    const int t = blockIdx.x / p.H, h = blockIdx.x % p.H, kvh = h / (p.H / p.G);
    for (int d = threadIdx.x; d < p.D; d += GEN_THREADS)
        qs[d] = q[(size_t)t * p.q_stride + (size_t)h * p.D + d];
    for (int d = threadIdx.x; d < p.Dv; d += GEN_THREADS) os[d] = 0.0f;
    int lo, hi;
    row_range(p, p.q_pos0 + t, lo, hi);
    float m = -INFINITY, l = 0.0f;
    __syncthreads();
    for (int c0 = lo; c0 <= hi; c0 += GEN_THREADS) {
        int pos = c0 + threadIdx.x;
        float sc = -INFINITY;
        if (pos <= hi) {
            const bf16 *kr = K + (size_t)(pos % p.n_slots) * p.k_stride + (size_t)kvh * p.D;
            float a = 0.0f;
            for (int d = 0; d < p.D; d++) a += qs[d] * __bfloat162float(kr[d]);
            sc = a * p.scale;
        }
        float mx = sc;
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
        __syncthreads();
        mx = -INFINITY;
        for (int w = 0; w < GEN_THREADS / 32; w++) mx = fmaxf(mx, red[w]);
        float m_new = fmaxf(m, mx), alpha = expf(m - m_new);
        float e = pos <= hi ? expf(sc - m_new) : 0.0f;
        pr[threadIdx.x] = e;
        __syncthreads();
        float sum = 0.0f;
        int n = min(GEN_THREADS, hi - c0 + 1);
        for (int j = 0; j < n; j++) sum += pr[j];
        l = l * alpha + sum;
        m = m_new;
        for (int d = threadIdx.x; d < p.Dv; d += GEN_THREADS) {
            float a = os[d] * alpha;
            for (int j = 0; j < n; j++)
                a += pr[j] * __bfloat162float(
                                 V[(size_t)((c0 + j) % p.n_slots) * p.v_stride + (size_t)kvh * p.Dv + d]);
            os[d] = a;
        }
        __syncthreads();
    }
    for (int d = threadIdx.x; d < p.Dv; d += GEN_THREADS)
        out[(size_t)t * p.o_stride + (size_t)h * p.Dv + d] = l > 0.0f ? os[d] / l : 0.0f;
    if (lse && threadIdx.x == 0) lse[(size_t)t * p.H + h] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/* ------------------------------------------------------------------ dispatch */

/* MX_CUDA_DECODE_V1=1: the previous decode kernel (k_decode + k_merge), for comparisons */
static bool getenv_decode_v1(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("MX_CUDA_DECODE_V1");
        v = e && *e && strcmp(e, "0") ? 1 : 0;
    }
    return v == 1;
}

template <int D>
static void launch_flash(mx_cuda_ctx *c, const AttnP &p, const float *q, const bf16 *k, const bf16 *v,
                         float *out, float *lse, const int *dyn) {
    size_t smem = sizeof(bf16) * (size_t)(FA_BM * D + 4 * FA_BN * D);
    static bool attr_set = false; /* per process: the attribute belongs to the kernel, not the device */
    if (!attr_set) {
        CU_CHECK(cudaFuncSetAttribute(k_flash<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid((p.n_q + FA_BM - 1) / FA_BM, p.H);
    k_flash<D><<<grid, FA_THREADS, smem, c->stream>>>(p, q, k, v, out, lse, dyn);
    CU_LAUNCHED();
}

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

/* MX_CUDA_FA_VAR: the prefill kernel variant (issue #5 A/B; unset or -1: the default). 0: k_flash (BM 128,
 * 8 warps x 16 rows, BN 64); then k_fa2 as (warps x rows per warp, BN): 1: 8 x 16, 64; 2: 4 x 32, 64;
 * 3: 4 x 32, 32 (D 128) / 128 (D 64); 4: 8 x 32 (BM 256), 64; 5: D 128 8 x 32, 32 / D 64 4 x 32, 64, 3 blocks
 * per SM, Q from shared memory; 6: 4 x 32, 64 (D 64: 3 blocks per SM); 7: D 128 as 4 / D 64 4 x 32, 128, Q from
 * shared memory; 8: D 128 as 4 / D 64 8 x 32, 128, Q from shared memory.
 * H100, 2026-11-22, S 16384 causal (TFLOP/s, D 128 / D 64): 0: 222 / 212; 1: 249 / 250; 2: 292-295 / 259-262;
 * 3: 263 / 253; 4: 299-303 / 255-257; 5: 260 / 261; 6: 295 / 234; 7: 299 / 263; 8: 302 / 264 (FA2 323 / 294-298).
 * 9 and up: k_fa_wgmma (cuda_fa_wgmma.cu; sm_90 only, else the k_fa2 default), as (consumer warpgroups x
 * 64 rows, BN, stages): 9: D 128 2 x 64, 128, 2 / D 64 3 x 64, 128, 3; 10: D 128 as 9 with O += PV as two
 * n64 wgmma per k-step / D 64 2 x 64, 128, 3; 11: D 128 3 stages / D 64 3 x 64, 128, 4.
 * H100, 2026-11-22, same shapes, one run (FA2 308 / 295, cuDNN 623 / 458): 9: 624-628 / 484-490;
 * 10: 602 / 390; 11: 624 / 482; 8 (k_fa2) 299 / 266 (bench/RESULTS.md).
 * Defaults: variant 9 on compute capability 9.0; elsewhere k_fa2 as D 128 variant 4, D 64 variant 8. */
static int fa_variant(void) {
    static int v = -2;
    if (v == -2) {
        const char *e = getenv("MX_CUDA_FA_VAR");
        v = e && *e ? atoi(e) : -1;
        if (v < -1 || v > 11) v = -1;
    }
    return v;
}

template <int D>
static void launch_prefill(mx_cuda_ctx *c, const mx_attn_spec *sp, const AttnP &p, const float *q,
                           const bf16 *k, const bf16 *v, float *out, float *lse, const int *dyn) {
    int var = fa_variant();
    if (var < 0) var = 9;           /* k_fa_wgmma where it runs, else k_fa2 (below) */
    if (!(p.scale > 0.0f)) var = 0; /* k_fa2 and k_fa_wgmma take the row max on unscaled scores */
    if (var >= 9) { /* Hopper (cuda_fa_wgmma.cu); k_fa2's default where it declines (not sm_90, alignment) */
        if (mx_cuda_attention_wgmma(c, sp, q, k, v, out, lse, dyn, var)) return;
        var = D == 128 ? 4 : 8;
    }
    switch (var) {
    case 0:
        launch_flash<D>(c, p, q, k, v, out, lse, dyn);
        break;
    case 1:
        launch_fa2<D, 1, 8, 64, D == 128 ? 1 : 2>(c, p, q, k, v, out, lse, dyn);
        break;
    case 2:
        launch_fa2<D, 2, 4, 64, 2>(c, p, q, k, v, out, lse, dyn);
        break;
    case 3:
        launch_fa2<D, 2, 4, D == 128 ? 32 : 128, 2>(c, p, q, k, v, out, lse, dyn);
        break;
    case 4:
        launch_fa2<D, 2, 8, 64, 1>(c, p, q, k, v, out, lse, dyn);
        break;
    case 5:
        if constexpr (D == 128)
            launch_fa2<D, 2, 8, 32, 1>(c, p, q, k, v, out, lse, dyn);
        else
            launch_fa2<D, 2, 4, 64, 3, false>(c, p, q, k, v, out, lse, dyn);
        break;
    case 6:
        launch_fa2<D, 2, 4, 64, D == 128 ? 2 : 3>(c, p, q, k, v, out, lse, dyn);
        break;
    case 7:
        if constexpr (D == 128)
            launch_fa2<D, 2, 8, 64, 1>(c, p, q, k, v, out, lse, dyn);
        else
            launch_fa2<D, 2, 4, 128, 2, false>(c, p, q, k, v, out, lse, dyn);
        break;
    default:
        if constexpr (D == 128)
            launch_fa2<D, 2, 8, 64, 1>(c, p, q, k, v, out, lse, dyn);
        else
            launch_fa2<D, 2, 8, 128, 1, false>(c, p, q, k, v, out, lse, dyn);
        break;
    }
}

template <int D>
static void launch_decode(mx_cuda_ctx *c, AttnP p, const float *q, const bf16 *k, const bf16 *v, float *out,
                          float *lse, int span, const int *dyn) {
    int max_split = (4 * c->n_sm + p.G - 1) / p.G;
    int n_split = (span + 255) / 256;
    if (n_split > max_split) n_split = max_split;
    if (n_split < 1) n_split = 1;
    int chunk = (span + n_split - 1) / n_split;
    chunk = (chunk + 31) / 32 * 32;
    n_split = (span + chunk - 1) / chunk;
    if (n_split < 1) n_split = 1;
    p.chunk = chunk, p.n_split = n_split;
    float *part = NULL;
    if (n_split > 1) {
        size_t need = sizeof(float) * (size_t)n_split * p.n_q * p.H * (D + 2);
        part = (float *)mx_cuda_scratch(c, (void **)&c->part, &c->part_cap, need);
    }
    k_decode<D><<<dim3(n_split, p.G), DEC_THREADS, 0, c->stream>>>(p, q, k, v, out, lse, part, dyn);
    CU_LAUNCHED();
    if (n_split > 1) {
        const int merge_threads = D < 128 ? D : 128;
        k_merge<<<p.n_q * p.H, merge_threads, 0, c->stream>>>(p, part, out, lse);
        CU_LAUNCHED();
    }
}

void mx_cuda_attention_k(mx_cuda_ctx *c, const mx_attn_spec *sp, const float *q, const void *kv_k,
                         const void *kv_v, float *out, float *lse, const int *dyn, bool static_split) {
    if (sp->n_q <= 0) return;
    AttnP p;
    p.n_q = sp->n_q, p.H = sp->n_head, p.G = sp->n_kv_head, p.D = sp->head_dim, p.Dv = sp->v_dim;
    p.q_pos0 = sp->q_pos0, p.n_slots = sp->n_slots, p.window = sp->window, p.causal = sp->causal;
    p.kv_lo = sp->kv_lo, p.kv_hi = sp->kv_hi;
    p.scale = sp->scale, p.scale_log2 = sp->scale * LOG2E;
    p.q_stride = (long long)sp->q_stride, p.k_stride = (long long)sp->k_stride;
    p.v_stride = (long long)sp->v_stride, p.o_stride = (long long)sp->o_stride;
    p.chunk = 0, p.n_split = 1, p.pf = 0;
    const bf16 *k = (const bf16 *)kv_k, *v = (const bf16 *)kv_v;
    const int D = p.D, group = p.H / p.G;
    bool fast_shape = (D == 64 || D == 128) && p.Dv == D && p.k_stride % 8 == 0 && p.v_stride % 8 == 0 &&
                      ((uintptr_t)k & 15) == 0 && ((uintptr_t)v & 15) == 0;
    bool q_vec =
        p.q_stride % 4 == 0 && ((uintptr_t)q & 15) == 0 && p.o_stride % 2 == 0 && ((uintptr_t)out & 7) == 0;
    const bool q_dec2 = p.q_stride % 4 == 0 && ((uintptr_t)q & 15) == 0; /* q rows read 8 floats at a time */
    if (fast_shape && group * p.n_q <= DEC_MAXR) {
        /* the span of positions any query row may read */
        int qf = p.q_pos0, ql = p.q_pos0 + p.n_q - 1;
        int hi = p.causal && ql < p.kv_hi ? ql : p.kv_hi;
        int lo = p.kv_lo;
        if (p.window > 0 && qf - p.window + 1 > lo) lo = qf - p.window + 1;
        int span = hi - lo + 1;
        if (static_split) span = p.n_slots; /* an upper bound of the span whatever the positions */
        if (span < 1) span = 1;
        const int R = group * p.n_q;
        if (q_dec2 && R <= DEC2_MAXR && p.G <= MX_CUDA_DEC_CNT && !getenv_decode_v1()) {
            /* RM, the rows a block is compiled for: the smallest of 2, 3, 4, 8 that holds R (a padded row costs
             * its share of the loads' arithmetic: SmolLM2's R = 3 ran as 4 before; MX_CUDA_DEC_RM=4 for that) */
            static int rm_env = -1;
            if (rm_env < 0) rm_env = getenv("MX_CUDA_DEC_RM") ? atoi(getenv("MX_CUDA_DEC_RM")) : 0;
            int rm = R <= 2 ? 2 : R == 3 ? 3 : R == 4 ? 4 : 8;
            if ((rm_env == 4 || rm_env == 8) && R <= rm_env) rm = rm_env;
            if (D == 64) {
                if (rm == 2)
                    launch_decode2<64, 2>(c, p, q, k, v, out, lse, span, dyn);
                else if (rm == 3)
                    launch_decode2<64, 3>(c, p, q, k, v, out, lse, span, dyn);
                else if (rm == 4)
                    launch_decode2<64, 4>(c, p, q, k, v, out, lse, span, dyn);
                else
                    launch_decode2<64, 8>(c, p, q, k, v, out, lse, span, dyn);
            } else {
                if (rm == 2)
                    launch_decode2<128, 2>(c, p, q, k, v, out, lse, span, dyn);
                else if (rm == 3)
                    launch_decode2<128, 3>(c, p, q, k, v, out, lse, span, dyn);
                else if (rm == 4)
                    launch_decode2<128, 4>(c, p, q, k, v, out, lse, span, dyn);
                else
                    launch_decode2<128, 8>(c, p, q, k, v, out, lse, span, dyn);
            }
        } else if (D == 64)
            launch_decode<64>(c, p, q, k, v, out, lse, span, dyn);
        else
            launch_decode<128>(c, p, q, k, v, out, lse, span, dyn);
    } else if (fast_shape && q_vec) {
        if (D == 64)
            launch_prefill<64>(c, sp, p, q, k, v, out, lse, dyn);
        else
            launch_prefill<128>(c, sp, p, q, k, v, out, lse, dyn);
    } else {
        size_t smem = sizeof(float) * (size_t)(p.D + p.Dv + GEN_THREADS);
        if (smem > 48 * 1024)
            CU_CHECK(cudaFuncSetAttribute(k_generic, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        k_generic<<<p.n_q * p.H, GEN_THREADS, smem, c->stream>>>(p, q, k, v, out, lse, dyn);
        CU_LAUNCHED();
    }
}
