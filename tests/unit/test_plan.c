/* test_plan.c: attention plans: the presets at 24 layers reproduce the MixAttention paper's table
 * (../shared/reference/attention-variants.md), the plan string round-trips, and bad plans get clear errors.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "../../src/model/plan.h"

static mx_layer_plan P[64];

static void expect_plan(const char *preset, const char *want) {
    mx_err err = {0};
    cr_assert_eq(mx_plan_parse(preset, 24, 1024, MX_ATTN_MHA, P, &err), 0, "%s: %s", preset, err.msg);
    cr_assert_eq(mx_plan_validate(P, 24, 131072, &err), 0, "%s: %s", preset, err.msg);
    char got[1024];
    mx_plan_to_string(P, 24, got, sizeof got);
    cr_assert_str_eq(got, want, "preset %s", preset);
}

static int count_caches(int n, int *full, int *window) {
    *full = *window = 0;
    for (int l = 0; l < n; l++)
        if (P[l].kv_from == l) (P[l].window ? (*window)++ : (*full)++);
    return *full + *window;
}

/* Paper (1-based): MA full at L1, L7, L13, L19, L24 all reading L1; window layers share in groups of 2 and 3.
 */
Test(plan, ma_24_layers) {
    expect_plan("ma", "G,S1024,S1024@1,S1024,S1024@3,S1024@3,G@0,S1024,S1024@7,S1024,S1024@9,S1024@9,G@0,"
                      "S1024,S1024@13,S1024,S1024@15,S1024@15,G@0,S1024,S1024@19,S1024,S1024@21,G@0");
    int f, w;
    count_caches(24, &f, &w);
    cr_assert(f == 1 && w == 8, "MA is 1 full + 8 window caches, got %d + %d", f, w);
}

Test(plan, ma_offset_24_layers) {
    expect_plan("ma-offset",
                "S1024,S1024@0,S1024,S1024@2,S1024@2,G,S1024,S1024@6,S1024,S1024@8,S1024@8,G@5,"
                "S1024,S1024@12,S1024,S1024@14,S1024@14,G@5,S1024,S1024@18,S1024,S1024@20,S1024@20,G@5");
    int f, w;
    count_caches(24, &f, &w);
    cr_assert(f == 1 && w == 8);
}

Test(plan, ma_endslide_and_pairs_and_slideshare) {
    int f, w;
    mx_err err = {0};
    cr_assert_eq(mx_plan_parse("ma-endslide", 24, 1024, MX_ATTN_MHA, P, &err), 0);
    cr_assert_eq(P[23].window, 1024, "L24 is a window layer in MA-EndSlide");
    count_caches(24, &f, &w);
    cr_assert(f == 1 && w == 8);
    cr_assert_eq(mx_plan_parse("ma-pairs", 24, 1024, MX_ATTN_MHA, P, &err), 0);
    cr_assert(P[0].kv_from == 0 && P[6].kv_from == 0 && P[12].kv_from == 12 && P[18].kv_from == 12);
    count_caches(24, &f, &w);
    cr_assert(f == 2 && w == 8, "MA-Pairs is 2 full + 8 window caches, got %d + %d", f, w);
    cr_assert_eq(mx_plan_parse("ma-offset-slideshare", 24, 1024, MX_ATTN_MHA, P, &err), 0);
    count_caches(24, &f, &w);
    cr_assert(f == 1 && w == 4, "SlideShare is 1 full + 4 window caches, got %d + %d", f, w);
}

Test(plan, presets_scale_to_other_depths) {
    mx_err err = {0};
    for (int n = 8; n <= 48; n++)
        for (int i = 0; MX_PLAN_PRESETS[i]; i++) {
            cr_assert_eq(mx_plan_parse(MX_PLAN_PRESETS[i], n, 64, MX_ATTN_MHA, P, &err), 0, "%s", err.msg);
            cr_assert_eq(mx_plan_validate(P, n, 4096, &err), 0, "%s at %d layers: %s", MX_PLAN_PRESETS[i], n,
                         err.msg);
        }
}

Test(plan, string_round_trip_and_repeat) {
    mx_err err = {0};
    cr_assert_eq(mx_plan_parse("G,S*2,S@1,G@0,S64", 6, 128, MX_ATTN_MHA, P, &err), 0, "%s", err.msg);
    char s[256];
    mx_plan_to_string(P, 6, s, sizeof s);
    cr_assert_str_eq(s, "G,S128,S128,S128@1,G@0,S64");
    mx_layer_plan Q[6];
    cr_assert_eq(mx_plan_parse(s, 6, 999, MX_ATTN_MHA, Q, &err), 0);
    cr_assert(memcmp(P, Q, sizeof Q) == 0);
}

static void expect_error(const char *plan, int n, const char *words) {
    mx_err err = {0};
    int rc = mx_plan_parse(plan, n, 16, MX_ATTN_MHA, P, &err);
    if (!rc) rc = mx_plan_validate(P, n, 64, &err);
    cr_assert_neq(rc, 0, "plan '%s' should fail", plan);
    cr_assert(strstr(err.msg, words), "plan '%s': message '%s' lacks '%s'", plan, err.msg, words);
}

Test(plan, bad_plans_are_explained) {
    expect_error("G,G,G,G,G,G,G,G@9,G,G", 10, "layer 7 reads layer 9's cache, which is written later");
    expect_error("G,G", 3, "names 2 layers, the model has 3");
    expect_error("G,G,G,G", 3, "more than the model's 3 layers");
    expect_error("maa-offset", 24, "unknown preset 'maa-offset'");
    expect_error("G,S@0,S@1", 3, "layer 2 reads layer 1's cache, but layer 1 writes none");
    expect_error("S100,G", 2, "window 100, larger than the context (64)");
    expect_error("S,G@0", 2, "cannot read layer 0's cache, which keeps only the last 16 keys");
    expect_error("G,X", 2, "layer 1: 'X' is not G, S");
    expect_error("ma", 4, "needs at least 8 layers");
}
