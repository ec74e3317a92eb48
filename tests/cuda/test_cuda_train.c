/* test_cuda_train.c: every CUDA training op (backend_train.h) against its CPU twin on random data, then whole
 * training steps of small GPT-2 and Llama models (GQA, windows, shared K/V) on the GPU against the CPU, the
 * determinism of GPU steps, and the bf16 path's error. Run on a GPU machine: build/cuda/test_cuda_train.
 * Tolerances: fp32 ops within 2e-5 relative L2 of the CPU (different summation orders only); bf16 matmuls
 * within 1e-2 (inputs rounded to 8 mantissa bits: ~2^-9 relative per product, averaged down over the dot). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/backend.h"
#include "../../src/backend/backend_train.h"
#include "../../src/base/rng.h"
#include "../../src/train/model_train.h"
#include "../../src/train/optim.h"

static int failures, checks;

typedef struct {
    mx_backend *gpu;
    const mx_train_ops *g, *c;
    mx_rng rng;
} ctx;

static float *rnd(ctx *x, size_t n, float scale) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = scale * mx_rng_normal(&x->rng);
    return p;
}

static float *dev_of(ctx *x, const float *h, size_t n) {
    float *d = x->gpu->alloc(x->gpu, sizeof(float) * (n ? n : 1));
    x->g->upload(x->gpu, d, h, n);
    return d;
}

/* Relative L2 distance of the GPU buffer d from the CPU's h; records a check. */
static void expect_close(ctx *x, const char *what, const float *h, const float *d, size_t n, double tol) {
    float *back = malloc(sizeof(float) * (n ? n : 1));
    x->gpu->to_host(x->gpu, back, d, n);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)back[i] - h[i];
        num += e * e, den += (double)h[i] * h[i];
    }
    double rel = sqrt(num / (den > 0 ? den : 1e-30));
    bool ok = rel <= tol && isfinite(rel);
    checks++;
    if (!ok) failures++;
    printf("%s %-44s rel L2 %.2e (tol %.0e)\n", ok ? "PASS" : "FAIL", what, rel, tol);
    free(back);
}

static void expect_scalar(const char *what, double cpu, double gpu, double tol) {
    double rel = fabs(cpu - gpu) / (fabs(cpu) > 1e-30 ? fabs(cpu) : 1e-30);
    bool ok = rel <= tol;
    checks++;
    if (!ok) failures++;
    printf("%s %-44s cpu %.9g gpu %.9g rel %.2e (tol %.0e)\n", ok ? "PASS" : "FAIL", what, cpu, gpu, rel,
           tol);
}

static void test_norms(ctx *x) {
    int N = 77, C = 320;
    size_t n = (size_t)N * C;
    float *in = rnd(x, n, 1.0f), *w = rnd(x, C, 1.0f), *b = rnd(x, C, 0.5f), *dout = rnd(x, n, 1.0f);
    float *o = calloc(n, 4), *mean = calloc(N, 4), *rstd = calloc(N, 4);
    float *din = calloc(n, 4), *dw = rnd(x, C, 0.1f), *db = rnd(x, C, 0.1f);
    float *g_in = dev_of(x, in, n), *g_w = dev_of(x, w, C), *g_b = dev_of(x, b, C),
          *g_dout = dev_of(x, dout, n);
    float *g_o = dev_of(x, o, n), *g_mean = dev_of(x, mean, N), *g_rstd = dev_of(x, rstd, N);
    float *g_din = dev_of(x, din, n), *g_dw = dev_of(x, dw, C), *g_db = dev_of(x, db, C);
    x->c->layernorm_fwd(NULL, o, mean, rstd, in, w, b, N, C, 1e-5f);
    x->g->layernorm_fwd(x->gpu, g_o, g_mean, g_rstd, g_in, g_w, g_b, N, C, 1e-5f);
    expect_close(x, "layernorm_fwd out", o, g_o, n, 2e-5);
    expect_close(x, "layernorm_fwd rstd", rstd, g_rstd, N, 2e-5);
    x->c->layernorm_bwd(NULL, din, dw, db, dout, in, mean, rstd, w, N, C);
    x->g->layernorm_bwd(x->gpu, g_din, g_dw, g_db, g_dout, g_in, g_mean, g_rstd, g_w, N, C);
    expect_close(x, "layernorm_bwd dx (accumulated)", din, g_din, n, 2e-5);
    expect_close(x, "layernorm_bwd dw", dw, g_dw, C, 2e-5);
    expect_close(x, "layernorm_bwd db", db, g_db, C, 2e-5);
    x->c->rmsnorm_fwd(NULL, o, rstd, in, w, N, C, 1e-6f);
    x->g->rmsnorm_fwd(x->gpu, g_o, g_rstd, g_in, g_w, N, C, 1e-6f);
    expect_close(x, "rmsnorm_fwd out", o, g_o, n, 2e-5);
    x->c->rmsnorm_bwd(NULL, din, dw, dout, in, rstd, w, N, C);
    x->g->rmsnorm_bwd(x->gpu, g_din, g_dw, g_dout, g_in, g_rstd, g_w, N, C);
    expect_close(x, "rmsnorm_bwd dx (accumulated)", din, g_din, n, 2e-5);
    expect_close(x, "rmsnorm_bwd dw", dw, g_dw, C, 2e-5);
    float *bufs[] = {g_in, g_w, g_b, g_dout, g_o, g_mean, g_rstd, g_din, g_dw, g_db};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) x->gpu->free(x->gpu, bufs[i]);
    free(in), free(w), free(b), free(dout), free(o), free(mean), free(rstd), free(din), free(dw), free(db);
}

