/* batch.h: one forward step over many sequences, the engine of continuous batching (serve/sched.c).
 * Each sequence owns a KV cache laid out from the attention plan (attention/kvcache.h: rings for window
 * layers, nothing for reader layers) and its position. A step takes one token of every decoding sequence plus
 * whole prefill chunks of prompts, runs them as one batch of rows through the layers (every matmul over all
 * decode rows at once, attention per sequence against its own cache), and returns the logits of the rows
 * that asked for them. Numerics: a sequence's tokens are bitwise those of mx_generate (mixatt run) on the
 * same prompt, whatever else is in the batch, on a backend with matmul_rows (backend.h). */
#ifndef MX_SERVE_BATCH_H
#define MX_SERVE_BATCH_H

#include <stdbool.h>

#include "../model/session.h"

typedef struct {
    mx_kvcache kv;
    int pos; /* tokens in the cache */
    int n_ctx;
} mx_seq;

/* What one sequence runs in a step: n tokens at its position (n = 1: a decode token; more: a prefill chunk);
 * logits: return the logits after the last of them. */
typedef struct {
    mx_seq *seq;
    const int *tokens;
    int n;
    bool logits;
} mx_batch_item;

typedef struct {
    const mx_model *m;
    mx_backend *be;
    mx_backend be_rows; /* be with matmul = matmul_rows (decode numerics at any batch size) */
    mx_session *s; /* scratch: residual, activations and logits for max_rows rows (its own cache unused) */
    int max_rows, chunk;
    int *ids, *pos;        /* [max_rows] host: token and position of each row */
    int *logit_rows;       /* [max_rows] */
    mx_attn_spec *specs;   /* [max_rows] */
    const void **kp, **vp; /* [max_rows] */
    float *logits;         /* [max_rows, vocab] host */
} mx_batch;

/* A batch of up to max_decode one-token items plus prefill chunks totalling at most chunk tokens. gemm: the
 * decode rows go through be->matmul (the prefill GEMM once there are 8 or more: faster at many streams, but a
 * row's rounding then depends on the batch, so greedy output may differ from mixatt run's); else matmul_rows. */
int mx_batch_init(mx_batch *b, const mx_model *m, mx_backend *be, int max_decode, int chunk, bool gemm,
                  mx_err *err);
void mx_batch_free(mx_batch *b);
/* Bytes the cache of one sequence of n_ctx tokens takes under the model's plan (prefill in chunk tokens). */
size_t mx_seq_bytes(const mx_model *m, const mx_backend *be, int n_ctx, int chunk);
int mx_seq_init(mx_seq *q, const mx_model *m, mx_backend *be, int n_ctx, int chunk, mx_err *err);
void mx_seq_free(mx_seq *q);
/* Runs one step over items (each sequence at most once) and advances their positions; *logits receives
 * [count of items with logits, vocab] floats in item order (host memory owned by b, valid until the next
 * step). Fails, having run nothing, when the items do not fit the batch or a sequence's context. */
int mx_batch_step(mx_batch *b, const mx_batch_item *items, int n_items, float **logits, mx_err *err);

#endif
