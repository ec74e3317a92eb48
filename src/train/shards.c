/* shards.c: llm.c token shards and the sequential data loader (shards.h). */
#include "shards.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { HEADER_INTS = 256 };

static int read_header(FILE *f, const char *path, int32_t *hdr, int *width, mx_err *err) {
    if (fread(hdr, sizeof(int32_t), HEADER_INTS, f) != HEADER_INTS)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: too short for a token shard (needs a 1024-byte header)",
                          path);
    if (hdr[0] == MX_SHARD_MAGIC_U16 && hdr[1] == 1)
        *width = 2;
    else if (hdr[0] == MX_SHARD_MAGIC_U32 && hdr[1] == 7)
        *width = 4;
    else if (hdr[0] == MX_SHARD_MAGIC_U16 || hdr[0] == MX_SHARD_MAGIC_U32)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: shard magic %d with unsupported version %d (expected %d)",
                          path, hdr[0], hdr[1], hdr[0] == MX_SHARD_MAGIC_U16 ? 1 : 7);
    else
        return mx_err_set(
            err, MX_ERR_FORMAT,
            "%s: bad magic %d: not a token shard (expected %d for uint16 tokens or %d for uint32)", path,
            hdr[0], MX_SHARD_MAGIC_U16, MX_SHARD_MAGIC_U32);
    if (hdr[2] < 0) return mx_err_set(err, MX_ERR_FORMAT, "%s: negative token count %d", path, hdr[2]);
    return MX_OK;
}

int mx_shard_read(const char *path, int vocab, int **tokens, long *n, mx_err *err) {
    *tokens = NULL, *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int32_t hdr[HEADER_INTS];
    int width = 0;
    if (read_header(f, path, hdr, &width, err)) return fclose(f), err->code;
    long count = hdr[2];
    fseek(f, 0, SEEK_END);
    long size = ftell(f), want = HEADER_INTS * 4 + count * width;
    if (size != want) {
        fclose(f);
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: the header announces %ld tokens (%ld bytes) but the file has %ld bytes", path,
                          count, want, size);
    }
    fseek(f, HEADER_INTS * 4, SEEK_SET);
    void *raw = malloc((size_t)(count ? count : 1) * width);
    int *out = malloc(sizeof(int) * (size_t)(count ? count : 1));
    if (!raw || !out)
        return fclose(f), free(raw), free(out), mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", path);
    if (fread(raw, (size_t)width, (size_t)count, f) != (size_t)count) {
        fclose(f), free(raw), free(out);
        return mx_err_set(err, MX_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    for (long i = 0; i < count; i++) {
        uint32_t t = width == 2 ? ((const uint16_t *)raw)[i] : ((const uint32_t *)raw)[i];
        if (vocab > 0 && t >= (uint32_t)vocab) {
            free(raw), free(out);
            return mx_err_set(err, MX_ERR_FORMAT,
                              "%s: token %u at index %ld (byte offset %ld) is outside the vocabulary (%d)",
                              path, t, i, HEADER_INTS * 4 + i * width, vocab);
        }
        out[i] = (int)t;
    }
    free(raw);
    *tokens = out, *n = count;
    return MX_OK;
}

int mx_shard_write(const char *path, const int *tokens, long n, bool wide, mx_err *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (n > INT32_MAX) return mx_err_set(err, MX_ERR_ARG, "%s: too many tokens for one shard (%ld)", path, n);
    FILE *f = fopen(tmp, "wb");
    if (!f) return mx_err_set(err, MX_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    int32_t hdr[HEADER_INTS] = {wide ? MX_SHARD_MAGIC_U32 : MX_SHARD_MAGIC_U16, wide ? 7 : 1, (int32_t)n};
    bool ok = fwrite(hdr, sizeof hdr, 1, f) == 1;
    for (long i = 0; i < n && ok; i++) {
        if (!wide && (tokens[i] < 0 || tokens[i] > 65535)) {
            fclose(f), remove(tmp);
            return mx_err_set(err, MX_ERR_ARG, "%s: token %d does not fit a uint16 shard", path, tokens[i]);
        }
        uint16_t s = (uint16_t)tokens[i];
        uint32_t w = (uint32_t)tokens[i];
        ok = wide ? fwrite(&w, 4, 1, f) == 1 : fwrite(&s, 2, 1, f) == 1;
    }
    if (fclose(f) || !ok || rename(tmp, path)) {
        remove(tmp);
        return mx_err_set(err, MX_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    }
    return MX_OK;
}

int mx_loader_open(mx_loader *l, const char *pattern, int vocab, int B, int T, mx_err *err) {
    memset(l, 0, sizeof *l);
    l->vocab = vocab, l->B = B, l->T = T, l->loaded = -1;
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc || g.gl_pathc == 0) {
        if (!rc) globfree(&g);
        return mx_err_set(err, MX_ERR_IO, "no token shard matches '%s'", pattern);
    }
    if (g.gl_pathc > INT32_MAX)
        return globfree(&g), mx_err_set(err, MX_ERR_ARG, "'%s': too many shards", pattern);
    l->paths = calloc(g.gl_pathc, sizeof *l->paths);
    for (size_t i = 0; l->paths && i < g.gl_pathc; i++)
        if (!(l->paths[l->n_paths++] = strdup(g.gl_pathv[i]))) break;
    globfree(&g);
    if (!l->paths || !l->paths[l->n_paths - 1]) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    return mx_loader_seek(l, 0, 0, err);
}

void mx_loader_close(mx_loader *l) {
    for (int i = 0; i < l->n_paths; i++) free(l->paths[i]);
    free(l->paths);
    free(l->tokens);
    memset(l, 0, sizeof *l);
}

static int load(mx_loader *l, int shard, mx_err *err) {
    if (l->loaded == shard) return MX_OK;
    free(l->tokens);
    l->tokens = NULL, l->loaded = -1;
    if (mx_shard_read(l->paths[shard], l->vocab, &l->tokens, &l->n_tokens, err)) return err->code;
    long need = (long)l->B * l->T + 1;
    if (l->n_tokens < need)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: %ld tokens, fewer than one batch needs (%d x %d + 1 = %ld)", l->paths[shard],
                          l->n_tokens, l->B, l->T, need);
    l->loaded = shard;
    return MX_OK;
}

/* A position is a token of the shard, or its end: a saved cursor is never past the tokens it read. */
int mx_loader_seek(mx_loader *l, int shard, long pos, mx_err *err) {
    if (shard < 0 || shard >= l->n_paths || pos < 0)
        return mx_err_set(err, MX_ERR_ARG, "data position (shard %d, token %ld) is outside the %d shards",
                          shard, pos, l->n_paths);
    if (load(l, shard, err)) return err->code;
    if (pos > l->n_tokens)
        return mx_err_set(err, MX_ERR_ARG, "%s: data position %ld is past the shard's %ld tokens",
                          l->paths[shard], pos, l->n_tokens);
    l->shard = shard, l->pos = pos;
    return MX_OK;
}

int mx_loader_next(mx_loader *l, int *inputs, int *targets, mx_err *err) {
    long n = (long)l->B * l->T;
    if (l->pos > l->n_tokens - n - 1) { /* to the next shard (load() made n_tokens >= n + 1) */
        if (mx_loader_seek(l, (l->shard + 1) % l->n_paths, 0, err)) return err->code;
    }
    const int *src = l->tokens + l->pos;
    memcpy(inputs, src, sizeof(int) * (size_t)n);
    memcpy(targets, src + 1, sizeof(int) * (size_t)n);
    l->pos += n;
    return MX_OK;
}
