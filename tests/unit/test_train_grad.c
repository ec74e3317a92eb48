/* test_train_grad.c: the training kernels (src/train/train_ops.h) against finite differences in double.
 * For each op: random inputs, a random projection r of its output (loss L = Σ r·y), the fp32 backward given
 * dout = r, and central differences of an independent double-precision forward of the op written here. Each
 * fp32 forward is also checked against its double twin. Attention runs full, windowed, GQA and MQA.
 * The model-level test builds small models (GPT-2 and Llama shaped; windows; GQA; layers reading an earlier
 * layer's K/V) and checks every parameter's gradient by directional differences of the fp32 loss, along the
 * gradient and along a random direction: the shared-cache writer's K/V projections must receive the gradients
 * of every reader. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/rng.h"
#include "../../src/train/model_train.h"
#include "../../src/train/moe_train.h"
#include "../../src/train/optim.h"
#include "../../src/train/train_ops.h"

/* ---- helpers ---- */

static mx_rng RNG;

static float *randn(long n, float scale) {
    float *x = malloc(sizeof(float) * (size_t)n);
    for (long i = 0; i < n; i++) x[i] = scale * mx_rng_normal(&RNG);
    return x;
}

static double *widen(const float *x, long n) {
    double *d = malloc(sizeof(double) * (size_t)n);
    for (long i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* ||a - b|| / ||b|| over n values. */
static double rel_err(const float *a, const double *b, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return sqrt(num) / (sqrt(den) + 1e-300);
}

/* A scalar loss of the op's double forward, evaluated at the current contents of the context's arrays. */
typedef double (*loss_fn)(void *ctx);

/* Central differences of loss with respect to x[0..n) (x lives in ctx). */
static double *fd_grad(loss_fn f, void *ctx, double *x, long n) {
    double *g = malloc(sizeof(double) * (size_t)n), eps = 1e-5;
    for (long i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + eps;
        double lp = f(ctx);
        x[i] = keep - eps;
        double lm = f(ctx);
        x[i] = keep;
        g[i] = (lp - lm) / (2 * eps);
    }
    return g;
}

static double dot_r(const double *r, const double *y, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += r[i] * y[i];
    return s;
}

#define TOL 1e-4
#define CHECK(name, got, fd, n)                                                                              \
    do {                                                                                                     \
        double *fd_ = (fd);                                                                                  \
        double e_ = rel_err(got, fd_, n);                                                                    \
        cr_expect(e_ < TOL, "%s: relative error %.3e against finite differences", name, e_);                 \
        free(fd_);                                                                                           \
    } while (0)

TestSuite(train_grad, .init = NULL);

static void seed(uint64_t s) {
    mx_rng_seed(&RNG, s);
}

/* ---- norms ---- */

typedef struct {
    int N, C;
    bool layer;
    double *x, *w, *b, *r, *y;
} norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    for (int n = 0; n < c->N; n++) {
        const double *x = c->x + (size_t)n * c->C;
        double mu = 0, var = 0;
        for (int i = 0; i < c->C; i++) mu += x[i];
        mu = c->layer ? mu / c->C : 0;
        for (int i = 0; i < c->C; i++) var += (x[i] - mu) * (x[i] - mu);
        double rs = 1 / sqrt(var / c->C + 1e-5);
        for (int i = 0; i < c->C; i++)
            c->y[(size_t)n * c->C + i] = (x[i] - mu) * rs * c->w[i] + (c->layer ? c->b[i] : 0);
    }
    return dot_r(c->r, c->y, (long)c->N * c->C);
}

static void check_norm(bool layer) {
    seed(layer ? 1 : 2);
    int N = 5, C = 24;
    long nc = (long)N * C;
    float *x = randn(nc, 1.5f), *w = randn(C, 0.5f), *b = randn(C, 0.5f), *r = randn(nc, 1.0f);
    for (int i = 0; i < C; i++) w[i] += 1.0f, x[i] += 2.0f; /* an offset mean */
    float *y = malloc(sizeof(float) * nc), *mean = malloc(sizeof(float) * N),
          *rstd = malloc(sizeof(float) * N);
    float *dx = calloc(nc, sizeof(float)), *dw = calloc(C, sizeof(float)), *db = calloc(C, sizeof(float));
    norm_ctx c = {N,           C,           layer,        widen(x, nc),
                  widen(w, C), widen(b, C), widen(r, nc), malloc(sizeof(double) * nc)};
    if (layer) {
        mx_tr_layernorm_fwd(y, mean, rstd, x, w, b, N, C, 1e-5f);
        mx_tr_layernorm_bwd(dx, dw, db, r, x, mean, rstd, w, N, C);
    } else {
        mx_tr_rmsnorm_fwd(y, rstd, x, w, N, C, 1e-5f);
        mx_tr_rmsnorm_bwd(dx, dw, r, x, rstd, w, N, C);
    }
    norm_loss(&c);
    cr_expect(rel_err(y, c.y, nc) < 1e-6, "forward");
    CHECK("dx", dx, fd_grad(norm_loss, &c, c.x, nc), nc);
    CHECK("dw", dw, fd_grad(norm_loss, &c, c.w, C), C);
    if (layer) CHECK("db", db, fd_grad(norm_loss, &c, c.b, C), C);
    free(x), free(w), free(b), free(r), free(y), free(mean), free(rstd), free(dx), free(dw), free(db);
    free(c.x), free(c.w), free(c.b), free(c.r), free(c.y);
}

Test(train_grad, layernorm) {
    check_norm(true);
}
Test(train_grad, rmsnorm) {
    check_norm(false);
}

/* ---- matmul ---- */

typedef struct {
    int N, in, out;
    double *x, *W, *b, *r;
} mm_ctx;

static double mm_loss(void *p) {
    mm_ctx *c = p;
    double s = 0;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->out; o++) {
            double y = c->b ? c->b[o] : 0;
            for (int i = 0; i < c->in; i++) y += c->x[(size_t)n * c->in + i] * c->W[(size_t)o * c->in + i];
            s += c->r[(size_t)n * c->out + o] * y;
        }
    return s;
}

