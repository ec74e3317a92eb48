/* cuda_moe.cu: mixture-of-experts on the GPU.
 * mx_cuda_moe_route: the contract's moe_route (softmax, top-k with ties to the lower expert, renormalization,
 *   scale; cpu_blocks.c's arithmetic, sums in double). For a few tokens (decode) the logits are copied to the
 *   host and routed there (one copy, no kernel: the shortest wait); for more, k_route on the device, with the
 *   ids and weights copied back.
 * mx_cuda_moe_ffn: the contract's moe_ffn (backend.h), one MoE layer's routed experts grouped on the device.
 *   For T tokens x (T, C) fp32 and router logits (T, E), k choices each (entries i = t * k + j, N = T * k):
 *   1. k_route       ids, w (N), as moe_route
 *   2. k_moe_hist    per block of 256 entries: each entry's rank among the block's earlier entries of its
 *                    expert, and the block's count per expert (nb = ceil(N / 256) blocks, hist nb x E)
 *   3. k_moe_scan    one block: counts (E), and hist turned into each block's first slot per expert; expert
 *                    e owns slots [off_e, off_e + n_e), off_e = sum of n_e' over e' < e, in entry order
 *   4. the counts (E ints) go to the host, the one wait of the call (GEMM sizes are host-side), while
 *   5. k_moe_gather  xs[slot] = bf16(x[t]) for every entry (N, C): the gather and the GEMM's bf16 rounding
 *   6. per local expert with n_e > 0, on up to MX_CUDA_MOE_STREAMS streams at once (default 4: one expert's GEMMs
 *      do not fill the GPU), through cuBLASLt plans shared by every token count (cuda_matmul.cu):
 *        g = xs_e · gate_eᵀ and u = xs_e · up_eᵀ (n_e, F) bf16; g = bf16(silu(g) ⊙ u); y_e = g · down_eᵀ fp32
 *      The weights are slices of the 3-D tensors' bf16 copies made at upload (gate and up are separate
 *      tensors, hence two GEMMs reading the same xs).
 *   7. k_moe_combine out[t] = sum over j of w[t, j] y[slot(t, j)], the local choices in ascending expert
 *                    order (the CPU's scatter order), one block per token: no accumulator fill, no atomics.
 * Scratch (device, grown on demand): xs N x C bf16, g and u N x F bf16, y N x C fp32, index arrays of N.
 * MX_CUDA_MOE=0: moe_ffn declines every call (moe.c's generic composition, for A/B). MX_CUDA_MOE_TIMING=1: CUDA events
 * around the phases of each call, medians on stderr when the backend is destroyed. */
#include <math.h>
#include <string.h>
#include <time.h>

#include "cuda_common.h"

enum {
    MOE_MAX_STREAMS = 8,
    MOE_MAX_K = 32,
    MOE_MIN_T = 9,
    MOE_BLK = 256,
    MOE_TIMED = 8192,
    MOE_HOST_ROUTE_T = 8
};

