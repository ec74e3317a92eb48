/* cuda_train_attn.cu: causal (optionally windowed) attention of training on CUDA, forward and backward in fp32
 * (backend_train.h: attn_fwd, attn_bwd), the portable form: one warp per query row (forward, dQ) or key row
 * (dK, dV), tiles of 32 keys or queries staged in shared memory, online softmax, the log-sum-exp kept for the
 * backward instead of the probabilities (FlashAttention-2's recurrences, on CUDA cores):
 *   forward:  s_j = scale q·k_j; out = Σ_j softmax(s)_j v_j; lse = log Σ_j exp(s_j)
 *   backward: p_j = exp(s_j - lse); Δ = dout·out; dq = scale Σ_j p_j (dout·v_j - Δ) k_j;
 *             dk_j += scale Σ_{t,h} p (dout_t·v_j - Δ_t) q_t; dv_j += Σ_{t,h} p dout_t
 * Every dK/dV row is owned by one warp, which sums its query heads (GQA) and queries in order: deterministic,
 * and accumulating, so a layer reading another's cache adds into the writer's gradient.
 * Shapes: q (B, T, H, Dk), k (B, T, G, Dk), v (B, T, G, Dv), out (B, T, H, Dv), lse (B, T, H); Dk, Dv <= 128.
 * While a head's (B, T, T) scores fit 1 GiB, the products run on tensor cores instead (the GEMM form below); the
 * warp kernels serve longer sequences. A fused Hopper wgmma/TMA form (like cuda_fa_wgmma.cu for inference) is the
 * next step for speed and memory. */
#include <math.h>

#include "cuda_train.h"

enum { AW = 8, TILE = 32, DMAX = 128, PAD = DMAX + 1 };

/* The keys query t sees: [first_key(t), t]. */
__device__ __forceinline__ int first_key(int t, int window) {
    return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
}

/* Keys and values j0 .. min(j0 + TILE - 1, j_last) of KV head g of batch b into shared memory (the whole block). */
__device__ __forceinline__ void load_kv_tile(float (*Ks)[PAD], float (*Vs)[PAD], const mx_tr_attn_shape &s,
                                             const float *k, const float *v, int b, int g, int j0,
                                             int j_last) {
    for (int e = threadIdx.x; e < TILE * DMAX; e += blockDim.x) {
        int jj = e / DMAX, d = e % DMAX, j = j0 + jj;
        if (j > j_last) continue;
        size_t row = ((size_t)b * s.T + j) * s.G + g;
        if (d < s.Dk) Ks[jj][d] = k[row * s.Dk + d];
        if (d < s.Dv) Vs[jj][d] = v[row * s.Dv + d];
    }
}

/* grid (ceil(T / AW), H, B), AW warps; warp w: query row t = blockIdx.x * AW + w of head h. */
static __global__ void __launch_bounds__(AW * 32)
    k_attn_fwd(mx_tr_attn_shape s, float *out, float *lse, const float *q, const float *k, const float *v) {
    __shared__ float Ks[TILE][PAD], Vs[TILE][PAD], Qs[AW][DMAX];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y, b = blockIdx.z;
    int g = h / (s.H / s.G), t0 = blockIdx.x * AW, t = t0 + w;
    int t_last = min(s.T - 1, t0 + AW - 1), lo = first_key(t0, s.window);
    bool live = t < s.T;
    if (live)
        for (int d = lane; d < s.Dk; d += 32) Qs[w][d] = q[(((size_t)b * s.T + t) * s.H + h) * s.Dk + d];
    float m = -INFINITY, l = 0.0f, o[DMAX / 32];
    for (int i = 0; i < DMAX / 32; i++) o[i] = 0.0f;
    int my_lo = live ? first_key(t, s.window) : 0;
    for (int j0 = lo; j0 <= t_last; j0 += TILE) {
        __syncthreads();
        load_kv_tile(Ks, Vs, s, k, v, b, g, j0, t_last);
        __syncthreads();
        if (!live) continue;
        int j = j0 + lane;
        bool ok = j >= my_lo && j <= t;
        float sc = -INFINITY;
        if (ok) {
            float acc = 0.0f;
            for (int d = 0; d < s.Dk; d++) acc += Qs[w][d] * Ks[lane][d];
            sc = acc * s.scale;
        }
        float mt = warp_max_f(sc);
        if (mt == -INFINITY) continue;
        float mn = fmaxf(m, mt), alpha = expf(m - mn), p = ok ? expf(sc - mn) : 0.0f;
        l = l * alpha + warp_sum_f(p);
        m = mn;
        for (int i = 0; i < DMAX / 32; i++) o[i] *= alpha;
        for (int jj = 0; jj < TILE; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            if (pj == 0.0f) continue;
            for (int i = 0; i < DMAX / 32; i++) {
                int d = lane + 32 * i;
                if (d < s.Dv) o[i] += pj * Vs[jj][d];
            }
        }
    }
    if (!live) return;
    size_t r = ((size_t)b * s.T + t) * s.H + h;
    for (int i = 0; i < DMAX / 32; i++) {
        int d = lane + 32 * i;
        if (d < s.Dv) out[r * s.Dv + d] = o[i] / l;
    }
    if (lane == 0) lse[r] = m + logf(l);
}