static void check_matmul(bool with_bias) {
    seed(3);
    int N = 6, in = 10, out = 7;
    float *x = randn(N * in, 1), *W = randn(out * in, 1), *b = randn(out, 1), *r = randn(N * out, 1);
    float *dx = malloc(sizeof(float) * N * in), *dW = calloc(out * in, sizeof(float)), *db = calloc(out, 4);
    mx_tr_matmul_bwd(dx, dW, with_bias ? db : NULL, r, x, W, N, in, out, false);
    mm_ctx c = {N,
                in,
                out,
                widen(x, N * in),
                widen(W, out * in),
                with_bias ? widen(b, out) : NULL,
                widen(r, N * out)};
    CHECK("dx", dx, fd_grad(mm_loss, &c, c.x, N * in), N * in);
    CHECK("dW", dW, fd_grad(mm_loss, &c, c.W, out * in), out * in);
    if (with_bias) CHECK("db", db, fd_grad(mm_loss, &c, c.b, out), out);
    /* accumulate adds to what dx held */
    float *dx2 = malloc(sizeof(float) * N * in);
    for (int i = 0; i < N * in; i++) dx2[i] = 1.0f;
    mx_tr_matmul_bwd(dx2, dW, NULL, r, x, W, N, in, out, true);
    for (int i = 0; i < N * in; i++) cr_expect(fabsf(dx2[i] - 1.0f - dx[i]) < 1e-5f);
    free(x), free(W), free(b), free(r), free(dx), free(dx2), free(dW), free(db);
    free(c.x), free(c.W), free(c.b), free(c.r);
}

Test(train_grad, matmul_bias) {
    check_matmul(true);
}
Test(train_grad, matmul_nobias) {
    check_matmul(false);
}

/* ---- activations ---- */

typedef struct {
    long n;
    bool swiglu;
    double *g, *u, *r;
} act_ctx;

static double act_loss(void *p) {
    act_ctx *c = p;
    double s = 0;
    for (long i = 0; i < c->n; i++) {
        double x = c->g[i], y;
        if (c->swiglu)
            y = x / (1 + exp(-x)) * c->u[i];
        else
            y = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        s += c->r[i] * y;
    }
    return s;
}