typedef struct {
    int n_streams;
    cudaStream_t st[MOE_MAX_STREAMS]; /* st[0] is the backend's stream */
    void *ws[MOE_MAX_STREAMS];        /* cuBLASLt workspaces; ws[0] is the backend's */
    cudaEvent_t fork, join[MOE_MAX_STREAMS], counts_ready;
    int *ids, *rank, *epos, *hist, *counts_d;
    float *w, *y;
    unsigned char *local_d;
    __nv_bfloat16 *xs, *g, *u;
    size_t cap_ids, cap_rank, cap_epos, cap_hist, cap_counts, cap_w, cap_y, cap_local, cap_xs, cap_g, cap_u;
    void *pin; /* pinned host staging: counts, local flags, routed ids and weights */
    size_t cap_pin;
    /* MX_CUDA_MOE_TIMING: per call, the GPU time of the phases and the host's wait for the counts */
    int timing;
    cudaEvent_t ev[4];
    int n_calls;
    float *tm; /* [4][MOE_TIMED] */
} moe_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static moe_state *state(mx_cuda_ctx *c) {
    if (c->moe) return (moe_state *)c->moe;
    moe_state *m = (moe_state *)calloc(1, sizeof *m);
    if (!m) mx_cuda_fatal("calloc", "out of memory", __FILE__, __LINE__);
    m->n_streams = c->tune.moe_streams; /* 1..8 (cuda_tunables.cu) */
    if (m->n_streams > MOE_MAX_STREAMS) m->n_streams = MOE_MAX_STREAMS;
    m->st[0] = c->stream;
    m->ws[0] = c->lt_ws;
    for (int s = 1; s < m->n_streams; s++) {
        CU_CHECK(cudaStreamCreateWithFlags(&m->st[s], cudaStreamNonBlocking));
        CU_CHECK(cudaMalloc(&m->ws[s], c->lt_ws_bytes));
        CU_CHECK(cudaEventCreateWithFlags(&m->join[s], cudaEventDisableTiming));
    }
    CU_CHECK(cudaEventCreateWithFlags(&m->fork, cudaEventDisableTiming));
    CU_CHECK(cudaEventCreateWithFlags(&m->counts_ready, cudaEventDisableTiming));
    m->timing = c->tune.moe_timing;
    if (m->timing && !(m->tm = (float *)malloc(sizeof(float) * 4 * MOE_TIMED))) m->timing = 0;
    for (int i = 0; m->timing && i < 4; i++) CU_CHECK(cudaEventCreate(&m->ev[i]));
    c->moe = m;
    return m;
}

/* Grows a device buffer to at least n bytes (the stream drained first: earlier work may still read it); false
 * when the GPU has no room. */
static bool grow(mx_cuda_ctx *c, void **p, size_t *cap, size_t n) {
    if (n <= *cap && *p) return true;
    CU_CHECK(cudaStreamSynchronize(c->stream));
    if (*p) CU_CHECK(cudaFree(*p));
    *p = NULL, *cap = 0;
    size_t want = n < 4096 ? 4096 : n + n / 4;
    if (cudaMalloc(p, want) != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return false;
    }
    *cap = want;
    return true;
}

static bool grow_pin(mx_cuda_ctx *c, moe_state *m, size_t n) {
    if (n <= m->cap_pin && m->pin) return true;
    CU_CHECK(cudaStreamSynchronize(c->stream));
    if (m->pin) CU_CHECK(cudaFreeHost(m->pin));
    m->pin = NULL, m->cap_pin = 0;
    size_t want = n < 65536 ? 65536 : n + n / 4;
    if (cudaMallocHost(&m->pin, want) != cudaSuccess) {
        cudaGetLastError();
        m->pin = NULL;
        return false;
    }
    m->cap_pin = want;
    return true;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}
/* The median of v[0..n) (sorts v). */
static float median(float *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

void mx_cuda_moe_free(mx_cuda_ctx *c) {
    moe_state *m = (moe_state *)c->moe;
    if (!m) return;
    cudaStreamSynchronize(c->stream);
    if (m->timing && m->n_calls) {
        int n = m->n_calls < MOE_TIMED ? m->n_calls : MOE_TIMED;
        float med[4];
        for (int i = 0; i < 4; i++) med[i] = median(m->tm + (size_t)i * MOE_TIMED, n);
        fprintf(stderr,
                "mixatt cuda moe: %d moe_ffn calls, median per call: route+group %.1f us, experts %.1f us, "
                "combine "
                "%.1f us (GPU, CUDA events), host wait for the counts %.1f us; %d streams\n",
                m->n_calls, 1e3 * med[0], 1e3 * med[1], 1e3 * med[2], 1e3 * med[3], m->n_streams);
    }
    free(m->tm);
    for (int s = 1; s < m->n_streams; s++) {
        cudaStreamSynchronize(m->st[s]);
        cudaStreamDestroy(m->st[s]);
        cudaFree(m->ws[s]);
        cudaEventDestroy(m->join[s]);
    }
    cudaEventDestroy(m->fork);
    cudaEventDestroy(m->counts_ready);
    for (int i = 0; m->timing && i < 4; i++) cudaEventDestroy(m->ev[i]);
    void *dev[] = {m->ids, m->rank, m->epos, m->hist, m->counts_d, m->w, m->y, m->local_d, m->xs, m->g, m->u};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) cudaFree(dev[i]);
    if (m->pin) cudaFreeHost(m->pin);
    free(m);
    c->moe = NULL;
}