static void test_matmul(ctx *x, bool bf16) {
    int N = 96, in = 200, out = 136;
    float *X = rnd(x, (size_t)N * in, 1.0f), *W = rnd(x, (size_t)out * in, 0.1f), *b = rnd(x, out, 1.0f);
    float *dy = rnd(x, (size_t)N * out, 1.0f), *y = calloc((size_t)N * out, 4);
    float *dx = rnd(x, (size_t)N * in, 1.0f), *dW = rnd(x, (size_t)out * in, 1.0f), *db = rnd(x, out, 1.0f);
    float *gX = dev_of(x, X, (size_t)N * in), *gW = dev_of(x, W, (size_t)out * in), *gb = dev_of(x, b, out);
    float *gdy = dev_of(x, dy, (size_t)N * out), *gy = dev_of(x, y, (size_t)N * out);
    float *gdx = dev_of(x, dx, (size_t)N * in), *gdW = dev_of(x, dW, (size_t)out * in),
          *gdb = dev_of(x, db, out);
    double tol = bf16 ? 1e-2 : 2e-5;
    x->g->set_bf16(x->gpu, bf16);
    x->c->matmul_fwd(NULL, y, X, W, b, N, in, out);
    x->g->matmul_fwd(x->gpu, gy, gX, gW, gb, N, in, out);
    expect_close(x, bf16 ? "matmul_fwd (bf16)" : "matmul_fwd", y, gy, (size_t)N * out, tol);
    x->c->matmul_bwd(NULL, dx, dW, db, dy, X, W, N, in, out, true);
    x->g->matmul_bwd(x->gpu, gdx, gdW, gdb, gdy, gX, gW, N, in, out, true);
    expect_close(x, bf16 ? "matmul_bwd dx += (bf16)" : "matmul_bwd dx +=", dx, gdx, (size_t)N * in, tol);
    expect_close(x, bf16 ? "matmul_bwd dW += (bf16)" : "matmul_bwd dW +=", dW, gdW, (size_t)out * in, tol);
    expect_close(x, "matmul_bwd db +=", db, gdb, out, 2e-5);
    x->g->set_bf16(x->gpu, false);
    float *bufs[] = {gX, gW, gb, gdy, gy, gdx, gdW, gdb};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) x->gpu->free(x->gpu, bufs[i]);
    free(X), free(W), free(b), free(dy), free(y), free(dx), free(dW), free(db);
}

static void test_elementwise(ctx *x) {
    long n = 100003;
    float *a = rnd(x, n, 2.0f), *b = rnd(x, n, 2.0f), *d = rnd(x, n, 1.0f), *o = calloc(n, 4),
          *o2 = calloc(n, 4);
    float *ga = dev_of(x, a, n), *gb = dev_of(x, b, n), *gd = dev_of(x, d, n), *go = dev_of(x, o, n),
          *go2 = dev_of(x, o2, n);
    x->c->gelu_fwd(NULL, o, a, n), x->g->gelu_fwd(x->gpu, go, ga, n);
    expect_close(x, "gelu_fwd", o, go, n, 2e-6);
    x->c->gelu_bwd(NULL, o, d, a, n), x->g->gelu_bwd(x->gpu, go, gd, ga, n);
    expect_close(x, "gelu_bwd", o, go, n, 2e-6);
    x->c->swiglu_fwd(NULL, o, a, b, n), x->g->swiglu_fwd(x->gpu, go, ga, gb, n);
    expect_close(x, "swiglu_fwd", o, go, n, 2e-6);
    x->c->swiglu_bwd(NULL, o, o2, d, a, b, n), x->g->swiglu_bwd(x->gpu, go, go2, gd, ga, gb, n);
    expect_close(x, "swiglu_bwd dg", o, go, n, 2e-6);
    expect_close(x, "swiglu_bwd du", o2, go2, n, 2e-6);
    x->c->add(NULL, o, a, b, n), x->g->add(x->gpu, go, ga, gb, n);
    expect_close(x, "add", o, go, n, 0);
    x->c->scale(NULL, o, a, 0.37f, n), x->g->scale(x->gpu, go, ga, 0.37f, n);
    expect_close(x, "scale", o, go, n, 0);
    expect_scalar("sumsq", x->c->sumsq(NULL, a, n), x->g->sumsq(x->gpu, ga, n), 1e-12);
    /* RoPE forward and inverse on (B, T, nh, D) */
    int B = 2, T = 37, nh = 3, D = 16;
    size_t nr = (size_t)B * T * nh * D;
    memcpy(o, a, sizeof(float) * nr);
    x->g->upload(x->gpu, go, a, nr);
    x->c->rope(NULL, o, B, T, nh, D, 10000.0f, false), x->g->rope(x->gpu, go, B, T, nh, D, 10000.0f, false);
    expect_close(x, "rope", o, go, nr, 2e-6);
    x->c->rope(NULL, o, B, T, nh, D, 10000.0f, true), x->g->rope(x->gpu, go, B, T, nh, D, 10000.0f, true);
    expect_close(x, "rope inverse", o, go, nr, 2e-6);
    float *bufs[] = {ga, gb, gd, go, go2};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) x->gpu->free(x->gpu, bufs[i]);
    free(a), free(b), free(d), free(o), free(o2);
}

static void test_embed_and_head(ctx *x) {
    int B = 3, T = 41, C = 64, V = 301, N = B * T;
    float *wte = rnd(x, (size_t)V * C, 1.0f), *wpe = rnd(x, (size_t)T * C, 1.0f),
          *out = calloc((size_t)N * C, 4);
    int *tok = malloc(sizeof(int) * N), *tgt = malloc(sizeof(int) * N);
    for (int i = 0; i < N; i++)
        tok[i] = (int)(mx_rng_u64(&x->rng) % 17) * 13, tgt[i] = (int)(mx_rng_u64(&x->rng) % V);
    float *gwte = dev_of(x, wte, (size_t)V * C), *gwpe = dev_of(x, wpe, (size_t)T * C),
          *gout = dev_of(x, out, (size_t)N * C);
    x->c->embed_fwd(NULL, out, wte, wpe, tok, B, T, C),
        x->g->embed_fwd(x->gpu, gout, gwte, gwpe, tok, B, T, C);
    expect_close(x, "embed_fwd", out, gout, (size_t)N * C, 0);
    float *dout = rnd(x, (size_t)N * C, 1.0f), *gdout = dev_of(x, dout, (size_t)N * C);
    x->c->embed_bwd(NULL, wte, wpe, dout, tok, B, T, C),
        x->g->embed_bwd(x->gpu, gwte, gwpe, gdout, tok, B, T, C);
    expect_close(x, "embed_bwd dwte +=", wte, gwte, (size_t)V * C, 2e-6);
    expect_close(x, "embed_bwd dwpe +=", wpe, gwpe, (size_t)T * C, 2e-6);
    /* the fused head: loss, dx, dW */
    float *dx = calloc((size_t)N * C, 4), *dW = rnd(x, (size_t)V * C, 0.01f);
    float *gdx = dev_of(x, dx, (size_t)N * C), *gdW = dev_of(x, dW, (size_t)V * C);
    double lc = x->c->head_xent(NULL, out, wte, tgt, N, C, V, 0.5f, dx, dW);
    double lg = x->g->head_xent(x->gpu, gout, gwte, tgt, N, C, V, 0.5f, gdx, gdW);
    expect_scalar("head_xent loss", lc, lg, 1e-5);
    expect_close(x, "head_xent dx", dx, gdx, (size_t)N * C, 2e-5);
    expect_close(x, "head_xent dW +=", dW, gdW, (size_t)V * C, 2e-5);
    float *bufs[] = {gwte, gwpe, gout, gdout, gdx, gdW};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) x->gpu->free(x->gpu, bufs[i]);
    free(wte), free(wpe), free(out), free(tok), free(tgt), free(dout), free(dx), free(dW);
}