Test(train_grad, gelu) {
    seed(4);
    long n = 64;
    float *x = randn(n, 2), *r = randn(n, 1), *y = malloc(4 * n), *dx = malloc(4 * n);
    mx_tr_gelu_fwd(y, x, n);
    mx_tr_gelu_bwd(dx, r, x, n);
    act_ctx c = {n, false, widen(x, n), NULL, widen(r, n)};
    CHECK("dx", dx, fd_grad(act_loss, &c, c.g, n), n);
    free(x), free(r), free(y), free(dx), free(c.g), free(c.r);
}

Test(train_grad, swiglu) {
    seed(5);
    long n = 64;
    float *g = randn(n, 2), *u = randn(n, 1), *r = randn(n, 1), *dg = malloc(4 * n), *du = malloc(4 * n);
    mx_tr_swiglu_bwd(dg, du, r, g, u, n);
    act_ctx c = {n, true, widen(g, n), widen(u, n), widen(r, n)};
    CHECK("dg", dg, fd_grad(act_loss, &c, c.g, n), n);
    CHECK("du", du, fd_grad(act_loss, &c, c.u, n), n);
    free(g), free(u), free(r), free(dg), free(du), free(c.g), free(c.u), free(c.r);
}

/* ---- RoPE ---- */

typedef struct {
    int B, T, nh, D;
    double *x, *r;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    double s = 0;
    int half = c->D / 2;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->nh; h++)
                for (int i = 0; i < half; i++) {
                    size_t o = (((size_t)b * c->T + t) * c->nh + h) * c->D;
                    double ang = t / pow(10000.0, 2.0 * i / c->D), x0 = c->x[o + i], x1 = c->x[o + i + half];
                    s += c->r[o + i] * (x0 * cos(ang) - x1 * sin(ang)) +
                         c->r[o + i + half] * (x0 * sin(ang) + x1 * cos(ang));
                }
    return s;
}

Test(train_grad, rope) {
    seed(6);
    int B = 2, T = 7, nh = 3, D = 8;
    long n = (long)B * T * nh * D;
    float *x = randn(n, 1), *r = randn(n, 1), *dx = malloc(4 * n);
    memcpy(dx, r, 4 * n);
    mx_tr_rope(dx, B, T, nh, D, 10000.0f, true);
    rope_ctx c = {B, T, nh, D, widen(x, n), widen(r, n)};
    CHECK("dx", dx, fd_grad(rope_loss, &c, c.x, n), n);
    free(x), free(r), free(dx), free(c.x), free(c.r);
}

/* ---- attention ---- */

typedef struct {
    int B, T, H, G, Dk, Dv, W;
    double scale; /* of the scores */
    double *q, *k, *v, *r, *out, *lse;
} att_ctx;

static double att_loss(void *p) {
    att_ctx *c = p;
    int group = c->H / c->G, Dk = c->Dk, Dv = c->Dv;
    double s = 0, sc[64];
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->H; h++) {
                int lo = c->W > 0 ? (t - c->W + 1 > 0 ? t - c->W + 1 : 0) : 0, g = h / group;
                size_t row = ((size_t)b * c->T + t) * c->H + h;
                double mx = -INFINITY, sum = 0;
                for (int j = lo; j <= t; j++) {
                    const double *kr = c->k + (((size_t)b * c->T + j) * c->G + g) * Dk;
                    sc[j] = dot_r(c->q + row * Dk, kr, Dk) * c->scale;
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = lo; j <= t; j++) sum += exp(sc[j] - mx);
                c->lse[row] = mx + log(sum);
                for (int i = 0; i < Dv; i++) {
                    double o = 0;
                    for (int j = lo; j <= t; j++)
                        o += exp(sc[j] - mx) / sum * c->v[(((size_t)b * c->T + j) * c->G + g) * Dv + i];
                    c->out[row * Dv + i] = o;
                    s += c->r[row * Dv + i] * o;
                }
            }
    return s;
}

/* Dk == Dv == 8 with scale 0 runs the standard entry points (scale 1/sqrt(8)); otherwise the general form
 * (MLA's key and value widths, muP's 1/Dk). */
