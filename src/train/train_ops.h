/* train_ops.h: the fp32 CPU kernels of training, forward and backward, on plain row-major buffers.
 * Forward kernels live in forward_train.c, backward kernels in backward.c, attention's in attn_train.c. They
 * are kept here, in src/train/, with OpenMP, the own fp32 GEMM (sgemm.h) and vectorized row helpers (vmath.h)
 * rather than in the backend contract for now; every kernel is deterministic for a given thread count (no
 * atomics; reductions in a fixed order), which --resume relies on.
 *
 * Shapes (llm.c style): B batch, T sequence, N = B*T rows, C model width, H query heads, G KV heads,
 * D head dim, F MLP width, V vocabulary. A weight of `out` rows and `in` columns is stored [out, in]
 * (PyTorch's nn.Linear layout), so y = x · Wᵀ + b.
 *
 * Backward conventions: a "d" buffer is the gradient of the loss with respect to the buffer of the same name.
 * Parameter gradients (dW, db, dw) are always ACCUMULATED (+=); input gradients are overwritten unless the
 * kernel says it accumulates. */
#ifndef MX_TRAIN_OPS_H
#define MX_TRAIN_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include "../backend/backend_train.h" /* mx_tr_attn_shape */

/* ---- forward (forward_train.c) ---- */

/* out[b, t, :] = wte[tok[b, t], :] (+ wpe[t, :] when wpe != NULL). out (N, C). */
void mx_tr_embed_fwd(float *out, const float *wte, const float *wpe, const int *tok, int B, int T, int C);
/* LayerNorm over rows: out = (x - mean) * rstd * w + b; saves mean, rstd (N). */
void mx_tr_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                         int N, int C, float eps);
/* RMSNorm over rows: out = x * rstd * w, rstd = 1 / sqrt(mean(x²) + eps); saves rstd (N). */
void mx_tr_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps);
/* y (N, out) = x (N, in) · Wᵀ (+ b), W (out, in), b (out) or NULL. */
void mx_tr_matmul_fwd(float *y, const float *x, const float *W, const float *b, int N, int in, int out);
/* Rotary embedding in place on x (B, T, nh, D), rotate-half layout (pairs i, i + D/2, as Hugging Face),
 * position of row (b, t) = t. inverse = true rotates by the negative angle (the backward of the rotation). */
void mx_tr_rope(float *x, int B, int T, int nh, int D, float theta, bool inverse);
/* Causal attention (attn_train.c): q (B, T, H, D), k and v (B, T, G, D) (query head h reads KV head h / (H/G)),
 * window W > 0: query t sees keys t-W+1 .. t; 0: keys 0 .. t. out (B, T, H, D), lse (B, T, H) the natural
 * log-sum-exp of each row's scaled scores (kept for the backward instead of the probabilities). */
void mx_tr_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                         int H, int G, int D, int window);
/* The general form: keys of Dk, values of Dv elements, a given score scale (1/sqrt(Dk) standard, 1/Dk
 * under muP). q (B, T, H, Dk), k (B, T, G, Dk), v (B, T, G, Dv), out (B, T, H, Dv), lse (B, T, H). */
void mx_tr_attn_fwd(const mx_tr_attn_shape *s, float *out, float *lse, const float *q, const float *k,
                    const float *v);
/* out = gelu(x), tanh approximation (GPT-2's "gelu_new"), n elements. */
void mx_tr_gelu_fwd(float *out, const float *x, long n);
/* out = silu(g) * u, n elements. */
void mx_tr_swiglu_fwd(float *out, const float *g, const float *u, long n);
/* out = a + b, n elements (out may alias a). */
void mx_tr_add(float *out, const float *a, const float *b, long n);

/* ---- backward (backward.c) ---- */

/* dwte[tok[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (dwpe may be NULL). */
void mx_tr_embed_bwd(float *dwte, float *dwpe, const float *dout, const int *tok, int B, int T, int C);
/* dx (N, C) += LayerNorm backward of dout; dw, db (C) accumulated. */
void mx_tr_layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
                         const float *mean, const float *rstd, const float *w, int N, int C);