/* fp32: B x T scores beyond 1 GiB per head take the warp kernels, below it the tensor-core GEMM form. bf16: the
 * fused kernels of cuda_train_flash.cu (D 64 and 128) against the CPU's fp32, within bf16's rounding of Q, K, V,
 * dO, P and dS (1e-2 relative L2 for the output, 2e-2 for the gradients; lse 1e-3). */
static void test_attention(ctx *x, int B, int T, int H, int G, int D, int window, const char *name,
                           bool bf16) {
    mx_tr_attn_shape s = {B, T, H, G, D, D, window, 1.0f / sqrtf((float)D)};
    size_t nq = (size_t)s.B * s.T * H * D, nkv = (size_t)s.B * s.T * G * D, nl = (size_t)s.B * s.T * H;
    float *q = rnd(x, nq, 1.0f), *k = rnd(x, nkv, 1.0f), *v = rnd(x, nkv, 1.0f), *dout = rnd(x, nq, 1.0f);
    float *out = calloc(nq, 4), *lse = calloc(nl, 4), *dq = calloc(nq, 4), *dk = rnd(x, nkv, 0.1f),
          *dv = rnd(x, nkv, 0.1f);
    float *gq = dev_of(x, q, nq), *gk = dev_of(x, k, nkv), *gv = dev_of(x, v, nkv),
          *gdout = dev_of(x, dout, nq);
    float *gout = dev_of(x, out, nq), *glse = dev_of(x, lse, nl), *gdq = dev_of(x, dq, nq),
          *gdk = dev_of(x, dk, nkv), *gdv = dev_of(x, dv, nkv);
    char what[96];
    double t_out = bf16 ? 1e-2 : 2e-5, t_lse = bf16 ? 1e-3 : 2e-6, t_grad = bf16 ? 2e-2 : 2e-5;
    const char *p = bf16 ? " (bf16)" : "";
    x->g->set_bf16(x->gpu, bf16);
    x->c->attn_fwd(NULL, &s, out, lse, q, k, v), x->g->attn_fwd(x->gpu, &s, gout, glse, gq, gk, gv);
    snprintf(what, sizeof what, "attn_fwd out %s%s", name, p), expect_close(x, what, out, gout, nq, t_out);
    snprintf(what, sizeof what, "attn_fwd lse %s%s", name, p), expect_close(x, what, lse, glse, nl, t_lse);
    x->c->attn_bwd(NULL, &s, dq, dk, dv, dout, q, k, v, out, lse);
    x->g->attn_bwd(x->gpu, &s, gdq, gdk, gdv, gdout, gq, gk, gv, gout, glse);
    snprintf(what, sizeof what, "attn_bwd dq %s%s", name, p), expect_close(x, what, dq, gdq, nq, t_grad);
    snprintf(what, sizeof what, "attn_bwd dk += %s%s", name, p), expect_close(x, what, dk, gdk, nkv, t_grad);
    snprintf(what, sizeof what, "attn_bwd dv += %s%s", name, p), expect_close(x, what, dv, gdv, nkv, t_grad);
    x->g->set_bf16(x->gpu, false);
    float *bufs[] = {gq, gk, gv, gdout, gout, glse, gdq, gdk, gdv};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) x->gpu->free(x->gpu, bufs[i]);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
}

static void test_adamw(ctx *x) {
    size_t n = 5000;
    float *w = rnd(x, n, 1.0f), *g = rnd(x, n, 1.0f), *m = rnd(x, n, 0.1f), *v = rnd(x, n, 0.1f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *gw = dev_of(x, w, n), *gg = dev_of(x, g, n), *gm = dev_of(x, m, n), *gv = dev_of(x, v, n);
    mx_tr_seg segs[3] = {{0, 1000, 1.0f, true}, {1000, 3000, 0.5f, false}, {4000, 1000, 2.0f, true}};
    mx_tr_adamw h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7};
    x->c->adamw(NULL, segs, 3, w, g, m, v, &h), x->g->adamw(x->gpu, segs, 3, gw, gg, gm, gv, &h);
    expect_close(x, "adamw w", w, gw, n, 1e-6);
    expect_close(x, "adamw m", m, gm, n, 1e-6);
    expect_close(x, "adamw v", v, gv, n, 1e-6);
    float *bufs[] = {gw, gg, gm, gv};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) x->gpu->free(x->gpu, bufs[i]);
    free(w), free(g), free(m), free(v);
}

/* ---- the block ops of MLA, MKA and MoE (backend_train.h; CPU: src/train/block_ops.c) ----
 * Elementwise ops, copies, gathers, combines, top-k and the router gradient are computed operation by
 * operation as the CPU's (no FMA contraction on either side) and should match its bits; the tolerances leave
 * room for a ulp of tanhf and for sums in another order (double: the softmax, cummean, mix3 dots and dbias;
 * fp32: combine_rows_bwd's dots). Shapes are mostly not multiples of 32. */

static void free_dev(ctx *x, float **bufs, size_t n) {
    for (size_t i = 0; i < n; i++) x->gpu->free(x->gpu, bufs[i]);
}

/* Exact equality of n HOST ints (topk's ids); records a check. */
static void expect_same_ints(const char *what, const int *cpu, const int *gpu, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += cpu[i] != gpu[i];
    checks++;
    if (bad) failures++;
    printf("%s %-44s %zu of %zu differ\n", bad ? "FAIL" : "PASS", what, bad, n);
}