static void check_attention_shape(int H, int G, int W, int Dk, int Dv, double scale) {
    seed(7 + H * 10 + G + W * 100 + Dk * 1000);
    int B = 2, T = 9;
    long nq = (long)B * T * H * Dk, nk = (long)B * T * G * Dk, nv = (long)B * T * G * Dv,
         no = (long)B * T * H * Dv;
    float *q = randn(nq, 1), *k = randn(nk, 1), *v = randn(nv, 1), *r = randn(no, 1);
    float *out = malloc(4 * no), *lse = malloc(4 * B * T * H), *dq = malloc(4 * nq);
    float *dk = calloc(nk, 4), *dv = calloc(nv, 4);
    if (scale == 0) {
        mx_tr_attention_fwd(out, lse, q, k, v, B, T, H, G, Dk, W);
        mx_tr_attention_bwd(dq, dk, dv, r, q, k, v, out, lse, B, T, H, G, Dk, W);
        scale = 1 / sqrt((double)Dk);
    } else {
        mx_tr_attn_shape sh = {B, T, H, G, Dk, Dv, W, (float)scale};
        mx_tr_attn_fwd(&sh, out, lse, q, k, v);
        mx_tr_attn_bwd(&sh, dq, dk, dv, r, q, k, v, out, lse);
    }
    att_ctx c = {B,
                 T,
                 H,
                 G,
                 Dk,
                 Dv,
                 W,
                 scale,
                 widen(q, nq),
                 widen(k, nk),
                 widen(v, nv),
                 widen(r, no),
                 malloc(8 * no),
                 malloc(8 * B * T * H)};
    c.scale = (float)c.scale; /* the kernel's fp32 scale */
    att_loss(&c);
    cr_expect(rel_err(out, c.out, no) < 1e-6, "forward output");
    cr_expect(rel_err(lse, c.lse, (long)B * T * H) < 1e-6, "forward lse");
    CHECK("dq", dq, fd_grad(att_loss, &c, c.q, nq), nq);
    CHECK("dk", dk, fd_grad(att_loss, &c, c.k, nk), nk);
    CHECK("dv", dv, fd_grad(att_loss, &c, c.v, nv), nv);
    free(q), free(k), free(v), free(r), free(out), free(lse), free(dq), free(dk), free(dv);
    free(c.q), free(c.k), free(c.v), free(c.r), free(c.out), free(c.lse);
}

static void check_attention(int H, int G, int W) {
    check_attention_shape(H, G, W, 8, 8, 0);
}

Test(train_grad, attention_keys_wider_than_values) {
    check_attention_shape(3, 3, 0, 10, 6, 1 / sqrt(10.0));
}
Test(train_grad, attention_mup_scale_gqa_window) {
    check_attention_shape(4, 2, 4, 8, 8, 1 / 8.0);
}
Test(train_grad, attention_mha) {
    check_attention(4, 4, 0);
}
Test(train_grad, attention_gqa) {
    check_attention(4, 2, 0);
}
Test(train_grad, attention_mqa_window) {
    check_attention(4, 1, 3);
}
Test(train_grad, attention_window) {
    check_attention(2, 2, 1);
}

/* ---- embedding ---- */

Test(train_grad, embedding) {
    seed(8);
    int B = 2, T = 5, C = 4, V = 6, tok[10] = {1, 3, 1, 0, 5, 3, 3, 2, 1, 4};
    float *dout = randn(B * T * C, 1), *dwte = calloc(V * C, 4), *dwpe = calloc(T * C, 4);
    mx_tr_embed_bwd(dwte, dwpe, dout, tok, B, T, C);
    double ref_te[24] = {0}, ref_pe[20] = {0};
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < C; i++) {
                ref_te[tok[b * T + t] * C + i] += dout[(b * T + t) * C + i];
                ref_pe[t * C + i] += dout[(b * T + t) * C + i];
            }
    cr_expect(rel_err(dwte, ref_te, V * C) < 1e-6);
    cr_expect(rel_err(dwpe, ref_pe, T * C) < 1e-6);
    free(dout), free(dwte), free(dwpe);
}

/* ---- the head with cross-entropy ---- */

typedef struct {
    int N, C, V;
    const int *tgt;
    double *x, *W;
} xent_ctx;

