/* cuda_fa_wgmma.cuh: internal to src/backend/cuda (and bench/cuda/fa_variants.cu, which compares its tile
 * configurations). Prefill attention on Hopper tensor cores (sm_90a: wgmma, TMA, mbarriers) for D = Dv = 64
 * or 128: k_fa_wgmma, the successor of k_fa2 (cuda_fa2.cuh) and the default prefill kernel on compute
 * capability 9.0 (cuda_fa_wgmma.cu runs the configuration chosen; figures against PyTorch's FA2 and cuDNN in
 * bench/RESULTS.md).
 *
 * A block owns BM = 64 * NCW query rows of one head and runs NCW + 1 warpgroups:
 * - warpgroup 0, the producer (one thread; its registers given back with setmaxnreg): streams K and V tiles
 *   of BN key positions into ST shared-memory stages with the bulk tensor copy engine (TMA, 128-byte
 *   swizzle), each stage's K and V with their own full/empty mbarriers, so that S of the next tile can start
 *   before its V lands;
 * - warpgroups 1..NCW, the consumers, 64 query rows each: Q (fp32 in memory) is rounded to bf16 into shared
 *   memory once (128-byte swizzled, as TMA writes K/V); per tile S = Q·Kᵀ is one wgmma chain (m64nBNk16, A
 *   and B from shared memory, both K-major), the online softmax runs in fp32 on the accumulators (log2
 *   domain, the scale folded into the exponent, row max on raw scores: scale > 0), and P stays in registers
 *   as the A operand of O += P·V (V rows [key][d] are MN-major for B: the transpose bit). The PV chain of
 *   tile n is issued right after the S chain of tile n + 1, so the softmax of n + 1 runs while the tensor
 *   cores finish PV of n.
 * Key tiles start at the block's first visible position and never straddle a multiple of n_slots: position
 * p lives in slot p % n_slots, so a range that wraps the ring is cut there (a short tile, whose rows past the
 * ring's end TMA fills with zeros); positions past a tile's end or outside a row's [lo, hi] (causal, window,
 * kv_lo, kv_hi) are masked, on boundary tiles only. The grid is (H, query blocks), the heaviest causal blocks
 * first.
 * Shapes: q [n_q, q_stride] fp32 (head h at h * D), K/V [n_slots, k/v_stride] bf16 (KV head h / (H / G) at
 * kvh * D), out [n_q, o_stride] fp32, lse [n_q, H] (natural log; may be NULL); rows with no visible key get
 * zeros and lse = -inf. dyn (may be NULL): q_pos0, kv_lo, kv_hi read on the device (graph replay).
 * Compiled for sm_90a only (the compute_80 pass gets empty kernels); the host side takes a call only on a
 * device of compute capability 9.0 and returns false (the caller falls back to k_fa2) otherwise.
 * faw_launch<D, NCW, BN, ST, PVSPLIT> launches one configuration (after faw_accepts) with the parameters of
 * faw_params. */
#ifndef MX_CUDA_FA_WGMMA_CUH
#define MX_CUDA_FA_WGMMA_CUH

#include <cuda.h>
#include <math.h>

#include "cuda_common.h"

namespace {

struct FawP {
    int n_q, H, G, q_pos0, n_slots, window, causal, kv_lo, kv_hi;
    float scale_log2;
    long long q_stride, o_stride;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ void faw_row_range(const FawP &p, int qpos, int &lo, int &hi) {
    hi = p.causal && qpos < p.kv_hi ? qpos : p.kv_hi;
    lo = p.kv_lo;
    if (p.window > 0 && qpos - p.window + 1 > lo) lo = qpos - p.window + 1;
}

/* the last position of the tile that starts at p0: BN positions, the range's end, or the ring's wrap */
template <int BN> __device__ __forceinline__ int faw_tile_end(int p0, int hi_blk, int n_slots) {
    int e = min(p0 + BN - 1, hi_blk);
    return min(e, (p0 / n_slots + 1) * n_slots - 1);
}

__device__ __forceinline__ uint32_t faw_smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* ---- mbarriers and the bulk tensor copy */
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, "
                     "1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int x, int y,
                                            uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
        "%3}], [%4];\n" ::"r"(dst),
        "l"((uint64_t)map), "r"(x), "r"(y), "r"(bar)
        : "memory");
}

