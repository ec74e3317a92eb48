/* test_serve_batch.c: the CPU's decode ops that stand in for several calls (backend.h: matmul_group, and the
 * server's matmul_rows and attention_batch) against the calls they replace. matmul_group must give each weight
 * bitwise what its own matmul gives, whatever the mix of types, T and exactness. For the server's ops: each row of a batch must be bitwise what matmul (T = 1) and attention
 * (one query) give for that row alone, for block-quantized and float weights, with 8-bit and fp32
 * activations, and for sequences with different positions, windows and ring sizes. And the server's text
 * release (serve/text.c): stop strings held back until they cannot match, characters never split, invalid
 * UTF-8 replaced. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/backend.h"
#include "../../src/base/rng.h"
#include "../../src/io/dtype.h"
#include "../../src/io/quant.h"
#include "../../src/serve/text.h"

/* Random weights of n_out rows of n_in elements: quant bits random, block scales fp16 in a sane range. */
static void *random_weights(uint32_t type, int n_in, int n_out, mx_rng *r) {
    const mx_dtype_info *info = mx_dtype_get(type);
    size_t bytes = mx_dtype_row_bytes(type, n_in) * (size_t)n_out;
    uint8_t *w = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)mx_rng_u64(r);
    if (type == MX_F32) {
        float *f = (float *)w;
        for (size_t i = 0; i < bytes / 4; i++) f[i] = mx_rng_float(r) * 2 - 1;
        return w;
    }
    size_t n_blocks = bytes / (size_t)info->bytes;
    for (size_t b = 0; b < n_blocks; b++) { /* d (and Q4_1's m) are the block's leading fp16s */
        uint16_t d = mx_f32_to_f16(0.001f + 0.02f * mx_rng_float(r)),
                 m = mx_f32_to_f16(-0.1f * mx_rng_float(r));
        memcpy(w + b * (size_t)info->bytes, &d, 2);
        if (type == MX_Q4_1) memcpy(w + b * (size_t)info->bytes + 2, &m, 2);
    }
    return w;
}

static void check_matmul_rows(uint32_t type, bool exact) {
    enum { N_IN = 256, N_OUT = 72, T = 13 };
    mx_rng r;
    mx_rng_seed(&r, type * 31 + exact);
    mx_backend *be = mx_backend_cpu_create(2);
    be->exact = exact;
    cr_assert(be->matmul_rows, "the CPU backend has matmul_rows");
    void *data = random_weights(type, N_IN, N_OUT, &r);
    mx_tensor w = {.name = "w",
                   .type = type,
                   .n_dims = 2,
                   .ne = {N_IN, N_OUT},
                   .data = data,
                   .nbytes = mx_dtype_row_bytes(type, N_IN) * N_OUT};
    float *x = malloc(sizeof(float) * T * N_IN), *y = malloc(sizeof(float) * T * N_OUT), one[N_OUT];
    for (int i = 0; i < T * N_IN; i++) x[i] = mx_rng_normal(&r);
    be->matmul_rows(be, &w, x, y, T);
    for (int t = 0; t < T; t++) {
        be->matmul(be, &w, x + t * N_IN, one, 1);
        cr_assert_eq(memcmp(one, y + t * N_OUT, sizeof one), 0, "%s exact=%d: row %d differs from T = 1",
                     mx_dtype_name(type), exact, t);
    }
    /* and it is the matmul: the fp32 product of the dequantized weights, within the rounding of the
     * activations to 8 bits (at most half a step of 1/127 of each block's largest |x|: Σ|w x| / 64 bounds it)
     * or of fp32 accumulation */
    float *ref = malloc(sizeof(float) * T * N_OUT), *wd = malloc(sizeof(float) * N_IN);
    size_t row_bytes = mx_dtype_row_bytes(type, N_IN);
    for (int o = 0; o < N_OUT; o++) {
        mx_dequant_row(type, (const char *)data + row_bytes * o, wd, N_IN);
        for (int t = 0; t < T; t++) {
            double dot = 0, mag = 0;
            for (int i = 0; i < N_IN; i++) {
                dot += (double)wd[i] * x[t * N_IN + i];
                mag += fabs((double)wd[i] * x[t * N_IN + i]);
            }
            double tol = (exact || type == MX_F32 ? 1e-5 : 1.0 / 64) * mag + 1e-6;
            cr_assert(fabs(y[t * N_OUT + o] - dot) <= tol, "%s exact=%d: %g vs %g (tolerance %g)",
                      mx_dtype_name(type), exact, y[t * N_OUT + o], dot, tol);
        }
    }
    free(wd);
    free(ref);
    free(x);
    free(y);
    free(data);
    mx_backend_destroy(be);
}

