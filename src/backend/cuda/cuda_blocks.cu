/* cuda_blocks.cu: the ops the MoE, MLA and MKA blocks add to the contract (backend.h; CPU twins in
 * src/backend/cpu/cpu_blocks.c): fill, copy3d, matmul_t, kv_read, gather_rows, scatter_add_rows, tanh_, softmax_rows, scale_add_rows, prefix_mean, lse_merge. fp32 throughout; the
 * KV store is bf16. Index and weight arrays that the contract passes in host memory reach these kernels as device
 * arrays (cuda_graph.cu stages them). */
#include <math.h>
#include <string.h>

#include "cuda_common.h"

static inline unsigned nblk(size_t n, int per) {
    return (unsigned)((n + per - 1) / per);
}

__global__ void k_fill(float *__restrict__ x, size_t n, float v) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}
void mx_cuda_fill_k(mx_cuda_ctx *c, float *x, size_t n, float v) {
    if (!n) return;
    k_fill<<<nblk(n, 256), 256, 0, c->stream>>>(x, n, v);
    CU_LAUNCHED();
}

__global__ void k_copy3d(float *__restrict__ dst, const float *__restrict__ src, int n0, int n1, int n2,
                         size_t ds1, size_t ss1, size_t ds2, size_t ss2) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, tot = (size_t)n0 * n1 * n2;
    if (i >= tot) return;
    int i0 = (int)(i % n0);
    size_t r = i / n0;
    int i1 = (int)(r % n1), i2 = (int)(r / n1);
    dst[i2 * ds2 + i1 * ds1 + i0] = src[i2 * ss2 + i1 * ss1 + i0];
}
void mx_cuda_copy3d_k(mx_cuda_ctx *c, float *dst, const float *src, int n0, int n1, int n2, size_t ds1,
                      size_t ss1, size_t ds2, size_t ss2) {
    size_t tot = (size_t)n0 * n1 * n2;
    if (!tot) return;
    k_copy3d<<<nblk(tot, 256), 256, 0, c->stream>>>(dst, src, n0, n1, n2, ds1, ss1, ds2, ss2);
    CU_LAUNCHED();
}

__global__ void k_kv_read(const __nv_bfloat16 *__restrict__ store, float *__restrict__ dst, int T, int n,
                          int pos0, int n_slots, const int *__restrict__ dyn) {
    if (dyn) pos0 = dyn[0];
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * n) return;
    int t = (int)(i / n), j = (int)(i % n);
    dst[i] = __bfloat162float(store[(size_t)((pos0 + t) % n_slots) * n + j]);
}
void mx_cuda_kv_read_k(mx_cuda_ctx *c, const void *store, float *dst, int T, int n, int pos0, int n_slots,
                       const int *dyn) {
    size_t tot = (size_t)T * n;
    if (!tot) return;
    k_kv_read<<<nblk(tot, 256), 256, 0, c->stream>>>((const __nv_bfloat16 *)store, dst, T, n, pos0, n_slots,
                                                     dyn);
    CU_LAUNCHED();
}

__global__ void k_gather_rows(float *__restrict__ dst, const float *__restrict__ src,
                              const int *__restrict__ idx, int rows, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    int r = (int)(i / n), j = (int)(i % n);
    dst[i] = src[(size_t)idx[r] * n + j];
}
void mx_cuda_gather_rows_k(mx_cuda_ctx *c, float *dst, const float *src, const int *d_idx, int rows, int n) {
    size_t tot = (size_t)rows * n;
    if (!tot) return;
    k_gather_rows<<<nblk(tot, 256), 256, 0, c->stream>>>(dst, src, d_idx, rows, n);
    CU_LAUNCHED();
}

/* distinct (no index repeats, the MoE case): one thread per element, every row at once. Otherwise one thread per
 * column, rows in order (so that a repeated index adds in the CPU's order). w: floats stored in the int array's
 * bits. */
__global__ void k_scatter_add_rows(float *__restrict__ dst, const float *__restrict__ src,
                                   const int *__restrict__ idx, const float *__restrict__ w, int rows,
                                   int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    for (int r = 0; r < rows; r++) dst[(size_t)idx[r] * n + j] += w[r] * src[(size_t)r * n + j];
}
__global__ void k_scatter_add_distinct(float *__restrict__ dst, const float *__restrict__ src,
                                       const int *__restrict__ idx, const float *__restrict__ w, int rows,
                                       int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    int r = (int)(i / n), j = (int)(i % n);
    dst[(size_t)idx[r] * n + j] += w[r] * src[i];
}
void mx_cuda_scatter_add_rows_k(mx_cuda_ctx *c, float *dst, const float *src, const int *d_idx,
                                const float *d_w, int rows, int n, bool distinct) {
    if (rows <= 0 || n <= 0) return;
    if (distinct)
        k_scatter_add_distinct<<<nblk((size_t)rows * n, 256), 256, 0, c->stream>>>(dst, src, d_idx, d_w, rows,
                                                                                   n);
    else
        k_scatter_add_rows<<<nblk((size_t)n, 128), 128, 0, c->stream>>>(dst, src, d_idx, d_w, rows, n);
    CU_LAUNCHED();
}

__global__ void k_tanh(float *__restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = tanhf(x[i]);
}
void mx_cuda_tanh_k(mx_cuda_ctx *c, float *x, int n) {
    if (n <= 0) return;
    k_tanh<<<nblk((size_t)n, 256), 256, 0, c->stream>>>(x, n);
    CU_LAUNCHED();
}