/* dx (N, C) += RMSNorm backward of dout; dw (C) accumulated. */
void mx_tr_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                       const float *w, int N, int C);
/* Backward of y = x · Wᵀ + b: dx (N, in) = dy · W (+= when accumulate; dx may be NULL: not wanted);
 * dW (out, in) += dyᵀ · x; db (out) += Σ_rows dy (db may be NULL). */
void mx_tr_matmul_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N,
                      int in, int out, bool accumulate);
/* Backward of the causal attention above: dq (B, T, H, D) overwritten; dk, dv (B, T, G, D) ACCUMULATED (a KV
 * head's gradient sums over its query heads, and over every layer that reads a shared cache). */
void mx_tr_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                         const float *v, const float *out, const float *lse, int B, int T, int H, int G,
                         int D, int window);
/* The general form of the backward (shapes as mx_tr_attn_fwd; dq overwritten, dk, dv accumulated). */
void mx_tr_attn_bwd(const mx_tr_attn_shape *s, float *dq, float *dk, float *dv, const float *dout,
                    const float *q, const float *k, const float *v, const float *out, const float *lse);
/* dx = gelu'(x) * dout. */
void mx_tr_gelu_bwd(float *dx, const float *dout, const float *x, long n);
/* dg = dout * u * silu'(g), du = dout * silu(g). */
void mx_tr_swiglu_bwd(float *dg, float *du, const float *dout, const float *g, const float *u, long n);

/* ---- the output head with softmax cross-entropy, fused (backward.c) ---- */

/* For N rows x (N, C) and head W (V, C): logits = x · Wᵀ, per-row softmax, loss = Σ -log p[target] (returned
 * as a sum over the N rows, in double). When dx != NULL also the backward of loss · scale: dx (N, C)
 * overwritten, dW (V, C) accumulated. Logits are formed chunk by chunk (never N*V floats at once). */
double mx_tr_head_xent(const float *x, const float *W, const int *targets, int N, int C, int V, float scale,
                       float *dx, float *dW);

/* ---- the block ops (block_ops.c), in the contract's own signatures: backend_train.h says what each does ---- */

void mx_tr_copy_cols(mx_backend *be, float *dst, size_t ds, const float *src, size_t ss, int w, long rows,
                     bool accumulate);
void mx_tr_tanh_fwd(mx_backend *be, float *out, const float *x, long n);
void mx_tr_tanh_bwd(mx_backend *be, float *dx, const float *dout, const float *y, long n);
void mx_tr_softmax_fwd(mx_backend *be, float *x, int N, int E);
void mx_tr_softmax_bwd(mx_backend *be, float *dp, const float *p, int N, int E);
void mx_tr_cummean_fwd(mx_backend *be, float *out, const float *x, int B, int T, int C);
void mx_tr_cummean_bwd(mx_backend *be, float *dx, const float *dout, int B, int T, int C);
void mx_tr_mix3_fwd(mx_backend *be, float *out, const float *r, const float *a, const float *b,
                    const float *bias, int N, int H, int G, int D);
void mx_tr_mix3_bwd(mx_backend *be, float *da, float *db, float *dr, float *dbias, const float *dout,
                    const float *r, const float *a, const float *b, const float *bias, int N, int H, int G,
                    int D);
void mx_tr_topk(mx_backend *be, const float *p, int N, int E, int k, bool norm, int *ids, float *w);
void mx_tr_gather_rows(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n);
void mx_tr_combine_rows(mx_backend *be, float *out, const float *src, const float *w, const int *idx, int N,
                        int k, int n);
void mx_tr_combine_rows_bwd(mx_backend *be, float *dsrc, float *dw, const float *dout, const float *src,
                            const float *w, const int *order, int N, int k, int n);
void mx_tr_router_grad(mx_backend *be, float *dp, const float *dw, const float *p, const float *w,
                       const int *ids, const float *aux, int N, int E, int k, bool norm);
void mx_tr_colsum(mx_backend *be, double *out, const float *x, int N, int E);

#endif
