/* cuda_elementwise.cu: norms, RoPE, SwiGLU, GELU, residual adds, biases and KV-store writes on the GPU.
 * fp32 in and out (bf16 only in the KV store); reductions in fp32 through warp shuffles. Matches the CPU twins
 * in src/backend/cpu (rope computes inv_freq exactly as cpu_rope.c does, in double, rounded to fp32). */
#include "cuda_common.h"

static inline int blocks_for(size_t n, int per) {
    return (int)((n + per - 1) / per);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over a block of up to 1024 threads; every thread gets the result. sh: 32 floats. */
__device__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(t);
}

__global__ void k_rmsnorm(const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ out,
                          int C, float eps) {
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * C;
    float *o = out + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = xr[i] * r * w[i];
}

__global__ void k_layernorm(const float *__restrict__ x, const float *__restrict__ w,
                            const float *__restrict__ b, float *__restrict__ out, int C, float eps) {
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * C;
    float *o = out + (size_t)blockIdx.x * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    float mean = block_sum(s, sh) / C;
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    float r = 1.0f / sqrtf(block_sum(v, sh) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = (xr[i] - mean) * r * w[i] + (b ? b[i] : 0.0f);
}

static int norm_threads(int C) {
    int t = (C / 4 + 31) / 32 * 32;
    return t < 64 ? 64 : t > 1024 ? 1024 : t;
}

void mx_cuda_rmsnorm_k(mx_cuda_ctx *c, const float *x, const float *w, float *out, int T, int C, float eps) {
    if (T <= 0) return;
    k_rmsnorm<<<T, norm_threads(C), 0, c->stream>>>(x, w, out, C, eps);
    CU_LAUNCHED();
}

void mx_cuda_layernorm_k(mx_cuda_ctx *c, const float *x, const float *w, const float *b, float *out, int T,
                         int C, float eps) {
    if (T <= 0) return;
    k_layernorm<<<T, norm_threads(C), 0, c->stream>>>(x, w, b, out, C, eps);
    CU_LAUNCHED();
}

/* One thread per (token, head, pair). pos0 from dyn[0] when dyn is given (graph replays). */
__global__ void k_rope(float *__restrict__ x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                       float theta, int adjacent, const int *__restrict__ dyn) {
    if (dyn) pos0 = dyn[0];
    int half = rope_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)T * n_head * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    size_t th = idx / half; /* t * n_head + h */
    int t = (int)(th / n_head);
    float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / rope_dim));
    float ang = (float)(pos0 + t) * inv_freq;
    float cs, sn;
    sincosf(ang, &sn, &cs);
    float *v = x + th * head_dim;
    int a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + half;
    float x0 = v[a], x1 = v[b];
    v[a] = x0 * cs - x1 * sn;
    v[b] = x0 * sn + x1 * cs;
}

void mx_cuda_rope_k(mx_cuda_ctx *c, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                    float theta, mx_rope_mode mode, const int *dyn) {
    size_t total = (size_t)T * n_head * (rope_dim / 2);
    if (!total) return;
    k_rope<<<blocks_for(total, 256), 256, 0, c->stream>>>(x, T, n_head, head_dim, rope_dim, pos0, theta,
                                                          mode == MX_ROPE_ADJACENT, dyn);
    CU_LAUNCHED();
}

__global__ void k_swiglu(float *__restrict__ g, const float *__restrict__ u, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}
__global__ void k_gelu(float *__restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}
__global__ void k_add(float *__restrict__ y, const float *__restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}
__global__ void k_add_bias(float *__restrict__ y, const float *__restrict__ b, size_t total, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] += b[i % n];
}

void mx_cuda_swiglu_k(mx_cuda_ctx *c, float *g, const float *u, int n) {
    if (n <= 0) return;
    k_swiglu<<<blocks_for(n, 256), 256, 0, c->stream>>>(g, u, n);
    CU_LAUNCHED();
}
void mx_cuda_gelu_k(mx_cuda_ctx *c, float *x, int n) {
    if (n <= 0) return;
    k_gelu<<<blocks_for(n, 256), 256, 0, c->stream>>>(x, n);
    CU_LAUNCHED();
}
void mx_cuda_add_k(mx_cuda_ctx *c, float *y, const float *x, int n) {
    if (n <= 0) return;
    k_add<<<blocks_for(n, 256), 256, 0, c->stream>>>(y, x, n);
    CU_LAUNCHED();
}
void mx_cuda_add_bias_k(mx_cuda_ctx *c, float *y, const float *b, int T, int n) {
    size_t total = (size_t)T * n;
    if (!total) return;
    k_add_bias<<<blocks_for(total, 256), 256, 0, c->stream>>>(y, b, total, n);
    CU_LAUNCHED();
}

__global__ void k_kv_write(__nv_bfloat16 *__restrict__ store, const float *__restrict__ src, int T, int n,
                           int pos0, int n_slots, const int *__restrict__ dyn) {
    if (dyn) pos0 = dyn[0];
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * n) return;
    int t = (int)(idx / n), i = (int)(idx % n);
    store[(size_t)((pos0 + t) % n_slots) * n + i] = __float2bfloat16_rn(src[idx]);
}

void mx_cuda_kv_write_k(mx_cuda_ctx *c, void *store, const float *src, int T, int n, int pos0, int n_slots,
                        const int *dyn) {
    size_t total = (size_t)T * n;
    if (!total) return;
    k_kv_write<<<blocks_for(total, 256), 256, 0, c->stream>>>((__nv_bfloat16 *)store, src, T, n, pos0,
                                                              n_slots, dyn);
    CU_LAUNCHED();
}