/* ---- wgmma */
__device__ __forceinline__ void wg_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* keeps the compiler from moving accesses of accumulator registers across wgmma issue and wait points */
template <int N> __device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte offsets (>> 4) */
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | (uint64_t)((lbo >> 4) & 0x3FFF) << 16 |
           (uint64_t)((sbo >> 4) & 0x3FFF) << 32 | 1ull << 62;
}

/* D[64 x 128] (+)= A[64 x 16] (shared, K-major) * B[16 x 128] (shared, K-major); scale_d 0: D = A*B */
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                   "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
                   "+f"(d[63])
                 : "l"(da), "l"(db), "r"(scale_d));
}

/* D[64 x 64] += A[64 x 16] (registers) * B[16 x 64] (shared, MN-major: transposed) */
__device__ __forceinline__ void wgmma_rs_n64_t(float (&d)[32], const uint32_t (&a)[4], uint64_t db,
                                               int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
}

/* D[64 x 128] += A[64 x 16] (registers) * B[16 x 128] (shared, MN-major: transposed) */
__device__ __forceinline__ void wgmma_rs_n128_t(float (&d)[64], const uint32_t (&a)[4], uint64_t db,
                                                int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                   "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
                   "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
}

template <int N>
__device__ __forceinline__ void wgmma_rs_t(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db,
                                           int scale_d) {
    if constexpr (N == 64)
        wgmma_rs_n64_t(d, a, db, scale_d);
    else
        wgmma_rs_n128_t(d, a, db, scale_d);
}

__device__ __forceinline__ float faw_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ uint32_t faw_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

#endif /* __CUDA_ARCH_FEAT_SM90_ALL */

/* D: head dim; NCW consumer warpgroups (BM = 64 * NCW query rows); BN key positions per tile; ST stages;
 * PVSPLIT: O += PV as two n64 wgmma per k-step (D 128) instead of one n128. */
