/* forward_train.c: the training forward pass in fp32 on the CPU, keeping what the backward pass needs
 * (model_train.h, mx_tacts), and its kernels (train_ops.h).
 * Pre-norm blocks: x_m = x + Wo·attn(rope(Wq·n1(x)), rope(Wk·n1(x)), Wv·n1(x)); x' = x_m + mlp(n2(x_m)).
 * Shapes: tokens (B, T) → x (N, C) → q (N, H*D), k/v (N, G*D) → att (N, H*D) → (N, C) → (N, F) → (N, C). */
#include <math.h>
#include <stdlib.h>

#include "mka_train.h"
#include "mla_train.h"
#include "model_train.h"
#include "op_profile.h"
#include "moe_train.h"
#include "mup.h"
#include "sgemm.h"
#include "train_ops.h"
#include "vmath.h"

void mx_tr_embed_fwd(float *out, const float *wte, const float *wpe, const int *tok, int B, int T, int C) {
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *e = wte + (size_t)tok[b * T + t] * C, *p = wpe ? wpe + (size_t)t * C : NULL;
            for (int i = 0; i < C; i++) o[i] = e[i] + (p ? p[i] : 0.0f);
        }
}

void mx_tr_layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                         int N, int C, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double mu = 0, var = 0;
        for (int i = 0; i < C; i++) mu += xr[i];
        mu /= C;
        for (int i = 0; i < C; i++) var += (xr[i] - mu) * (xr[i] - mu);
        var /= C;
        double r = 1.0 / sqrt(var + eps);
        for (int i = 0; i < C; i++) o[i] = (float)((xr[i] - mu) * r) * w[i] + (b ? b[i] : 0.0f);
        mean[n] = (float)mu;
        rstd[n] = (float)r;
    }
}

void mx_tr_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xr[i] * xr[i];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int i = 0; i < C; i++) o[i] = (float)(xr[i] * r) * w[i];
        rstd[n] = (float)r;
    }
}

void mx_tr_matmul_fwd(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    mx_tr_sgemm(false, true, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
    if (!b) return;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) y[(size_t)n * out + o] += b[o];
}

void mx_tr_rope(float *x, int B, int T, int nh, int D, float theta, bool inverse) {
    int half = D / 2;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < half; i++) {
                /* as Hugging Face: inv_freq and the angle in fp32 */
                float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / D));
                float ang = (float)t * inv_freq, c = cosf(ang), s = inverse ? -sinf(ang) : sinf(ang);
                for (int h = 0; h < nh; h++) {
                    float *v = x + (((size_t)b * T + t) * nh + h) * D;
                    float x0 = v[i], x1 = v[i + half];
                    v[i] = x0 * c - x1 * s;
                    v[i + half] = x0 * s + x1 * c;
                }
            }
        }
}

void mx_tr_gelu_fwd(float *out, const float *x, long n) {
    mx_vgelu_fwd(out, x, n);
}

