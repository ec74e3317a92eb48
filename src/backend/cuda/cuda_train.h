/* cuda_train.h: internal to src/backend/cuda. The training ops (backend_train.h) of the CUDA backend:
 * cuda_train.cu holds the table and every op but attention, cuda_train_attn.cu the attention kernels. */
#ifndef MX_CUDA_TRAIN_H
#define MX_CUDA_TRAIN_H

#include <cublas_v2.h>

#include "cuda_common.h"

extern "C" {
#include "../backend_train.h"
}

/* The table the backend installs in be->train. */
extern "C" const mx_train_ops mx_cuda_train_ops;
/* Frees the training state (cuBLAS handle, scratch) of a context; nothing when it never trained. */
void mx_cuda_train_free(mx_cuda_ctx *c);
/* The cuBLAS handle of the training ops (on the backend's stream) and the compute type of their GEMMs (fp32, or
 * bf16 tensor cores after set_bf16). */
cublasHandle_t mx_cuda_train_blas(mx_backend *be, cublasComputeType_t *compute);

/* Whether the training ops multiply in bf16 (set_bf16). */
bool mx_cuda_train_bf16(mx_backend *be);
/* dst[0..n) = bf16(src[0..n)) on stream st, rounded to nearest even. */
void mx_cuda_to_bf16(cudaStream_t st, __nv_bfloat16 *dst, const float *src, size_t n);

/* cuda_train_flash.cu: the fused bf16 attention kernels. Each returns false, launching nothing, for a shape it
 * does not take (head dims other than 64 or 128, or, forward, a device without k_fa_wgmma); delta (B, T, H) is
 * rowsum(dout ∘ out). */
bool mx_cuda_train_flash_fwd(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse,
                             const float *q, const float *k, const float *v);
bool mx_cuda_train_flash_bwd(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k, const float *v,
                             const float *lse, const float *delta);

void mx_cuda_train_attn_fwd(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse, const float *q,
                            const float *k, const float *v);
void mx_cuda_train_attn_bwd(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                            const float *dout, const float *q, const float *k, const float *v,
                            const float *out, const float *lse);

__device__ __forceinline__ float warp_sum_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The max and the sum of v over a block of up to 1024 threads (every thread gets the result; red is 32 floats of
 * shared memory; the block synchronizes inside). */
__device__ __forceinline__ float block_max_f(float v, float *red) {
    int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
    v = warp_max_f(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[wid] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return warp_max_f(v);
}
__device__ __forceinline__ float block_sum_f(float v, float *red) {
    int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
    v = warp_sum_f(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum_f(v);
}

#endif