template <int D, int NCW, int BN, int ST, bool PVSPLIT>
__global__ void __launch_bounds__(128 * (NCW + 1), 1)
    k_fa_wgmma(FawP p, const __grid_constant__ CUtensorMap tmK, const __grid_constant__ CUtensorMap tmV,
               const float *__restrict__ q, float *__restrict__ out, float *__restrict__ lse,
               const int *__restrict__ dyn) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(D == 64 || D == 128, "D");
    static_assert(BN == 128, "BN (the S chain is m64n128k16)");
    constexpr int BM = 64 * NCW, DH = D / 64; /* DH: 128-byte column halves of a row */
    constexpr uint32_t QW_BYTES = 64 * D * 2, T_BYTES = BN * D * 2, TH_BYTES = BN * 128;
    constexpr int P_REGS = NCW == 2 ? 40 : 32, C_REGS = NCW == 2 ? 232 : 160;
    if (dyn) p.q_pos0 = dyn[0], p.kv_lo = dyn[1], p.kv_hi = dyn[2];
    extern __shared__ uint8_t faw_smem[];
    /* [Q: NCW x DH x 64 rows x 128 B][K: ST x DH x BN rows x 128 B][V: likewise][mbarriers], 1024-aligned */
    const uint32_t base = (faw_smem_u32(faw_smem) + 1023u) & ~1023u;
    const uint32_t sQ = base, sK = sQ + NCW * QW_BYTES, sV = sK + ST * T_BYTES, sBar = sV + ST * T_BYTES;
    auto fullK = [&](int s) { return sBar + 8u * s; };
    auto fullV = [&](int s) { return sBar + 8u * (ST + s); };
    auto emptyK = [&](int s) { return sBar + 8u * (2 * ST + s); };
    auto emptyV = [&](int s) { return sBar + 8u * (3 * ST + s); };

    const int h = blockIdx.x, kvh = h / (p.H / p.G);
    const int m0 = (gridDim.y - 1 - blockIdx.y) * BM; /* heaviest (latest) rows first */
    const int last = min(m0 + BM, p.n_q) - 1;
    const int n_slots = p.n_slots;
    int lo_blk, hi_blk, tmp;
    faw_row_range(p, p.q_pos0 + m0, lo_blk, tmp);
    faw_row_range(p, p.q_pos0 + last, tmp, hi_blk);

    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; s++) {
            mbar_init(fullK(s), 1), mbar_init(fullV(s), 1);
            mbar_init(emptyK(s), 4 * NCW), mbar_init(emptyV(s), 4 * NCW); /* one arrival per consumer warp */
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    const int wg = threadIdx.x >> 7;
    if (wg == 0) { /* producer */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(P_REGS));
        if (threadIdx.x == 0) {
            asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&tmK) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&tmV) : "memory");
            int t = 0;
            for (int p0 = lo_blk; p0 <= hi_blk; t++) {
                const int end = faw_tile_end<BN>(p0, hi_blk, n_slots);
                const int s = t % ST;
                const uint32_t ph = (uint32_t)(t / ST) & 1u;
                const int slot = p0 % n_slots;
                mbar_wait(emptyK(s), ph ^ 1u);
                mbar_expect_tx(fullK(s), T_BYTES);
#pragma unroll
                for (int hd = 0; hd < DH; hd++)
                    tma_load_2d(sK + s * T_BYTES + hd * TH_BYTES, &tmK, kvh * D + hd * 64, slot, fullK(s));
                mbar_wait(emptyV(s), ph ^ 1u);
                mbar_expect_tx(fullV(s), T_BYTES);
#pragma unroll
                for (int hd = 0; hd < DH; hd++)
                    tma_load_2d(sV + s * T_BYTES + hd * TH_BYTES, &tmV, kvh * D + hd * 64, slot, fullV(s));
                p0 = end + 1;
            }
        }
    } else { /* consumers */
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(C_REGS));
        const int w = wg - 1, tid = threadIdx.x & 127, wi = tid >> 5, lane = tid & 31;
        const int r0 = m0 + 64 * w; /* this warpgroup's first row */
        const uint32_t sQw = sQ + w * QW_BYTES;
        /* Q rows r0 .. r0 + 63, fp32 -> bf16; chunk c (16 B) of row r lands at chunk (c ^ (r & 7)) of its
         * half */
        for (int idx = tid; idx < 64 * D / 8; idx += 128) {
            const int r = idx / (D / 8), c = idx % (D / 8);
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
            if (r0 + r < p.n_q) {
                const float *src = q + (size_t)(r0 + r) * p.q_stride + (size_t)h * D + c * 8;
                a = *(const float4 *)src;
                b = *(const float4 *)(src + 4);
            }
            const uint32_t dst = sQw + (c >> 3) * 8192 + r * 128 + (((c & 7) ^ (r & 7)) << 4);
            asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(faw_pack(a.x, a.y)),
                         "r"(faw_pack(a.z, a.w)), "r"(faw_pack(b.x, b.y)), "r"(faw_pack(b.z, b.w))
                         : "memory");
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* generic stores -> wgmma reads */
        asm volatile("bar.sync %0, 128;\n" ::"r"(w + 1) : "memory");

        /* this thread's rows (accumulator layout: warp wi holds rows 16 wi .. 16 wi + 15 of the 64) */
        const int ra = r0 + 16 * wi + (lane >> 2), rb = ra + 8;
        int lo_a, hi_a, lo_b, hi_b, wg_min_hi, wg_max_lo;
        faw_row_range(p, p.q_pos0 + ra, lo_a, hi_a);
        faw_row_range(p, p.q_pos0 + rb, lo_b, hi_b);
        faw_row_range(p, p.q_pos0 + r0, tmp, wg_min_hi);
        faw_row_range(p, p.q_pos0 + max(r0, min(r0 + 63, p.n_q - 1)), wg_max_lo, tmp);
        const float sl2 = p.scale_log2;
        const uint64_t dQ = wg_desc(sQw, 16, 1024);

        float o[D / 2], s[BN / 2];
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] = 0.0f;
        float mr0 = -INFINITY, mr1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

        /* S = Q Kᵀ of stage st: k-step kk reads column half kk / 4 at byte 32 (kk % 4) of the 128-byte row */
        auto s_chain = [&](int st) {
            const uint64_t dK = wg_desc(sK + st * T_BYTES, 16, 1024);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                wgmma_ss_n128(s, dQ + (uint64_t)((kk >> 2) * (8192 >> 4) + (kk & 3) * 2),
                              dK + (uint64_t)((kk >> 2) * (TH_BYTES >> 4) + (kk & 3) * 2), kk > 0);
        };
        /* O += P V of stage st: k-step kk is key rows 16 kk .. 16 kk + 15 (2048 B); the d halves TH_BYTES
         * apart */
        auto pv_chain = [&](int st) {
            const uint64_t dV = wg_desc(sV + st * T_BYTES, TH_BYTES, 1024);
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                if constexpr (PVSPLIT && D == 128) {
#pragma unroll
                    for (int hd = 0; hd < 2; hd++)
                        wgmma_rs_t<64>(*reinterpret_cast<float(*)[32]>(&o[32 * hd]), pa[kk],
                                       dV + (uint64_t)(kk * 128 + hd * (TH_BYTES >> 4)), 1);
                } else {
                    wgmma_rs_t<D>(o, pa[kk], dV + (uint64_t)(kk * 128), 1);
                }
            }
        };
        /* mask (boundary tiles), then the online softmax: s becomes P (fp32), al the rescale of O */
        auto softmax = [&](int p0, int end, float &al0, float &al1) {
            if (p0 < wg_max_lo || p0 + BN - 1 > min(end, wg_min_hi)) {
                const int c0 = p0 + 2 * (lane & 3), ha = min(hi_a, end), hb = min(hi_b, end);
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int pos = c0 + 8 * j + e;
                        if (!(pos >= lo_a && pos <= ha)) s[4 * j + e] = -INFINITY;
                        if (!(pos >= lo_b && pos <= hb)) s[4 * j + 2 + e] = -INFINITY;
                    }
            }
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
                mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float mn0 = fmaxf(mr0, mx0 * sl2), mn1 = fmaxf(mr1, mx1 * sl2); /* log2 units */
            const float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
            al0 = faw_ex2(mr0 - mu0), al1 = faw_ex2(mr1 - mu1);
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                s[4 * j] = faw_ex2(fmaf(s[4 * j], sl2, -mu0));
                s[4 * j + 1] = faw_ex2(fmaf(s[4 * j + 1], sl2, -mu0));
                s[4 * j + 2] = faw_ex2(fmaf(s[4 * j + 2], sl2, -mu1));
                s[4 * j + 3] = faw_ex2(fmaf(s[4 * j + 3], sl2, -mu1));
                sum0 += s[4 * j] + s[4 * j + 1];
                sum1 += s[4 * j + 2] + s[4 * j + 3];
            }
            l0 = l0 * al0 + sum0, l1 = l1 * al1 + sum1;
            mr0 = mn0, mr1 = mn1;
        };
        auto rescale_o = [&](float a0, float a1) {
            reg_fence(o);
#pragma unroll
            for (int j = 0; j < D / 8; j++) {
                o[4 * j] *= a0, o[4 * j + 1] *= a0;
                o[4 * j + 2] *= a1, o[4 * j + 3] *= a1;
            }
        };
        /* P (accumulator layout) -> bf16 A fragments: k-step kk is columns 16 kk .. 16 kk + 15 */
        auto to_pa = [&]() {
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                pa[kk][0] = faw_pack(s[8 * kk], s[8 * kk + 1]);
                pa[kk][1] = faw_pack(s[8 * kk + 2], s[8 * kk + 3]);
                pa[kk][2] = faw_pack(s[8 * kk + 4], s[8 * kk + 5]);
                pa[kk][3] = faw_pack(s[8 * kk + 6], s[8 * kk + 7]);
            }
        };

        int p0 = lo_blk;
        if (p0 <= hi_blk) {
            int end = faw_tile_end<BN>(p0, hi_blk, n_slots);
            float al0, al1;
            mbar_wait(fullK(0), 0);
            wg_fence();
            s_chain(0);
            wg_commit();
            wg_wait<0>();
            reg_fence(s);
            if (lane == 0) mbar_arrive(emptyK(0));
            softmax(p0, end, al0, al1);
            to_pa();
            int t = 1, prev = 0;
            /* O is rescaled (by the previous softmax's factors) before the PV chain is issued, as only the
             * conversion of P then waits for that chain */
            for (p0 = end + 1; p0 <= hi_blk; p0 = end + 1, t++) {
                end = faw_tile_end<BN>(p0, hi_blk, n_slots);
                const int st = t % ST;
                mbar_wait(fullK(st), (uint32_t)(t / ST) & 1u);
                wg_fence();
                s_chain(st); /* S of tile t ... */
                wg_commit();
                rescale_o(al0, al1);
                mbar_wait(fullV(prev), (uint32_t)((t - 1) / ST) & 1u);
                wg_fence();
                pv_chain(prev); /* ... then PV of tile t - 1, which runs during the softmax below */
                wg_commit();
                wg_wait<1>();
                reg_fence(s);
                if (lane == 0) mbar_arrive(emptyK(st));
                softmax(p0, end, al0, al1);
                /* ptxas hoists the wait above the softmax (it sees no dependency; the overlap would be lost);
                 * a branch on the row sums, never taken (l >= 0 is no NaN), keeps it below */
                if ((__float_as_uint(l0) & __float_as_uint(l1)) == 0xFFFFFFFFu)
                    asm volatile("nanosleep.u32 1;\n" ::: "memory");
                wg_wait<0>();
                reg_fence(o);
                if (lane == 0) mbar_arrive(emptyV(prev));
                to_pa();
                prev = st;
            }
            rescale_o(al0, al1);
            mbar_wait(fullV(prev), (uint32_t)((t - 1) / ST) & 1u);
            wg_fence();
            pv_chain(prev);
            wg_commit();
            wg_wait<0>();
            reg_fence(o);
        }
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int row = hf ? rb : ra;
            if (row >= p.n_q) continue;
            const float l = hf ? l1 : l0, m = hf ? mr1 : mr0, inv = l > 0.0f ? 1.0f / l : 0.0f;
            float *dst = out + (size_t)row * p.o_stride + (size_t)h * D + 2 * (lane & 3);