/* matmul_group over weights of the given types (n_out 72, 24, 24: Q, K and V of a GQA layer) at T tokens. */
static void check_matmul_group(const uint32_t *types, int n, int T, bool exact) {
    enum { N_IN = 256 };
    const int n_out[3] = {72, 24, 24};
    mx_rng r;
    mx_rng_seed(&r, (uint64_t)types[0] * 7 + (uint64_t)n * 3 + (uint64_t)T + exact);
    mx_backend *be = mx_backend_cpu_create(2);
    be->exact = exact;
    cr_assert(be->matmul_group, "the CPU backend has matmul_group");
    mx_tensor w[3];
    const mx_tensor *wp[3];
    float *y[3], *alone = malloc(sizeof(float) * (size_t)T * 72),
                 *x = malloc(sizeof(float) * (size_t)T * N_IN);
    for (int i = 0; i < T * N_IN; i++) x[i] = mx_rng_normal(&r);
    for (int i = 0; i < n; i++) {
        w[i] = (mx_tensor){.name = "w",
                           .type = types[i],
                           .n_dims = 2,
                           .ne = {N_IN, n_out[i]},
                           .data = random_weights(types[i], N_IN, n_out[i], &r),
                           .nbytes = mx_dtype_row_bytes(types[i], N_IN) * (size_t)n_out[i]};
        wp[i] = &w[i];
        y[i] = malloc(sizeof(float) * (size_t)T * (size_t)n_out[i]);
    }
    be->matmul_group(be, n, wp, x, y, T);
    for (int i = 0; i < n; i++) {
        be->matmul(be, &w[i], x, alone, T);
        cr_assert_eq(memcmp(alone, y[i], sizeof(float) * (size_t)T * (size_t)n_out[i]), 0,
                     "weight %d (%s) of %d at T = %d, exact=%d: the group differs from its own matmul", i,
                     mx_dtype_name(types[i]), n, T, exact);
        free(y[i]);
        free((void *)w[i].data);
    }
    free(alone);
    free(x);
    mx_backend_destroy(be);
}

Test(cpu_matmul_group, each_weight_as_alone) {
    const uint32_t q41[3] = {MX_Q4_1, MX_Q4_1, MX_Q4_1}, q80[3] = {MX_Q8_0, MX_Q8_0, MX_Q8_0},
                   mixed[3] = {MX_Q4_1, MX_Q8_0, MX_Q4_1}, f32[3] = {MX_F32, MX_F32, MX_F32},
                   share[3] = {MX_Q4_0, MX_Q8_0, MX_Q4_0}; /* different weights, one 8-bit format */
    const uint32_t *sets[] = {q41, q80, mixed, f32, share};
    const int Ts[] = {1, 3, 13}; /* 13: the prefill path */
    for (size_t s = 0; s < sizeof sets / sizeof *sets; s++)
        for (int n = 1; n <= 3; n++)
            for (size_t t = 0; t < sizeof Ts / sizeof *Ts; t++)
                for (int exact = 0; exact < 2; exact++) check_matmul_group(sets[s], n, Ts[t], exact);
}

Test(serve_batch, matmul_rows_q4_1) {
    check_matmul_rows(MX_Q4_1, false);
    check_matmul_rows(MX_Q4_1, true);
}
Test(serve_batch, matmul_rows_q8_0) {
    check_matmul_rows(MX_Q8_0, false);
    check_matmul_rows(MX_Q8_0, true);
}
Test(serve_batch, matmul_rows_f32) {
    check_matmul_rows(MX_F32, false);
}

