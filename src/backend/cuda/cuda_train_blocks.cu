/* cuda_train_blocks.cu: the CUDA implementation of the block ops of the training contract (backend_train.h,
 * "the MLA, MKA and MoE blocks"; the CPU reference is src/train/block_ops.c): strided column copies, tanh,
 * row softmax, the causal running mean, MKA's three-way mixing, and MoE's top-k choice, row gather and
 * combine, router gradient and column sums.
 *
 * Deterministic: no atomics; every reduction runs in a fixed order (a warp's butterfly, or chunk partials
 * summed in chunk order), so two identical calls give the same bits. Where the CPU sums in double (softmax,
 * cummean, mix3_bwd's dots and dbias, router_grad, colsum) these sum in double too. The fp32 arithmetic the
 * CPU does one operation at a time (tanh_bwd, mix3_fwd, combine_rows, topk, router_grad's adds; gcc does not
 * contract to FMA under -std=c11) is written with __fmul_rn / __fadd_rn, which nvcc does not contract either:
 * those ops give the CPU's bits.
 *
 * Launch shapes: row ops take a warp per row (ROW_WARPS rows per block), elementwise ops grid-stride; no grid
 * is launched for an empty shape. HOST arrays (indices, aux) are staged into this file's scratch (cu_blocks,
 * hung off the context's training state) with cudaMemcpyAsync on the backend's stream: from pageable memory
 * (the trainer's malloc'd arrays) that copy has taken the data when it returns, so the caller may reuse the
 * array. */
#include <math.h>

#include "cuda_train.h"
#include "../topk_row.h"

enum {
    ROW_WARPS = 8,  /* rows (warps) per block of the row kernels */
    CM_ROWS = 64,   /* cummean: sequence positions per chunk of the two-pass scan */
    DB_CHUNKS = 64, /* mix3_bwd: row chunks of dbias's column sums */
    CS_CHUNKS = 256 /* colsum: row chunks of its column sums */
};

#define GRID_STRIDE(i, n)                                                                                    \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                                  \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- scratch ---- */

typedef struct {
    int *ints; /* HOST int arrays staged on the device (gather/combine idx, order, router ids); topk's ids */
    size_t ints_cap;
    float *aux; /* router_grad's aux (E) */
    size_t aux_cap;
    /* partial sums in double: cummean (B, chunks, C), mix3_bwd (DB_CHUNKS, G*D), colsum (CS_CHUNKS + 1, E) */
    double *part;
    size_t part_cap;
} cu_blocks;

static cu_blocks *scratch(mx_backend *be) {
    void **slot = mx_cuda_train_blocks(be);
    if (!*slot) {
        *slot = calloc(1, sizeof(cu_blocks));
        if (!*slot) mx_cuda_fatal("calloc", "out of host memory", __FILE__, __LINE__);
    }
    return (cu_blocks *)*slot;
}

void mx_cuda_train_blocks_free(void *p) {
    cu_blocks *s = (cu_blocks *)p;
    if (!s) return;
    cudaFree(s->ints), cudaFree(s->aux), cudaFree(s->part);
    free(s);
}

/* The n HOST ints h copied into the device scratch, in stream order (n > 0). */
static const int *stage_ints(mx_backend *be, const int *h, size_t n) {
    cu_blocks *s = scratch(be);
    s->ints = grow(s->ints, &s->ints_cap, n);
    CU_CHECK(cudaMemcpyAsync(s->ints, h, sizeof(int) * n, cudaMemcpyHostToDevice, stream_of(be)));
    return s->ints;
}

/* A device double scratch of at least n elements (cummean, mix3_bwd and colsum partials). */
static double *part_buf(mx_backend *be, size_t n) {
    cu_blocks *s = scratch(be);
    s->part = grow(s->part, &s->part_cap, n);
    return s->part;
}

static unsigned row_blocks(long rows) {
    return (unsigned)((rows + ROW_WARPS - 1) / ROW_WARPS);
}

/* dst[i] += Σ_k part[k, i], part (chunks, n): the chunks summed in order in double, then one fp32 add */
static __global__ void k_dsum_add(float *dst, const double *part, int chunks, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double s = 0.0;
    for (int k = 0; k < chunks; k++) s += part[(size_t)k * n + i];
    dst[i] += (float)s;
}