/* delta[b, t, h] = dout · out of the row (one warp per row and head). */
static __global__ void k_attn_delta(float *delta, const float *dout, const float *out, size_t rows, int Dv) {
    size_t r = blockIdx.x * (size_t)AW + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;
    float acc = 0.0f;
    for (int d = lane; d < Dv; d += 32) acc += dout[r * Dv + d] * out[r * Dv + d];
    acc = warp_sum_f(acc);
    if (lane == 0) delta[r] = acc;
}

/* dq, one warp per query row (the forward's tiling). */
static __global__ void __launch_bounds__(AW * 32)
    k_attn_dq(mx_tr_attn_shape s, float *dq, const float *dout, const float *q, const float *k,
              const float *v, const float *lse, const float *delta) {
    __shared__ float Ks[TILE][PAD], Vs[TILE][PAD], Qs[AW][DMAX], Os[AW][DMAX];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y, b = blockIdx.z;
    int g = h / (s.H / s.G), t0 = blockIdx.x * AW, t = t0 + w;
    int t_last = min(s.T - 1, t0 + AW - 1), lo = first_key(t0, s.window);
    bool live = t < s.T;
    size_t r = ((size_t)b * s.T + (live ? t : 0)) * s.H + h;
    if (live) {
        for (int d = lane; d < s.Dk; d += 32) Qs[w][d] = q[r * s.Dk + d];
        for (int d = lane; d < s.Dv; d += 32) Os[w][d] = dout[r * s.Dv + d];
    }
    float L = live ? lse[r] : 0.0f, D = live ? delta[r] : 0.0f, acc[DMAX / 32];
    for (int i = 0; i < DMAX / 32; i++) acc[i] = 0.0f;
    int my_lo = live ? first_key(t, s.window) : 0;
    for (int j0 = lo; j0 <= t_last; j0 += TILE) {
        __syncthreads();
        load_kv_tile(Ks, Vs, s, k, v, b, g, j0, t_last);
        __syncthreads();
        if (!live) continue;
        int j = j0 + lane;
        float ds = 0.0f;
        if (j >= my_lo && j <= t) {
            float sc = 0.0f, dp = 0.0f;
            for (int d = 0; d < s.Dk; d++) sc += Qs[w][d] * Ks[lane][d];
            for (int d = 0; d < s.Dv; d++) dp += Os[w][d] * Vs[lane][d];
            float p = expf(sc * s.scale - L);
            ds = p * (dp - D) * s.scale;
        }
        for (int jj = 0; jj < TILE; jj++) {
            float dj = __shfl_sync(0xffffffffu, ds, jj);
            if (dj == 0.0f) continue;
            for (int i = 0; i < DMAX / 32; i++) {
                int d = lane + 32 * i;
                if (d < s.Dk) acc[i] += dj * Ks[jj][d];
            }
        }
    }
    if (!live) return;
    for (int i = 0; i < DMAX / 32; i++) {
        int d = lane + 32 * i;
        if (d < s.Dk) dq[r * s.Dk + d] = acc[i];
    }
}

/* dk, dv: grid (ceil(T / AW), G, B); warp w owns key row j = blockIdx.x * AW + w of KV head g and sums, in order,
 * every query head of its group and every query that sees it (t in [j, j + W - 1] under a window). */
