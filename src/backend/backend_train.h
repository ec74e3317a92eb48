/* backend_train.h: the training op contract, beside the inference one (backend.h). The trainer
 * (src/train/forward_train.c, backward.c, optim.c) calls every numeric op of the dense blocks through this
 * table and never knows which device runs it. The CPU implementation (fp32, deterministic for a thread count)
 * is the reference; the CUDA one (src/backend/cuda/cuda_train*.cu) is tested against it op by op
 * (tests/cuda/test_cuda_train.c).
 *
 * Buffers are backend memory (be->alloc) unless marked HOST. Shapes (llm.c style): B batch, T sequence,
 * N = B*T rows, C model width, H query heads, G KV heads, D head dim, F MLP width, V vocabulary. A weight of
 * `out` rows and `in` columns is stored [out, in] (PyTorch's nn.Linear layout), so y = x · Wᵀ + b.
 * Parameter gradients (dW, db, dw) are ACCUMULATED (+=); input gradients are overwritten unless the op says it
 * accumulates. */
#ifndef MX_BACKEND_TRAIN_H
#define MX_BACKEND_TRAIN_H

#include <stdbool.h>
#include <stddef.h>

typedef struct mx_backend mx_backend;

/* Attention of one layer: keys of Dk, values of Dv elements, score scale (1/sqrt(Dk) standard, 1/Dk under
 * muP), window W > 0: query t sees keys t-W+1 .. t; 0: keys 0 .. t. q (B, T, H, Dk), k (B, T, G, Dk),
 * v (B, T, G, Dv), out (B, T, H, Dv), lse (B, T, H); query head h reads KV head h / (H / G). */
typedef struct {
    int B, T, H, G, Dk, Dv, window;
    float scale;
} mx_tr_attn_shape;

/* One parameter tensor as AdamW sees it: elements [off, off + n) of the flat buffers. */
typedef struct mx_tr_seg {
    size_t off, n;
    float lr_mult; /* the tensor's rate is lr * lr_mult (muP; 1 otherwise) */
    bool decay;    /* decoupled weight decay applies */
} mx_tr_seg;

/* One AdamW update (PyTorch's torch.optim.AdamW, term for term; t is the 1-based step). */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int t;
} mx_tr_adamw;