/* dst[i] = Σ_k part[k, i] in double, chunks summed in order; part (chunks, n) */
static __global__ void k_dsum(double *dst, const double *part, int chunks, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double s = 0.0;
    for (int k = 0; k < chunks; k++) s += part[(size_t)k * n + i];
    dst[i] = s;
}

/* ---- copy_cols, tanh ---- */

/* dst[r*ds + j] (+)= src[r*ss + j]: one thread per element (r, j) of rows x w */
static __global__ void k_copy_cols(float *dst, size_t ds, const float *src, size_t ss, int w, size_t total,
                                   bool acc) {
    GRID_STRIDE(i, total) {
        size_t r = i / w, j = i % w;
        float v = src[r * ss + j], *d = dst + r * ds + j;
        *d = acc ? __fadd_rn(*d, v) : v;
    }
}

void mx_cuda_train_copy_cols(mx_backend *be, float *dst, size_t ds, const float *src, size_t ss, int w,
                             long rows, bool accumulate) {
    if (rows <= 0 || w <= 0) return;
    size_t total = (size_t)rows * w;
    k_copy_cols<<<blocks_for(total, 256), 256, 0, stream_of(be)>>>(dst, ds, src, ss, w, total, accumulate);
    CU_LAUNCHED();
}

static __global__ void k_tanh_fwd(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) out[i] = tanhf(x[i]);
}

/* dx = dout · (1 - y²), rounded after each operation as the CPU's */
static __global__ void k_tanh_bwd(float *dx, const float *dout, const float *y, size_t n) {
    GRID_STRIDE(i, n) dx[i] = __fmul_rn(dout[i], __fsub_rn(1.0f, __fmul_rn(y[i], y[i])));
}

void mx_cuda_train_tanh_fwd(mx_backend *be, float *out, const float *x, long n) {
    if (n <= 0) return;
    k_tanh_fwd<<<blocks_for((size_t)n, 256), 256, 0, stream_of(be)>>>(out, x, (size_t)n);
    CU_LAUNCHED();
}

void mx_cuda_train_tanh_bwd(mx_backend *be, float *dx, const float *dout, const float *y, long n) {
    if (n <= 0) return;
    k_tanh_bwd<<<blocks_for((size_t)n, 256), 256, 0, stream_of(be)>>>(dx, dout, y, (size_t)n);
    CU_LAUNCHED();
}

/* ---- row softmax (x, p, dp: (N, E)), a warp per row ---- */

/* x[n, :] = softmax(x[n, :]) in place: fp32 max, exponentials and their sum in double */
static __global__ void k_softmax_fwd(float *x, int N, int E) {
    int n = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return; /* the whole warp: n is the warp's */
    float *r = x + (size_t)n * E, mx = -INFINITY;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, r[e]);
    mx = warp_max_f(mx);
    double sum = 0.0;
    for (int e = lane; e < E; e += 32) sum += exp((double)r[e] - mx);
    sum = warp_sum_d(sum);
    for (int e = lane; e < E; e += 32) r[e] = (float)(exp((double)r[e] - mx) / sum);
}

/* dp[n, :] = p ⊙ (dp - Σ_e p·dp) in place, the sum in double */
static __global__ void k_softmax_bwd(float *dp, const float *p, int N, int E) {
    int n = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    float *d = dp + (size_t)n * E;
    const float *r = p + (size_t)n * E;
    double s = 0.0;
    for (int e = lane; e < E; e += 32) s += (double)r[e] * d[e];
    s = warp_sum_d(s);
    for (int e = lane; e < E; e += 32) d[e] = (float)(r[e] * (d[e] - s));
}

void mx_cuda_train_softmax_fwd(mx_backend *be, float *x, int N, int E) {
    if (N <= 0 || E <= 0) return;
    k_softmax_fwd<<<row_blocks(N), 32 * ROW_WARPS, 0, stream_of(be)>>>(x, N, E);
    CU_LAUNCHED();
}

void mx_cuda_train_softmax_bwd(mx_backend *be, float *dp, const float *p, int N, int E) {
    if (N <= 0 || E <= 0) return;
    k_softmax_bwd<<<row_blocks(N), 32 * ROW_WARPS, 0, stream_of(be)>>>(dp, p, N, E);
    CU_LAUNCHED();
}

