/* cuda_attn_common.cuh: internal to src/backend/cuda (and bench/cuda/fa_variants.cu, which times the prefill
 * kernels' tile configurations against each other). The attention kernels' parameter block AttnP, the visible
 * key range of a query row, and the mma.sync / ldmatrix / cp.async helpers of the tensor-core prefill kernels.
 * Included by cuda_attention.cu and cuda_fa2.cuh. */
#ifndef MX_CUDA_ATTN_COMMON_CUH
#define MX_CUDA_ATTN_COMMON_CUH

#include <math.h>

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

/* ---- tensor-core prefill helpers: shared memory addresses, ldmatrix, mma.sync m16n8k16, cp.async */

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

#endif
