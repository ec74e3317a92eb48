/* backward.c: the backward pass of training in fp32 on the CPU (the kernels of train_ops.h and the model's
 * pass, model_train.h). Layers run last to first; the residual gradient dx (N, C) flows through every block.
 * A layer that reads an earlier layer's K/V adds its dk, dv (N, G*D) into the writer's buffers; the writer,
 * reached later in the backward order, un-ropes the sum and back-propagates it through its Wk, Wv. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mka_train.h"
#include "mla_train.h"
#include "model_train.h"
#include "op_profile.h"
#include "moe_train.h"
#include "mup.h"
#include "sgemm.h"
#include "train_ops.h"
#include "vmath.h"

void mx_tr_embed_bwd(float *dwte, float *dwpe, const float *dout, const int *tok, int B, int T, int C) {
    /* parallel over columns: every thread owns its slice of each row, so rows repeat safely and in order */
#pragma omp parallel for
    for (int i = 0; i < C; i++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                float d = dout[((size_t)b * T + t) * C + i];
                dwte[(size_t)tok[b * T + t] * C + i] += d;
                if (dwpe) dwpe[(size_t)t * C + i] += d;
            }
}

/* dw[i] += Σ_n dout[n, i] * xhat[n, i]; db[i] += Σ_n dout[n, i]: parallel over columns (deterministic). */
static void norm_param_grads(float *dw, float *db, const float *dout, const float *x, const float *mean,
                             const float *rstd, int N, int C) {
#pragma omp parallel for
    for (int i = 0; i < C; i++) {
        float sw = 0.0f, sb = 0.0f;
        for (int n = 0; n < N; n++) {
            float d = dout[(size_t)n * C + i],
                  xhat = (x[(size_t)n * C + i] - (mean ? mean[n] : 0.0f)) * rstd[n];
            sw += d * xhat;
            sb += d;
        }
        dw[i] += sw;
        if (db) db[i] += sb;
    }
}

void mx_tr_layernorm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
                         const float *mean, const float *rstd, const float *w, int N, int C) {
    norm_param_grads(dw, db, dout, x, mean, rstd, N, C);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * C, *xr = x + (size_t)n * C;
        float mu = mean[n], r = rstd[n];
        double sg = 0, sgx = 0; /* mean of g = dout*w and of g*xhat */
        for (int i = 0; i < C; i++) {
            double g = (double)d[i] * w[i];
            sg += g;
            sgx += g * (xr[i] - mu) * r;
        }
        sg /= C;
        sgx /= C;
        float *o = dx + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            double xhat = (xr[i] - mu) * r;
            o[i] += (float)(r * ((double)d[i] * w[i] - sg - xhat * sgx));
        }
    }
}

void mx_tr_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                       const float *w, int N, int C) {
    norm_param_grads(dw, NULL, dout, x, NULL, rstd, N, C);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * C, *xr = x + (size_t)n * C;
        double r = rstd[n], sgx = 0;
        for (int i = 0; i < C; i++) sgx += (double)d[i] * w[i] * xr[i];
        sgx /= C;
        float *o = dx + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] += (float)(r * ((double)d[i] * w[i] - xr[i] * r * r * sgx));
    }
}

/* db (out) += Σ_rows dy: each thread sums a band of columns, rows in order (vectorizes along the row). */
static void bias_grad(float *db, const float *dy, int N, int out) {
    enum { BAND = 64 };
#pragma omp parallel for schedule(static)
    for (int o0 = 0; o0 < out; o0 += BAND) {
        int o1 = o0 + BAND < out ? o0 + BAND : out;
        float s[BAND] = {0};
        for (int n = 0; n < N; n++)
            for (int o = o0; o < o1; o++) s[o - o0] += dy[(size_t)n * out + o];
        for (int o = o0; o < o1; o++) db[o] += s[o - o0];
    }
}

void mx_tr_matmul_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N,
                      int in, int out, bool accumulate) {
    if (dx) mx_tr_sgemm(false, false, N, in, out, 1.0f, dy, out, W, in, accumulate ? 1.0f : 0.0f, dx, in);
    mx_tr_sgemm(true, false, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);
    if (db) bias_grad(db, dy, N, out);
}

void mx_tr_gelu_bwd(float *dx, const float *dout, const float *x, long n) {
    mx_vgelu_bwd(dx, dout, x, n);
}

void mx_tr_swiglu_bwd(float *dg, float *du, const float *dout, const float *g, const float *u, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + expf(-g[i])), silu = g[i] * sig;
        dg[i] = dout[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
        du[i] = dout[i] * silu;
    }
}

enum { XENT_CHUNK = 128 }; /* rows of logits formed at once (4 MB at V = 8192) */

