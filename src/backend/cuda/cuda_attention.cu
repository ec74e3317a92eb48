/* cuda_attention.cu: softmax attention over bf16 KV stores (see backend.h: mx_attn_spec; the CPU twin is
 * src/backend/cpu/cpu_attention.c). The kernels:
 *
 * - k_fa_wgmma (prefill, D = Dv = 64 or 128, Hopper only; the default on compute capability 9.0): in
 *   cuda_fa_wgmma.cu (wgmma + TMA, warp-specialized, 128 or 192 query rows per block); see its top comment.
 * - k_fa2 (prefill, D = Dv = 64 or 128; the default elsewhere and where k_fa_wgmma declines): cuda_fa2.cuh,
 *   FlashAttention-2 style on mma.sync: K/V tiles stream through shared memory (cp.async, double buffered,
 *   XOR-swizzled rows), S = QKᵀ and O += PV on tensor cores (bf16, fp32 accumulators), online softmax in fp32
 *   in the log2 domain; two m16 tiles (32 query rows) per warp, 256-row blocks, heads-fastest grid. The
 *   block's key range is the union of its rows' ranges (causal end, window start, kv_lo/kv_hi), so causal and
 *   windowed blocks skip whole tiles; only tiles that straddle a boundary are masked element-wise. Key
 *   position p is read from slot p % n_slots (ring buffers); GQA reads KV head h / (H/G) directly (no
 *   copies). Q is rounded to bf16, as is P before PV.
 *   Both prefill kernels take the row max on unscaled scores, so they run for scale > 0 only; any other scale
 *   (0, negative, NaN) goes to k_generic, which scales before the max.
 * - k_decode (1..few queries, D = Dv = 64 or 128): split-KV. A block owns one KV head and one chunk of key
 *   positions and serves every query row that reads that KV head (the H/G heads of the group times the
 *   queries): each K/V row is loaded once for all of them. Scores in fp32 (lane per key), PV with a lane per
 *   Dv/32 dims; warps merge in shared memory; splits merge by log-sum-exp in k_merge.
 * - k_decode2 (1..few queries, up to 8 query rows per KV head): the bandwidth-bound successor of k_decode,
 *   which stays for 9..16 rows; see its comment below.
 * - k_generic: any D/Dv/stride/scale (one block per query row and head, fp32 throughout); slow, for odd
 *   shapes.
 * lse (natural log) is written when requested; rows with no visible key get zeros and lse = -inf.
 * The tile configurations and kernels that lost (k_flash, other k_fa2 and k_fa_wgmma tilings) are compared in
 * bench/cuda/fa_variants.cu. */
#include <math.h>
#include <string.h>

#include "cuda_fa2.cuh"

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
    p.pf = c->tune.dec_pf; /* 0 (none) measured fastest: docs/PERFORMANCE.md */
    float *part = NULL;
    if (n_split > 1) {
        size_t need = sizeof(float) * (size_t)n_split * p.n_q * p.H * (D + 2);
        part = (float *)mx_cuda_scratch(c, (void **)&c->part, &c->part_cap, need);
    }
    cudaLaunchAttribute at; /* the kernel waits (griddepcontrol) before reading anything */
    cudaLaunchConfig_t cfg = mx_cuda_pdl_config(c, dim3(n_split, p.G), dim3(DEC2_THREADS), 0, &at);
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

/* Prefill at D = Dv = 64 or 128 with scale > 0: k_fa_wgmma where it runs (compute capability 9.0, unless
 * MX_CUDA_PREFILL=fa2), else k_fa2 as 8 warps x 32 query rows with key tiles of 64 (D 128) or 128 with Q
 * re-read from shared memory (D 64): the fastest k_fa2 tilings (bench/cuda/fa_variants.cu). */
template <int D>
static void launch_prefill(mx_cuda_ctx *c, const mx_attn_spec *sp, const AttnP &p, const float *q,
                           const bf16 *k, const bf16 *v, float *out, float *lse, const int *dyn) {
    if (!c->tune.prefill_fa2 && mx_cuda_attention_wgmma(c, sp, q, k, v, out, lse, dyn)) return;
    if constexpr (D == 128)
        launch_fa2<D, 2, 8, 64, 1>(c, p, q, k, v, out, lse, dyn);
    else
        launch_fa2<D, 2, 8, 128, 1, false>(c, p, q, k, v, out, lse, dyn);
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
        if (q_dec2 && R <= DEC2_MAXR && p.G <= MX_CUDA_DEC_CNT && !c->tune.decode_v1) {
            /* RM, the rows a block is compiled for: the smallest of 2, 3, 4, 8 that holds R (a padded row costs
             * its share of the loads' arithmetic: SmolLM2's R = 3 ran as 4 before; MX_CUDA_DEC_RM=4 for that) */
            const int rm_env = c->tune.dec_rm;
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
    } else if (fast_shape && q_vec && p.scale > 0.0f) {
        if (D == 64)
            launch_prefill<64>(c, sp, p, q, k, v, out, lse, dyn);
        else
            launch_prefill<128>(c, sp, p, q, k, v, out, lse, dyn);
    } else { /* odd shapes, misaligned operands, and prefill at a scale that is not positive */
        size_t smem = sizeof(float) * (size_t)(p.D + p.Dv + GEN_THREADS);
        if (smem > 48 * 1024)
            CU_CHECK(cudaFuncSetAttribute(k_generic, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        k_generic<<<p.n_q * p.H, GEN_THREADS, smem, c->stream>>>(p, q, k, v, out, lse, dyn);
        CU_LAUNCHED();
    }
}