/* ---- the causal running mean over t of x, out, dout, dx (B, T, C) ----
 * Two passes over chunks of CM_ROWS positions, one thread per (b, chunk, c) in each: the chunk's sum in
 * double (part (B, nch, C)), then a walk through the chunk in t order (backward: reverse order) from the sum
 * of the chunks before it (backward: after it), in chunk order. The CPU walks all of t in one double sum: the
 * two agree to double rounding. A single chunk (T <= CM_ROWS) skips the first pass. */

struct chunk_of {
    int b, k, c, t0, t1; /* column (b, c), chunk k: positions t0 .. t1 - 1 */
};

__device__ __forceinline__ chunk_of chunk_at(size_t i, int T, int C, int nch) {
    chunk_of q;
    size_t bk = i / C;
    q.c = (int)(i % C), q.k = (int)(bk % nch), q.b = (int)(bk / nch);
    q.t0 = q.k * CM_ROWS, q.t1 = min(T, q.t0 + CM_ROWS);
    return q;
}

/* part[b, k, c] = Σ_{t of chunk k} x[b, t, c] (forward) or x[b, t, c] / (t + 1) (backward: the quotient in
 * fp32, as the CPU's), in double */
static __global__ void k_cummean_part(double *part, const float *x, int B, int T, int C, int nch, bool bwd) {
    GRID_STRIDE(i, (size_t)B * nch * C) {
        chunk_of q = chunk_at(i, T, C, nch);
        const float *xc = x + (size_t)q.b * T * C + q.c;
        double s = 0.0;
        for (int t = q.t0; t < q.t1; t++) {
            float v = xc[(size_t)t * C];
            s += bwd ? (double)(v / (float)(t + 1)) : (double)v;
        }
        part[i] = s;
    }
}

/* out[b, t, c] = (Σ_{u <= t} x[b, u, c]) / (t + 1) */
static __global__ void k_cummean_fwd(float *out, const float *x, const double *part, int B, int T, int C,
                                     int nch) {
    GRID_STRIDE(i, (size_t)B * nch * C) {
        chunk_of q = chunk_at(i, T, C, nch);
        double s = 0.0;
        for (int j = 0; j < q.k; j++) s += part[((size_t)q.b * nch + j) * C + q.c];
        for (int t = q.t0; t < q.t1; t++) {
            size_t o = ((size_t)q.b * T + t) * C + q.c;
            s += x[o];
            out[o] = (float)(s / (t + 1));
        }
    }
}

/* dx[b, u, c] += Σ_{t >= u} dout[b, t, c] / (t + 1) */
static __global__ void k_cummean_bwd(float *dx, const float *dout, const double *part, int B, int T, int C,
                                     int nch) {
    GRID_STRIDE(i, (size_t)B * nch * C) {
        chunk_of q = chunk_at(i, T, C, nch);
        double s = 0.0;
        for (int j = nch - 1; j > q.k; j--) s += part[((size_t)q.b * nch + j) * C + q.c];
        for (int t = q.t1 - 1; t >= q.t0; t--) {
            size_t o = ((size_t)q.b * T + t) * C + q.c;
            s += (double)(dout[o] / (float)(t + 1));
            dx[o] += (float)s;
        }
    }
}

static void cummean(mx_backend *be, float *y, const float *x, int B, int T, int C, bool bwd) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    int nch = (T + CM_ROWS - 1) / CM_ROWS;
    size_t n = (size_t)B * nch * C;
    double *part = NULL; /* read only for chunks other than a thread's own: never with one chunk */
    if (nch > 1) {
        part = part_buf(be, n);
        k_cummean_part<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(part, x, B, T, C, nch, bwd);
        CU_LAUNCHED();
    }
    if (bwd)
        k_cummean_bwd<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(y, x, part, B, T, C, nch);
    else
        k_cummean_fwd<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(y, x, part, B, T, C, nch);
    CU_LAUNCHED();
}

void mx_cuda_train_cummean_fwd(mx_backend *be, float *out, const float *x, int B, int T, int C) {
    cummean(be, out, x, B, T, C, false);
}

void mx_cuda_train_cummean_bwd(mx_backend *be, float *dx, const float *dout, int B, int T, int C) {
    cummean(be, dx, dout, B, T, C, true);
}

/* ---- mix3: r (N, 3), a, b, out, dout, da, db (N, H, D), bias, dbias (G, D); query head h reads bias row
 * h / group, group = H / G ---- */