/* ---- kernels ---- */

/* One thread per token: p = softmax(logits[t]) (sum in double), k selections of the largest untaken p (ties:
 * the lower expert; NaN never chosen while another is left), weights renormalized over the k (norm) and
 * scaled. */
__global__ void k_route(const float *__restrict__ logits, int T, int E, int k, int norm, float scale,
                        int *__restrict__ ids, float *__restrict__ w) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float *lg = logits + (size_t)t * E;
    float mx = -INFINITY;
    for (int e = 0; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
    double sum = 0;
    for (int e = 0; e < E; e++) sum += expf(lg[e] - mx);
    float inv = (float)(1.0 / sum);
    int chosen[MOE_MAX_K];
    float wt[MOE_MAX_K];
    double tot = 0;
    for (int j = 0; j < k; j++) {
        int best = -1, first_free = -1;
        float bp = 0.0f;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++) taken |= chosen[i] == e;
            if (taken) continue;
            if (first_free < 0) first_free = e;
            float p = expf(lg[e] - mx) * inv;
            if (p >= 0.0f && (best < 0 || p > bp)) best = e, bp = p;
        }
        if (best < 0) best = first_free, bp = NAN; /* every p left is NaN: an in-range id all the same */
        chosen[j] = best;
        wt[j] = bp;
        tot += bp;
    }
    float f = norm ? (float)(scale / tot) : scale;
    for (int j = 0; j < k; j++) {
        ids[(size_t)t * k + j] = chosen[j];
        w[(size_t)t * k + j] = wt[j] * f;
    }
}

/* Block b of MOE_BLK entries: rank[i] = entries of the block before i with i's expert; hist[b, e] = the
 * block's entries of expert e. */
