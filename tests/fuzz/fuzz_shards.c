/* fuzz_shards.c: libFuzzer target for token shards and the training data loader (make fuzz). Each input is
 * written as a shard file and read with a small vocabulary; then the loader opens it (batch 2 x 3), seeks to
 * positions at and past the end (which must be refused or accepted, never read out of bounds) and takes
 * batches, whose tokens must all be inside the vocabulary. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/train/shards.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { VOCAB = 300, B = 2, T = 3 };

static char path[64];

static void check_batch(const int *x, int n) {
    for (int i = 0; i < n; i++)
        if (x[i] < 0 || x[i] >= VOCAB) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) snprintf(path, sizeof path, "/tmp/mixatt-fuzz-shard.%d.bin", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) __builtin_trap();
    fclose(f);
    mx_err err = {0};
    int *tokens = NULL;
    long n = 0;
    if (mx_shard_read(path, VOCAB, &tokens, &n, &err) == MX_OK) {
        check_batch(tokens, (int)(n < 1 << 20 ? n : 1 << 20));
        free(tokens);
    } else if (!strstr(err.msg, path)) {
        __builtin_trap();
    }
    mx_loader l;
    if (mx_loader_open(&l, path, VOCAB, B, T, &err) == MX_OK) {
        int in[B * T], tg[B * T];
        long ends[] = {l.n_tokens, l.n_tokens + 1, l.n_tokens - B * T, LONG_MAX, 1};
        for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++) {
            if (mx_loader_seek(&l, 0, ends[i], &err) != MX_OK) continue;
            for (int k = 0; k < 3; k++) {
                if (mx_loader_next(&l, in, tg, &err) != MX_OK) break;
                check_batch(in, B * T), check_batch(tg, B * T);
                if (l.pos < 0 || l.pos > l.n_tokens) __builtin_trap();
            }
        }
    }
    mx_loader_close(&l);
    return 0;
}
