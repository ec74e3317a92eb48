/* train_cpu_ops.c: the CPU implementation of the training op contract (backend/backend_train.h): the fp32
 * kernels of train_ops.h behind the table, and the optimizer's elementwise loops. Deterministic for a given
 * thread count (fixed reduction orders, no atomics). */
#include <math.h>
#include <string.h>

#include "../backend/backend_train.h"
#include "train_ops.h"

static void c_embed_fwd(mx_backend *be, float *out, const float *wte, const float *wpe, const int *tok, int B,
                        int T, int C) {
    mx_tr_embed_fwd(out, wte, wpe, tok, B, T, C);
}
static void c_layernorm_fwd(mx_backend *be, float *out, float *mean, float *rstd, const float *x,
                            const float *w, const float *b, int N, int C, float eps) {
    mx_tr_layernorm_fwd(out, mean, rstd, x, w, b, N, C, eps);
}
static void c_rmsnorm_fwd(mx_backend *be, float *out, float *rstd, const float *x, const float *w, int N,
                          int C, float eps) {
    mx_tr_rmsnorm_fwd(out, rstd, x, w, N, C, eps);
}
static void c_matmul_fwd(mx_backend *be, float *y, const float *x, const float *W, const float *b, int N,
                         int in, int out) {
    mx_tr_matmul_fwd(y, x, W, b, N, in, out);
}
static void c_rope(mx_backend *be, float *x, int B, int T, int nh, int D, float theta, bool inverse) {
    mx_tr_rope(x, B, T, nh, D, theta, inverse);
}
static void c_attn_fwd(mx_backend *be, const mx_tr_attn_shape *s, float *out, float *lse, const float *q,
                       const float *k, const float *v) {
    mx_tr_attn_fwd(s, out, lse, q, k, v);
}
static void c_gelu_fwd(mx_backend *be, float *out, const float *x, long n) {
    mx_tr_gelu_fwd(out, x, n);
}
static void c_swiglu_fwd(mx_backend *be, float *out, const float *g, const float *u, long n) {
    mx_tr_swiglu_fwd(out, g, u, n);
}
static void c_add(mx_backend *be, float *out, const float *a, const float *b, long n) {
    mx_tr_add(out, a, b, n);
}
static void c_scale(mx_backend *be, float *out, const float *x, float s, long n) {
#pragma omp parallel for if (n > 65536)
    for (long i = 0; i < n; i++) out[i] = s * x[i];
}
static void c_embed_bwd(mx_backend *be, float *dwte, float *dwpe, const float *dout, const int *tok, int B,
                        int T, int C) {
    mx_tr_embed_bwd(dwte, dwpe, dout, tok, B, T, C);
}
static void c_layernorm_bwd(mx_backend *be, float *dx, float *dw, float *db, const float *dout,
                            const float *x, const float *mean, const float *rstd, const float *w, int N,
                            int C) {
    mx_tr_layernorm_bwd(dx, dw, db, dout, x, mean, rstd, w, N, C);
}
static void c_rmsnorm_bwd(mx_backend *be, float *dx, float *dw, const float *dout, const float *x,
                          const float *rstd, const float *w, int N, int C) {
    mx_tr_rmsnorm_bwd(dx, dw, dout, x, rstd, w, N, C);
}
static void c_matmul_bwd(mx_backend *be, float *dx, float *dW, float *db, const float *dy, const float *x,
                         const float *W, int N, int in, int out, bool accumulate) {
    mx_tr_matmul_bwd(dx, dW, db, dy, x, W, N, in, out, accumulate);
}
static void c_attn_bwd(mx_backend *be, const mx_tr_attn_shape *s, float *dq, float *dk, float *dv,
                       const float *dout, const float *q, const float *k, const float *v, const float *out,
                       const float *lse) {
    mx_tr_attn_bwd(s, dq, dk, dv, dout, q, k, v, out, lse);
}
static void c_gelu_bwd(mx_backend *be, float *dx, const float *dout, const float *x, long n) {
    mx_tr_gelu_bwd(dx, dout, x, n);
}
static void c_swiglu_bwd(mx_backend *be, float *dg, float *du, const float *dout, const float *g,
                         const float *u, long n) {
    mx_tr_swiglu_bwd(dg, du, dout, g, u, n);
}
static double c_head_xent(mx_backend *be, const float *x, const float *W, const int *targets, int N, int C,
                          int V, float scale, float *dx, float *dW) {
    return mx_tr_head_xent(x, W, targets, N, C, V, scale, dx, dW);
}
static void c_upload(mx_backend *be, float *dst, const float *src, size_t n) {
    memcpy(dst, src, sizeof(float) * n);
}
static void c_zero(mx_backend *be, float *x, size_t n) {
    memset(x, 0, sizeof(float) * n);
}
static double c_sumsq(mx_backend *be, const float *x, size_t n) {
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

/* PyTorch's single-tensor AdamW, element by element in fp32. */
static void c_adamw(mx_backend *be, const mx_tr_seg *segs, int n_seg, float *w, const float *g, float *m,
                    float *v, const mx_tr_adamw *h) {
    float b1 = h->beta1, b2 = h->beta2, eps = h->eps;
    float bc1 = 1.0f - powf(b1, (float)h->t), bc2 = 1.0f - powf(b2, (float)h->t);
    float step_size = h->lr / bc1, bc2_sqrt = sqrtf(bc2);
    for (int i = 0; i < n_seg; i++) {
        const mx_tr_seg *s = &segs[i];
        float *pw = w + s->off, *pm = m + s->off, *pv = v + s->off;
        const float *pg = g + s->off;
        float plr = h->lr * s->lr_mult, ps = step_size * s->lr_mult;
        float decay = s->decay ? 1.0f - plr * h->weight_decay : 1.0f;
        size_t n = s->n;
#pragma omp parallel for if (n > 65536)
        for (size_t j = 0; j < n; j++) {
            float gj = pg[j];
            pw[j] *= decay;
            pm[j] = pm[j] * b1 + (1.0f - b1) * gj; /* PyTorch: lerp(m, g, 1 - b1) */
            pv[j] = pv[j] * b2 + (1.0f - b2) * gj * gj;
            pw[j] -= ps * (pm[j] / (sqrtf(pv[j]) / bc2_sqrt + eps));
        }
    }
}

const mx_train_ops mx_cpu_train_ops = {
    .embed_fwd = c_embed_fwd,
    .layernorm_fwd = c_layernorm_fwd,
    .rmsnorm_fwd = c_rmsnorm_fwd,
    .matmul_fwd = c_matmul_fwd,
    .rope = c_rope,
    .attn_fwd = c_attn_fwd,
    .gelu_fwd = c_gelu_fwd,
    .swiglu_fwd = c_swiglu_fwd,
    .add = c_add,
    .scale = c_scale,
    .embed_bwd = c_embed_bwd,
    .layernorm_bwd = c_layernorm_bwd,
    .rmsnorm_bwd = c_rmsnorm_bwd,
    .matmul_bwd = c_matmul_bwd,
    .attn_bwd = c_attn_bwd,
    .gelu_bwd = c_gelu_bwd,
    .swiglu_bwd = c_swiglu_bwd,
    .head_xent = c_head_xent,
    .copy_cols = mx_tr_copy_cols,
    .tanh_fwd = mx_tr_tanh_fwd,
    .tanh_bwd = mx_tr_tanh_bwd,
    .softmax_fwd = mx_tr_softmax_fwd,
    .softmax_bwd = mx_tr_softmax_bwd,
    .cummean_fwd = mx_tr_cummean_fwd,
    .cummean_bwd = mx_tr_cummean_bwd,
    .mix3_fwd = mx_tr_mix3_fwd,
    .mix3_bwd = mx_tr_mix3_bwd,
    .topk = mx_tr_topk,
    .gather_rows = mx_tr_gather_rows,
    .combine_rows = mx_tr_combine_rows,
    .combine_rows_bwd = mx_tr_combine_rows_bwd,
    .router_grad = mx_tr_router_grad,
    .colsum = mx_tr_colsum,
    .upload = c_upload,
    .zero = c_zero,
    .sumsq = c_sumsq,
    .adamw = c_adamw,
    .set_bf16 = NULL,
};