static double xent_loss(void *p) {
    xent_ctx *c = p;
    double s = 0, lg[32];
    for (int n = 0; n < c->N; n++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < c->V; j++) {
            lg[j] = dot_r(c->x + (size_t)n * c->C, c->W + (size_t)j * c->C, c->C);
            mx = lg[j] > mx ? lg[j] : mx;
        }
        for (int j = 0; j < c->V; j++) sum += exp(lg[j] - mx);
        s += mx + log(sum) - lg[c->tgt[n]];
    }
    return s / c->N;
}

Test(train_grad, head_xent) {
    seed(9);
    int N = 70, C = 8, V = 11; /* more rows than one chunk */
    int *tgt = malloc(sizeof(int) * N);
    for (int n = 0; n < N; n++) tgt[n] = (int)(mx_rng_u64(&RNG) % V);
    float *x = randn(N * C, 1), *W = randn(V * C, 1), *dx = malloc(4 * N * C), *dW = calloc(V * C, 4);
    double loss = mx_tr_head_xent(x, W, tgt, N, C, V, 1.0f / N, dx, dW) / N;
    xent_ctx c = {N, C, V, tgt, widen(x, N * C), widen(W, V * C)};
    cr_expect(fabs(loss - xent_loss(&c)) < 1e-5 * fabs(loss), "loss %f vs %f", loss, xent_loss(&c));
    CHECK("dx", dx, fd_grad(xent_loss, &c, c.x, N * C), N * C);
    CHECK("dW", dW, fd_grad(xent_loss, &c, c.W, V * C), V * C);
    cr_expect(fabs(mx_tr_head_xent(x, W, tgt, N, C, V, 0, NULL, NULL) / N - loss) < 1e-9,
              "loss without backward");
    free(tgt), free(x), free(W), free(dx), free(dW), free(c.x), free(c.W);
}

/* ---- whole models: directional differences of the fp32 loss ---- */

static int TOKENS[64], TARGETS[64];

/* MoE: the experts chosen at the point of the gradient; a difference across a change of routing measures a
 * jump, not the derivative, and is retried with a smaller step. */
static int ROUTE[4096];
static bool ROUTE_CHANGED;

static size_t route_size(const mx_tmodel *m) {
    return (size_t)m->cfg.n_layer * m->acts.B * m->acts.T * m->cfg.n_expert_used;
}

static void route_compare(const mx_tmodel *m, bool save) {
    size_t per = route_size(m) / m->cfg.n_layer;
    for (int l = 0; l < m->cfg.n_layer && m->cfg.n_expert; l++) {
        const int *ids = mx_moe_tr_ids(m, l);
        if (save)
            memcpy(ROUTE + l * per, ids, sizeof(int) * per);
        else
            ROUTE_CHANGED |= memcmp(ROUTE + l * per, ids, sizeof(int) * per) != 0;
    }
}

static double model_loss(mx_tmodel *m) {
    double loss = mx_tmodel_step(m, TOKENS, TARGETS, false, 0.0f);
    route_compare(m, false);
    return loss;
}

/* The central difference (L(w + e·d) - L(w - e·d)) / 2e of the loss along a unit direction d of parameter p.
 */
static double central(mx_tmodel *m, mx_param *p, const float *keep, const float *dir, double e) {
    size_t n = (size_t)p->rows * p->cols;
    for (size_t i = 0; i < n; i++) p->w[i] = keep[i] + (float)(e * dir[i]);
    double lp = model_loss(m);
    for (size_t i = 0; i < n; i++) p->w[i] = keep[i] - (float)(e * dir[i]);
    double lm = model_loss(m);
    memcpy(p->w, keep, sizeof(float) * n);
    return (lp - lm) / (2 * e);
}