typedef struct mx_train_ops {
    /* ---- forward ---- */
    /* out[b, t, :] = wte[tok[b, t], :] (+ wpe[t, :] when wpe != NULL); tok HOST (B, T). out (N, C). */
    void (*embed_fwd)(mx_backend *be, float *out, const float *wte, const float *wpe, const int *tok, int B,
                      int T, int C);
    /* out = (x - mean) * rstd * w + b per row; saves mean, rstd (N). b may be NULL. */
    void (*layernorm_fwd)(mx_backend *be, float *out, float *mean, float *rstd, const float *x,
                          const float *w, const float *b, int N, int C, float eps);
    /* out = x * rstd * w, rstd = 1 / sqrt(mean(x²) + eps); saves rstd (N). */
    void (*rmsnorm_fwd)(mx_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int C,
                        float eps);
    /* y (N, out) = x (N, in) · Wᵀ (+ b), W (out, in), b (out) or NULL. */
    void (*matmul_fwd)(mx_backend *be, float *y, const float *x, const float *W, const float *b, int N,
                       int in, int out);
    /* Rotary embedding in place on x (B, T, nh, D), rotate-half pairs (i, i + D/2), position of row (b, t) = t;
     * inverse rotates by the negative angle (the backward of the rotation). */
    void (*rope)(mx_backend *be, float *x, int B, int T, int nh, int D, float theta, bool inverse);
    /* out = softmax(scale q kᵀ, causal, windowed) v and the natural log-sum-exp of each row (shapes above). */
    void (*attn_fwd)(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse, const float *q,
                     const float *k, const float *v);
    /* out = gelu(x), tanh approximation (GPT-2's "gelu_new"). */
    void (*gelu_fwd)(mx_backend *be, float *out, const float *x, long n);
    /* out = silu(g) * u */
    void (*swiglu_fwd)(mx_backend *be, float *out, const float *g, const float *u, long n);
    /* out = a + b (out may alias a) */
    void (*add)(mx_backend *be, float *out, const float *a, const float *b, long n);
    /* out = s * x (out may alias x) */
    void (*scale)(mx_backend *be, float *out, const float *x, float s, long n);

    /* ---- backward ---- */
    /* dwte[tok[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (dwpe may be NULL); tok HOST. Deterministic. */
    void (*embed_bwd)(mx_backend *be, float *dwte, float *dwpe, const float *dout, const int *tok, int B,
                      int T, int C);
    /* dx (N, C) += LayerNorm backward of dout; dw, db (C) accumulated (db may be NULL). */
    void (*layernorm_bwd)(mx_backend *be, float *dx, float *dw, float *db, const float *dout, const float *x,
                          const float *mean, const float *rstd, const float *w, int N, int C);
    /* dx (N, C) += RMSNorm backward of dout; dw (C) accumulated. */
    void (*rmsnorm_bwd)(mx_backend *be, float *dx, float *dw, const float *dout, const float *x,
                        const float *rstd, const float *w, int N, int C);
    /* Backward of y = x · Wᵀ + b: dx (N, in) = dy · W (+= when accumulate; dx NULL: not wanted);
     * dW (out, in) += dyᵀ · x; db (out) += Σ_rows dy (db may be NULL). */
    void (*matmul_bwd)(mx_backend *be, float *dx, float *dW, float *db, const float *dy, const float *x,
                       const float *W, int N, int in, int out, bool accumulate);
    /* Backward of attn_fwd: dq overwritten; dk, dv ACCUMULATED (a KV head's gradient sums over its query heads,
     * and over every layer that reads a shared cache). */
    void (*attn_bwd)(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                     const float *dout, const float *q, const float *k, const float *v, const float *out,
                     const float *lse);
    /* dx = gelu'(x) * dout */
    void (*gelu_bwd)(mx_backend *be, float *dx, const float *dout, const float *x, long n);
    /* dg = dout * u * silu'(g), du = dout * silu(g) */
    void (*swiglu_bwd)(mx_backend *be, float *dg, float *du, const float *dout, const float *g,
                       const float *u, long n);
    /* The output head with softmax cross-entropy, fused: logits = x (N, C) · Wᵀ (W (V, C)), loss = Σ_rows
     * -log p[target] (returned, summed in double; targets HOST). When dx != NULL also the backward of
     * loss · scale: dx (N, C) overwritten, dW (V, C) accumulated. Logits are formed in chunks of rows, never
     * N × V at once. */
    double (*head_xent)(mx_backend *be, const float *x, const float *W, const int *targets, int N, int C,
                        int V, float scale, float *dx, float *dW);

    /* ---- the MLA, MKA and MoE blocks (mla_train.c, mka_train.c, moe_train.c compose these with the ops
     * above; CPU: src/train/block_ops.c) ---- */
    /* dst[i*ds + j] = src[i*ss + j] (+= when accumulate) for j < w, i < rows: a column range of a row-major
     * buffer into another (strides in floats). dst and src do not overlap. */
    void (*copy_cols)(mx_backend *be, float *dst, size_t ds, const float *src, size_t ss, int w, long rows,
                      bool accumulate);
    /* out = tanh(x) (out may alias x) */
    void (*tanh_fwd)(mx_backend *be, float *out, const float *x, long n);
    /* dx = dout · (1 - y²) with y = tanh(x) kept from the forward (dx may alias dout) */
    void (*tanh_bwd)(mx_backend *be, float *dx, const float *dout, const float *y, long n);
    /* Softmax over each row of x (N, E), in place (max-subtracted; the CPU sums the exponentials in double). */
    void (*softmax_fwd)(mx_backend *be, float *x, int N, int E);
    /* Its backward, in place on dp (N, E): dz = p ⊙ (dp - Σ_e p·dp) per row. */
    void (*softmax_bwd)(mx_backend *be, float *dp, const float *p, int N, int E);
    /* The causal running mean: out[b, t] = mean(x[b, 0..t]) over rows of C, x and out (B, T, C). */
    void (*cummean_fwd)(mx_backend *be, float *out, const float *x, int B, int T, int C);
    /* Its backward, ACCUMULATED: dx[b, u] += Σ_{t >= u} dout[b, t] / (t + 1). */
    void (*cummean_bwd)(mx_backend *be, float *dx, const float *dout, int B, int T, int C);
    /* Three sources mixed by per-row weights r (N, 3): out[n, h, e] = r0·a[n, h, e] + r1·b[n, h, e] +
     * r2·bias[h / (H/G), e]; a, b, out (N, H, D), bias (G, D) or NULL (its term 0). */
    void (*mix3_fwd)(mx_backend *be, float *out, const float *r, const float *a, const float *b,
                     const float *bias, int N, int H, int G, int D);
    /* Its backward from dout (N, H, D): da = r0·dout and db = r1·dout (overwritten), dr (N, 3) = the row dots
     * (dout·a, dout·b, dout·bias, the last 0 without bias), dbias (G, D) += Σ_n r2 Σ_{h of group g} dout
     * (NULL when bias is). */
    void (*mix3_bwd)(mx_backend *be, float *da, float *db, float *dr, float *dbias, const float *dout,
                     const float *r, const float *a, const float *b, const float *bias, int N, int H, int G,
                     int D);
    /* The k <= E largest of each row of p (N, E) (ties: the lower index): ids (N, k) HOST in descending order, w
     * (N, k) their values, divided by their sum when norm. */
    void (*topk)(mx_backend *be, const float *p, int N, int E, int k, bool norm, int *ids, float *w);
    /* dst[i, :] = src[idx[i], :] for i < rows, rows of n floats; idx HOST. */
    void (*gather_rows)(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n);
    /* out[t, :] = Σ_j w[t*k + j] · src[idx[t*k + j], :] for t < N, summed in j order (w NULL: weights 1);
     * idx HOST (N*k), out (N, n) overwritten. */
    void (*combine_rows)(mx_backend *be, float *out, const float *src, const float *w, const int *idx, int N,
                         int k, int n);
    /* The backward of combine_rows by source row: row i of src served choice a = order[i] (= t*k + j), so
     * dsrc[i, :] = w[a] · dout[t, :] and dw[a] = dout[t, :] · src[i, :], for i < N*k (w NULL: weights 1);
     * order HOST. */
    void (*combine_rows_bwd)(mx_backend *be, float *dsrc, float *dw, const float *dout, const float *src,
                             const float *w, const int *order, int N, int k, int n);
    /* The MoE router's probability gradient, dp (N, E) overwritten: dp[n, e] = aux[e] + Σ_j [ids[n, j] = e] g_j,
     * with g_j = dw[n, j] for raw weights, or (dw[n, j] - Σ_i dw[n, i] w[n, i]) / Σ_i p[n, ids[n, i]] when the
     * weights w = p / Σ p were renormalized (norm). aux (E) and ids (N, k) HOST. */
    void (*router_grad)(mx_backend *be, float *dp, const float *dw, const float *p, const float *w,
                        const int *ids, const float *aux, int N, int E, int k, bool norm);
    /* out[e] = Σ_n x[n, e] for e < E, in double in a fixed order; out HOST. */
    void (*colsum)(mx_backend *be, double *out, const float *x, int N, int E);

    /* ---- buffers and the optimizer ---- */
    /* dst[0..n) (backend memory) = src[0..n) (HOST); be->to_host is the way back */
    void (*upload)(mx_backend *be, float *dst, const float *src, size_t n);
    /* x[0..n) = 0 */
    void (*zero)(mx_backend *be, float *x, size_t n);
    /* Σ x² in double (fixed order: deterministic) */
    double (*sumsq)(mx_backend *be, const float *x, size_t n);
    /* One AdamW update of every segment: w *= 1 - lr·lr_mult·wd (decayed segments); m = b1 m + (1-b1) g;
     * v = b2 v + (1-b2) g²; w -= (lr·lr_mult / (1 - b1^t)) · m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
    void (*adamw)(mx_backend *be, const mx_tr_seg *segs, int n_seg, float *w, const float *g, float *m,
                  float *v, const mx_tr_adamw *h);
    /* Optional (NULL: fp32 only). bf16 = true: the matmuls (and the head) multiply bf16-rounded inputs on
     * tensor cores with fp32 accumulation; norms, softmax, the loss and AdamW stay fp32. */
    void (*set_bf16)(mx_backend *be, bool bf16);
} mx_train_ops;

/* The CPU implementation (src/train/train_cpu_ops.c: the kernels of train_ops.h). */
extern const mx_train_ops mx_cpu_train_ops;

#endif
