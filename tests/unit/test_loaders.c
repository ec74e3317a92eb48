/* test_loaders.c: the model loaders do not depend on what the caller's mx_err held before (issue 15: load_hf's
 * map() returned err->code for an absent optional tensor without setting it, so a stale error failed a good
 * load, and an uninitialised struct returned garbage). Run from tests/ (make unit). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "../../src/model/model.h"

static void load_with_stale_error(const char *path) {
    mx_err err;
    memset(&err, 0x5a, sizeof err); /* garbage, as an uninitialised struct */
    err.msg[sizeof err.msg - 1] = '\0';
    mx_model *m = NULL;
    int rc = mx_model_load(path, NULL, &m, &err);
    cr_assert_eq(rc, MX_OK, "%s: rc %d: %s", path, rc, err.msg);
    mx_model_free(m);
    err = (mx_err){.code = MX_ERR_IO};
    snprintf(err.msg, sizeof err.msg, "a stale error");
    rc = mx_model_load(path, NULL, &m, &err);
    cr_assert_eq(rc, MX_OK, "%s: rc %d: %s", path, rc, err.msg);
    mx_model_free(m);
}

Test(loaders, stale_error_does_not_decide_a_load) {
    load_with_stale_error("fixtures/hf/gpt2");  /* tied head: lm_head.weight absent */
    load_with_stale_error("fixtures/hf/llama"); /* its own head */
    load_with_stale_error("fixtures/hf/mixtral");
}