static __global__ void __launch_bounds__(AW * 32)
    k_attn_dkv(mx_tr_attn_shape s, float *dk, float *dv, const float *dout, const float *q, const float *k,
               const float *v, const float *lse, const float *delta) {
    __shared__ float Qs[TILE][PAD], Os[TILE][PAD], Ls[TILE], Ds[TILE], Kw[AW][DMAX], Vw[AW][DMAX];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = blockIdx.y, b = blockIdx.z, rep = s.H / s.G;
    int j0 = blockIdx.x * AW, j = j0 + w;
    bool live = j < s.T;
    int q_hi = s.window > 0 ? min(s.T - 1, min(s.T - 1, j0 + AW - 1) + s.window - 1) : s.T - 1;
    size_t kr = ((size_t)b * s.T + (live ? j : 0)) * s.G + g;
    if (live) {
        for (int d = lane; d < s.Dk; d += 32) Kw[w][d] = k[kr * s.Dk + d];
        for (int d = lane; d < s.Dv; d += 32) Vw[w][d] = v[kr * s.Dv + d];
    }
    float ak[DMAX / 32], av[DMAX / 32];
    for (int i = 0; i < DMAX / 32; i++) ak[i] = av[i] = 0.0f;
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        for (int t0 = j0; t0 <= q_hi; t0 += TILE) {
            __syncthreads();
            for (int e = threadIdx.x; e < TILE * DMAX; e += AW * 32) {
                int tt = e / DMAX, d = e % DMAX, t = t0 + tt;
                if (t > q_hi) continue;
                size_t r = ((size_t)b * s.T + t) * s.H + h;
                if (d < s.Dk) Qs[tt][d] = q[r * s.Dk + d];
                if (d < s.Dv) Os[tt][d] = dout[r * s.Dv + d];
                if (d == 0) Ls[tt] = lse[r], Ds[tt] = delta[r];
            }
            __syncthreads();
            if (!live) continue;
            int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t >= j && t <= q_hi && (s.window <= 0 || t - s.window + 1 <= j)) {
                float sc = 0.0f, dp = 0.0f;
                for (int d = 0; d < s.Dk; d++) sc += Qs[lane][d] * Kw[w][d];
                for (int d = 0; d < s.Dv; d++) dp += Os[lane][d] * Vw[w][d];
                p = expf(sc * s.scale - Ls[lane]);
                ds = p * (dp - Ds[lane]) * s.scale;
            }
            for (int tt = 0; tt < TILE; tt++) {
                float pt = __shfl_sync(0xffffffffu, p, tt), dt = __shfl_sync(0xffffffffu, ds, tt);
                if (pt == 0.0f && dt == 0.0f) continue;
                for (int i = 0; i < DMAX / 32; i++) {
                    int d = lane + 32 * i;
                    if (d < s.Dv) av[i] += pt * Os[tt][d];
                    if (d < s.Dk) ak[i] += dt * Qs[tt][d];
                }
            }
        }
    }
    if (!live) return;
    for (int i = 0; i < DMAX / 32; i++) {
        int d = lane + 32 * i;
        if (d < s.Dk) dk[kr * s.Dk + d] += ak[i];
        if (d < s.Dv) dv[kr * s.Dv + d] += av[i];
    }
}

/* ---- the tensor-core form: per head, batched over B, the scores as a (T, T) matrix ----
 * S = scale Q Kᵀ (cuBLAS), a masked softmax kernel (P and lse), O = P V; the backward recomputes P from lse,
 * dP = dO Vᵀ, dS = P ∘ (dP − Δ) · scale, dQ = dS K, dK += dSᵀ Q, dV += Pᵀ dO. Full T × T products (the
 * masked half computed and zeroed); every GEMM of a KV head's gradient accumulates in head order, so the result
 * stays deterministic. Used while a head's scores for the whole batch fit SCORE_BYTES. */
enum { SCORE_BYTES = 1 << 30 };

/* Row-major C (M, N) = alpha op(A) op(B) + beta C, batched with element strides sA, sB, sC (cuBLAS is column-major:
 * it computes Cᵀ = op(B)ᵀ op(A)ᵀ on the same memory). */
static void rm_gemm(mx_backend *be, bool ta, bool tb, int M, int N, int K, float alpha, const float *A,
                    int lda, long long sA, const float *B, int ldb, long long sB, float beta, float *C,
                    int ldc, long long sC, int batch) {
    cublasComputeType_t ct;
    cublasHandle_t h = mx_cuda_train_blas(be, &ct);
    LT_CHECK(cublasGemmStridedBatchedEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N,
                                        M, K, &alpha, B, CUDA_R_32F, ldb, sB, A, CUDA_R_32F, lda, sA, &beta,
                                        C, CUDA_R_32F, ldc, sC, batch, ct, CUBLAS_GEMM_DEFAULT));
}

