/* test_cpu_attention.c: the CPU attention op (the reference every attention kernel is tested against) checked
 * against a naive double-precision softmax attention written from the definition: causal and non-causal,
 * windows, GQA broadcast, keys stored in ring slots (position p at slot p % n_slots), position ranges, and
 * the log-sum-exp it returns. Tolerance 1e-5 relative: fp32 accumulation over at most a few hundred keys. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "../../src/backend/backend.h"
#include "../../src/base/rng.h"

typedef struct {
    int T, H, G, D, q_pos0, S, W, lo, hi;
    bool causal;
} shape;

static void naive(const shape *c, const float *q, const float *k, const float *v, double *out, double *lse) {
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->H; h++) {
            int qp = c->q_pos0 + t, kvh = h / (c->H / c->G);
            double mx = -INFINITY, sum = 0, acc[256] = {0};
            for (int pass = 0; pass < 2; pass++)
                for (int p = c->lo; p <= c->hi; p++) {
                    if (c->causal && p > qp) continue;
                    if (c->W > 0 && p <= qp - c->W) continue;
                    const float *kr = k + ((size_t)(p % c->S) * c->G + kvh) * c->D;
                    const float *vr = v + ((size_t)(p % c->S) * c->G + kvh) * c->D;
                    double s = 0;
                    for (int i = 0; i < c->D; i++) s += (double)q[((size_t)t * c->H + h) * c->D + i] * kr[i];
                    s /= sqrt((double)c->D);
                    if (pass == 0) {
                        mx = s > mx ? s : mx;
                    } else {
                        double e = exp(s - mx);
                        sum += e;
                        for (int i = 0; i < c->D; i++) acc[i] += e * vr[i];
                    }
                }
            for (int i = 0; i < c->D; i++)
                out[((size_t)t * c->H + h) * c->D + i] = sum > 0 ? acc[i] / sum : 0;
            lse[(size_t)t * c->H + h] = sum > 0 ? mx + log(sum) : -INFINITY;
        }
}

static void check(shape c) {
    mx_backend *be = mx_backend_cpu_create(2);
    mx_rng rng;
    mx_rng_seed(&rng, (uint64_t)(c.T * 131 + c.W * 7 + c.S));
    size_t nq = (size_t)c.T * c.H * c.D, nk = (size_t)c.S * c.G * c.D;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *o = malloc(nq * 4);
    float *lse = malloc((size_t)c.T * c.H * 4);
    double *ro = malloc(nq * 8), *rl = malloc((size_t)c.T * c.H * 8);
    for (size_t i = 0; i < nq; i++) q[i] = mx_rng_normal(&rng), o[i] = NAN;
    for (size_t i = 0; i < nk; i++) k[i] = mx_rng_normal(&rng), v[i] = mx_rng_normal(&rng);
    mx_attn_spec sp = {.n_q = c.T,
                       .n_head = c.H,
                       .n_kv_head = c.G,
                       .head_dim = c.D,
                       .v_dim = c.D,
                       .q_pos0 = c.q_pos0,
                       .n_slots = c.S,
                       .window = c.W,
                       .causal = c.causal,
                       .kv_lo = c.lo,
                       .kv_hi = c.hi,
                       .scale = 1.0f / sqrtf((float)c.D),
                       .q_stride = (size_t)c.H * c.D,
                       .k_stride = (size_t)c.G * c.D,
                       .v_stride = (size_t)c.G * c.D,
                       .o_stride = (size_t)c.H * c.D};
    be->attention(be, &sp, q, k, v, o, lse);
    naive(&c, q, k, v, ro, rl);
    for (size_t i = 0; i < nq; i++)
        cr_assert(fabs(o[i] - ro[i]) <= 1e-5 * (1 + fabs(ro[i])),
                  "out[%zu] = %g, reference %g (T %d W %d S %d)", i, o[i], ro[i], c.T, c.W, c.S);
    for (int i = 0; i < c.T * c.H; i++)
        cr_assert(isinf(rl[i]) ? isinf(lse[i]) : fabs(lse[i] - rl[i]) <= 1e-5 * (1 + fabs(rl[i])),
                  "lse[%d] %g vs %g", i, lse[i], rl[i]);
    free(q), free(k), free(v), free(o), free(lse), free(ro), free(rl);
    mx_backend_destroy(be);
}

Test(cpu_attention, causal_prefill_gqa) {
    check((shape){37, 8, 2, 64, 0, 64, 0, 0, 36, true});
}
Test(cpu_attention, decode_after_cache_mqa) {
    check((shape){1, 6, 1, 32, 99, 128, 0, 0, 99, true});
}
Test(cpu_attention, window_prefill) {
    check((shape){50, 4, 4, 16, 0, 64, 7, 0, 49, true});
}
Test(cpu_attention, window_ring_slots) {
    /* positions 100..139 present in a ring of 40 slots; 10 queries at 130..139 with a window of 25 */
    check((shape){10, 4, 2, 32, 130, 40, 25, 100, 139, true});
}
Test(cpu_attention, non_causal_star_phase_two) {
    check((shape){3, 4, 2, 16, 5, 80, 0, 0, 79, false});
}
Test(cpu_attention, head_dim_128) {
    check((shape){9, 4, 1, 128, 20, 32, 0, 0, 28, true});
}
