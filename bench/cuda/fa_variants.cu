/* fa_variants.cu: the prefill-attention kernels and tile configurations tried for mixatt, side by side (as
 * llm.c's dev/cuda files do): every variant is checked against a double-precision CPU reference on small
 * cases (causal, GQA, query offsets, windows, a ring that wraps, non-causal key ranges, rows with no visible
 * key; output and log-sum-exp), then timed at S 16384, causal, bf16 K/V, D 128 x 16 heads and D 64 x 32 heads,
 * its output there spot-checked on two rows. src/backend/cuda runs only the winners: variant 9 (k_fa_wgmma)
 * on compute capability 9.0, else variant 4 (D 128) / 8 (D 64) of k_fa2.
 *
 *   0      k_flash (below, the first kernel): 128-row blocks of 8 warps x 16 rows, key tiles of 64, the scale
 *          applied to the scores before the row max
 *   1..8   k_fa2 (src/backend/cuda/cuda_fa2.cuh) as warps x rows per warp, key tile BN (blocks per SM, Q in
 *          registers or re-read from shared memory): 1: 8 x 16, 64; 2: 4 x 32, 64; 3: 4 x 32, 32 (D 128) /
 *          128 (D 64); 4: 8 x 32, 64; 5: D 128 8 x 32, 32 / D 64 4 x 32, 64, 3 blocks, Q in smem; 6: 4 x 32,
 *          64 (D 64: 3 blocks); 7: D 128 as 4 / D 64 4 x 32, 128, Q in smem; 8: D 128 as 4 / D 64 8 x 32, 128,
 *          Q in smem
 *   9..11  k_fa_wgmma (src/backend/cuda/cuda_fa_wgmma.cuh; sm_90a only) as consumer warpgroups x 64 rows, key
 *          tile, stages: 9: D 128 2 x 64, 128, 2 / D 64 3 x 64, 128, 3; 10: D 128 as 9 with O += PV as two n64
 *          wgmma / D 64 2 x 64, 128, 3; 11: D 128 3 stages / D 64 3 x 64, 128, 4
 *
 * Build: make build/cuda/fa_variants (nvcc); run: build/cuda/fa_variants [VARIANT...] (default: all). The
 * figures of past runs, beside PyTorch's SDPA (bench/cuda/peer.py) in the same runs: bench/RESULTS.md.
 * bench/cuda/device_run.sh runs it (`run attn`) on the lent GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/cuda/cuda_fa2.cuh"
#include "../../src/backend/cuda/cuda_fa_wgmma.cuh"

void mx_cuda_fatal(const char *what, const char *msg, const char *file, int line) {
    fprintf(stderr, "fa_variants: CUDA error: %s: %s (%s:%d)\n", what, msg, file, line);
    exit(2);
}

/* ------------------------------------------------------------------ variant 0: k_flash
 * FlashAttention-2 style on mma.sync: a block owns 128 query rows of one head (8 warps x 16 rows); K/V tiles
 * of 64 key positions stream through shared memory (cp.async, double buffered, XOR-swizzled rows); S = QKᵀ
 * and O += PV on tensor cores, online softmax in fp32 in the log2 domain on scaled scores (any scale). Its
 * successor k_fa2 gives each warp two m16 tiles, so that every K/V fragment loaded by ldmatrix feeds two mma. */
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

/* ------------------------------------------------------------------ the variants */

typedef bool (*launch_fn)(mx_cuda_ctx *c, const mx_attn_spec *sp, const AttnP &p, const float *q,
                          const bf16 *k, const bf16 *v, float *out, float *lse);

template <int D>
static bool run_flash(mx_cuda_ctx *c, const mx_attn_spec *sp, const AttnP &p, const float *q, const bf16 *k,
                      const bf16 *v, float *out, float *lse) {
    launch_flash<D>(c, p, q, k, v, out, lse, NULL);
    return true;
}
template <int D, int WM, int NW, int BN, int MB, bool QREG = (WM * D <= 128)>
static bool run_fa2(mx_cuda_ctx *c, const mx_attn_spec *sp, const AttnP &p, const float *q, const bf16 *k,
                    const bf16 *v, float *out, float *lse) {
    launch_fa2<D, WM, NW, BN, MB, QREG>(c, p, q, k, v, out, lse, NULL);
    return true;
}
/* false: not on this device (k_fa_wgmma runs on compute capability 9.0 only) */
template <int D, int NCW, int BN, int ST, bool PVSPLIT>
static bool run_wgmma(mx_cuda_ctx *c, const mx_attn_spec *sp, const AttnP &p, const float *q, const bf16 *k,
                      const bf16 *v, float *out, float *lse) {
    if (!faw_accepts(c, sp, q, k, v, out)) return false;
    return faw_launch<D, NCW, BN, ST, PVSPLIT>(c, sp, faw_params(sp), q, k, v, out, lse, NULL);
}