/* One block per row: max, then the sum of exp in double (as the CPU), then scale. */
__global__ void k_softmax_rows(float *__restrict__ x, int n) {
    __shared__ float smx[32];
    __shared__ double ssum[32];
    float *r = x + (size_t)blockIdx.x * n;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, r[i]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) smx[wid] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, smx[w]);
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float e = expf(r[i] - mx);
        r[i] = e;
        s += e;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) ssum[wid] = s;
    __syncthreads();
    s = 0;
    for (int w = 0; w < nw; w++) s += ssum[w];
    float inv = (float)(1.0 / s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) r[i] *= inv;
}
void mx_cuda_softmax_rows_k(mx_cuda_ctx *c, float *x, int T, int n) {
    if (T <= 0 || n <= 0) return;
    int th = n >= 1024 ? 256 : n >= 128 ? 128 : 32;
    k_softmax_rows<<<T, th, 0, c->stream>>>(x, n);
    CU_LAUNCHED();
}

__global__ void k_scale_add_rows(float *__restrict__ y, const float *__restrict__ x, size_t x_stride,
                                 const float *__restrict__ w, size_t w_stride, int T, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * n) return;
    int t = (int)(i / n), j = (int)(i % n);
    y[i] += w[(size_t)t * w_stride] * x[(size_t)t * x_stride + j];
}
void mx_cuda_scale_add_rows_k(mx_cuda_ctx *c, float *y, const float *x, size_t x_stride, const float *w,
                              size_t w_stride, int T, int n) {
    size_t tot = (size_t)T * n;
    if (!tot) return;
    k_scale_add_rows<<<nblk(tot, 256), 256, 0, c->stream>>>(y, x, x_stride, w, w_stride, T, n);
    CU_LAUNCHED();
}

/* One thread per channel, tokens in order (the running sum is a chain). */
__global__ void k_prefix_mean(const float *__restrict__ x, int T, int C, float *__restrict__ sums, int pos0,
                              int n_slots, float *mean, const int *__restrict__ dyn) {
    if (dyn) pos0 = dyn[0];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C) return;
    float prev = pos0 > 0 ? sums[(size_t)((pos0 - 1) % n_slots) * C + i] : 0.0f;
    for (int t = 0; t < T; t++) {
        int p = pos0 + t;
        float cur = prev + x[(size_t)t * C + i];
        sums[(size_t)(p % n_slots) * C + i] = cur;
        mean[(size_t)t * C + i] = cur * (1.0f / (float)(p + 1));
        prev = cur;
    }
}
void mx_cuda_prefix_mean_k(mx_cuda_ctx *c, const float *x, int T, int C, float *sums, int pos0, int n_slots,
                           float *mean, const int *dyn) {
    if (T <= 0 || C <= 0) return;
    k_prefix_mean<<<nblk((size_t)C, 128), 128, 0, c->stream>>>(x, T, C, sums, pos0, n_slots, mean, dyn);
    CU_LAUNCHED();
}

/* y[T, n_in] = x[T, n_out] · W on a weight without a bf16 copy: W dequantized to fp32 scratch rows first. */
__global__ void k_matmul_t_f32(const float *__restrict__ Wf, const float *__restrict__ x,
                               float *__restrict__ y, int n_in, int n_out, int T) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * n_in) return;
    int t = (int)(i / n_in), j = (int)(i % n_in);
    float a = 0.0f;
    for (int o = 0; o < n_out; o++) a = fmaf(x[(size_t)t * n_out + o], Wf[(size_t)o * n_in + j], a);
    y[i] = a;
}
void mx_cuda_matmul_t_f32_k(mx_cuda_ctx *c, const float *Wf, const float *x, float *y, int n_in, int n_out,
                            int T) {
    size_t tot = (size_t)T * n_in;
    if (!tot) return;
    k_matmul_t_f32<<<nblk(tot, 256), 256, 0, c->stream>>>(Wf, x, y, n_in, n_out, T);
    CU_LAUNCHED();
}

/* lse_merge (Star Attention): one block per (row t, head h); every thread computes the weights of the R parts
 * (R is the number of ranks or 2: a few), then strides over the Dv outputs. Sums of exponentials in double, as
 * the CPU's. Part r: outputs at outs + r * ps, lse at lses + r * ps. */
__global__ void k_lse_merge(const float *__restrict__ outs, const float *__restrict__ lses, size_t ps, int R,
                            int H, int Dv, float *__restrict__ out, float *__restrict__ lse) {
    size_t th = blockIdx.x; /* t * H + h */
    float mx = -INFINITY;
    for (int r = 0; r < R; r++) mx = fmaxf(mx, lses[r * ps + th]);
    float *o = out + th * Dv;
    if (mx == -INFINITY) {
        for (int i = threadIdx.x; i < Dv; i += blockDim.x) o[i] = 0.0f;
        if (lse && threadIdx.x == 0) lse[th] = -INFINITY;
        return;
    }
    double sum = 0;
    for (int r = 0; r < R; r++) sum += exp((double)lses[r * ps + th] - mx);
    double l = mx + log(sum);
    for (int i = threadIdx.x; i < Dv; i += blockDim.x) {
        float acc = 0.0f;
        for (int r = 0; r < R; r++) {
            float lr = lses[r * ps + th];
            if (lr != -INFINITY) acc += (float)exp((double)lr - l) * outs[r * ps + th * Dv + i];
        }
        o[i] = acc;
    }
    if (lse && threadIdx.x == 0) lse[th] = (float)l;
}
void mx_cuda_lse_merge_k(mx_cuda_ctx *c, const float *outs, const float *lses, size_t part_stride, int R,
                         int T, int H, int Dv, float *out, float *lse) {
    if (T <= 0 || H <= 0) return;
    int th = Dv < 128 ? (Dv + 31) / 32 * 32 : 128;
    k_lse_merge<<<(unsigned)((size_t)T * H), th, 0, c->stream>>>(outs, lses, part_stride, R, H, Dv, out, lse);
    CU_LAUNCHED();
}
