/* shards.h: token shards in llm.c's format and the training data loader.
 * A shard: a header of 256 little-endian int32 ([0] magic, [1] version, [2] token count), then the tokens:
 * magic 20240520 version 1 (GPT-2 style, uint16 tokens) or magic 20240801 version 7 (Llama-3 style, uint32).
 * Reading checks the magic and version, that the file holds exactly the tokens the header announces, and
 * that every token is below the vocabulary (an error names the file and the token's index and byte offset).
 *
 * The loader walks the shards in order: a batch (B, T) takes B*T + 1 consecutive tokens at the cursor (inputs
 * and, shifted by one, targets) and advances the cursor by B*T; a shard too short for the next batch passes
 * to the next shard (after the last, back to the first). Its state (shard, position) is two integers, saved
 * in checkpoints so that a resumed run reads the same batches. */
#ifndef MX_SHARDS_H
#define MX_SHARDS_H

#include <stdbool.h>
#include <stdint.h>

#include "../base/status.h"

enum { MX_SHARD_MAGIC_U16 = 20240520, MX_SHARD_MAGIC_U32 = 20240801 };

/* Reads a whole shard into *tokens (malloc'd int32), *n their count. vocab > 0 bounds the tokens. */
int mx_shard_read(const char *path, int vocab, int **tokens, long *n, mx_err *err);
/* Writes n tokens as a shard (uint16 when wide is false: every token must be < 65536). Atomic (temp +
 * rename). */
int mx_shard_write(const char *path, const int *tokens, long n, bool wide, mx_err *err);

typedef struct {
    char **paths;
    int n_paths;
    int vocab, B, T;
    int shard;   /* index of the shard at the cursor */
    long pos;    /* token offset of the cursor in it */
    int *tokens; /* the loaded shard (index loaded) */
    long n_tokens;
    int loaded; /* -1: none */
} mx_loader;

/* Opens the shards matching a glob pattern (sorted); each is read and checked when first used, and one with
 * fewer than B*T + 1 tokens is an error. */
int mx_loader_open(mx_loader *l, const char *pattern, int vocab, int B, int T, mx_err *err);
void mx_loader_close(mx_loader *l);
/* Fills inputs (B*T) and targets (B*T) with the next batch. */
int mx_loader_next(mx_loader *l, int *inputs, int *targets, mx_err *err);
/* Moves the cursor (a checkpoint's shard and position, or 0, 0 to restart). */
int mx_loader_seek(mx_loader *l, int shard, long pos, mx_err *err);

#endif