#pragma unroll
            for (int j = 0; j < D / 8; j++)
                *(float2 *)(dst + 8 * j) = make_float2(o[4 * j + 2 * hf] * inv, o[4 * j + 2 * hf + 1] * inv);
            if (lse && (lane & 3) == 0)
                lse[(size_t)row * p.H + h] = l > 0.0f ? (m + log2f(l)) * 0.6931471805599453f : -INFINITY;
        }
    }
#endif
}

} // namespace

/* ------------------------------------------------------------------ host side */

typedef CUresult (*faw_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                                  CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                  CUtensorMapFloatOOBfill);

/* cuTensorMapEncodeTiled through the runtime (no link against the driver library); NULL when unavailable */
static faw_encode_fn faw_encoder(void) {
    static faw_encode_fn fn = NULL;
    static bool tried = false;
    if (!tried) {
        tried = true;
        void *f = NULL;
        cudaDriverEntryPointQueryResult qr;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &qr) ==
                cudaSuccess &&
            qr == cudaDriverEntryPointSuccess)
            fn = (faw_encode_fn)f;
        else
            (void)cudaGetLastError();
    }
    return fn;
}

/* whether device dev is of compute capability 9.0 (the sm_90a code runs there only); asked once per device */
static bool faw_sm90(int dev) {
    static signed char known[64];
    if (dev < 0 || dev >= 64) return false;
    if (!known[dev]) {
        int major = 0, minor = 0;
        bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess;
        known[dev] = ok && major == 9 && minor == 0 ? 1 : -1;
    }
    return known[dev] > 0;
}