/* bias[h / group, e] for element c = h*D + e of a row of H*D; 0 without bias */
__device__ __forceinline__ float bias_of(const float *bias, int c, int D, int group) {
    return bias ? bias[(c / D / group) * D + c % D] : 0.0f;
}

/* out = r0·a + r1·b + r2·bias, one thread per element, rounded after each operation as the CPU's */
static __global__ void k_mix3_fwd(float *out, const float *r, const float *a, const float *b,
                                  const float *bias, int HD, int D, int group, size_t total) {
    GRID_STRIDE(i, total) {
        size_t n = i / HD;
        int c = (int)(i - n * HD);
        const float *rn = r + n * 3;
        float v = __fadd_rn(__fmul_rn(rn[0], a[i]), __fmul_rn(rn[1], b[i]));
        out[i] = __fadd_rn(v, __fmul_rn(rn[2], bias_of(bias, c, D, group)));
    }
}

void mx_cuda_train_mix3_fwd(mx_backend *be, float *out, const float *r, const float *a, const float *b,
                            const float *bias, int N, int H, int G, int D) {
    int HD = H * D;
    if (N <= 0 || HD <= 0) return;
    size_t total = (size_t)N * HD;
    k_mix3_fwd<<<blocks_for(total, 256), 256, 0, stream_of(be)>>>(out, r, a, b, bias, HD, D, H / G, total);
    CU_LAUNCHED();
}

/* A warp per row n: da = r0·dout, db = r1·dout; dr[n] = (dout·a, dout·b, dout·bias) in double */
static __global__ void k_mix3_bwd_rows(float *da, float *db, float *dr, const float *dout, const float *r,
                                       const float *a, const float *b, const float *bias, int N, int HD,
                                       int D, int group) {
    int n = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    size_t o = (size_t)n * HD;
    float r0 = r[(size_t)n * 3], r1 = r[(size_t)n * 3 + 1];
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    for (int c = lane; c < HD; c += 32) {
        float g = dout[o + c];
        s0 += (double)g * a[o + c];
        s1 += (double)g * b[o + c];
        s2 += (double)g * bias_of(bias, c, D, group);
        da[o + c] = __fmul_rn(r0, g);
        db[o + c] = __fmul_rn(r1, g);
    }
    s0 = warp_sum_d(s0), s1 = warp_sum_d(s1), s2 = warp_sum_d(s2);
    if (lane == 0)
        dr[(size_t)n * 3] = (float)s0, dr[(size_t)n * 3 + 1] = (float)s1, dr[(size_t)n * 3 + 2] = (float)s2;
}

/* part[chunk, i] = Σ_{n of chunk} r2(n) Σ_{h of group g} dout[n, h, e] in double (n, then h, ascending), for
 * i = g*D + e < GD; chunk = blockIdx.y of DB_CHUNKS */
static __global__ void k_mix3_dbias_part(double *part, const float *dout, const float *r, int N, int HD,
                                         int D, int group, int GD) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (i >= GD) return;
    int g = i / D, e = i % D, per = (N + DB_CHUNKS - 1) / DB_CHUNKS, n0 = chunk * per, n1 = min(N, n0 + per);
    double s = 0.0;
    for (int n = n0; n < n1; n++) {
        double r2 = r[(size_t)n * 3 + 2];
        const float *d = dout + (size_t)n * HD + (size_t)g * group * D + e;
        for (int h = 0; h < group; h++) s += r2 * d[(size_t)h * D];
    }
    part[(size_t)chunk * GD + i] = s;
}

void mx_cuda_train_mix3_bwd(mx_backend *be, float *da, float *db, float *dr, float *dbias, const float *dout,
                            const float *r, const float *a, const float *b, const float *bias, int N, int H,
                            int G, int D) {
    int HD = H * D, GD = G * D, group = H / G;
    if (N <= 0) return;
    k_mix3_bwd_rows<<<row_blocks(N), 32 * ROW_WARPS, 0, stream_of(be)>>>(da, db, dr, dout, r, a, b, bias, N,
                                                                         HD, D, group);
    CU_LAUNCHED();
    if (!dbias || GD <= 0) return;
    double *part = part_buf(be, (size_t)DB_CHUNKS * GD);
    dim3 grid((GD + 127) / 128, DB_CHUNKS);
    k_mix3_dbias_part<<<grid, 128, 0, stream_of(be)>>>(part, dout, r, N, HD, D, group, GD);
    CU_LAUNCHED();
    k_dsum_add<<<(GD + 127) / 128, 128, 0, stream_of(be)>>>(dbias, part, DB_CHUNKS, GD);
    CU_LAUNCHED();
}