__global__ void k_moe_hist(const int *__restrict__ ids, int N, int E, int *__restrict__ rank,
                           int *__restrict__ hist) {
    extern __shared__ int cnt[]; /* E */
    __shared__ int sid[MOE_BLK];
    int i = blockIdx.x * MOE_BLK + threadIdx.x;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    int my = i < N ? ids[i] : -1;
    sid[threadIdx.x] = my;
    __syncthreads();
    if (my >= 0) {
        int r = 0;
        for (int j = 0; j < (int)threadIdx.x; j++) r += sid[j] == my;
        rank[i] = r;
        atomicAdd(&cnt[my], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[(size_t)blockIdx.x * E + e] = cnt[e];
}

/* One block: counts[e] = Σ_b hist[b, e]; hist[b, e] becomes the first slot of block b's entries of expert e.
 */
__global__ void k_moe_scan(int *__restrict__ hist, int nb, int E, int *__restrict__ counts) {
    extern __shared__ int offs[]; /* E */
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int run = 0;
        for (int b = 0; b < nb; b++) {
            int h = hist[(size_t)b * E + e];
            hist[(size_t)b * E + e] = run;
            run += h;
        }
        counts[e] = run;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0;
        for (int e = 0; e < E; e++) offs[e] = o, o += counts[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        for (int b = 0; b < nb; b++) hist[(size_t)b * E + e] += offs[e];
}

/* One block per entry i: its slot (epos[i]), and x[t] rounded to bf16 into that row of xs. vec: C % 4 == 0
 * and x 16-byte aligned. */
__global__ void k_moe_gather(const float *__restrict__ x, const int *__restrict__ ids,
                             const int *__restrict__ rank, const int *__restrict__ base, int k, int E, int C,
                             int vec, __nv_bfloat16 *__restrict__ xs, int *__restrict__ epos) {
    int i = blockIdx.x, t = i / k;
    int pos = base[(size_t)(i / MOE_BLK) * E + ids[i]] + rank[i];
    if (threadIdx.x == 0) epos[i] = pos;
    const float *src = x + (size_t)t * C;
    __nv_bfloat16 *dst = xs + (size_t)pos * C;
    if (vec) {
        for (int c4 = threadIdx.x; c4 < C / 4; c4 += blockDim.x) {
            float4 v = ((const float4 *)src)[c4];
            __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
            uint2 o;
            o.x = *(uint32_t *)&a, o.y = *(uint32_t *)&b;
            ((uint2 *)dst)[c4] = o;
        }
    } else {
        for (int j = threadIdx.x; j < C; j += blockDim.x) dst[j] = __float2bfloat16_rn(src[j]);
    }
}

/* g = bf16(silu(g) * u) over n elements; vec: 8 at a time (n % 8 == 0, both 16-byte aligned). */
__device__ __forceinline__ float silu_mul(float g, float u) {
    return g / (1.0f + expf(-g)) * u;
}
__global__ void k_moe_swiglu(__nv_bfloat16 *__restrict__ g, const __nv_bfloat16 *__restrict__ u, size_t n,
                             int vec) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        if (i >= n / 8) return;
        uint4 gv = ((const uint4 *)g)[i], uv = ((const uint4 *)u)[i];
        __nv_bfloat162 *gp = (__nv_bfloat162 *)&gv;
        const __nv_bfloat162 *up = (const __nv_bfloat162 *)&uv;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float2 a = __bfloat1622float2(gp[q]), b = __bfloat1622float2(up[q]);
            gp[q] = __floats2bfloat162_rn(silu_mul(a.x, b.x), silu_mul(a.y, b.y));
        }
        ((uint4 *)g)[i] = gv;
    } else if (i < n) {
        g[i] = __float2bfloat16_rn(silu_mul(__bfloat162float(g[i]), __bfloat162float(u[i])));
    }
}

/* One block per token: out[t] = Σ over its local choices, ascending expert, of w · y[slot]. vec: C % 4 == 0
 * and out 16-byte aligned. */
__global__ void k_moe_combine(const float *__restrict__ y, const int *__restrict__ ids,
                              const float *__restrict__ w, const int *__restrict__ epos,
                              const unsigned char *__restrict__ local, int k, int C, int vec,
                              float *__restrict__ out) {
    __shared__ int se[MOE_MAX_K], sp[MOE_MAX_K];
    __shared__ float sw[MOE_MAX_K];
    __shared__ int m;
    int t = blockIdx.x;
    if (threadIdx.x == 0) {
        int n = 0;
        for (int j = 0; j < k; j++) {
            int e = ids[(size_t)t * k + j];
            if (local && !local[e]) continue;
            int q = n++;
            for (; q > 0 && se[q - 1] > e; q--) se[q] = se[q - 1], sp[q] = sp[q - 1], sw[q] = sw[q - 1];
            se[q] = e, sp[q] = epos[(size_t)t * k + j], sw[q] = w[(size_t)t * k + j];
        }
        m = n;
    }
    __syncthreads();
    float *o = out + (size_t)t * C;
    if (vec) {
        for (int c4 = threadIdx.x; c4 < C / 4; c4 += blockDim.x) {
            float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            for (int q = 0; q < m; q++) {
                float4 v = ((const float4 *)(y + (size_t)sp[q] * C))[c4];
                float s = sw[q];
                a.x += s * v.x, a.y += s * v.y, a.z += s * v.z, a.w += s * v.w;
            }
            ((float4 *)o)[c4] = a;
        }
    } else {
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float a = 0.0f;
            for (int q = 0; q < m; q++) a += sw[q] * y[(size_t)sp[q] * C + j];
            o[j] = a;
        }
    }
}

