/* cuda_train.h: internal to src/backend/cuda. The training ops (backend_train.h) of the CUDA backend:
 * cuda_train.cu holds the table and every op but attention and the block ops, cuda_train_attn.cu the
 * attention kernels, cuda_train_blocks.cu the ops of the MLA, MKA and MoE blocks. */
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

/* The slot in a context's training state (cuda_train.cu) where cuda_train_blocks.cu keeps its scratch (NULL
 * until it is first used); mx_cuda_train_free hands that scratch to mx_cuda_train_blocks_free. */
void **mx_cuda_train_blocks(mx_backend *be);
void mx_cuda_train_blocks_free(void *scratch);

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

/* cuda_train_blocks.cu: the ops of the MLA, MKA and MoE blocks (backend_train.h says what each computes). */
void mx_cuda_train_copy_cols(mx_backend *be, float *dst, size_t ds, const float *src, size_t ss, int w,
                             long rows, bool accumulate);
void mx_cuda_train_tanh_fwd(mx_backend *be, float *out, const float *x, long n);
void mx_cuda_train_tanh_bwd(mx_backend *be, float *dx, const float *dout, const float *y, long n);
void mx_cuda_train_softmax_fwd(mx_backend *be, float *x, int N, int E);
void mx_cuda_train_softmax_bwd(mx_backend *be, float *dp, const float *p, int N, int E);
void mx_cuda_train_cummean_fwd(mx_backend *be, float *out, const float *x, int B, int T, int C);
void mx_cuda_train_cummean_bwd(mx_backend *be, float *dx, const float *dout, int B, int T, int C);
void mx_cuda_train_mix3_fwd(mx_backend *be, float *out, const float *r, const float *a, const float *b,
                            const float *bias, int N, int H, int G, int D);
void mx_cuda_train_mix3_bwd(mx_backend *be, float *da, float *db, float *dr, float *dbias, const float *dout,
                            const float *r, const float *a, const float *b, const float *bias, int N, int H,
                            int G, int D);
void mx_cuda_train_topk(mx_backend *be, const float *p, int N, int E, int k, bool norm, int *ids, float *w);
void mx_cuda_train_gather_rows(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n);
void mx_cuda_train_combine_rows(mx_backend *be, float *out, const float *src, const float *w, const int *idx,
                                int N, int k, int n);
void mx_cuda_train_combine_rows_bwd(mx_backend *be, float *dsrc, float *dw, const float *dout,
                                    const float *src, const float *w, const int *order, int N, int k, int n);
void mx_cuda_train_router_grad(mx_backend *be, float *dp, const float *dw, const float *p, const float *w,
                               const int *ids, const float *aux, int N, int E, int k, bool norm);
void mx_cuda_train_colsum(mx_backend *be, double *out, const float *x, int N, int E);

/* ---- helpers shared by the training .cu files ---- */

/* The stream every training op runs on: the backend's. */
static inline cudaStream_t stream_of(mx_backend *be) {
    return cu_ctx(be)->stream;
}

/* Blocks of `threads` for a grid-stride loop over n elements (capped; 0 when n is 0: the caller guards). */
static inline unsigned blocks_for(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535u * 16u ? b : 65535u * 16u);
}

/* A device (grow) or host (grow_host) scratch buffer of at least n elements: p when it holds them, else freed
 * and allocated anew (*cap updated; the old contents are lost). */
template <typename T> static T *grow(T *p, size_t *cap, size_t n) {
    if (n <= *cap) return p;
    if (p) CU_CHECK(cudaFree(p));
    CU_CHECK(cudaMalloc((void **)&p, sizeof(T) * n));
    *cap = n;
    return p;
}

template <typename T> static T *grow_host(T *p, size_t *cap, size_t n) {
    if (n <= *cap) return p;
    free(p);
    p = (T *)malloc(sizeof(T) * n);
    if (!p) mx_cuda_fatal("malloc", "out of host memory", __FILE__, __LINE__);
    *cap = n;
    return p;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

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