/* Richardson's extrapolation of two central differences (error O(e^4)) against g·d. */
static void check_direction(mx_tmodel *m, mx_param *p, const float *dir, const char *what) {
    size_t n = (size_t)p->rows * p->cols;
    double gd = 0, e = 2e-2, fd = 0;
    for (size_t i = 0; i < n; i++) gd += (double)p->g[i] * dir[i];
    float *keep = malloc(sizeof(float) * n);
    memcpy(keep, p->w, sizeof(float) * n);
    /* A routing change within the step (MoE only; dense models never set ROUTE_CHANGED, so noise stays 0 and the
     * bound below is the plain 1e-3 relative + 2e-5) forces a smaller step; there the fp32 loss's rounding, ~2 ulp
     * (1e-7 relative), divided by the smaller central step bounds what the difference can resolve. */
    double noise = 0;
    for (int tries = 0; tries < 4; tries++, e /= 4) {
        ROUTE_CHANGED = false;
        fd = (4 * central(m, p, keep, dir, e / 2) - central(m, p, keep, dir, e)) / 3;
        if (!ROUTE_CHANGED) break;
        noise = 1e-7 * fabs(model_loss(m)) / (e / 8);
    }
    cr_expect(!ROUTE_CHANGED, "%s of %s: the routing changes within a step of %g", what, p->name, e * 4);
    cr_expect(fabs(fd - gd) <= 1e-3 * fabs(gd) + 2e-5 + noise,
              "%s of %s: directional difference %.6e, gradient %.6e", what, p->name, fd, gd);
    free(keep);
}

/* A small model's config (2 x 8 tokens, vocab 16, width 16, 4 heads). */
static mx_train_config small_config(const char *arch, int n_layer, int n_kv_head, const char *plan,
                                    int window, bool tied) {
    mx_train_config c;
    mx_train_config_defaults(&c);
    c.arch = !strcmp(arch, "gpt2") ? MX_TARCH_GPT2 : MX_TARCH_LLAMA;
    c.vocab = 16, c.d_model = 16, c.n_layer = n_layer, c.n_head = 4, c.n_kv_head = n_kv_head, c.d_ff = 24;
    c.max_ctx = 16, c.batch = 2, c.seq = 8, c.window = window, c.tied_embeddings = tied, c.init_std = 0.3f;
    snprintf(c.plan, sizeof c.plan, "%s", plan);
    return c;
}

/* Every parameter's gradient of the model of config c against directional differences of its loss. */
static void check_model_config(mx_train_config c) {
    mx_tmodel *m;
    mx_err err = {0};
    cr_assert_eq(mx_tmodel_create(&c, &m, &err), MX_OK, "%s", err.msg);
    seed(11);
    for (int i = 0; i < 16; i++)
        TOKENS[i] = (int)(mx_rng_u64(&RNG) % 16), TARGETS[i] = (int)(mx_rng_u64(&RNG) % 16);
    for (int i = 0; i < m->n_params; i++) /* norms and biases away from 1 and 0 */
        if (m->params[i].rows == 1)
            for (int j = 0; j < m->params[i].cols; j++) m->params[i].w[j] += 0.2f * mx_rng_normal(&RNG);
    for (int i = 0; i < m->n_params; i++) { /* matrices muP starts at zero: random, so every path carries */
        mx_param *p = &m->params[i];
        size_t n = (size_t)p->rows * p->cols, nz = 0;
        for (size_t j = 0; j < n; j++) nz += p->w[j] != 0.0f;
        if (p->rows > 1 && nz == 0)
            for (size_t j = 0; j < n; j++) p->w[j] = 0.3f * mx_rng_normal(&RNG);
    }
    mx_zero_grads(m);
    mx_tmodel_step(m, TOKENS, TARGETS, true, 1.0f);
    cr_assert(route_size(m) <= sizeof ROUTE / sizeof ROUTE[0]);
    route_compare(m, true);
    for (int i = 0; i < m->n_params; i++) {
        mx_param *p = &m->params[i];
        size_t n = (size_t)p->rows * p->cols;
        float *dir = malloc(sizeof(float) * n);
        double norm = 0;
        for (size_t j = 0; j < n; j++) norm += (double)p->g[j] * p->g[j];
        if (norm > 1e-12) { /* along the gradient (the key bias has none: scores shift uniformly) */
            for (size_t j = 0; j < n; j++) dir[j] = (float)(p->g[j] / sqrt(norm));
            check_direction(m, p, dir, "gradient direction");
        }
        norm = 0;
        for (size_t j = 0; j < n; j++) dir[j] = mx_rng_normal(&RNG), norm += (double)dir[j] * dir[j];
        for (size_t j = 0; j < n; j++) dir[j] = (float)(dir[j] / sqrt(norm));
        check_direction(m, p, dir, "random direction");
        free(dir);
    }
    mx_tmodel_free(m);
}