/* Relative L2 distance of two HOST double vectors; records a check. */
static void expect_close_d(const char *what, const double *cpu, const double *gpu, size_t n, double tol) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (gpu[i] - cpu[i]) * (gpu[i] - cpu[i]), den += cpu[i] * cpu[i];
    double rel = sqrt(num / (den > 0 ? den : 1e-30));
    bool ok = rel <= tol && isfinite(rel);
    checks++;
    if (!ok) failures++;
    printf("%s %-44s rel L2 %.2e (tol %.0e)\n", ok ? "PASS" : "FAIL", what, rel, tol);
}

/* Two GPU buffers of n floats with the same bits (determinism); records a check. */
static void expect_same_bits(ctx *x, const char *what, const float *d1, const float *d2, size_t n) {
    float *a = malloc(sizeof(float) * (n ? n : 1)), *b = malloc(sizeof(float) * (n ? n : 1));
    x->gpu->to_host(x->gpu, a, d1, n), x->gpu->to_host(x->gpu, b, d2, n);
    bool same = memcmp(a, b, sizeof(float) * n) == 0;
    checks++;
    if (!same) failures++;
    printf("%s %-44s %s\n", same ? "PASS" : "FAIL", what, same ? "identical bits" : "bits differ");
    free(a), free(b);
}

/* copy_cols between column ranges of two strided buffers (overwrite, then accumulate), tanh and its backward
 * (also in place). */
static void test_copy_tanh(ctx *x) {
    int rows = 37, w = 19;
    size_t ss = 50, ds = 41;
    float *src = rnd(x, rows * ss, 1.0f), *dst = rnd(x, rows * ds, 1.0f);
    float *gsrc = dev_of(x, src, rows * ss), *gdst = dev_of(x, dst, rows * ds);
    x->c->copy_cols(NULL, dst + 3, ds, src + 7, ss, w, rows, false);
    x->g->copy_cols(x->gpu, gdst + 3, ds, gsrc + 7, ss, w, rows, false);
    expect_close(x, "copy_cols", dst, gdst, rows * ds, 0);
    x->c->copy_cols(NULL, dst + 22, ds, src + 31, ss, w, rows, true);
    x->g->copy_cols(x->gpu, gdst + 22, ds, gsrc + 31, ss, w, rows, true);
    expect_close(x, "copy_cols += (accumulate)", dst, gdst, rows * ds, 0);
    long n = 100003;
    float *a = rnd(x, n, 2.0f), *d = rnd(x, n, 1.0f), *y = calloc(n, 4), *dx = calloc(n, 4);
    float *ga = dev_of(x, a, n), *gd = dev_of(x, d, n), *gy = dev_of(x, y, n), *gdx = dev_of(x, dx, n);
    x->c->tanh_fwd(NULL, y, a, n), x->g->tanh_fwd(x->gpu, gy, ga, n);
    expect_close(x, "tanh_fwd", y, gy, n, 1e-6);
    x->g->tanh_fwd(x->gpu, ga, ga, n); /* out aliasing x */
    expect_close(x, "tanh_fwd in place", y, ga, n, 1e-6);
    x->g->upload(x->gpu, gy, y, n); /* the backward from the CPU's y on both sides */
    x->c->tanh_bwd(NULL, dx, d, y, n), x->g->tanh_bwd(x->gpu, gdx, gd, gy, n);
    expect_close(x, "tanh_bwd", dx, gdx, n, 1e-6);
    x->g->tanh_bwd(x->gpu, gd, gd, gy, n); /* dx aliasing dout */
    expect_close(x, "tanh_bwd in place", dx, gd, n, 1e-6);
    float *bufs[] = {gsrc, gdst, ga, gd, gy, gdx};
    free_dev(x, bufs, sizeof bufs / sizeof *bufs);
    free(src), free(dst), free(a), free(d), free(y), free(dx);
}

/* softmax over rows of (N, E) and its backward (from the CPU's p on both sides) */
static void test_softmax(ctx *x, int N, int E) {
    size_t n = (size_t)N * E;
    float *p = rnd(x, n, 3.0f), *dp = rnd(x, n, 1.0f);
    float *gp = dev_of(x, p, n), *gdp = dev_of(x, dp, n);
    char what[96];
    x->c->softmax_fwd(NULL, p, N, E), x->g->softmax_fwd(x->gpu, gp, N, E);
    snprintf(what, sizeof what, "softmax_fwd N%d E%d", N, E), expect_close(x, what, p, gp, n, 1e-6);
    x->g->upload(x->gpu, gp, p, n);
    x->c->softmax_bwd(NULL, dp, p, N, E), x->g->softmax_bwd(x->gpu, gdp, gp, N, E);
    snprintf(what, sizeof what, "softmax_bwd N%d E%d", N, E), expect_close(x, what, dp, gdp, n, 1e-6);
    float *bufs[] = {gp, gdp};
    free_dev(x, bufs, 2);
    free(p), free(dp);
}

/* the causal running mean of (B, T, C) and its accumulating backward */
static void test_cummean(ctx *x, int B, int T, int C) {
    size_t n = (size_t)B * T * C;
    float *in = rnd(x, n, 1.0f), *out = calloc(n, 4), *dout = rnd(x, n, 1.0f), *dx = rnd(x, n, 1.0f);
    float *gin = dev_of(x, in, n), *gout = dev_of(x, out, n), *gdout = dev_of(x, dout, n),
          *gdx = dev_of(x, dx, n);
    char what[96];
    x->c->cummean_fwd(NULL, out, in, B, T, C), x->g->cummean_fwd(x->gpu, gout, gin, B, T, C);
    snprintf(what, sizeof what, "cummean_fwd B%d T%d C%d", B, T, C),
        expect_close(x, what, out, gout, n, 1e-6);
    x->c->cummean_bwd(NULL, dx, dout, B, T, C), x->g->cummean_bwd(x->gpu, gdx, gdout, B, T, C);
    snprintf(what, sizeof what, "cummean_bwd dx += B%d T%d C%d", B, T, C);
    expect_close(x, what, dx, gdx, n, 1e-6);
    float *bufs[] = {gin, gout, gdout, gdx};
    free_dev(x, bufs, 4);
    free(in), free(out), free(dout), free(dx);
}

/* mix3 forward and backward, with a bias (G, D) and dbias, or both NULL (dbias then untouched); the backward
 * twice on the GPU: the same bits */