void mx_tr_swiglu_fwd(float *out, const float *g, const float *u, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void mx_tr_add(float *out, const float *a, const float *b, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* ---- the model ---- */

static void norm_fwd(const mx_tmodel *m, float *out, float *mean, float *rstd, const float *x,
                     const mx_param *w, const mx_param *b, int N) {
    const mx_train_config *c = &m->cfg;
    if (c->arch == MX_TARCH_GPT2)
        MX_OP(m, layernorm_fwd, out, mean, rstd, x, w->w, b->w, N, c->d_model, c->norm_eps);
    else
        MX_OP(m, rmsnorm_fwd, out, rstd, x, w->w, N, c->d_model, c->norm_eps);
}

static const float *bias(const mx_param *p) {
    return p ? p->w : NULL;
}

static void attention_fwd(mx_tmodel *m, int l) {
    if (m->plan[l].kind == MX_ATTN_MLA) return mx_mla_tr_fwd(m, l);
    if (m->plan[l].kind != MX_ATTN_MHA) return mx_mka_tr_fwd(m, l);
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    const mx_tlayer *L = &m->layers[l];
    int B = a->B, T = a->T, N = B * T, C = c->d_model, H = c->n_head, G = c->n_kv_head, D = m->head_dim;
    int src = m->plan[l].kv_from;
    size_t nq = (size_t)N * H * D, nkv = (size_t)N * G * D;
    size_t sl = mx_tmodel_slot(m, l);
    float *ln = a->ln1 + sl * N * C, *q = a->q + sl * nq, *att = a->att + sl * nq;
    MX_OP(m, matmul_fwd, q, ln, L->wq->w, bias(L->bq), N, C, H * D);
    if (c->arch == MX_TARCH_LLAMA) MX_OP(m, rope, q, B, T, H, D, c->rope_theta, false);
    if (src == l) {
        float *k = a->k + l * nkv, *v = a->v + l * nkv;
        MX_OP(m, matmul_fwd, k, ln, L->wk->w, bias(L->bk), N, C, G * D);
        MX_OP(m, matmul_fwd, v, ln, L->wv->w, bias(L->bv), N, C, G * D);
        if (c->arch == MX_TARCH_LLAMA) MX_OP(m, rope, k, B, T, G, D, c->rope_theta, false);
    }
    mx_tr_attn_shape sh = {B, T, H, G, D, D, m->plan[l].window, mx_attn_scale(m, D)};
    MX_OP(m, attn_fwd, &sh, att, a->lse + sl * N * H, q, a->k + src * nkv, a->v + src * nkv);
    MX_OP(m, matmul_fwd, a->tmp, att, L->wo->w, bias(L->bo), N, H * D, C);
}

static void mlp_fwd(mx_tmodel *m, int l) {
    if (m->cfg.n_expert > 0) return mx_moe_tr_fwd(m, l);
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    const mx_tlayer *L = &m->layers[l];
    int N = a->B * a->T, C = c->d_model, F = c->d_ff;
    size_t nf = (size_t)N * F;
    size_t sl = mx_tmodel_slot(m, l);
    float *ln = a->ln2 + sl * N * C, *pre = a->pre + sl * nf, *act = a->dpre; /* not kept: mlp_bwd */
    if (c->arch == MX_TARCH_GPT2) {
        MX_OP(m, matmul_fwd, pre, ln, L->w_up->w, bias(L->b_up), N, C, F);
        MX_OP(m, gelu_fwd, act, pre, (long)nf);
    } else {
        float *up = a->up + sl * nf;
        MX_OP(m, matmul_fwd, pre, ln, L->w_gate->w, NULL, N, C, F);
        MX_OP(m, matmul_fwd, up, ln, L->w_up->w, NULL, N, C, F);
        MX_OP(m, swiglu_fwd, act, pre, up, (long)nf);
    }
    MX_OP(m, matmul_fwd, a->tmp, act, L->w_down->w, bias(L->b_down), N, F, C);
}

void mx_tmodel_layer_forward(mx_tmodel *m, int l) {
    mx_tacts *a = &m->acts;
    const mx_tlayer *L = &m->layers[l];
    int N = a->B * a->T;
    size_t nc = (size_t)N * m->cfg.d_model, sl = mx_tmodel_slot(m, l);
    float *x = a->x + l * nc, *xm = a->xm + sl * nc;
    norm_fwd(m, a->ln1 + sl * nc, a->ln1_mean + sl * N, a->ln1_rstd + sl * N, x, L->attn_norm, L->attn_norm_b,
             N);
    attention_fwd(m, l);
    MX_OP(m, add, xm, x, a->tmp, (long)nc);
    norm_fwd(m, a->ln2 + sl * nc, a->ln2_mean + sl * N, a->ln2_rstd + sl * N, xm, L->ffn_norm, L->ffn_norm_b,
             N);
    mlp_fwd(m, l);
    MX_OP(m, add, a->x + (l + 1) * nc, xm, a->tmp, (long)nc);
}

void mx_tmodel_forward(mx_tmodel *m, const int *tokens) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    int N = a->B * a->T, C = c->d_model;
    size_t nc = (size_t)N * C;
    MX_OP(m, embed_fwd, a->x, m->tok_embd->w, m->pos_embd ? m->pos_embd->w : NULL, tokens, a->B, a->T, C);
    for (int l = 0; l < c->n_layer; l++) mx_tmodel_layer_forward(m, l);
    norm_fwd(m, a->lnf, a->lnf_mean, a->lnf_rstd, a->x + (size_t)c->n_layer * nc, m->out_norm, m->out_norm_b,
             N);
}

double mx_tmodel_step(mx_tmodel *m, const int *tokens, const int *targets, bool backward, float grad_scale) {
    mx_tacts *a = &m->acts;
    int N = a->B * a->T;
    int C = m->cfg.d_model;
    if (m->ops->set_bf16) m->ops->set_bf16(m->be, m->bf16);
    mx_tmodel_forward(m, tokens);
    m->aux_loss = m->cfg.n_expert > 0 ? mx_moe_tr_aux(m, grad_scale) : 0.0;
    if (!targets) return 0.0;
    /* muP's output multiplier s: logits = (s · lnf) · Wᵀ, so d lnf = s · d(s · lnf) */
    float s = m->logit_scale, *x = a->lnf;
    if (s != 1.0f) {
        x = a->tmp;
        MX_OP(m, scale, x, a->lnf, s, (long)N * C);
    }
    /* the mean over N rows: the per-row gradient scale is grad_scale / N */
    double t0 = mx_op_begin(m);
    double loss =
        m->ops->head_xent(m->be, x, m->output->w, targets, N, C, m->cfg.vocab, grad_scale / (float)N,
                          backward ? a->dln : NULL, backward ? m->output->g : NULL);
    mx_op_end(m, "head_xent", t0);
    if (backward && s != 1.0f) MX_OP(m, scale, a->dln, a->dln, s, (long)N * C);
    if (backward) mx_tmodel_backward(m, tokens);
    return loss / N + m->cfg.moe_aux_weight * m->aux_loss;
}