/* ---- MoE: top-k, gather, combine, router gradient, column sums ---- */

/* A thread per row of p (N, E): the CPU's selection (topk_row.h), so also its answer for NaN or equal values. */
static __global__ void k_topk(const float *p, int N, int E, int k, bool norm, int *ids, float *w) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N) mx_topk_row(p + (size_t)n * E, E, k, norm, ids + (size_t)n * k, w + (size_t)n * k);
}

void mx_cuda_train_topk(mx_backend *be, const float *p, int N, int E, int k, bool norm, int *ids, float *w) {
    if (N <= 0 || k <= 0) return;
    if (k > E) mx_cuda_fatal("topk", "k is above the row width E", __FILE__, __LINE__);
    cu_blocks *s = scratch(be);
    size_t nk = (size_t)N * k;
    s->ints = grow(s->ints, &s->ints_cap, nk);
    k_topk<<<(N + 127) / 128, 128, 0, stream_of(be)>>>(p, N, E, k, norm, s->ints, w);
    CU_LAUNCHED();
    CU_CHECK(cudaMemcpyAsync(ids, s->ints, sizeof(int) * nk, cudaMemcpyDeviceToHost, stream_of(be)));
    CU_CHECK(cudaStreamSynchronize(stream_of(be)));
}

/* dst (rows, n) = src[idx] rows: cuda_blocks.cu's gather, a thread per element, on the backend's stream */
void mx_cuda_train_gather_rows(mx_backend *be, float *dst, const float *src, const int *idx, int rows,
                               int n) {
    if (rows <= 0 || n <= 0) return;
    mx_cuda_gather_rows_k(cu_ctx(be), dst, src, stage_ints(be, idx, (size_t)rows), rows, n);
}

/* A block per output row t: out[t, c] = Σ_j w[t*k + j] · src[idx[t*k + j], c], j ascending, rounded after
 * each operation as the CPU's (w NULL: weights 1); out (N, n) */
static __global__ void k_combine_rows(float *out, const float *src, const float *w, const int *idx, int k,
                                      int n) {
    size_t t = blockIdx.x;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < k; j++) {
            size_t a = t * k + j;
            o = __fadd_rn(o, __fmul_rn(w ? w[a] : 1.0f, src[(size_t)idx[a] * n + c]));
        }
        out[t * n + c] = o;
    }
}

void mx_cuda_train_combine_rows(mx_backend *be, float *out, const float *src, const float *w, const int *idx,
                                int N, int k, int n) {
    if (N <= 0 || n <= 0) return;
    const int *d_idx = k > 0 ? stage_ints(be, idx, (size_t)N * k) : NULL; /* k = 0: out = 0 */
    int threads = n >= 256 ? 256 : (n + 31) / 32 * 32;
    k_combine_rows<<<(unsigned)N, threads, 0, stream_of(be)>>>(out, src, w, d_idx, k, n);
    CU_LAUNCHED();
}

/* A warp per source row i < NK (N*k): its choice a = order[i] of output row t = a / k; dsrc[i, :] = w[a] ·
 * dout[t, :], dw[a] = dout[t, :] · src[i, :] (fp32, the warp's butterfly order; w NULL: weights 1); dsrc, src
 * (NK, n), dout (N, n) */
static __global__ void k_combine_rows_bwd(float *dsrc, float *dw, const float *dout, const float *src,
                                          const float *w, const int *order, long NK, int k, int n) {
    long i = (long)blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (i >= NK) return;
    int a = order[i];
    const float *d = dout + (size_t)(a / k) * n, *s = src + (size_t)i * n;
    float *ds = dsrc + (size_t)i * n, wa = w ? w[a] : 1.0f, dot = 0.0f;
    for (int c = lane; c < n; c += 32) {
        float dv = d[c];
        dot += dv * s[c];
        ds[c] = __fmul_rn(wa, dv);
    }
    dot = warp_sum_f(dot);
    if (lane == 0) dw[a] = dot;
}

