/* test_blocks.c: the MoE, MLA and MKA blocks through the C API on the tiny models of tests/fixtures/blocks
 * (scripts/fixtures_blocks.py): logits of every position against Hugging Face transformers (Mixtral,
 * DeepSeek-V2 with and without a query latent) and against scripts/mka_reference.py (MKA, FastMKA), relative
 * L2 <= 1e-4, through one prefill, token-by-token decode and chunked prefills; MLA's explicit and absorbed
 * forms equal to each other; MoE expert counts summing to T*k per MoE layer. Paths are relative to tests/
 * (make unit runs there). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/model/session.h"

#define DIR "fixtures/blocks/"

typedef struct {
    mx_model *m;
    mx_backend *be;
    int ids[256], T;
    float *ref; /* [T, vocab] */
} fixture;

static void read_ids(const char *name, fixture *f) {
    char path[256];
    snprintf(path, sizeof path, DIR "%s.ids", name);
    FILE *fp = fopen(path, "r");
    cr_assert(fp, "cannot open %s", path);
    f->T = 0;
    while (f->T < 256 && fscanf(fp, "%d", &f->ids[f->T]) == 1) f->T++;
    fclose(fp);
    cr_assert(f->T > 0);
}

static void read_ref(const char *name, fixture *f) {
    char path[256];
    snprintf(path, sizeof path, DIR "%s.logits.f32", name);
    size_t n = (size_t)f->T * f->m->cfg.vocab;
    f->ref = malloc(sizeof(float) * n);
    FILE *fp = fopen(path, "rb");
    cr_assert(fp && f->ref, "cannot open %s", path);
    cr_assert_eq(fread(f->ref, sizeof(float), n, fp), n, "%s is short", path);
    fclose(fp);
}

/* Loads GGUF `file` with every layer's attention `attn` (NULL: the model's, as --attn) and the reference
 * `name`. */
static void open_fixture(fixture *f, const char *file, const char *name, const char *attn) {
    char path[256];
    mx_err err = {0};
    mx_load_opts opts = {.attn = attn};
    snprintf(path, sizeof path, DIR "%s", file);
    cr_assert_eq(mx_model_load(path, &opts, &f->m, &err), MX_OK, "%s", err.msg);
    bool norm;
    /* DeepSeek-V2 does not renormalize its top-k weights (the GGUF key llama.cpp writes says so) */
    if (mx_gguf_get_bool(f->m->gguf, "deepseek2.expert_weights_norm", &norm, NULL) == MX_OK)
        f->m->cfg.expert_norm_topk = norm;
    f->be = mx_backend_cpu_create(2);
    cr_assert(f->be);
    f->be->exact = true;
    cr_assert_eq(mx_model_place(f->m, f->be, &err), MX_OK, "%s", err.msg);
    read_ids(name, f);
    read_ref(name, f);
}

static void close_fixture(fixture *f) {
    free(f->ref);
    mx_model_unplace(f->m, f->be);
    mx_backend_destroy(f->be);
    mx_model_free(f->m);
}

/* Logits of every position [T, vocab], evaluated in calls of `step` tokens, MLA in `form`. When counts is not
 * NULL it receives the session's expert counts (n_layer * n_expert ints). */
static float *run(fixture *f, int step, mx_mla_form form, int *counts) {
    mx_err err = {0};
    mx_session *s;
    cr_assert_eq(mx_session_create(f->m, f->be, f->T, &s, &err), MX_OK, "%s", err.msg);
    s->kv.mla_form = form;
    int V = f->m->cfg.vocab;
    float *out = malloc(sizeof(float) * (size_t)f->T * V);
    cr_assert(out);
    for (int t = 0; t < f->T; t += step) {
        int k = f->T - t < step ? f->T - t : step;
        cr_assert_eq(mx_session_eval(s, f->ids + t, k, out + (size_t)t * V, true, &err), MX_OK, "%s",
                     err.msg);
    }
    if (counts) memcpy(counts, s->moe_counts, sizeof(int) * (size_t)f->m->cfg.n_layer * f->m->cfg.n_expert);
    mx_session_free(s);
    return out;
}

/* Largest relative L2 error of a against b over the T rows of n. */
static double max_rel_l2(const float *a, const float *b, int T, int n) {
    double worst = 0;
    for (int t = 0; t < T; t++) {
        double d = 0, r = 0;
        for (int i = 0; i < n; i++) {
            double x = a[(size_t)t * n + i], y = b[(size_t)t * n + i];
            d += (x - y) * (x - y);
            r += y * y;
        }
        double e = sqrt(d / r);
        worst = e > worst ? e : worst;
    }
    return worst;
}