static void check_model(const char *arch, int n_layer, int n_kv_head, const char *plan, int window,
                        bool tied) {
    check_model_config(small_config(arch, n_layer, n_kv_head, plan, window, tied));
}

Test(train_grad, model_gpt2) {
    check_model("gpt2", 2, 4, "", 0, true);
}
Test(train_grad, model_llama_gqa_untied) {
    check_model("llama", 2, 2, "", 0, false);
}
Test(train_grad, model_llama_shared_kv) {
    check_model("llama", 4, 2, "G,G@0,S,S@2", 3, false);
}
Test(train_grad, model_gpt2_shared_window) {
    check_model("gpt2", 3, 4, "S,S@0,G", 4, true);
}
Test(train_grad, model_llama_mqa_window) {
    check_model("llama", 2, 1, "S,S", 2, true);
}

/* ---- MLA, MKA, FastMKA, experts, muP ---- */

static mx_train_config mla_config(int q_rank, const char *plan) {
    mx_train_config c = small_config("llama", 2, 4, plan, 3, false);
    c.attn = MX_ATTN_MLA;
    c.mla_kv_rank = 12, c.mla_q_rank = q_rank, c.mla_rope_dim = 4, c.mla_nope_dim = 4, c.mla_v_dim = 6;
    return c;
}

Test(train_grad, model_mla_q_latent) {
    check_model_config(mla_config(8, ""));
}
Test(train_grad, model_mla_window_no_q_latent) {
    check_model_config(mla_config(0, "S,G"));
}

static mx_train_config mka_config(const char *arch, mx_attn_kind kind, int n_kv_head, const char *plan) {
    mx_train_config c = small_config(arch, 2, n_kv_head, plan, 3, true);
    c.attn = kind;
    return c;
}

Test(train_grad, model_mka_llama_gqa) {
    check_model_config(mka_config("llama", MX_ATTN_MKA, 2, ""));
}
Test(train_grad, model_mka_gpt2_window) {
    check_model_config(mka_config("gpt2", MX_ATTN_MKA, 4, "S,G"));
}
Test(train_grad, model_fastmka_llama) {
    check_model_config(mka_config("llama", MX_ATTN_FASTMKA, 2, "G,S"));
}
Test(train_grad, model_fastmka_gpt2) {
    check_model_config(mka_config("gpt2", MX_ATTN_FASTMKA, 4, ""));
}

static mx_train_config moe_config(int E, int k, bool norm, float aux) {
    mx_train_config c = small_config("llama", 2, 2, "", 0, false);
    c.n_expert = E, c.n_expert_used = k, c.expert_norm_topk = norm, c.moe_aux_weight = aux;
    c.d_ff = 8;
    return c;
}

Test(train_grad, model_moe_top2_norm_aux) {
    check_model_config(moe_config(4, 2, true, 0.5f));
}
Test(train_grad, model_moe_top2_raw) {
    check_model_config(moe_config(4, 2, false, 0.1f));
}
Test(train_grad, model_moe_top1_raw_aux) {
    check_model_config(moe_config(3, 1, false, 1.0f));
}

Test(train_grad, model_mup_llama) {
    mx_train_config c = small_config("llama", 2, 2, "", 0, false);
    c.mup = true, c.mup_base_width = 8;
    check_model_config(c);
}

Test(train_grad, model_mup_mla_moe) {
    mx_train_config c = mla_config(8, "");
    c.mup = true, c.mup_base_width = 4, c.n_expert = 3, c.n_expert_used = 2, c.d_ff = 8;
    check_model_config(c);
}

/* The load-balancing loss against its definition, in double from the model's own router inputs: over every
 * layer's rows, f_e = top-k choices of e / rows, P_e = mean probability, aux = E Σ f_e P_e. */