typedef struct {
    const char *kernel, *config;
    launch_fn d128, d64;
} variant;

static const variant variants[] = {
    {"k_flash", "8 x 16, 64", run_flash<128>, run_flash<64>},
    {"k_fa2", "8 x 16, 64", run_fa2<128, 1, 8, 64, 1>, run_fa2<64, 1, 8, 64, 2>},
    {"k_fa2", "4 x 32, 64", run_fa2<128, 2, 4, 64, 2>, run_fa2<64, 2, 4, 64, 2>},
    {"k_fa2", "4 x 32, 32 / 128", run_fa2<128, 2, 4, 32, 2>, run_fa2<64, 2, 4, 128, 2>},
    {"k_fa2", "8 x 32, 64 (D 128 in src)", run_fa2<128, 2, 8, 64, 1>, run_fa2<64, 2, 8, 64, 1>},
    {"k_fa2", "8 x 32, 32 / 4 x 32, 64, 3/SM", run_fa2<128, 2, 8, 32, 1>, run_fa2<64, 2, 4, 64, 3, false>},
    {"k_fa2", "4 x 32, 64 (D 64 3/SM)", run_fa2<128, 2, 4, 64, 2>, run_fa2<64, 2, 4, 64, 3>},
    {"k_fa2", "as 4 / 4 x 32, 128, Q smem", run_fa2<128, 2, 8, 64, 1>, run_fa2<64, 2, 4, 128, 2, false>},
    {"k_fa2", "as 4 / 8 x 32, 128 (D 64 in src)", run_fa2<128, 2, 8, 64, 1>,
     run_fa2<64, 2, 8, 128, 1, false>},
    {"k_fa_wgmma", "2 x 64 / 3 x 64, 128, 2 / 3 (in src)", run_wgmma<128, 2, 128, 2, false>,
     run_wgmma<64, 3, 128, 3, false>},
    {"k_fa_wgmma", "PV 2 x n64 / 2 x 64, 3", run_wgmma<128, 2, 128, 2, true>,
     run_wgmma<64, 2, 128, 3, false>},
    {"k_fa_wgmma", "3 stages / 3 x 64, 4", run_wgmma<128, 2, 128, 3, false>, run_wgmma<64, 3, 128, 4, false>},
};
enum { N_VARIANTS = sizeof variants / sizeof variants[0] };

/* ------------------------------------------------------------------ problems and the reference */

