/* fuzz_ckpt.c: libFuzzer target for checkpoint loading on both paths (make fuzz). Each input is written as
 * RUN/checkpoint.safetensors, then:
 *   --resume:  mx_ckpt_read_config, the training model built from that config (bounded in size: the harness
 *              skips configs over ~4M floats, a memory budget and not a bug), mx_ckpt_load with the optimizer
 *              state, and a seek of the data loader to the stored position over a small shard;
 *   run -m:    mx_model_load of the file, and 3 tokens through the loaded model.
 * The stored checksum would make nearly every mutation fail at the first check, so the harness also tries a
 * copy whose "crc32:XXXXXXXX" is rewritten (same length, header unchanged otherwise) to match the contents:
 * mutations then reach the range checks behind it. The seed corpus is a real tiny checkpoint (make_corpus.py). */
#include <stdint.h>

#include "../../src/io/safetensors.h"
#include "../../src/train/ckpt.h"
#include "../../src/train/shards.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_FLOATS = 1 << 22 };

/* A copy of data whose checksum value matches its contents, or NULL when it has none to fix. */
static uint8_t *with_fixed_checksum(const uint8_t *data, size_t size) {
    mx_st_file *f = NULL;
    mx_err err = {0};
    if (mx_st_open_buffer(data, size, "fuzz", &f, &err)) return NULL;
    const char *sum = mx_st_meta(f, "checksum");
    uint32_t crc = 0;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], "checksum"))
            crc = mx_st_checksum_meta(crc, f->meta_keys[i], f->meta_vals[i]);
    crc = mx_st_checksum_data(crc, data + f->data_start, size - f->data_start);
    char want[16];
    snprintf(want, sizeof want, "crc32:%08x", (unsigned)crc);
    size_t start = f->data_start;
    bool fixable = sum && strlen(sum) == 14;
    mx_st_close(f);
    if (!fixable) return NULL;
    const uint8_t *at = memmem(data, start, "\"crc32:", 7); /* the value as written in the header */
    if (!at || at + 15 > data + start) return NULL;
    uint8_t *copy = malloc(size);
    if (!copy) return NULL;
    memcpy(copy, data, size);
    memcpy(copy + (at + 1 - data), want, 14);
    return copy;
}

static bool small_enough(const mx_train_config *c) {
    double C = c->d_model, F = c->d_ff, V = c->vocab, L = c->n_layer, E = c->n_expert > 0 ? c->n_expert : 1;
    double params = 2 * V * C + L * (4 * C * C + 3 * C * F * E) + (double)c->max_ctx * C;
    double acts = (double)c->batch * c->seq * (L + 1) * (8 * C + 3 * F * E + V);
    return params * 3 + acts < MAX_FLOATS;
}

/* A shard of 64 tokens below the vocabulary, for the loader's seek to the stored position. */
static const char *shard(const char *dir) {
    static char path[4096];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s/shard.bin", dir);
        int tokens[64];
        for (int i = 0; i < 64; i++) tokens[i] = i % 2;
        mx_err err = {0};
        if (mx_shard_write(path, tokens, 64, false, &err)) __builtin_trap();
    }
    return path;
}

static void resume_path(const char *path) {
    mx_train_config cfg;
    mx_err err = {0};
    if (mx_ckpt_read_config(path, &cfg, &err) || mx_train_config_check(&cfg, &err) || !small_enough(&cfg))
        return;
    mx_tmodel *m = NULL;
    if (mx_tmodel_create(&cfg, &m, &err) == MX_OK) {
        mx_ckpt_state st = {0};
        if (mx_ckpt_load(m, path, true, &st, &err) == MX_OK) {
            if (st.step < 0 || st.step > cfg.steps || st.shard < 0 || st.pos < 0) __builtin_trap();
            mx_loader l;
            int v = cfg.vocab < 2 ? 2 : cfg.vocab;
            if (mx_loader_open(&l, shard(fuzz_dir()), v, 1, 4, &err) == MX_OK)
                mx_loader_seek(&l, st.shard, st.pos, &err);
            mx_loader_close(&l);
        }
    }
    mx_tmodel_free(m);
}

static void run_path(const char *path) {
    mx_model *m = NULL;
    mx_err err = {0};
    if (mx_model_load(path, NULL, &m, &err) != MX_OK) {
        if (m || !err.msg[0]) __builtin_trap();
        return;
    }
    if ((double)m->cfg.d_model * m->cfg.vocab < MAX_FLOATS) fuzz_run_model(m);
    mx_model_free(m);
}

static void both_paths(const uint8_t *data, size_t size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", fuzz_dir());
    fuzz_write(path, data, size);
    resume_path(path);
    run_path(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    both_paths(data, size);
    uint8_t *fixed = with_fixed_checksum(data, size);
    if (fixed) both_paths(fixed, size);
    free(fixed);
    return 0;
}