Test(train_grad, moe_aux_value) {
    mx_train_config c = moe_config(4, 2, true, 0.25f);
    mx_tmodel *m;
    mx_err err = {0};
    cr_assert_eq(mx_tmodel_create(&c, &m, &err), MX_OK, "%s", err.msg);
    seed(12);
    for (int i = 0; i < 16; i++) TOKENS[i] = (int)(mx_rng_u64(&RNG) % 16), TARGETS[i] = TOKENS[i];
    double loss = mx_tmodel_step(m, TOKENS, TARGETS, false, 0.0f), ce = 0, f[4] = {0}, P[4] = {0};
    int N = 16, C = c.d_model, E = 4, L = c.n_layer;
    for (int l = 0; l < L; l++) {
        const float *x = m->acts.ln2 + (size_t)l * N * C, *W = m->layers[l].router->w;
        for (int n = 0; n < N; n++) {
            double z[4], mx = -INFINITY, sum = 0;
            for (int e = 0; e < E; e++) {
                z[e] = 0;
                for (int i = 0; i < C; i++) z[e] += (double)x[n * C + i] * W[e * C + i];
                mx = z[e] > mx ? z[e] : mx;
            }
            for (int e = 0; e < E; e++) sum += exp(z[e] - mx);
            int first = 0, second = -1;
            for (int e = 0; e < E; e++) {
                P[e] += exp(z[e] - mx) / sum / (L * N);
                if (z[e] > z[first]) first = e;
            }
            for (int e = 0; e < E; e++)
                if (e != first && (second < 0 || z[e] > z[second])) second = e;
            f[first] += 1.0 / (L * N), f[second] += 1.0 / (L * N);
        }
    }
    double aux = 0;
    for (int e = 0; e < E; e++) aux += E * f[e] * P[e];
    cr_expect(fabs(m->aux_loss - aux) < 1e-5, "aux %.8f, reference %.8f", m->aux_loss, aux);
    cr_expect(aux > 0 && aux <= 4.0, "aux %.6f in (0, E]", aux);
    ce = mx_tr_head_xent(m->acts.lnf, m->output->w, TARGETS, N, C, c.vocab, 0, NULL, NULL) / N;
    cr_expect(fabs(loss - (ce + 0.25 * aux)) < 1e-5, "objective %.8f = ce %.8f + 0.25 aux", loss, ce);
    mx_tmodel_free(m);
}

/* muP's rules (mup.h): init std and learning-rate multipliers by tensor class, the attention and logit
 * scales, at width 4x the base. */
Test(train_grad, mup_rules) {
    mx_train_config c = small_config("llama", 2, 2, "", 0, false);
    c.d_model = 32, c.mup = true, c.mup_base_width = 8, c.init_std = 0.02f;
    mx_tmodel *m;
    mx_err err = {0};
    cr_assert_eq(mx_tmodel_create(&c, &m, &err), MX_OK, "%s", err.msg);
    struct {
        const char *name;
        float lr_mult, std; /* std < 0: not checked (a vector) */
    } want[] = {
        {"token_embd.weight", 1.0f, 0.02f},       {"blk.0.attn_q.weight", 0.25f, 0.0f},
        {"blk.0.attn_k.weight", 0.25f, 0.01f},    {"blk.1.ffn_up.weight", 0.25f, 0.01f},
        {"blk.1.ffn_down.weight", 0.25f, 0.005f}, /* / sqrt(2 n_layer) */
        {"blk.0.attn_norm.weight", 1.0f, -1.0f},  {"output.weight", 1.0f, 0.0f},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        mx_param *p = mx_tmodel_find(m, want[i].name);
        cr_assert(p, "%s", want[i].name);
        cr_expect(fabsf(p->lr_mult - want[i].lr_mult) < 1e-7f, "%s lr_mult %g", p->name, p->lr_mult);
        if (want[i].std < 0) continue;
        size_t n = (size_t)p->rows * p->cols;
        double ss = 0;
        for (size_t j = 0; j < n; j++) ss += (double)p->w[j] * p->w[j];
        double std = sqrt(ss / n);
        cr_expect(fabs(std - want[i].std) <= 0.1 * want[i].std + 1e-12, "%s std %g, want %g", p->name, std,
                  want[i].std);
    }
    cr_expect(fabsf(m->logit_scale - 0.25f) < 1e-7f);
    cr_expect(m->attn_scale_pow == 1.0f);
    mx_tmodel_free(m);
}