static uint64_t rng_state = 0x853c49e6748fea9bull;
static float frand(void) { /* [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static uint16_t to_bf16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    const char *name;
    int n_q, H, G, q_pos0, n_slots, window, causal, kv_lo, kv_hi;
} shape;

/* One problem on the host and the device: q [n_q, H * D] fp32, K/V [n_slots, G * D] bf16 (kf/vf: as floats). */
typedef struct {
    mx_attn_spec sp;
    float *q, *kf, *vf;
    float *dq, *dout, *dlse;
    bf16 *dk, *dv;
} problem;

static void problem_make(problem *pb, const shape *s, int D) {
    mx_attn_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.n_q = s->n_q, sp.n_head = s->H, sp.n_kv_head = s->G, sp.head_dim = D, sp.v_dim = D;
    sp.q_pos0 = s->q_pos0, sp.n_slots = s->n_slots, sp.window = s->window, sp.causal = s->causal;
    sp.kv_lo = s->kv_lo, sp.kv_hi = s->kv_hi, sp.scale = 1.0f / sqrtf((float)D);
    sp.q_stride = (size_t)s->H * D, sp.k_stride = sp.v_stride = (size_t)s->G * D,
    sp.o_stride = (size_t)s->H * D;
    pb->sp = sp;
    size_t nq = (size_t)s->n_q * sp.q_stride, nkv = (size_t)s->n_slots * sp.k_stride;
    pb->q = (float *)malloc(sizeof(float) * nq);
    pb->kf = (float *)malloc(sizeof(float) * nkv), pb->vf = (float *)malloc(sizeof(float) * nkv);
    uint16_t *kb = (uint16_t *)malloc(2 * nkv), *vb = (uint16_t *)malloc(2 * nkv);
    for (size_t i = 0; i < nq; i++) pb->q[i] = 2.0f * frand();
    for (size_t i = 0; i < nkv; i++) kb[i] = to_bf16(frand()), pb->kf[i] = from_bf16(kb[i]);
    for (size_t i = 0; i < nkv; i++) vb[i] = to_bf16(frand()), pb->vf[i] = from_bf16(vb[i]);
    CU_CHECK(cudaMalloc(&pb->dq, sizeof(float) * nq));
    CU_CHECK(cudaMalloc(&pb->dout, sizeof(float) * nq));
    CU_CHECK(cudaMalloc(&pb->dlse, sizeof(float) * s->n_q * s->H));
    CU_CHECK(cudaMalloc(&pb->dk, 2 * nkv));
    CU_CHECK(cudaMalloc(&pb->dv, 2 * nkv));
    CU_CHECK(cudaMemcpy(pb->dq, pb->q, sizeof(float) * nq, cudaMemcpyHostToDevice));
    CU_CHECK(cudaMemcpy(pb->dk, kb, 2 * nkv, cudaMemcpyHostToDevice));
    CU_CHECK(cudaMemcpy(pb->dv, vb, 2 * nkv, cudaMemcpyHostToDevice));
    free(kb), free(vb);
}

static void problem_free(problem *pb) {
    free(pb->q), free(pb->kf), free(pb->vf);
    cudaFree(pb->dq), cudaFree(pb->dout), cudaFree(pb->dlse), cudaFree(pb->dk), cudaFree(pb->dv);
}

/* Row t of the reference, in double: out[H * D] and lse[H] (natural log; no visible key: zeros, -inf). */
static void reference_row(const problem *pb, int t, double *out, double *lse) {
    const mx_attn_spec *s = &pb->sp;
    const int D = s->head_dim, qpos = s->q_pos0 + t, grp = s->n_head / s->n_kv_head;
    int hi = s->causal && qpos < s->kv_hi ? qpos : s->kv_hi, lo = s->kv_lo;
    if (s->window > 0 && qpos - s->window + 1 > lo) lo = qpos - s->window + 1;
    double *sc = (double *)malloc(sizeof(double) * (hi >= lo ? hi - lo + 1 : 1));
    for (int h = 0; h < s->n_head; h++) {
        const float *qr = pb->q + (size_t)t * s->q_stride + (size_t)h * D;
        const size_t ko = (size_t)(h / grp) * D;
        double mx = -INFINITY;
        for (int p = lo; p <= hi; p++) {
            const float *kr = pb->kf + (size_t)(p % s->n_slots) * s->k_stride + ko;
            double a = 0;
            for (int d = 0; d < D; d++) a += (double)qr[d] * kr[d];
            sc[p - lo] = a * s->scale;
            if (sc[p - lo] > mx) mx = sc[p - lo];
        }
        double l = 0;
        for (int p = lo; p <= hi; p++) l += sc[p - lo] = exp(sc[p - lo] - mx);
        for (int d = 0; d < D; d++) {
            double o = 0;
            for (int p = lo; p <= hi; p++)
                o += sc[p - lo] * pb->vf[(size_t)(p % s->n_slots) * s->v_stride + ko + d];
            out[(size_t)h * D + d] = l > 0 ? o / l : 0.0;
        }
        lse[h] = l > 0 ? mx + log(l) : -INFINITY;
    }
    free(sc);
}

/* Runs variant vi on pb (NULL lse allowed); false when it does not run on this device. */
static bool run_variant(mx_cuda_ctx *c, int vi, const problem *pb, bool with_lse) {
    const mx_attn_spec *sp = &pb->sp;
    AttnP p;
    memset(&p, 0, sizeof p);
    p.n_q = sp->n_q, p.H = sp->n_head, p.G = sp->n_kv_head, p.D = sp->head_dim, p.Dv = sp->v_dim;
    p.q_pos0 = sp->q_pos0, p.n_slots = sp->n_slots, p.window = sp->window, p.causal = sp->causal;
    p.kv_lo = sp->kv_lo, p.kv_hi = sp->kv_hi, p.scale = sp->scale, p.scale_log2 = sp->scale * LOG2E;
    p.q_stride = (long long)sp->q_stride, p.k_stride = (long long)sp->k_stride;
    p.v_stride = (long long)sp->v_stride, p.o_stride = (long long)sp->o_stride, p.n_split = 1;
    launch_fn f = sp->head_dim == 128 ? variants[vi].d128 : variants[vi].d64;
    return f(c, sp, p, pb->dq, pb->dk, pb->dv, pb->dout, with_lse ? pb->dlse : NULL);
}

/* Error of the variant's rows `rows` (n of them) against the reference: relative L2 of out, max |d| of lse. */
static void compare_rows(const problem *pb, const int *rows, int n, double *out_err, double *lse_err) {
    const int HD = pb->sp.n_head * pb->sp.head_dim, H = pb->sp.n_head;
    float *got = (float *)malloc(sizeof(float) * HD), *gl = (float *)malloc(sizeof(float) * H);
    double *ref = (double *)malloc(sizeof(double) * HD), *rl = (double *)malloc(sizeof(double) * H);
    double num = 0, den = 0, ld = 0;
    for (int i = 0; i < n; i++) {
        int t = rows[i];
        CU_CHECK(cudaMemcpy(got, pb->dout + (size_t)t * pb->sp.o_stride, sizeof(float) * HD,
                            cudaMemcpyDeviceToHost));
        CU_CHECK(cudaMemcpy(gl, pb->dlse + (size_t)t * H, sizeof(float) * H, cudaMemcpyDeviceToHost));
        reference_row(pb, t, ref, rl);
        for (int j = 0; j < HD; j++) {
            double d = got[j] - ref[j];
            num += isfinite(d) ? d * d : 1e30, den += ref[j] * ref[j];
        }
        for (int h = 0; h < H; h++) {
            if (isinf(rl[h]) && isinf(gl[h]) && gl[h] < 0) continue;
            double d = fabs(gl[h] - rl[h]);
            ld = isfinite(d) ? (d > ld ? d : ld) : 1e30;
        }
    }
    *out_err = den > 0 ? sqrt(num / den) : sqrt(num);
    *lse_err = ld;
    free(got), free(gl), free(ref), free(rl);
}

static const shape checks[] = {
    /* name                       T     H  G  pos0  slots W    causal lo    hi */
    {"causal GQA 4/2", 300, 4, 2, 0, 300, 0, 1, 0, 299},
    {"chunk at pos 200", 100, 4, 2, 200, 512, 0, 1, 0, 299},
    {"window 50 MHA", 300, 4, 4, 0, 300, 50, 1, 0, 299},
    {"ring W64 slots 163", 100, 4, 2, 400, 163, 64, 1, 337, 499},
    {"non-causal [10, 400]", 130, 4, 2, 50, 512, 0, 0, 10, 400},
    {"empty rows (kv_lo 5)", 40, 2, 1, 0, 64, 0, 1, 5, 39},
    {"causal T1000 pos 777 GQA 4/1", 1000, 4, 1, 777, 2048, 0, 1, 0, 1776},
    {"ring W512 slots 1200 T600", 600, 4, 2, 3100, 1200, 512, 1, 2500, 3699},
};
enum { N_CHECKS = sizeof checks / sizeof checks[0], CHECK_STRIDE = 7 };
static const double TOL = 2e-2; /* bf16 Q and P: as test_cuda's attention checks */

int main(int argc, char **argv) {
    bool want[N_VARIANTS];
    for (int i = 0; i < N_VARIANTS; i++) want[i] = argc < 2;
    for (int a = 1; a < argc; a++) {
        int v = atoi(argv[a]);
        if (v < 0 || v >= N_VARIANTS) {
            fprintf(stderr, "usage: fa_variants [VARIANT...]  (0..%d)\n", N_VARIANTS - 1);
            return 2;
        }
        want[v] = true;
    }
    mx_cuda_ctx c;
    memset(&c, 0, sizeof c);
    cudaDeviceProp prop;
    CU_CHECK(cudaGetDeviceProperties(&prop, 0));
    c.device = 0, c.n_sm = prop.multiProcessorCount;
    CU_CHECK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
    printf("fa_variants on %s (%d SMs, compute capability %d.%d)\n", prop.name, c.n_sm, prop.major,
           prop.minor);

    /* checks: every CHECK_STRIDE-th row (and the last) of each case, D 64 and 128 */
    double worst_out[N_VARIANTS], worst_lse[N_VARIANTS];
    bool ran[N_VARIANTS];
    for (int v = 0; v < N_VARIANTS; v++) worst_out[v] = worst_lse[v] = 0, ran[v] = false;
    for (int ci = 0; ci < N_CHECKS; ci++)
        for (int D = 64; D <= 128; D += 64) {
            problem pb;
            problem_make(&pb, &checks[ci], D);
            int n_rows = 0, *rows = (int *)malloc(sizeof(int) * (pb.sp.n_q / CHECK_STRIDE + 2));
            for (int t = 0; t < pb.sp.n_q; t += CHECK_STRIDE) rows[n_rows++] = t;
            if (rows[n_rows - 1] != pb.sp.n_q - 1) rows[n_rows++] = pb.sp.n_q - 1;
            for (int v = 0; v < N_VARIANTS; v++) {
                if (!want[v]) continue;
                CU_CHECK(cudaMemset(pb.dout, 0xFF, sizeof(float) * pb.sp.n_q * pb.sp.o_stride));
                CU_CHECK(cudaMemset(pb.dlse, 0xFF, sizeof(float) * pb.sp.n_q * pb.sp.n_head));
                if (!run_variant(&c, v, &pb, true)) continue;
                CU_CHECK(cudaStreamSynchronize(c.stream));
                double eo, el;
                compare_rows(&pb, rows, n_rows, &eo, &el);
                ran[v] = true;
                if (eo > worst_out[v]) worst_out[v] = eo;
                if (el > worst_lse[v]) worst_lse[v] = el;
                if (eo > TOL || el > TOL)
                    printf("FAIL variant %d (%s) %s D %d: out rel err %.2e, lse max|d| %.2e (tol %.0e)\n", v,
                           variants[v].kernel, checks[ci].name, D, eo, el, TOL);
            }
            free(rows);
            problem_free(&pb);
        }

    /* timing: S 16384 causal; flops 2 H S² D (the causal half of 4 H S² D) */
    const int S = 16384, shapes[2][2] = {{16, 128}, {32, 64}};
    double tf[N_VARIANTS][2], spot[N_VARIANTS][2];
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    for (int si = 0; si < 2; si++) {
        const int H = shapes[si][0], D = shapes[si][1];
        shape sh = {"S 16384", S, H, H, 0, S, 0, 1, 0, S - 1};
        problem pb;
        problem_make(&pb, &sh, D);
        const int rows[2] = {S - 1, S / 3};
        for (int v = 0; v < N_VARIANTS; v++) {
            tf[v][si] = spot[v][si] = -1;
            if (!want[v] || !run_variant(&c, v, &pb, true)) continue;
            CU_CHECK(cudaStreamSynchronize(c.stream));
            double eo, el;
            compare_rows(&pb, rows, 2, &eo, &el);
            spot[v][si] = eo > el ? eo : el;
            float t[10];
            for (int r = 0; r < 12; r++) {
                CU_CHECK(cudaEventRecord(e0, c.stream));
                run_variant(&c, v, &pb, false);
                CU_CHECK(cudaEventRecord(e1, c.stream));
                CU_CHECK(cudaEventSynchronize(e1));
                float ms;
                CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
                if (r >= 2) t[r - 2] = ms;
            }
            for (int i = 0; i < 10; i++) /* median of 10 */
                for (int j = i + 1; j < 10; j++)
                    if (t[j] < t[i]) {
                        float x = t[i];
                        t[i] = t[j], t[j] = x;
                    }
            double sec = 0.5e-3 * (t[4] + t[5]);
            tf[v][si] = 2.0 * H * (double)S * S * D / sec / 1e12;
        }
        problem_free(&pb);
    }

    printf("\nprefill attention, bf16 K/V, causal S %d; TFLOP/s = 2 H S^2 D / time, median of 10\n", S);
    printf("%-3s %-11s %-38s %-22s %-14s %-14s\n", "var", "kernel", "config (D 128 / D 64)",
           "check: out / lse err", "D 128 H 16", "D 64 H 32");
    int n_fail = 0;
    for (int v = 0; v < N_VARIANTS; v++) {
        if (!want[v]) continue;
        if (!ran[v]) {
            printf("%-3d %-11s %-38s not on this device\n", v, variants[v].kernel, variants[v].config);
            continue;
        }
        bool ok = worst_out[v] <= TOL && worst_lse[v] <= TOL && spot[v][0] <= TOL && spot[v][1] <= TOL;
        n_fail += !ok;
        char chk[32];
        snprintf(chk, sizeof chk, "%s %.1e / %.1e", ok ? "PASS" : "FAIL", worst_out[v], worst_lse[v]);
        printf("%-3d %-11s %-38s %-22s %-14.1f %-14.1f\n", v, variants[v].kernel, variants[v].config, chk,
               tf[v][0], tf[v][1]);
    }
    printf("\n%s (%d variants failed their checks)\n", n_fail ? "FAIL" : "PASS", n_fail);
    return n_fail ? 1 : 0;
}