static void test_mix3(ctx *x, int N, int H, int G, int D, bool with_bias) {
    size_t n = (size_t)N * H * D, nb = (size_t)G * D;
    float *r = rnd(x, (size_t)N * 3, 1.0f), *a = rnd(x, n, 1.0f), *b = rnd(x, n, 1.0f),
          *bias = with_bias ? rnd(x, nb, 1.0f) : NULL, *dout = rnd(x, n, 1.0f), *out = calloc(n, 4),
          *da = rnd(x, n, 1.0f), *db = rnd(x, n, 1.0f), *dr = calloc((size_t)N * 3, 4),
          *dbias = rnd(x, nb, 1.0f);
    float *gr = dev_of(x, r, (size_t)N * 3), *ga = dev_of(x, a, n), *gb = dev_of(x, b, n),
          *gbias = with_bias ? dev_of(x, bias, nb) : NULL, *gdout = dev_of(x, dout, n),
          *gout = dev_of(x, out, n), *gda = dev_of(x, da, n), *gdb = dev_of(x, db, n),
          *gdr = dev_of(x, dr, (size_t)N * 3), *gdbias = dev_of(x, dbias, nb),
          *gdr2 = dev_of(x, dr, (size_t)N * 3), *gdbias2 = dev_of(x, dbias, nb);
    char what[96], shape[48];
    snprintf(shape, sizeof shape, "N%d H%d G%d D%d%s", N, H, G, D, with_bias ? "" : " no bias");
    x->c->mix3_fwd(NULL, out, r, a, b, bias, N, H, G, D);
    x->g->mix3_fwd(x->gpu, gout, gr, ga, gb, gbias, N, H, G, D);
    snprintf(what, sizeof what, "mix3_fwd %s", shape), expect_close(x, what, out, gout, n, 1e-6);
    x->c->mix3_bwd(NULL, da, db, dr, with_bias ? dbias : NULL, dout, r, a, b, bias, N, H, G, D);
    x->g->mix3_bwd(x->gpu, gda, gdb, gdr, with_bias ? gdbias : NULL, gdout, gr, ga, gb, gbias, N, H, G, D);
    snprintf(what, sizeof what, "mix3_bwd da %s", shape), expect_close(x, what, da, gda, n, 1e-6);
    snprintf(what, sizeof what, "mix3_bwd db %s", shape), expect_close(x, what, db, gdb, n, 1e-6);
    snprintf(what, sizeof what, "mix3_bwd dr %s", shape), expect_close(x, what, dr, gdr, (size_t)N * 3, 1e-6);
    snprintf(what, sizeof what, "mix3_bwd dbias += %s", shape),
        expect_close(x, what, dbias, gdbias, nb, 1e-6);
    x->g->mix3_bwd(x->gpu, gda, gdb, gdr2, with_bias ? gdbias2 : NULL, gdout, gr, ga, gb, gbias, N, H, G, D);
    snprintf(what, sizeof what, "mix3_bwd dr twice %s", shape),
        expect_same_bits(x, what, gdr, gdr2, (size_t)N * 3);
    snprintf(what, sizeof what, "mix3_bwd dbias twice %s", shape),
        expect_same_bits(x, what, gdbias, gdbias2, nb);
    float *bufs[] = {gr, ga, gb, gdout, gout, gda, gdb, gdr, gdbias, gdr2, gdbias2};
    free_dev(x, bufs, sizeof bufs / sizeof *bufs);
    if (gbias) x->gpu->free(x->gpu, gbias);
    free(r), free(a), free(b), free(bias), free(dout), free(out), free(da), free(db), free(dr), free(dbias);
}

/* Rows of (N, E) for topk: distinct values in each row (a random permutation of E levels plus a little
 * noise), or with ties (three levels only) */
static float *topk_input(ctx *x, int N, int E, bool ties) {
    float *p = malloc(sizeof(float) * N * E);
    int *perm = malloc(sizeof(int) * E);
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++) perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(mx_rng_u64(&x->rng) % (uint64_t)(e + 1)), t = perm[e];
            perm[e] = perm[j], perm[j] = t;
        }
        for (int e = 0; e < E; e++)
            p[(size_t)n * E + e] = ties ? (float)(1 + mx_rng_u64(&x->rng) % 3) * 0.25f
                                        : (perm[e] + 0.5f * mx_rng_float(&x->rng)) / (float)E;
    }
    free(perm);
    return p;
}

static void test_topk(ctx *x, int N, int E, int k, bool norm, bool ties) {
    float *p = topk_input(x, N, E, ties), *w = calloc((size_t)N * k, 4), *gp = dev_of(x, p, (size_t)N * E),
          *gw = dev_of(x, w, (size_t)N * k);
    int *ids = malloc(sizeof(int) * N * k), *gids = malloc(sizeof(int) * N * k);
    char what[96];
    x->c->topk(NULL, p, N, E, k, norm, ids, w), x->g->topk(x->gpu, gp, N, E, k, norm, gids, gw);
    snprintf(what, sizeof what, "topk ids N%d E%d k%d%s%s", N, E, k, norm ? " norm" : "",
             ties ? " ties" : "");
    expect_same_ints(what, ids, gids, (size_t)N * k);
    snprintf(what, sizeof what, "topk w N%d E%d k%d%s%s", N, E, k, norm ? " norm" : "", ties ? " ties" : "");
    expect_close(x, what, w, gw, (size_t)N * k, 1e-6);
    float *bufs[] = {gp, gw};
    free_dev(x, bufs, 2);
    free(p), free(w), free(ids), free(gids);
}

static int *rnd_ints(ctx *x, size_t n, int below) {
    int *v = malloc(sizeof(int) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) v[i] = (int)(mx_rng_u64(&x->rng) % (uint64_t)below);
    return v;
}