/* ---- moe_route: ids and weights in host memory ---- */

/* The host's routing of T tokens (as cpu_blocks.c) from their logits in host memory. */
static void route_host(const float *logits, int T, int E, int k, bool norm, float scale, int *ids, float *w) {
    float *p = (float *)malloc(sizeof(float) * (size_t)E);
    if (!p) mx_cuda_fatal("malloc", "out of memory", __FILE__, __LINE__);
    for (int t = 0; t < T; t++) {
        const float *lg = logits + (size_t)t * E;
        float mx = -INFINITY;
        for (int e = 0; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
        double sum = 0;
        for (int e = 0; e < E; e++) sum += (p[e] = expf(lg[e] - mx));
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < E; e++) p[e] *= inv;
        double tot = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++)
                if (p[e] >= 0 && (best < 0 || p[e] > p[best])) best = e;
            if (best < 0) /* every p left is NaN: the first expert not taken yet */
                for (int e = 0; e < E && best < 0; e++)
                    if (p[e] != -1.0f) best = e;
            ids[(size_t)t * k + j] = best;
            w[(size_t)t * k + j] = p[best];
            tot += p[best];
            p[best] = -1.0f;
        }
        float f = norm ? (float)(scale / tot) : scale;
        for (int j = 0; j < k; j++) w[(size_t)t * k + j] *= f;
    }
    free(p);
}