/* Row t of batch b (blockIdx.y) of the scores S (B, T, T): the keys outside [first_key(t), t] are masked; with
 * lse_in (the backward) P = exp(S - lse), else P = softmax and lse_out[b, t, h] is written. One block per row. */
static __global__ void k_masked_softmax(float *S, int T, int H, int h, int window, const float *lse_in,
                                        float *lse_out) {
    __shared__ float red[32];
    int t = blockIdx.x, b = blockIdx.y;
    float *row = S + ((size_t)b * T + t) * T;
    int lo = first_key(t, window);
    size_t li = ((size_t)b * T + t) * H + h;
    float L;
    if (lse_in) {
        L = lse_in[li];
    } else {
        float mx = -INFINITY, sum = 0.0f;
        for (int j = lo + threadIdx.x; j <= t; j += blockDim.x) mx = fmaxf(mx, row[j]);
        mx = block_max_f(mx, red);
        for (int j = lo + threadIdx.x; j <= t; j += blockDim.x) sum += expf(row[j] - mx);
        L = mx + logf(block_sum_f(sum, red));
        if (threadIdx.x == 0) lse_out[li] = L;
    }
    for (int j = threadIdx.x; j < T; j += blockDim.x) row[j] = j >= lo && j <= t ? expf(row[j] - L) : 0.0f;
}

/* dS = P ∘ (dP − Δ_t) · scale, in place in dP (zero where P is). */
static __global__ void k_softmax_grad(float *dP, const float *P, const float *delta, int T, int H, int h,
                                      float scale) {
    int t = blockIdx.x, b = blockIdx.y;
    size_t r = ((size_t)b * T + t) * T;
    float D = delta[((size_t)b * T + t) * H + h];
    for (int j = threadIdx.x; j < T; j += blockDim.x) dP[r + j] = P[r + j] * (dP[r + j] - D) * scale;
}

static bool gemm_form(const mx_tr_attn_shape *s) {
    return (size_t)s->B * s->T * s->T * sizeof(float) <= SCORE_BYTES;
}

static void attn_fwd_gemm(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse, const float *q,
                          const float *k, const float *v) {
    cudaStream_t st = cu_ctx(be)->stream;
    int T = s->T, H = s->H, G = s->G, rep = H / G;
    float *S = NULL;
    CU_CHECK(cudaMallocAsync((void **)&S, sizeof(float) * s->B * T * T, st));
    for (int h = 0; h < H; h++) {
        int g = h / rep;
        rm_gemm(be, false, true, T, T, s->Dk, s->scale, q + (size_t)h * s->Dk, H * s->Dk,
                (long long)T * H * s->Dk, k + (size_t)g * s->Dk, G * s->Dk, (long long)T * G * s->Dk, 0.0f, S,
                T, (long long)T * T, s->B);
        k_masked_softmax<<<dim3(T, s->B), 256, 0, st>>>(S, T, H, h, s->window, NULL, lse);
        CU_LAUNCHED();
        rm_gemm(be, false, false, T, s->Dv, T, 1.0f, S, T, (long long)T * T, v + (size_t)g * s->Dv, G * s->Dv,
                (long long)T * G * s->Dv, 0.0f, out + (size_t)h * s->Dv, H * s->Dv, (long long)T * H * s->Dv,
                s->B);
    }
    CU_CHECK(cudaFreeAsync(S, st));
}