/* Row r of a chunk: softmax cross-entropy of logits lr (V) against target y, returned; with grad, lr becomes
 * scale · (softmax - onehot(y)), the gradient of the logits. */
static double xent_row(float *lr, int V, int y, bool grad, float scale) {
    float mx = mx_vmax(lr, V), ly = lr[y];
    double sum = mx_vexp_sum(lr, lr, mx, V), loss = log(sum) + mx - ly;
    if (!grad) return loss;
    mx_vscale(lr, (float)(scale / sum), V);
    lr[y] -= scale;
    return loss;
}

double mx_tr_head_xent(const float *x, const float *W, const int *targets, int N, int C, int V, float scale,
                       float *dx, float *dW) {
    float *logits = malloc(sizeof(float) * (size_t)XENT_CHUNK * V);
    double loss = 0.0;
    if (!logits) return NAN;
    for (int r0 = 0; r0 < N; r0 += XENT_CHUNK) {
        int rows = N - r0 < XENT_CHUNK ? N - r0 : XENT_CHUNK;
        const float *xr = x + (size_t)r0 * C;
        mx_tr_sgemm(false, true, rows, V, C, 1.0f, xr, C, W, C, 0.0f, logits, V);
        double part = 0.0;
#pragma omp parallel for reduction(+ : part)
        for (int r = 0; r < rows; r++)
            part += xent_row(logits + (size_t)r * V, V, targets[r0 + r], dx != NULL, scale);
        loss += part;
        if (!dx) continue;
        mx_tr_sgemm(false, false, rows, C, V, 1.0f, logits, V, W, C, 0.0f, dx + (size_t)r0 * C, C);
        mx_tr_sgemm(true, false, V, C, rows, 1.0f, logits, V, xr, C, 1.0f, dW, C);
    }
    free(logits);
    return loss;
}

/* ---- the model ---- */

static float *grad(const mx_param *p) {
    return p ? p->g : NULL;
}

/* dx += backward of the layer's norm, given dout = gradient of its output. */
static void norm_bwd(mx_tmodel *m, float *dx, const float *dout, const float *x, const float *mean,
                     const float *rstd, const mx_param *w, const mx_param *b) {
    int N = m->acts.B * m->acts.T, C = m->cfg.d_model;
    if (m->cfg.arch == MX_TARCH_GPT2)
        MX_OP(m, layernorm_bwd, dx, w->g, b->g, dout, x, mean, rstd, w->w, N, C);
    else
        MX_OP(m, rmsnorm_bwd, dx, w->g, dout, x, rstd, w->w, N, C);
}

/* From dx = gradient of the layer's output: adds the MLP path's contribution to dx (then dx is the gradient
 * of x_m, the residual stream after attention). */
static void mlp_bwd(mx_tmodel *m, int l) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    const mx_tlayer *L = &m->layers[l];
    int N = a->B * a->T, C = c->d_model, F = c->d_ff;
    size_t nc = (size_t)N * C, nf = (size_t)N * F;
    size_t sl = mx_tmodel_slot(m, l);
    const float *ln = a->ln2 + sl * nc, *pre = a->pre + sl * nf;
    float *act = a->dpre;  /* the input of ffn_down, formed again (the forward does not keep it) */
    if (c->n_expert > 0) { /* the experts leave the gradient of the normed input in dln */
        mx_moe_tr_bwd(m, l);
    } else if (c->arch == MX_TARCH_GPT2) {
        MX_OP(m, gelu_fwd, act, pre, (long)nf);
        MX_OP(m, matmul_bwd, a->dact, L->w_down->g, grad(L->b_down), a->dx, act, L->w_down->w, N, F, C,
              false);
        MX_OP(m, gelu_bwd, a->dpre, a->dact, pre, (long)nf);
        MX_OP(m, matmul_bwd, a->dln, L->w_up->g, grad(L->b_up), a->dpre, ln, L->w_up->w, N, C, F, false);
    } else {
        const float *up = a->up + sl * nf;
        MX_OP(m, swiglu_fwd, act, pre, up, (long)nf);
        MX_OP(m, matmul_bwd, a->dact, L->w_down->g, grad(L->b_down), a->dx, act, L->w_down->w, N, F, C,
              false);
        MX_OP(m, swiglu_bwd, a->dpre, a->dup, a->dact, pre, up, (long)nf);
        MX_OP(m, matmul_bwd, a->dln, L->w_gate->g, NULL, a->dpre, ln, L->w_gate->w, N, C, F, false);
        MX_OP(m, matmul_bwd, a->dln, L->w_up->g, NULL, a->dup, ln, L->w_up->w, N, C, F, true);
    }
    norm_bwd(m, a->dx, a->dln, a->xm + sl * nc, a->ln2_mean + sl * N, a->ln2_rstd + sl * N, L->ffn_norm,
             L->ffn_norm_b);
}