/* gather_rows, combine_rows (weights and NULL) and combine_rows_bwd over rows of n floats */
static void test_gather_combine(ctx *x) {
    int N = 37, k = 2, n = 50, Ns = 80, NK = N * k;
    float *src = rnd(x, (size_t)Ns * n, 1.0f), *w = rnd(x, NK, 1.0f), *out = calloc((size_t)NK * n, 4);
    float *gsrc = dev_of(x, src, (size_t)Ns * n), *gw = dev_of(x, w, NK),
          *gout = dev_of(x, out, (size_t)NK * n);
    int *idx = rnd_ints(x, (size_t)N * 3, Ns); /* k = 2 below, and 3 for the unweighted combine */
    x->c->gather_rows(NULL, out, src, idx, 41, n), x->g->gather_rows(x->gpu, gout, gsrc, idx, 41, n);
    expect_close(x, "gather_rows", out, gout, (size_t)41 * n, 0);
    x->c->combine_rows(NULL, out, src, w, idx, N, k, n),
        x->g->combine_rows(x->gpu, gout, gsrc, gw, idx, N, k, n);
    expect_close(x, "combine_rows", out, gout, (size_t)N * n, 1e-6);
    x->c->combine_rows(NULL, out, src, NULL, idx, N, 3, n);
    x->g->combine_rows(x->gpu, gout, gsrc, NULL, idx, N, 3, n);
    expect_close(x, "combine_rows w NULL k3", out, gout, (size_t)N * n, 1e-6);
    /* the backward: src rows are the NK choices in a random order (order[i] = the choice row i served) */
    int *order = malloc(sizeof(int) * NK);
    for (int i = 0; i < NK; i++) order[i] = i;
    for (int i = NK - 1; i > 0; i--) {
        int j = (int)(mx_rng_u64(&x->rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    float *dout = rnd(x, (size_t)N * n, 1.0f), *dsrc = calloc((size_t)NK * n, 4), *dw = calloc(NK, 4);
    float *gdout = dev_of(x, dout, (size_t)N * n), *gdsrc = dev_of(x, dsrc, (size_t)NK * n),
          *gdw = dev_of(x, dw, NK);
    x->c->combine_rows_bwd(NULL, dsrc, dw, dout, src, w, order, N, k, n);
    x->g->combine_rows_bwd(x->gpu, gdsrc, gdw, gdout, gsrc, gw, order, N, k, n);
    expect_close(x, "combine_rows_bwd dsrc", dsrc, gdsrc, (size_t)NK * n, 1e-6);
    expect_close(x, "combine_rows_bwd dw", dw, gdw, NK, 1e-5);
    float *bufs[] = {gsrc, gw, gout, gdout, gdsrc, gdw};
    free_dev(x, bufs, sizeof bufs / sizeof *bufs);
    free(src), free(w), free(out), free(idx), free(order), free(dout), free(dsrc), free(dw);
}

/* router_grad from the CPU's softmax and top-k of random logits (N, E), with or without renormalization */
static void test_router_grad(ctx *x, int N, int E, int k, bool norm) {
    size_t n = (size_t)N * E;
    float *p = rnd(x, n, 2.0f), *w = calloc((size_t)N * k, 4), *dw = rnd(x, (size_t)N * k, 1.0f),
          *aux = rnd(x, E, 0.1f), *dp = calloc(n, 4);
    int *ids = malloc(sizeof(int) * N * k);
    x->c->softmax_fwd(NULL, p, N, E), x->c->topk(NULL, p, N, E, k, norm, ids, w);
    float *gp = dev_of(x, p, n), *gw = dev_of(x, w, (size_t)N * k), *gdw = dev_of(x, dw, (size_t)N * k),
          *gdp = dev_of(x, dp, n);
    char what[96];
    x->c->router_grad(NULL, dp, dw, p, w, ids, aux, N, E, k, norm);
    x->g->router_grad(x->gpu, gdp, gdw, gp, gw, ids, aux, N, E, k, norm);
    snprintf(what, sizeof what, "router_grad N%d E%d k%d%s", N, E, k, norm ? " norm" : "");
    expect_close(x, what, dp, gdp, n, 1e-6);
    float *bufs[] = {gp, gw, gdw, gdp};
    free_dev(x, bufs, 4);
    free(p), free(w), free(dw), free(aux), free(dp), free(ids);
}

/* colsum (HOST doubles) against the CPU, and twice on the GPU: the same bits */
static void test_colsum(ctx *x, int N, int E) {
    float *in = rnd(x, (size_t)N * E, 1.0f), *gin = dev_of(x, in, (size_t)N * E);
    double *c = malloc(sizeof(double) * E), *g = malloc(sizeof(double) * E), *g2 = malloc(sizeof(double) * E);
    char what[96];
    x->c->colsum(NULL, c, in, N, E), x->g->colsum(x->gpu, g, gin, N, E), x->g->colsum(x->gpu, g2, gin, N, E);
    snprintf(what, sizeof what, "colsum N%d E%d", N, E), expect_close_d(what, c, g, E, 1e-12);
    bool same = memcmp(g, g2, sizeof(double) * E) == 0;
    checks++, failures += !same;
    printf("%s %-44s %s\n", same ? "PASS" : "FAIL", "colsum twice", same ? "identical bits" : "bits differ");
    x->gpu->free(x->gpu, gin);
    free(in), free(c), free(g), free(g2);
}

/* Every block op with no rows (or width) launches nothing and fails nothing; colsum of no rows is zeros. */
static void test_blocks_empty(ctx *x) {
    float *d = x->gpu->alloc(x->gpu, 64); /* a valid address no op may touch */
    int ids[1] = {0};
    float aux[4] = {0};
    double cs[4] = {1, 1, 1, 1};
    mx_backend *be = x->gpu;
    const mx_train_ops *g = x->g;
    g->copy_cols(be, d, 4, d, 4, 0, 3, true), g->copy_cols(be, d, 4, d, 4, 3, 0, false);
    g->tanh_fwd(be, d, d, 0), g->tanh_bwd(be, d, d, d, 0);
    g->softmax_fwd(be, d, 0, 8), g->softmax_bwd(be, d, d, 0, 8);
    g->cummean_fwd(be, d, d, 2, 0, 4), g->cummean_bwd(be, d, d, 0, 3, 4);
    g->mix3_fwd(be, d, d, d, d, d, 0, 6, 2, 12), g->mix3_bwd(be, d, d, d, d, d, d, d, d, d, 0, 6, 2, 12);
    g->topk(be, d, 0, 8, 2, true, ids, d), g->gather_rows(be, d, d, ids, 0, 16);
    g->combine_rows(be, d, d, d, ids, 0, 2, 16), g->combine_rows_bwd(be, d, d, d, d, d, ids, 0, 2, 16);
    g->router_grad(be, d, d, d, d, ids, aux, 0, 4, 2, true), g->colsum(be, cs, d, 0, 4);
    be->sync(be);
    bool ok = cs[0] == 0 && cs[1] == 0 && cs[2] == 0 && cs[3] == 0;
    checks++, failures += !ok;
    printf("%s %-44s\n", ok ? "PASS" : "FAIL", "block ops on empty shapes (colsum: zeros)");
    be->free(be, d);
}

/* ---- whole steps ---- */

static mx_tmodel *model(const char *json, mx_backend *be, bool bf16) {
    mx_train_config c;
    mx_err err = {0};
    mx_train_config_defaults(&c);
    mx_tmodel *m = NULL;
    if (mx_train_config_apply_json(&c, json, "test", &err) || mx_tmodel_create(&c, &m, &err) ||
        (be && mx_tmodel_place(m, be, bf16, &err))) {
        printf("FAIL building %s: %s\n", json, err.msg);
        failures++;
        mx_tmodel_free(m);
        return NULL;
    }
    return m;
}

static void random_batch(uint64_t seed, int *tok, int *tgt, int n, int V) {
    mx_rng r;
    mx_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) tok[i] = (int)(mx_rng_u64(&r) % V), tgt[i] = (int)(mx_rng_u64(&r) % V);
}

/* loss of the step and all gradients: CPU vs GPU fp32 */
static void test_step(ctx *x, const char *json, const char *name) {
    mx_tmodel *mc = model(json, NULL, false), *mg = model(json, x->gpu, false);
    if (!mc || !mg) return;
    int n = mc->cfg.batch * mc->cfg.seq, *tok = malloc(sizeof(int) * n), *tgt = malloc(sizeof(int) * n);
    random_batch(5, tok, tgt, n, mc->cfg.vocab);
    mx_zero_grads(mc), mx_zero_grads(mg);
    double lc = mx_tmodel_step(mc, tok, tgt, true, 1.0f), lg = mx_tmodel_step(mg, tok, tgt, true, 1.0f);
    char what[128];
    snprintf(what, sizeof what, "step loss %s", name);
    expect_scalar(what, lc, lg, 1e-5);
    snprintf(what, sizeof what, "step gradients (all) %s", name);
    expect_close(x, what, mc->g, mg->g, mc->n_floats, 1e-4);
    double worst = 0;
    const char *worst_name = "";
    float *back = malloc(sizeof(float) * mc->n_floats);
    x->gpu->to_host(x->gpu, back, mg->g, mc->n_floats);
    for (int i = 0; i < mc->n_params; i++) {
        const mx_param *p = &mc->params[i];
        double num = 0, den = 0;
        for (size_t j = 0; j < (size_t)p->rows * p->cols; j++) {
            double e = back[p->off + j] - p->g[j];
            num += e * e, den += (double)p->g[j] * p->g[j];
        }
        double rel = sqrt(num / (den > 1e-30 ? den : 1e-30));
        if (den > 1e-20 && rel > worst) worst = rel, worst_name = p->name;
    }
    snprintf(what, sizeof what, "step worst tensor %s (%s)", name, worst_name);
    checks++;
    bool ok = worst <= 1e-3;
    if (!ok) failures++;
    printf("%s %-44s rel L2 %.2e (tol 1e-03)\n", ok ? "PASS" : "FAIL", what, worst);
    free(back), free(tok), free(tgt);
    mx_tmodel_free(mc), mx_tmodel_free(mg);
}

/* steps of AdamW on one fixed batch; returns the losses */
static void train_steps(mx_tmodel *m, int steps, double *losses) {
    int n = m->cfg.batch * m->cfg.seq, *tok = malloc(sizeof(int) * n), *tgt = malloc(sizeof(int) * n);
    for (int s = 0; s < steps; s++) {
        random_batch(100 + (uint64_t)s % 4, tok, tgt, n, m->cfg.vocab);
        for (int i = 0; i < n; i++) tgt[i] = tok[(i + 1) % n] % 50; /* learnable: the next token, folded */
        mx_zero_grads(m);
        losses[s] = mx_tmodel_step(m, tok, tgt, true, 1.0f);
        double norm = mx_grad_norm(m);
        mx_clip_grads(m, norm, 1.0f);
        mx_adamw_step(m, mx_lr_at(&m->cfg, s), s + 1);
    }
    free(tok), free(tgt);
}

static void test_training_runs(ctx *x, const char *json) {
    enum { STEPS = 100 };
    double lc[STEPS], lg[STEPS], lg2[STEPS], lb[STEPS];
    mx_tmodel *mc = model(json, NULL, false), *mg = model(json, x->gpu, false),
              *mg2 = model(json, x->gpu, false), *mb = model(json, x->gpu, true);
    if (!mc || !mg || !mg2 || !mb) return;
    train_steps(mc, STEPS, lc), train_steps(mg, STEPS, lg), train_steps(mg2, STEPS, lg2),
        train_steps(mb, STEPS, lb);
    bool same = memcmp(lg, lg2, sizeof lg) == 0;
    checks++, failures += !same;
    printf("%s two GPU runs of %d steps, one seed: bit-identical losses\n", same ? "PASS" : "FAIL", STEPS);
    double worst32 = 0, worstbf = 0;
    for (int s = 0; s < STEPS; s++) {
        worst32 = fmax(worst32, fabs(lg[s] - lc[s]) / lc[s]);
        worstbf = fmax(worstbf, fabs(lb[s] - lc[s]) / lc[s]);
    }
    printf("     losses: step 1 cpu %.5f gpu %.5f bf16 %.5f; step %d cpu %.5f gpu %.5f bf16 %.5f\n", lc[0],
           lg[0], lb[0], STEPS, lc[STEPS - 1], lg[STEPS - 1], lb[STEPS - 1]);
    checks += 2;
    failures += !(worst32 <= 1e-3) + !(worstbf <= 3e-2);
    printf("%s %d GPU fp32 steps follow the CPU: worst relative loss gap %.2e (band 1e-3)\n",
           worst32 <= 1e-3 ? "PASS" : "FAIL", STEPS, worst32);
    printf("%s %d GPU bf16 steps follow the CPU fp32 run: worst relative loss gap %.2e (band 3e-2)\n",
           worstbf <= 3e-2 ? "PASS" : "FAIL", STEPS, worstbf);
    bool differs = memcmp(lg, lb, sizeof lg) != 0; /* each model keeps its own precision on one backend */
    checks++, failures += !differs;
    printf("%s the bf16 run is not the fp32 run (its own precision on a shared backend)\n",
           differs ? "PASS" : "FAIL");
    mx_tmodel_free(mc), mx_tmodel_free(mg), mx_tmodel_free(mg2), mx_tmodel_free(mb);
}

int main(void) {
    ctx x = {0};
    mx_err err = {0};
    if (mx_backend_create("cuda", 0, 1, &x.gpu, &err)) {
        fprintf(stderr, "test_cuda_train: %s\n", err.msg);
        return 2;
    }
    x.g = x.gpu->train, x.c = &mx_cpu_train_ops;
    mx_rng_seed(&x.rng, 42);
    test_norms(&x);
    test_matmul(&x, false);
    test_matmul(&x, true);
    test_elementwise(&x);
    test_embed_and_head(&x);
    test_attention(&x, 2, 150, 4, 4, 64, 0, "MHA D64", false);
    test_attention(&x, 2, 150, 8, 2, 32, 0, "GQA 8/2 D32", false);
    test_attention(&x, 2, 150, 6, 1, 128, 0, "MQA D128", false);
    test_attention(&x, 2, 150, 4, 2, 64, 37, "GQA window 37", false);
    test_attention(&x, 1, 16500, 2, 1, 64, 0, "warp kernels T16500 MQA", false);
    test_attention(&x, 1, 16500, 2, 2, 64, 300, "warp kernels T16500 window 300", false);
    test_attention(&x, 2, 150, 4, 4, 64, 0, "MHA D64", true);
    test_attention(&x, 2, 150, 8, 2, 32, 0, "GQA 8/2 D32 (GEMM form)", true);
    test_attention(&x, 2, 150, 6, 1, 128, 0, "MQA D128", true);
    test_attention(&x, 2, 150, 4, 2, 64, 37, "GQA window 37", true);
    test_attention(&x, 3, 333, 6, 2, 128, 70, "GQA D128 window 70", true);
    test_attention(&x, 1, 1024, 4, 4, 64, 0, "MHA T1024", true);
    test_adamw(&x);
    test_copy_tanh(&x);
    test_softmax(&x, 37, 5);
    test_softmax(&x, 1001, 8);
    test_softmax(&x, 19, 67);
    test_cummean(&x, 2, 37, 12);
    test_cummean(&x, 3, 300, 37);
    test_cummean(&x, 1, 129, 5);
    test_mix3(&x, 37, 6, 2, 12, true);
    test_mix3(&x, 37, 6, 2, 12, false);
    test_mix3(&x, 301, 4, 4, 40, true);
    test_topk(&x, 1001, 8, 2, true, false);
    test_topk(&x, 37, 5, 3, false, false);
    test_topk(&x, 37, 5, 5, true, false);
    test_topk(&x, 200, 64, 6, true, false);
    test_topk(&x, 300, 8, 2, true, true);
    test_gather_combine(&x);
    test_router_grad(&x, 37, 5, 2, true);
    test_router_grad(&x, 1001, 8, 2, false);
    test_colsum(&x, 1001, 5);
    test_colsum(&x, 16384, 8);
    test_blocks_empty(&x);
    const char *gpt2 =
        "{\"arch\": \"gpt2\", \"vocab\": 97, \"d_model\": 64, \"n_layer\": 2, \"n_head\": 4, "
        "\"n_kv_head\": 4, \"d_ff\": 256, \"max_ctx\": 64, \"batch\": 3, \"seq\": 48, \"steps\": 100}";
    const char *llama =
        "{\"arch\": \"llama\", \"vocab\": 101, \"d_model\": 64, \"n_layer\": 4, \"n_head\": 4, "
        "\"n_kv_head\": 2, \"d_ff\": 160, \"max_ctx\": 64, \"batch\": 2, \"seq\": 64, "
        "\"plan\": \"G,S,G@0,S@1\", \"window\": 16, \"steps\": 100}";
    /* the blocks beyond MHA, composed of the block ops: MLA (query latent, RoPE dims, values wider than keys),
     * MKA on GPT-2 blocks (biases: bv's third mixing term), FastMKA with a window, experts top-2 */
    const char *mla =
        "{\"arch\": \"llama\", \"vocab\": 97, \"d_model\": 64, \"n_layer\": 2, \"n_head\": 4, "
        "\"n_kv_head\": 4, \"d_ff\": 160, \"max_ctx\": 64, \"batch\": 2, \"seq\": 40, \"attn\": \"mla\", "
        "\"mla_kv_rank\": 24, \"mla_q_rank\": 16, \"mla_rope_dim\": 8, \"mla_nope_dim\": 8, \"mla_v_dim\": "
        "20, "
        "\"steps\": 100}";
    const char *mka_gpt2 =
        "{\"arch\": \"gpt2\", \"vocab\": 97, \"d_model\": 64, \"n_layer\": 2, \"n_head\": 4, "
        "\"n_kv_head\": 4, \"d_ff\": 128, \"max_ctx\": 64, \"batch\": 2, \"seq\": 40, \"attn\": \"mka\", "
        "\"steps\": 100}";
    const char *fastmka =
        "{\"arch\": \"llama\", \"vocab\": 97, \"d_model\": 64, \"n_layer\": 2, \"n_head\": 4, "
        "\"n_kv_head\": 2, \"d_ff\": 160, \"max_ctx\": 64, \"batch\": 2, \"seq\": 40, "
        "\"attn\": \"fastmka\", \"plan\": \"S,G\", \"window\": 9, \"steps\": 100}";
    const char *moe =
        "{\"arch\": \"llama\", \"vocab\": 97, \"d_model\": 64, \"n_layer\": 2, \"n_head\": 4, "
        "\"n_kv_head\": 2, \"d_ff\": 48, \"max_ctx\": 64, \"batch\": 2, \"seq\": 40, \"n_expert\": 5, "
        "\"n_expert_used\": 2, \"moe_aux_weight\": 0.05, \"steps\": 100}";
    test_step(&x, gpt2, "gpt2 MHA");
    test_step(&x, llama, "llama GQA, window, shared KV");
    test_step(&x, mla, "llama MLA");
    test_step(&x, mka_gpt2, "gpt2 MKA");
    test_step(&x, fastmka, "llama FastMKA, window");
    test_step(&x, moe, "llama experts top-2 of 5");
    test_training_runs(&x, gpt2);
    test_training_runs(&x, llama);
    test_training_runs(&x, mla);
    test_training_runs(&x, moe);
    mx_backend_destroy(x.gpu);
    printf("%d/%d passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