static void attn_bwd_gemm(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                          const float *dout, const float *q, const float *k, const float *v, const float *lse,
                          const float *delta) {
    cudaStream_t st = cu_ctx(be)->stream;
    int T = s->T, H = s->H, G = s->G, rep = H / G, Dk = s->Dk, Dv = s->Dv;
    long long sT = (long long)T * T, sq = (long long)T * H * Dk, so = (long long)T * H * Dv,
              sk = (long long)T * G * Dk, sv = (long long)T * G * Dv;
    float *P = NULL, *dP = NULL;
    CU_CHECK(cudaMallocAsync((void **)&P, sizeof(float) * s->B * T * T, st));
    CU_CHECK(cudaMallocAsync((void **)&dP, sizeof(float) * s->B * T * T, st));
    for (int h = 0; h < H; h++) {
        int g = h / rep;
        const float *qh = q + (size_t)h * Dk, *kg = k + (size_t)g * Dk, *vg = v + (size_t)g * Dv,
                    *doh = dout + (size_t)h * Dv;
        rm_gemm(be, false, true, T, T, Dk, s->scale, qh, H * Dk, sq, kg, G * Dk, sk, 0.0f, P, T, sT, s->B);
        k_masked_softmax<<<dim3(T, s->B), 256, 0, st>>>(P, T, H, h, s->window, lse, NULL);
        CU_LAUNCHED();
        rm_gemm(be, true, false, T, Dv, T, 1.0f, P, T, sT, doh, H * Dv, so, 1.0f, dv + (size_t)g * Dv, G * Dv,
                sv, s->B);
        rm_gemm(be, false, true, T, T, Dv, 1.0f, doh, H * Dv, so, vg, G * Dv, sv, 0.0f, dP, T, sT, s->B);
        k_softmax_grad<<<dim3(T, s->B), 256, 0, st>>>(dP, P, delta, T, H, h, s->scale);
        CU_LAUNCHED();
        rm_gemm(be, false, false, T, Dk, T, 1.0f, dP, T, sT, kg, G * Dk, sk, 0.0f, dq + (size_t)h * Dk,
                H * Dk, sq, s->B);
        rm_gemm(be, true, false, T, Dk, T, 1.0f, dP, T, sT, qh, H * Dk, sq, 1.0f, dk + (size_t)g * Dk, G * Dk,
                sk, s->B);
    }
    CU_CHECK(cudaFreeAsync(P, st));
    CU_CHECK(cudaFreeAsync(dP, st));
}

static void check_shape(const mx_tr_attn_shape *s) {
    if (s->Dk > DMAX || s->Dv > DMAX || s->G <= 0 || s->H % s->G)
        mx_cuda_fatal("training attention", "head dim above 128 or heads not a multiple of KV heads",
                      __FILE__, __LINE__);
}

/* bf16 training takes the fused kernels (cuda_train_flash.cu) unless MX_CUDA_TRAIN_ATTN=gemm. */
static bool flash(mx_backend *be) {
    return mx_cuda_train_bf16(be) && !cu_ctx(be)->tune.train_attn_gemm;
}

void mx_cuda_train_attn_fwd(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse, const float *q,
                            const float *k, const float *v) {
    if (flash(be) && mx_cuda_train_flash_fwd(be, s, out, lse, q, k, v)) return;
    if (gemm_form(s)) return attn_fwd_gemm(be, s, out, lse, q, k, v);
    check_shape(s);
    dim3 grid((s->T + AW - 1) / AW, s->H, s->B);
    k_attn_fwd<<<grid, AW * 32, 0, cu_ctx(be)->stream>>>(*s, out, lse, q, k, v);
    CU_LAUNCHED();
}

void mx_cuda_train_attn_bwd(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                            const float *dout, const float *q, const float *k, const float *v,
                            const float *out, const float *lse) {
    bool gemm = gemm_form(s);
    if (!gemm) check_shape(s);
    cudaStream_t st = cu_ctx(be)->stream;
    size_t rows = (size_t)s->B * s->T * s->H;
    float *delta = NULL;
    CU_CHECK(cudaMallocAsync((void **)&delta, sizeof(float) * rows, st));
    k_attn_delta<<<(unsigned)((rows + AW - 1) / AW), AW * 32, 0, st>>>(delta, dout, out, rows, s->Dv);
    CU_LAUNCHED();
    if (flash(be) && mx_cuda_train_flash_bwd(be, s, dq, dk, dv, dout, q, k, v, lse, delta)) {
        /* done: the fused kernels */
    } else if (gemm) {
        attn_bwd_gemm(be, s, dq, dk, dv, dout, q, k, v, lse, delta);
    } else {
        dim3 gq((s->T + AW - 1) / AW, s->H, s->B), gk((s->T + AW - 1) / AW, s->G, s->B);
        k_attn_dq<<<gq, AW * 32, 0, st>>>(*s, dq, dout, q, k, v, lse, delta);
        CU_LAUNCHED();
        k_attn_dkv<<<gk, AW * 32, 0, st>>>(*s, dk, dv, dout, q, k, v, lse, delta);
        CU_LAUNCHED();
    }
    CU_CHECK(cudaFreeAsync(delta, st));
}