void mx_cuda_train_combine_rows_bwd(mx_backend *be, float *dsrc, float *dw, const float *dout,
                                    const float *src, const float *w, const int *order, int N, int k, int n) {
    long NK = (long)N * k;
    if (NK <= 0) return;
    const int *d_order = stage_ints(be, order, (size_t)NK);
    k_combine_rows_bwd<<<row_blocks(NK), 32 * ROW_WARPS, 0, stream_of(be)>>>(dsrc, dw, dout, src, w, d_order,
                                                                             NK, k, n);
    CU_LAUNCHED();
}

/* A thread per element (n, e) of dp (N, E): aux[e] plus, in j order, the g_j of the choices j of row n that
 * are e (fp32 adds, as the CPU's); g_j = dw[n, j], or with norm (dw[n, j] - Σ_i dw·w) / Σ_i p[n, ids[n, i]]
 * with both sums in double in i order. ids, dw, w (N, k); p (N, E); aux (E). */
static __global__ void k_router_grad(float *dp, const float *dw, const float *p, const float *w,
                                     const int *ids, const float *aux, int E, int k, bool norm,
                                     size_t total) {
    GRID_STRIDE(i, total) {
        size_t n = i / E;
        int e = (int)(i - n * E);
        const int *id = ids + n * k;
        const float *dwn = dw + n * k;
        double sum = 0.0, dot = 0.0; /* read only with norm: p and w are not needed without */
        if (norm)
            for (int j = 0; j < k; j++) sum += p[n * E + id[j]], dot += (double)dwn[j] * w[n * k + j];
        float v = aux[e];
        for (int j = 0; j < k; j++)
            if (id[j] == e) v = __fadd_rn(v, norm ? (float)((dwn[j] - dot) / sum) : dwn[j]);
        dp[i] = v;
    }
}

void mx_cuda_train_router_grad(mx_backend *be, float *dp, const float *dw, const float *p, const float *w,
                               const int *ids, const float *aux, int N, int E, int k, bool norm) {
    if (N <= 0 || E <= 0) return;
    cu_blocks *s = scratch(be);
    const int *d_ids = k > 0 ? stage_ints(be, ids, (size_t)N * k) : NULL; /* k = 0: dp = aux */
    s->aux = grow(s->aux, &s->aux_cap, (size_t)E);
    CU_CHECK(cudaMemcpyAsync(s->aux, aux, sizeof(float) * E, cudaMemcpyHostToDevice, stream_of(be)));
    size_t total = (size_t)N * E;
    k_router_grad<<<blocks_for(total, 256), 256, 0, stream_of(be)>>>(dp, dw, p, w, d_ids, s->aux, E, k, norm,
                                                                     total);
    CU_LAUNCHED();
}

/* part[chunk, e] = Σ_{n of chunk} x[n, e] in double, n ascending, for CS_CHUNKS chunks of rows; x (N, E) */
static __global__ void k_colsum_part(double *part, const float *x, int N, int E) {
    GRID_STRIDE(i, (size_t)CS_CHUNKS * E) {
        int e = (int)(i % E), chunk = (int)(i / E);
        int per = (N + CS_CHUNKS - 1) / CS_CHUNKS, n0 = chunk * per, n1 = min(N, n0 + per);
        double s = 0.0;
        for (int n = n0; n < n1; n++) s += x[(size_t)n * E + e];
        part[i] = s;
    }
}

void mx_cuda_train_colsum(mx_backend *be, double *out, const float *x, int N, int E) {
    if (E <= 0) return;
    if (N <= 0) {
        for (int e = 0; e < E; e++) out[e] = 0.0;
        return;
    }
    size_t np = (size_t)CS_CHUNKS * E;
    double *part = part_buf(be, np + E), *sums = part + np; /* partials (CS_CHUNKS, E), then the E sums */
    k_colsum_part<<<blocks_for(np, 256), 256, 0, stream_of(be)>>>(part, x, N, E);
    CU_LAUNCHED();
    k_dsum<<<(E + 127) / 128, 128, 0, stream_of(be)>>>(sums, part, CS_CHUNKS, E);
    CU_LAUNCHED();
    CU_CHECK(cudaMemcpyAsync(out, sums, sizeof(double) * E, cudaMemcpyDeviceToHost, stream_of(be)));
    CU_CHECK(cudaStreamSynchronize(stream_of(be)));
}
