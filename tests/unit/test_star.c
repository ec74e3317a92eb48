/* test_star.c: Star Attention's log-sum-exp merge (the backend op lse_merge;
 * src/backend/cpu/cpu_lse_merge.c). The keys of a random problem are split into 1..5 parts of uneven sizes
 * (some empty); each part's attention (out, lse) is computed on its own, the parts are packed as phase 2's
 * messages and merged by the CPU backend's lse_merge op, and the result must equal dense attention of the
 * queries over the union of the keys, computed in double from the definition. The parts come either from that
 * naive reference (the merge alone) or from the CPU attention op with key ranges (the phase-2 layout: context
 * keys non-causal, the query's own keys causal), GQA included. Tolerance 1e-5 relative. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/backend.h"
#include "../../src/base/rng.h"

typedef struct {
    int T, H, G, D, S; /* queries, heads, KV heads, head dim, keys */
    float q_scale;     /* larger = peakier softmax (LSE far from 0) */
} problem;

typedef struct {
    problem p;
    float *q, *k, *v; /* q (T, H, D); k, v (S, G, D) */
} data;

static data make(problem p, uint64_t seed) {
    mx_rng rng;
    mx_rng_seed(&rng, seed);
    data d = {p, malloc(sizeof(float) * p.T * p.H * p.D), malloc(sizeof(float) * p.S * p.G * p.D),
              malloc(sizeof(float) * p.S * p.G * p.D)};
    for (int i = 0; i < p.T * p.H * p.D; i++) d.q[i] = p.q_scale * mx_rng_normal(&rng);
    for (int i = 0; i < p.S * p.G * p.D; i++) d.k[i] = mx_rng_normal(&rng), d.v[i] = mx_rng_normal(&rng);
    return d;
}

static void drop(data *d) {
    free(d->q), free(d->k), free(d->v);
}

/* Naive attention of every query over keys [lo, hi) (all visible) in double: out (T, H, D), lse (T, H). */
static void naive(const data *d, int lo, int hi, double *out, double *lse) {
    const problem *p = &d->p;
    for (int t = 0; t < p->T; t++)
        for (int h = 0; h < p->H; h++) {
            int g = h / (p->H / p->G);
            const float *qr = d->q + ((size_t)t * p->H + h) * p->D;
            double mx = -INFINITY, sum = 0, acc[64] = {0};
            for (int pass = 0; pass < 2; pass++)
                for (int j = lo; j < hi; j++) {
                    const float *kr = d->k + ((size_t)j * p->G + g) * p->D;
                    const float *vr = d->v + ((size_t)j * p->G + g) * p->D;
                    double s = 0;
                    for (int i = 0; i < p->D; i++) s += (double)qr[i] * kr[i];
                    s /= sqrt((double)p->D);
                    if (pass == 0) {
                        mx = s > mx ? s : mx;
                        continue;
                    }
                    double e = exp(s - mx);
                    sum += e;
                    for (int i = 0; i < p->D; i++) acc[i] += e * vr[i];
                }
            double *o = out + ((size_t)t * p->H + h) * p->D;
            for (int i = 0; i < p->D; i++) o[i] = sum > 0 ? acc[i] / sum : 0;
            lse[(size_t)t * p->H + h] = sum > 0 ? mx + log(sum) : -INFINITY;
        }
}

/* Compares out (T, H, D) and lse (T, H) against dense attention over every key. */
static void expect_dense(const data *d, const float *out, const float *lse, const char *what) {
    const problem *p = &d->p;
    size_t no = (size_t)p->T * p->H * p->D, nl = (size_t)p->T * p->H;
    double *ro = malloc(no * sizeof(double)), *rl = malloc(nl * sizeof(double));
    naive(d, 0, p->S, ro, rl);
    double num = 0, den = 0;
    for (size_t i = 0; i < no; i++) num += (out[i] - ro[i]) * (out[i] - ro[i]), den += ro[i] * ro[i];
    cr_expect(sqrt(num / den) <= 1e-5, "%s: relative L2 error of out %.3g", what, sqrt(num / den));
    for (size_t i = 0; lse && i < nl; i++)
        cr_expect(fabs(lse[i] - rl[i]) <= 1e-5 * fmax(1.0, fabs(rl[i])), "%s: lse[%zu] %.7g, dense %.7g",
                  what, i, lse[i], rl[i]);
    free(ro), free(rl);
}

/* Uneven cut points of S keys into n parts: cut[0] = 0 .. cut[n] = S; part 1 is empty when n >= 3. */
static void cuts(int S, int n, uint64_t seed, int *cut) {
    mx_rng rng;
    mx_rng_seed(&rng, seed);
    cut[0] = 0, cut[n] = S;
    for (int r = 1; r < n; r++) {
        int left = S - cut[r - 1];
        cut[r] = cut[r - 1] + (r == 1 && n >= 3 ? 0 : (int)(mx_rng_float(&rng) * left * 0.6f));
    }
}

/* Merges n parts outs[r] (T, H*D), lses[r] (T, H) with the CPU backend's lse_merge op, packing them as
 * phase 2's messages: (T, H*D) outputs, then (T, H) lse. */
static void merge(int n, float *const *outs, float *const *lses, int T, int H, int D, float *out,
                  float *lse) {
    size_t no = (size_t)T * H * D, nl = (size_t)T * H, ps = no + nl;
    float *msgs = malloc(ps * n * sizeof(float));
    for (int r = 0; r < n; r++) {
        memcpy(msgs + (size_t)r * ps, outs[r], no * sizeof(float));
        memcpy(msgs + (size_t)r * ps + no, lses[r], nl * sizeof(float));
    }
    mx_backend *be = mx_backend_cpu_create(2);
    be->lse_merge(be, msgs, msgs + no, ps, n, T, H, D, out, lse);
    mx_backend_destroy(be);
    free(msgs);
}