Test(serve_batch, attention_batch_equals_each_alone) {
    enum { N = 5, H = 4, G = 2, D = 16 };
    const int pos[N] = {0, 7, 40, 3, 99}, slots[N] = {64, 64, 24, 64, 128}, windows[N] = {0, 0, 16, 0, 32};
    mx_rng r;
    mx_rng_seed(&r, 5);
    mx_backend *be = mx_backend_cpu_create(2);
    cr_assert(be->attention_batch);
    mx_attn_spec specs[N];
    const void *k[N], *v[N];
    float *kv[N][2], q[N * H * D], out[N * H * D], one[H * D];
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 2; j++) {
            kv[i][j] = malloc(sizeof(float) * slots[i] * G * D);
            for (int e = 0; e < slots[i] * G * D; e++) kv[i][j][e] = mx_rng_normal(&r);
        }
        k[i] = kv[i][0];
        v[i] = kv[i][1];
        int oldest = pos[i] - slots[i] + 1;
        specs[i] = (mx_attn_spec){.n_q = 1,
                                  .n_head = H,
                                  .n_kv_head = G,
                                  .head_dim = D,
                                  .v_dim = D,
                                  .q_pos0 = pos[i],
                                  .n_slots = slots[i],
                                  .window = windows[i],
                                  .causal = true,
                                  .kv_lo = oldest > 0 ? oldest : 0,
                                  .kv_hi = pos[i],
                                  .scale = 0.25f,
                                  .q_stride = H * D,
                                  .k_stride = G * D,
                                  .v_stride = G * D,
                                  .o_stride = H * D};
    }
    for (int i = 0; i < N * H * D; i++) q[i] = mx_rng_normal(&r);
    for (int n = 1; n <= N; n++) { /* fewer sequences than threads, and more */
        be->attention_batch(be, n, specs, q, k, v, out);
        for (int i = 0; i < n; i++) {
            be->attention(be, &specs[i], q + i * H * D, k[i], v[i], one, NULL);
            cr_assert_eq(memcmp(one, out + i * H * D, sizeof one), 0, "n=%d: sequence %d differs", n, i);
        }
    }
    for (int i = 0; i < N; i++) free(kv[i][0]), free(kv[i][1]);
    mx_backend_destroy(be);
}

/* ---- text release ---- */

typedef struct {
    mx_text t;
    char *out;
    size_t len, cap;
} released;

static void feed(released *r, const char *piece, char *const *stops, int n_stops) {
    cr_assert_eq(mx_text_append(&r->t, piece, strlen(piece)), 0);
    long at = mx_text_find_stop(&r->t, stops, n_stops);
    if (at >= 0) mx_text_truncate(&r->t, (size_t)at);
    cr_assert_eq(mx_text_release(&r->t, stops, n_stops, at >= 0, &r->out, &r->len, &r->cap), 0);
}

Test(serve_text, stop_string_across_tokens_is_never_released) {
    char *stops[] = {"<END>", "zz"};
    released r = {0};
    feed(&r, "Hello <E", stops, 2);
    cr_assert_str_eq(r.out, "Hello "); /* "<E" may start "<END>" */
    feed(&r, "N", stops, 2);
    cr_assert_str_eq(r.out, "Hello ");
    feed(&r, "D> tail", stops, 2);
    cr_assert_str_eq(r.out, "Hello ");
    cr_assert_eq(mx_text_find_stop(&r.t, stops, 2), -1); /* cut there: nothing after it remains */
    cr_assert_eq(r.t.len, 6);
    mx_text_free(&r.t);
    free(r.out);
}

Test(serve_text, false_start_of_a_stop_is_released) {
    char *stops[] = {"<END>"};
    released r = {0};
    feed(&r, "a <EN", stops, 1);
    feed(&r, "X b", stops, 1);
    cr_assert_str_eq(r.out, "a <ENX b");
    mx_text_free(&r.t);
    free(r.out);
}

Test(serve_text, characters_are_not_split_and_invalid_bytes_replaced) {
    released r = {0};
    feed(&r, "caf\xC3", NULL, 0); /* é split over two tokens */
    cr_assert_str_eq(r.out, "caf");
    feed(&r, "\xA9 \xE2\x82", NULL, 0); /* é done; € begun */
    cr_assert_str_eq(r.out, "caf\xC3\xA9 ");
    feed(&r, "\xAC", NULL, 0);
    cr_assert_str_eq(r.out, "caf\xC3\xA9 \xE2\x82\xAC");
    feed(&r, "\xFF!", NULL, 0); /* never valid */
    cr_assert_str_eq(r.out, "caf\xC3\xA9 \xE2\x82\xAC\xEF\xBF\xBD!");
    cr_assert_eq(mx_text_append(&r.t, "\xF0\x9F", 2), 0); /* a truncated emoji at the end: replaced */
    cr_assert_eq(mx_text_release(&r.t, NULL, 0, true, &r.out, &r.len, &r.cap), 0);
    cr_assert_str_eq(r.out, "caf\xC3\xA9 \xE2\x82\xAC\xEF\xBF\xBD!\xEF\xBF\xBD\xEF\xBF\xBD");
    mx_text_free(&r.t);
    free(r.out);
}