/* Prefill, decode and chunked prefill (steps of 7) all equal the reference within 1e-4. */
static void check_all_paths(const char *file, const char *name, const char *attn, mx_mla_form form) {
    fixture f;
    open_fixture(&f, file, name, attn);
    int steps[] = {f.T, 1, 7};
    for (size_t i = 0; i < 3; i++) {
        float *out = run(&f, steps[i], form, NULL);
        double e = max_rel_l2(out, f.ref, f.T, f.m->cfg.vocab);
        cr_expect(e <= 1e-4, "%s (form %d), steps of %d tokens: relative L2 error %.3g > 1e-4", name, form,
                  steps[i], e);
        free(out);
    }
    close_fixture(&f);
}

Test(blocks, mixtral_matches_transformers) {
    check_all_paths("mixtral.gguf", "mixtral", NULL, MX_MLA_AUTO);
}

Test(blocks, deepseek2_matches_transformers) {
    check_all_paths("deepseek2.gguf", "deepseek2", NULL, MX_MLA_AUTO);
    check_all_paths("deepseek2.gguf", "deepseek2", NULL, MX_MLA_EXPLICIT);
    check_all_paths("deepseek2.gguf", "deepseek2", NULL, MX_MLA_ABSORBED);
}

Test(blocks, deepseek2_without_query_latent_matches_transformers) {
    check_all_paths("deepseek2_noq.gguf", "deepseek2_noq", NULL, MX_MLA_EXPLICIT);
    check_all_paths("deepseek2_noq.gguf", "deepseek2_noq", NULL, MX_MLA_ABSORBED);
}

Test(blocks, mla_absorbed_equals_explicit) {
    fixture f;
    open_fixture(&f, "deepseek2.gguf", "deepseek2", NULL);
    int steps[] = {f.T, 1, 7};
    for (size_t i = 0; i < 3; i++) {
        float *a = run(&f, steps[i], MX_MLA_EXPLICIT, NULL), *b = run(&f, steps[i], MX_MLA_ABSORBED, NULL);
        double e = max_rel_l2(b, a, f.T, f.m->cfg.vocab);
        cr_expect(e <= 1e-5, "steps of %d: absorbed differs from explicit by %.3g", steps[i], e);
        free(a);
        free(b);
    }
    close_fixture(&f);
}

Test(blocks, mla_cache_holds_only_the_latent) {
    fixture f;
    open_fixture(&f, "deepseek2.gguf", "deepseek2", NULL);
    const mx_config *c = &f.m->cfg;
    for (int l = 0; l < c->n_layer; l++)
        cr_expect_eq(mx_kv_elems_per_token(c, l), (size_t)(c->mla_kv_rank + c->mla_rope_dim));
    close_fixture(&f);
}

Test(blocks, moe_counts_sum_to_tokens_times_k) {
    const char *files[] = {"mixtral", "deepseek2", "deepseek2_noq"};
    for (size_t i = 0; i < 3; i++) {
        char file[64];
        snprintf(file, sizeof file, "%s.gguf", files[i]);
        fixture f;
        open_fixture(&f, file, files[i], NULL);
        const mx_config *c = &f.m->cfg;
        int *counts = calloc((size_t)c->n_layer * c->n_expert, sizeof(int));
        for (int step = 1; step <= f.T; step += f.T - 1) {
            free(run(&f, step, MX_MLA_AUTO, counts));
            for (int l = 0; l < c->n_layer; l++) {
                int sum = 0;
                for (int e = 0; e < c->n_expert; e++) sum += counts[l * c->n_expert + e];
                int want = mx_layer_is_moe(c, l) ? f.T * c->n_expert_used : 0;
                cr_expect_eq(sum, want, "%s layer %d, steps of %d: %d tokens routed, want %d", files[i], l,
                             step, sum, want);
            }
        }
        free(counts);
        close_fixture(&f);
    }
}

Test(blocks, mka_matches_reference) {
    check_all_paths("mka.gguf", "mka", "mka", MX_MLA_AUTO);
}

Test(blocks, fastmka_matches_reference) {
    check_all_paths("mka.gguf", "fastmka", "fastmka", MX_MLA_AUTO);
}

Test(blocks, mka_cache_sizes) {
    fixture f;
    open_fixture(&f, "mka.gguf", "mka", "mka");
    const mx_config *c = &f.m->cfg;
    size_t kv = 2 * (size_t)c->n_kv_head * c->head_dim;
    cr_expect_eq(mx_kv_elems_per_token(c, 0), 2 * kv);
    cr_expect_eq(c->plan[0].kind, MX_ATTN_MKA);
    c->plan[0].kind = MX_ATTN_FASTMKA;
    cr_expect_eq(mx_kv_elems_per_token(c, 0), kv);
    close_fixture(&f);
}