void mx_cuda_moe_route(mx_cuda_ctx *c, const float *logits, int T, int E, int k, bool norm, float scale,
                       int *ids, float *w) {
    if (T <= 0 || k <= 0) return;
    if (k > MOE_MAX_K || k > E)
        mx_cuda_fatal("moe_route", "more choices than experts, or more than 32", __FILE__, __LINE__);
    moe_state *m = state(c);
    size_t n = (size_t)T * k;
    if (T <= MOE_HOST_ROUTE_T) { /* decode: one copy of T x E logits, no kernel in the wait */
        if (!grow_pin(c, m, sizeof(float) * (size_t)T * E))
            mx_cuda_fatal("moe_route", "out of pinned memory", __FILE__, __LINE__);
        CU_CHECK(cudaMemcpyAsync(m->pin, logits, sizeof(float) * (size_t)T * E, cudaMemcpyDeviceToHost,
                                 c->stream));
        CU_CHECK(cudaStreamSynchronize(c->stream));
        route_host((const float *)m->pin, T, E, k, norm, scale, ids, w);
        return;
    }
    if (!grow(c, (void **)&m->ids, &m->cap_ids, sizeof(int) * n) ||
        !grow(c, (void **)&m->w, &m->cap_w, sizeof(float) * n) || !grow_pin(c, m, 8 * n))
        mx_cuda_fatal("moe_route", "out of GPU or pinned memory", __FILE__, __LINE__);
    k_route<<<(unsigned)((T + 127) / 128), 128, 0, c->stream>>>(logits, T, E, k, norm, scale, m->ids, m->w);
    CU_LAUNCHED();
    int *hi = (int *)m->pin;
    float *hw = (float *)(hi + n);
    CU_CHECK(cudaMemcpyAsync(hi, m->ids, sizeof(int) * n, cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaMemcpyAsync(hw, m->w, sizeof(float) * n, cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    memcpy(ids, hi, sizeof(int) * n);
    memcpy(w, hw, sizeof(float) * n);
}

/* ---- moe_ffn ---- */

bool mx_cuda_moe_ffn(mx_cuda_ctx *c, const float *x, const float *logits, int T, int E, int k, bool norm,
                     float scale, const mx_tensor *gate, const mx_tensor *up, const mx_tensor *down,
                     const bool *local, float *out, int *counts) {
    if (!c->tune.moe || T < MOE_MIN_T || k <= 0 || k > MOE_MAX_K || k > E || E <= 0 || E > 1024) return false;
    if (gate->n_dims != 3 || up->n_dims != 3 || down->n_dims != 3) return false;
    int C = (int)gate->ne[0], F = (int)gate->ne[1];
    if (gate->ne[2] != E || up->ne[0] != C || up->ne[1] != F || up->ne[2] != E || down->ne[0] != F ||
        down->ne[1] != C || down->ne[2] != E)
        return false;
    mx_cuda_weight wg = mx_cuda_weight_of(c, gate), wu = mx_cuda_weight_of(c, up),
                   wd = mx_cuda_weight_of(c, down);
    if (!wg.bf || !wu.bf || !wd.bf) return false;
    moe_state *m = state(c);
    size_t N = (size_t)T * k;
    int nb = (int)((N + MOE_BLK - 1) / MOE_BLK);
    mx_cuda_graph_flush(c); /* the router logits and everything before them */
    bool ok = grow(c, (void **)&m->ids, &m->cap_ids, sizeof(int) * N) &&
              grow(c, (void **)&m->w, &m->cap_w, sizeof(float) * N) &&
              grow(c, (void **)&m->rank, &m->cap_rank, sizeof(int) * N) &&
              grow(c, (void **)&m->epos, &m->cap_epos, sizeof(int) * N) &&
              grow(c, (void **)&m->hist, &m->cap_hist, sizeof(int) * (size_t)nb * E) &&
              grow(c, (void **)&m->counts_d, &m->cap_counts, sizeof(int) * (size_t)E) &&
              grow(c, (void **)&m->local_d, &m->cap_local, (size_t)E) &&
              grow(c, (void **)&m->xs, &m->cap_xs, sizeof(__nv_bfloat16) * N * C) &&
              grow(c, (void **)&m->g, &m->cap_g, sizeof(__nv_bfloat16) * N * F) &&
              grow(c, (void **)&m->u, &m->cap_u, sizeof(__nv_bfloat16) * N * F) &&
              grow(c, (void **)&m->y, &m->cap_y, sizeof(float) * N * C) && grow_pin(c, m, 8 * (size_t)E);
    if (!ok) return false; /* no room for the grouped buffers: the generic path */
    cudaStream_t s0 = c->stream;
    int *cnt_h = (int *)m->pin;
    unsigned char *local_h = (unsigned char *)(cnt_h + E);
    if (m->timing) CU_CHECK(cudaEventRecord(m->ev[0], s0));
    if (local) {
        for (int e = 0; e < E; e++) local_h[e] = local[e];
        CU_CHECK(cudaMemcpyAsync(m->local_d, local_h, (size_t)E, cudaMemcpyHostToDevice, s0));
    }
    k_route<<<(unsigned)((T + 127) / 128), 128, 0, s0>>>(logits, T, E, k, norm, scale, m->ids, m->w);
    CU_LAUNCHED();
    k_moe_hist<<<nb, MOE_BLK, sizeof(int) * (size_t)E, s0>>>(m->ids, (int)N, E, m->rank, m->hist);
    CU_LAUNCHED();
    k_moe_scan<<<1, 256, sizeof(int) * (size_t)E, s0>>>(m->hist, nb, E, m->counts_d);
    CU_LAUNCHED();
    CU_CHECK(cudaMemcpyAsync(cnt_h, m->counts_d, sizeof(int) * (size_t)E, cudaMemcpyDeviceToHost, s0));
    CU_CHECK(cudaEventRecord(m->counts_ready, s0));
    int vec_x = C % 4 == 0 && ((uintptr_t)x & 15) == 0;
    k_moe_gather<<<(unsigned)N, 128, 0, s0>>>(x, m->ids, m->rank, m->hist, k, E, C, vec_x, m->xs, m->epos);
    CU_LAUNCHED();
    if (m->timing) CU_CHECK(cudaEventRecord(m->ev[1], s0));
    double t_wait = now_s();
    CU_CHECK(cudaEventSynchronize(m->counts_ready)); /* the GEMM sizes */
    float wait_ms = (float)(1e3 * (now_s() - t_wait));
    if (counts) memcpy(counts, cnt_h, sizeof(int) * (size_t)E);

    /* the experts, largest first, each to the stream with the least work so far */
    int order[1024], n_act = 0;
    int *offs = (int *)malloc(sizeof(int) * (size_t)E);
    if (!offs) mx_cuda_fatal("malloc", "out of memory", __FILE__, __LINE__);
    for (int e = 0, o = 0; e < E; e++) {
        offs[e] = o;
        o += cnt_h[e];
        if (cnt_h[e] > 0 && (!local || local[e]) && n_act < 1024) order[n_act++] = e;
    }
    for (int a = 1; a < n_act; a++) /* insertion sort by count, descending (E is at most a few hundred) */
        for (int b = a; b > 0 && cnt_h[order[b]] > cnt_h[order[b - 1]]; b--) {
            int t = order[b];
            order[b] = order[b - 1], order[b - 1] = t;
        }
    int S = m->n_streams < n_act ? m->n_streams : n_act;
    long load[MOE_MAX_STREAMS] = {0};
    if (S > 1) {
        CU_CHECK(cudaEventRecord(m->fork, s0));
        for (int s = 1; s < S; s++) CU_CHECK(cudaStreamWaitEvent(m->st[s], m->fork, 0));
    }
    size_t FC = (size_t)F * C;
    for (int a = 0; a < n_act; a++) {
        int e = order[a], n = cnt_h[e], s = 0;
        for (int q = 1; q < S; q++)
            if (load[q] < load[s]) s = q;
        load[s] += n;
        cudaStream_t st = m->st[s];
        const __nv_bfloat16 *xe = m->xs + (size_t)offs[e] * C;
        __nv_bfloat16 *ge = m->g + (size_t)offs[e] * F, *ue = m->u + (size_t)offs[e] * F;
        mx_cuda_gemm_bf16(c, st, m->ws[s], wg.bf + (size_t)e * FC, C, F, xe, ge, true, n);
        mx_cuda_gemm_bf16(c, st, m->ws[s], wu.bf + (size_t)e * FC, C, F, xe, ue, true, n);
        size_t ne = (size_t)n * F;
        int vec = ne % 8 == 0 && ((uintptr_t)ge & 15) == 0 && ((uintptr_t)ue & 15) == 0;
        size_t threads = vec ? ne / 8 : ne;
        k_moe_swiglu<<<(unsigned)((threads + 255) / 256), 256, 0, st>>>(ge, ue, ne, vec);
        CU_LAUNCHED();
        mx_cuda_gemm_bf16(c, st, m->ws[s], wd.bf + (size_t)e * FC, F, C, ge, m->y + (size_t)offs[e] * C,
                          false, n);
    }
    for (int s = 1; s < S; s++) {
        CU_CHECK(cudaEventRecord(m->join[s], m->st[s]));
        CU_CHECK(cudaStreamWaitEvent(s0, m->join[s], 0));
    }
    free(offs);
    if (m->timing) CU_CHECK(cudaEventRecord(m->ev[2], s0));
    int vec_o = C % 4 == 0 && ((uintptr_t)out & 15) == 0;
    k_moe_combine<<<(unsigned)T, 128, 0, s0>>>(m->y, m->ids, m->w, m->epos, local ? m->local_d : NULL, k, C,
                                               vec_o, out);
    CU_LAUNCHED();
    if (m->timing) {
        CU_CHECK(cudaEventRecord(m->ev[3], s0));
        CU_CHECK(cudaEventSynchronize(m->ev[3]));
        float ms[3];
        for (int i = 0; i < 3; i++) CU_CHECK(cudaEventElapsedTime(&ms[i], m->ev[i], m->ev[i + 1]));
        if (m->n_calls < MOE_TIMED)
            for (int i = 0; i < 4; i++) m->tm[(size_t)i * MOE_TIMED + m->n_calls] = i < 3 ? ms[i] : wait_ms;
        m->n_calls++;
    }
    return true;
}