/* From dx = gradient of x_m: adds the attention path's contribution (then dx is the gradient of the layer's
 * input). Readers leave their K/V gradients in the writer's dk, dv. */
static void attention_bwd(mx_tmodel *m, int l) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    const mx_tlayer *L = &m->layers[l];
    if (m->plan[l].kind != MX_ATTN_MHA) { /* MLA, MKA, FastMKA: dln = the gradient of the normed input */
        size_t nc = (size_t)a->B * a->T * c->d_model;
        if (m->plan[l].kind == MX_ATTN_MLA)
            mx_mla_tr_bwd(m, l);
        else
            mx_mka_tr_bwd(m, l);
        size_t rows = mx_tmodel_slot(m, l) * a->B * a->T;
        norm_bwd(m, a->dx, a->dln, a->x + l * nc, a->ln1_mean + rows, a->ln1_rstd + rows, L->attn_norm,
                 L->attn_norm_b);
        return;
    }
    int B = a->B, T = a->T, N = B * T, C = c->d_model, H = c->n_head, G = c->n_kv_head, D = m->head_dim;
    int src = m->plan[l].kv_from;
    bool rope = c->arch == MX_TARCH_LLAMA;
    size_t nc = (size_t)N * C, nq = (size_t)N * H * D, nkv = (size_t)N * G * D;
    size_t sl = mx_tmodel_slot(m, l);
    const float *ln = a->ln1 + sl * nc, *att = a->att + sl * nq;
    MX_OP(m, matmul_bwd, a->datt, L->wo->g, grad(L->bo), a->dx, att, L->wo->w, N, H * D, C, false);
    mx_tr_attn_shape sh = {B, T, H, G, D, D, m->plan[l].window, mx_attn_scale(m, D)};
    int slot = mx_tmodel_dkv_slot(m, src);
    float *dk = a->dk + slot * nkv, *dv = a->dv + slot * nkv;
    if (slot == 0) { /* nobody else adds to it: the scratch slot, cleared for this layer alone */
        MX_OP(m, zero, dk, nkv);
        MX_OP(m, zero, dv, nkv);
    }
    MX_OP(m, attn_bwd, &sh, a->dq, dk, dv, a->datt, a->q + sl * nq, a->k + src * nkv, a->v + src * nkv, att,
          a->lse + sl * N * H);
    if (rope) MX_OP(m, rope, a->dq, B, T, H, D, c->rope_theta, true);
    MX_OP(m, matmul_bwd, a->dln, L->wq->g, grad(L->bq), a->dq, ln, L->wq->w, N, C, H * D, false);
    if (src == l) { /* every reader (later layers) has added its part by now */
        if (rope) MX_OP(m, rope, dk, B, T, G, D, c->rope_theta, true);
        MX_OP(m, matmul_bwd, a->dln, L->wk->g, grad(L->bk), dk, ln, L->wk->w, N, C, G * D, true);
        MX_OP(m, matmul_bwd, a->dln, L->wv->g, grad(L->bv), dv, ln, L->wv->w, N, C, G * D, true);
    }
    norm_bwd(m, a->dx, a->dln, a->x + l * nc, a->ln1_mean + sl * N, a->ln1_rstd + sl * N, L->attn_norm,
             L->attn_norm_b);
}

void mx_tmodel_backward(mx_tmodel *m, const int *tokens) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    int N = a->B * a->T, C = c->d_model;
    size_t nc = (size_t)N * C;
    size_t shared = (size_t)mx_tmodel_shared_writers(m) * N * c->n_kv_head * m->head_dim;
    if (shared) { /* the slots of the writers that readers add to, after slot 0 */
        size_t nkv = (size_t)N * c->n_kv_head * m->head_dim;
        MX_OP(m, zero, a->dk + nkv, shared);
        MX_OP(m, zero, a->dv + nkv, shared);
    }
    MX_OP(m, zero, a->dx, nc);
    norm_bwd(m, a->dx, a->dln, a->x + (size_t)c->n_layer * nc, a->lnf_mean, a->lnf_rstd, m->out_norm,
             m->out_norm_b);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        if (c->recompute) mx_tmodel_layer_forward(m, l); /* this layer's activations, again */
        mlp_bwd(m, l);
        attention_bwd(m, l);
    }
    MX_OP(m, embed_bwd, m->tok_embd->g, m->pos_embd ? m->pos_embd->g : NULL, a->dx, tokens, a->B, a->T, C);
}
