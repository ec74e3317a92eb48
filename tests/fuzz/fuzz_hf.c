/* fuzz_hf.c: libFuzzer target for the Hugging Face directory loader (make fuzz). The input is config.json; beside
 * it lie the tiny valid safetensors of a committed fixture (tests/fixtures/hf/TYPE, linked into a scratch
 * directory once): the fixture whose model_type the input names, llama otherwise, so mutations explore every
 * architecture's reader against weights that fit the unmutated config. An accepted model is run for 3 tokens:
 * a hyper-parameter the loader let through (an expert count, a top-k, RoPE dims) must not break a kernel.
 * MIXATT_FUZZ_FIXTURES overrides the fixture root (default tests/fixtures/hf, from the repository root). */
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const TYPES[] = {"deepseek_v3", "deepseek_v2", "mixtral", "mistral", "gpt2", "llama"};
enum { N_TYPES = sizeof TYPES / sizeof TYPES[0] };

/* DIR/TYPE holding links to the fixture's weights (every *.safetensors and the index). */
static void link_fixture(const char *root, const char *dir, const char *type) {
    char src[4096], dst[4096];
    snprintf(dst, sizeof dst, "%s/%s", dir, type);
    if (mkdir(dst, 0700)) __builtin_trap();
    snprintf(src, sizeof src, "%s/%s", root, type);
    DIR *d = opendir(src);
    if (!d) {
        fprintf(stderr,
                "fuzz_hf: cannot open %s (run from the repository root or set MIXATT_FUZZ_FIXTURES)\n", src);
        exit(1);
    }
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".safetensors")) continue;
        char a[4096], b[4096], abs[4096];
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        if (!realpath(a, abs) || symlink(abs, b)) __builtin_trap();
    }
    closedir(d);
}

static const char *setup(void) {
    static bool done;
    if (!done) {
        const char *root = getenv("MIXATT_FUZZ_FIXTURES");
        for (int i = 0; i < N_TYPES; i++)
            link_fixture(root ? root : "tests/fixtures/hf", fuzz_dir(), TYPES[i]);
        done = true;
    }
    return fuzz_dir();
}

/* The fixture for this config: the first type named in it (memmem: the input need not be a C string). */
static const char *pick(const uint8_t *data, size_t size) {
    for (int i = 0; i < N_TYPES; i++)
        if (memmem(data, size, TYPES[i], strlen(TYPES[i]))) return TYPES[i];
    return "llama";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = setup();
    char model[4096], cfg[4200];
    snprintf(model, sizeof model, "%s/%s", dir, pick(data, size));
    snprintf(cfg, sizeof cfg, "%s/config.json", model);
    fuzz_write(cfg, data, size);
    mx_model *m = NULL;
    mx_err err = {0};
    if (mx_model_load(model, NULL, &m, &err) != MX_OK) {
        if (m || !err.msg[0]) __builtin_trap(); /* a failure always says why */
        return 0;
    }
    fuzz_run_model(m);
    mx_model_free(m);
    return 0;
}