/* K or V as a 2-D tensor of n_slots rows of G * D bf16 (row stride in elements), boxes of 64 x BN */
static bool faw_map(CUtensorMap *m, const void *base, int G, int D, int n_slots, size_t stride, int BN) {
    cuuint64_t dim[2] = {(cuuint64_t)G * D, (cuuint64_t)n_slots};
    cuuint64_t str[1] = {(cuuint64_t)stride * 2};
    cuuint32_t box[2] = {64, (cuuint32_t)BN};
    cuuint32_t es[2] = {1, 1};
    return faw_encoder()(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)base, dim, str, box, es,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int D, int NCW, int BN, int ST, bool PVSPLIT>
static bool faw_launch(mx_cuda_ctx *c, const mx_attn_spec *sp, const FawP &p, const float *q, const void *k,
                       const void *v, float *out, float *lse, const int *dyn) {
    CUtensorMap mk, mv;
    if (!faw_map(&mk, k, sp->n_kv_head, D, sp->n_slots, sp->k_stride, BN) ||
        !faw_map(&mv, v, sp->n_kv_head, D, sp->n_slots, sp->v_stride, BN))
        return false;
    constexpr int BM = 64 * NCW;
    const size_t smem = 1024 + (size_t)NCW * 64 * D * 2 + 2 * (size_t)ST * BN * D * 2 + 32 * ST;
    static unsigned long long attr_set = 0; /* per device: the attribute belongs to the kernel in a context */
    if (c->device >= 64 || !(attr_set >> c->device & 1)) {
        CU_CHECK(cudaFuncSetAttribute(k_fa_wgmma<D, NCW, BN, ST, PVSPLIT>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        if (c->device < 64) attr_set |= 1ull << c->device;
    }
    dim3 grid(p.H, (p.n_q + BM - 1) / BM);
    k_fa_wgmma<D, NCW, BN, ST, PVSPLIT>
        <<<grid, 128 * (NCW + 1), smem, c->stream>>>(p, mk, mv, q, out, lse, dyn);
    CU_LAUNCHED();
    return true;
}

/* Whether k_fa_wgmma takes this call: D = Dv = 64 or 128, scale > 0, 16-byte aligned K/V rows and Q, a device of
 * compute capability 9.0 and the driver's tensor-map encoder. */
static bool faw_accepts(mx_cuda_ctx *c, const mx_attn_spec *sp, const float *q, const void *k, const void *v,
                        const float *out) {
    const int D = sp->head_dim;
    if ((D != 64 && D != 128) || sp->v_dim != D || !(sp->scale > 0.0f) || sp->n_q <= 0 || sp->n_slots <= 0)
        return false;
    if (sp->n_kv_head <= 0 || sp->n_head % sp->n_kv_head) return false;
    if (sp->k_stride % 8 || sp->v_stride % 8 || ((uintptr_t)k & 15) || ((uintptr_t)v & 15)) return false;
    if ((size_t)sp->n_kv_head * D > sp->k_stride || (size_t)sp->n_kv_head * D > sp->v_stride) return false;
    if (sp->q_stride % 4 || ((uintptr_t)q & 15) || sp->o_stride % 2 || ((uintptr_t)out & 7)) return false;
    return faw_sm90(c->device) && faw_encoder();
}

static FawP faw_params(const mx_attn_spec *sp) {
    FawP p;
    p.n_q = sp->n_q, p.H = sp->n_head, p.G = sp->n_kv_head, p.q_pos0 = sp->q_pos0, p.n_slots = sp->n_slots;
    p.window = sp->window, p.causal = sp->causal, p.kv_lo = sp->kv_lo, p.kv_hi = sp->kv_hi;
    p.scale_log2 = sp->scale * 1.4426950408889634f;
    p.q_stride = (long long)sp->q_stride, p.o_stride = (long long)sp->o_stride;
    return p;
}

#endif
