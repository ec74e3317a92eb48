/* test_xattn.c: XAttention on the CPU backend (src/backend/cpu/cpu_xattn.c, src/attention/xattn.h) against
 * the numpy reference of tests/fixtures/xattn (scripts/fixtures_xattn.py): on random structured inputs
 * (aligned and unaligned prefill chunks, GQA and MQA, strides 4/8/16, blocks of 128 and 32):
 *   - the block masses equal numpy's (1e-5 absolute; a row of masses sums to its query tiles);
 *   - the kept-block sets equal numpy's exactly (the fixture keeps every decision 1e-4 away from a tie);
 *   - block-sparse attention over those blocks equals numpy's dense attention masked to them (1e-5 rel L2);
 *   - τ = 1 keeps every causal block and the output equals the dense attention op bit for bit;
 * and the option checks refuse τ outside (0, 1] and strides that do not divide the block. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/attention/xattn.h"
#include "../../src/backend/backend.h"

#define DIR "fixtures/xattn/"

static float *read_f32(const char *name, const char *ext, size_t n) {
    char path[256];
    snprintf(path, sizeof path, DIR "%s.%s.f32", name, ext);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (run scripts/fixtures_xattn.py)", path);
    float *x = malloc(n * sizeof(float));
    cr_assert(fread(x, sizeof(float), n, f) == n, "%s is short", path);
    fclose(f);
    return x;
}

static cJSON *load_cases(void) {
    FILE *f = fopen(DIR "cases.json", "rb");
    cr_assert(f, "cannot open " DIR "cases.json");
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    cr_assert(j && cJSON_IsArray(j));
    return j;
}

static int geti(const cJSON *c, const char *k) {
    return cJSON_GetObjectItem(c, k)->valueint;
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++)
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / (den > 0 ? den : 1));
}

static void check_case(const cJSON *c) {
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    int p0 = geti(c, "p0"), T = geti(c, "T"), H = geti(c, "H"), G = geti(c, "G"), D = geti(c, "D");
    int B = geti(c, "B"), S = geti(c, "S"), kv_hi = geti(c, "kv_hi"), n_qb = geti(c, "n_qb");
    int n_kb = geti(c, "n_kb");
    float tau = (float)cJSON_GetObjectItem(c, "tau")->valuedouble;
    int N = kv_hi + 1;
    float *q = read_f32(name, "q", (size_t)T * H * D), *k = read_f32(name, "k", (size_t)N * G * D);
    float *v = read_f32(name, "v", (size_t)N * G * D),
          *ref_mass = read_f32(name, "mass", (size_t)H * n_qb * n_kb);
    float *ref_out = read_f32(name, "out", (size_t)T * H * D);
    mx_backend *be = mx_backend_cpu_create(2);
    mx_attn_spec sp = {.n_q = T,
                       .n_head = H,
                       .n_kv_head = G,
                       .head_dim = D,
                       .v_dim = D,
                       .q_pos0 = p0,
                       .n_slots = N,
                       .causal = true,
                       .kv_lo = 0,
                       .kv_hi = kv_hi,
                       .scale = 1.0f / sqrtf((float)D),
                       .q_stride = (size_t)H * D,
                       .k_stride = (size_t)G * D,
                       .v_stride = (size_t)G * D,
                       .o_stride = (size_t)H * D};
    int *off = malloc(sizeof(int) * ((size_t)H * n_qb + 1)),
        *idx = malloc(sizeof(int) * (size_t)H * n_qb * n_kb);
    float *mass = malloc(sizeof(float) * (size_t)H * n_qb * n_kb);
    mx_attn_blocks bl = {.block = B};
    long kept = be->xattn_select(be, &sp, q, k, S, tau, &bl, off, idx, mass);
    cr_assert(kept > 0, "%s: select failed", name);
    cr_expect(bl.qb0 == geti(c, "qb0") && bl.n_qb == n_qb, "%s: query blocks %d+%d", name, bl.qb0, bl.n_qb);
    for (size_t i = 0; i < (size_t)H * n_qb * n_kb; i++)
        cr_expect(fabsf(mass[i] - ref_mass[i]) <= 1e-5f, "%s: mass[%zu] %.7g, numpy %.7g", name, i, mass[i],
                  ref_mass[i]);
    const cJSON *kh = cJSON_GetObjectItem(c, "kept");
    long n_ref = 0;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < n_qb; i++) {
            const cJSON *row = cJSON_GetArrayItem(cJSON_GetArrayItem(kh, h), i);
            int r = h * n_qb + i, n = cJSON_GetArraySize(row);
            n_ref += n;
            cr_expect(off[r + 1] - off[r] == n, "%s: head %d query block %d keeps %d blocks, numpy %d", name,
                      h, i, off[r + 1] - off[r], n);
            for (int e = 0; e < n && e < off[r + 1] - off[r]; e++)
                cr_expect(idx[off[r] + e] == cJSON_GetArrayItem(row, e)->valueint,
                          "%s: head %d query block %d, kept #%d is %d, numpy %d", name, h, i, e,
                          idx[off[r] + e], cJSON_GetArrayItem(row, e)->valueint);
        }
    cr_expect(kept == n_ref, "%s: %ld kept, numpy %ld", name, kept, n_ref);
    float *out = malloc(sizeof(float) * (size_t)T * H * D),
          *dense = malloc(sizeof(float) * (size_t)T * H * D);
    mx_attn_spec ssp = sp;
    ssp.blocks = &bl;
    be->attention(be, &ssp, q, k, v, out, NULL);
    double e = rel_l2(out, ref_out, (size_t)T * H * D);
    cr_expect(e <= 1e-5, "%s: block-sparse attention vs numpy masked dense: rel L2 %.3g", name, e);
    if (tau >= 1.0f) {
        be->attention(be, &sp, q, k, v, dense, NULL);
        cr_expect(memcmp(out, dense, sizeof(float) * (size_t)T * H * D) == 0,
                  "%s: tau = 1 differs from the dense attention op", name);
        long vis = 0;
        for (int i = bl.qb0; i < bl.qb0 + n_qb; i++) vis += (long)H * mx_xattn_visible_blocks(&sp, B, i);
        cr_expect(kept == vis, "%s: tau = 1 keeps %ld of %ld causal blocks", name, kept, vis);
    }
    mx_backend_destroy(be);
    free(q), free(k), free(v), free(ref_mass), free(ref_out), free(off), free(idx), free(mass), free(out);
    free(dense);
}

Test(xattn, scores_selection_and_sparse_attention_equal_numpy) {
    cJSON *cases = load_cases();
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) check_case(c), n++;
    cr_expect(n >= 4, "only %d fixture cases", n);
    cJSON_Delete(cases);
}

Test(xattn, options_are_checked) {
    mx_err err = {0};
    mx_xattn_opts o = mx_xattn_defaults();
    cr_expect(mx_xattn_check_opts(&o, &err) == MX_OK);
    float bad_tau[] = {0.0f, -0.1f, 1.0001f, NAN};
    for (size_t i = 0; i < sizeof bad_tau / sizeof bad_tau[0]; i++) {
        o = mx_xattn_defaults();
        o.threshold = bad_tau[i];
        cr_expect(mx_xattn_check_opts(&o, &err) == MX_ERR_ARG && strstr(err.msg, "(0, 1]"), "tau %g: %s",
                  (double)bad_tau[i], err.msg);
    }
    int bad_stride[] = {0, 3, 7, 256};
    for (size_t i = 0; i < sizeof bad_stride / sizeof bad_stride[0]; i++) {
        o = mx_xattn_defaults();
        o.stride = bad_stride[i];
        cr_expect(mx_xattn_check_opts(&o, &err) == MX_ERR_ARG && strstr(err.msg, "divide"), "stride %d: %s",
                  bad_stride[i], err.msg);
    }
    o = mx_xattn_defaults();
    o.threshold = 1.0f, o.stride = 16;
    cr_expect(mx_xattn_check_opts(&o, &err) == MX_OK);
}