/* Parts from the naive reference (rounded to fp32), merged. */
static void merge_naive_parts(problem p, int n, uint64_t seed) {
    data d = make(p, seed);
    size_t no = (size_t)p.T * p.H * p.D, nl = (size_t)p.T * p.H;
    int cut[6];
    cuts(p.S, n, seed + 1, cut);
    float *outs[5], *lses[5], *out = malloc(no * 4), *lse = malloc(nl * 4);
    double *to = malloc(no * 8), *tl = malloc(nl * 8);
    for (int r = 0; r < n; r++) {
        outs[r] = malloc(no * 4), lses[r] = malloc(nl * 4);
        naive(&d, cut[r], cut[r + 1], to, tl);
        for (size_t i = 0; i < no; i++) outs[r][i] = (float)to[i];
        for (size_t i = 0; i < nl; i++) lses[r][i] = (float)tl[i];
    }
    merge(n, outs, lses, p.T, p.H, p.D, out, lse);
    char what[96];
    snprintf(what, sizeof what, "lse_merge op, %d parts of %d keys (q scale %g)", n, p.S, p.q_scale);
    expect_dense(&d, out, lse, what);
    for (int r = 0; r < n; r++) free(outs[r]), free(lses[r]);
    free(out), free(lse), free(to), free(tl);
    drop(&d);
}

Test(star_merge, equals_dense_for_1_to_5_uneven_parts) {
    problem p = {.T = 5, .H = 4, .G = 2, .D = 16, .S = 97, .q_scale = 1};
    for (int n = 1; n <= 5; n++) merge_naive_parts(p, n, 100 + (uint64_t)n);
}

Test(star_merge, stable_with_peaky_scores) {
    problem p = {.T = 3, .H = 2, .G = 1, .D = 32, .S = 64, .q_scale = 12};
    for (int n = 2; n <= 5; n++) merge_naive_parts(p, n, 200 + (uint64_t)n);
}

Test(star_merge, a_row_no_part_saw_is_zero) {
    float o1[4] = {1, 2, 3, 4}, l1[2] = {-INFINITY, -INFINITY}, out[4], lse[2];
    float *outs[1] = {o1}, *lses[1] = {l1};
    merge(1, outs, lses, 1, 2, 2, out, lse);
    for (int i = 0; i < 4; i++) cr_expect(out[i] == 0.0f);
    cr_expect(isinf(lse[0]) && lse[0] < 0 && isinf(lse[1]));
}

/* The phase-2 layout through the CPU attention op: ranks hold key ranges [cut[r], cut[r+1]) of a store that
 * has every key (slot == position); the first T keys after the context are the queries' own, which the last
 * rank attends causally. The merge over ranks must equal causal attention over the whole store. */
static void phase2_layout(int n, uint64_t seed) {
    problem p = {.T = 6, .H = 6, .G = 3, .D = 8, .S = 50, .q_scale = 1};
    int n_ctx = p.S - p.T;
    data d = make(p, seed);
    mx_backend *be = mx_backend_cpu_create(2);
    size_t no = (size_t)p.T * p.H * p.D, nl = (size_t)p.T * p.H;
    int cut[6];
    cuts(n_ctx, n, seed + 1, cut);
    float *outs[6], *lses[6], *out = malloc(no * 4), *lse = malloc(nl * 4);
    mx_attn_spec sp = {.n_q = p.T,
                       .n_head = p.H,
                       .n_kv_head = p.G,
                       .head_dim = p.D,
                       .v_dim = p.D,
                       .q_pos0 = n_ctx,
                       .n_slots = p.S,
                       .scale = 1.0f / sqrtf((float)p.D),
                       .q_stride = (size_t)p.H * p.D,
                       .k_stride = (size_t)p.G * p.D,
                       .v_stride = (size_t)p.G * p.D,
                       .o_stride = (size_t)p.H * p.D};
    for (int r = 0; r <= n; r++) {
        outs[r] = malloc(no * 4), lses[r] = malloc(nl * 4);
        sp.causal = r == n; /* part n: the queries' own keys */
        sp.kv_lo = r < n ? cut[r] : n_ctx;
        sp.kv_hi = r < n ? cut[r + 1] - 1 : p.S - 1;
        be->attention(be, &sp, d.q, d.k, d.v, outs[r], lses[r]);
    }
    merge(n + 1, outs, lses, p.T, p.H, p.D, out, lse);
    /* dense reference: causal over all keys = non-causal over context + causal own keys; checked row by row
     * against the naive reference restricted to keys <= the query's position */
    for (int t = 0; t < p.T; t++) {
        data row = d;
        row.p.T = 1;
        row.p.S = n_ctx + t + 1;
        row.q = d.q + (size_t)t * p.H * p.D;
        char what[64];
        snprintf(what, sizeof what, "phase-2 layout, %d ranks, query %d", n, t);
        expect_dense(&row, out + (size_t)t * p.H * p.D, lse + (size_t)t * p.H, what);
    }
    for (int r = 0; r <= n; r++) free(outs[r]), free(lses[r]);
    free(out), free(lse);
    mx_backend_destroy(be);
    drop(&d);
}

Test(star_merge, phase2_layout_through_cpu_attention_equals_causal_dense) {
    for (int n = 1; n <= 5; n++) phase2_layout(n, 300 + (uint64_t)n);
}
