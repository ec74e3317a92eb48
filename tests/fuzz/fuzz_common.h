/* fuzz_common.h: what the file-based fuzz targets share: a private scratch directory, writing an input to a
 * file in it, and running a loaded model for a few tokens on the CPU backend (so that a loader that lets a bad
 * hyper-parameter through is caught where it hurts: in the kernels). Header-only: each target is one program. */
#ifndef MX_FUZZ_COMMON_H
#define MX_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/backend/backend.h"
#include "../../src/model/model.h"
#include "../../src/model/session.h"

/* A fresh directory under /tmp for this process (created once). */
static const char *fuzz_dir(void) {
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/mixatt-fuzz-XXXXXX");
        if (!mkdtemp(dir)) __builtin_trap();
    }
    return dir;
}

static void fuzz_write(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) __builtin_trap();
    fclose(f);
}

/* Places m on a 1-thread CPU backend and evaluates 3 tokens (ids below the vocabulary) in a context of 8.
 * Errors are fine; crashes and sanitizer reports are what the fuzzer looks for. */
static void fuzz_run_model(mx_model *m) {
    mx_backend *be = mx_backend_cpu_create(1);
    mx_err err = {0};
    mx_session *s = NULL;
    int vocab = m->cfg.vocab;
    float *logits = vocab > 0 && vocab <= 1 << 20 ? malloc(sizeof(float) * (size_t)vocab) : NULL;
    if (be && logits && mx_model_check_backend(m, be, &err) == MX_OK &&
        mx_model_place(m, be, &err) == MX_OK) {
        if (mx_session_create(m, be, 8, &s, &err) == MX_OK) {
            int ids[3] = {0, (vocab - 1) / 2, vocab - 1};
            mx_session_eval(s, ids, 3, logits, false, &err);
            mx_session_free(s);
        }
        mx_model_unplace(m, be);
    }
    free(logits);
    mx_backend_destroy(be);
}

#endif
