/* session_state.h: what one conversation with a model holds (mx_session): the model and backend, the KV
 * cache, the position and the scratch buffers. The blocks (attention/, mlp.c, moe.c) read and write it; what
 * a caller does with a session (create, eval, truncate) is in session.h. */
#ifndef MX_SESSION_STATE_H
#define MX_SESSION_STATE_H

#include <stddef.h>

#include "../attention/kvcache.h"
#include "model.h"

enum { MX_N_SCRATCH = 6 };

typedef struct mx_session {
    const mx_model *m;
    mx_backend *be;
    int n_ctx;  /* tokens the cache holds */
    int ubatch; /* tokens per forward chunk */
    int pos;    /* tokens already in the cache */
    mx_kvcache kv;
    size_t width; /* floats per token row of each scratch buffer (the widest activation of the model) */
    float *x;     /* residual stream [ubatch, C] */
    float *h;     /* normed input / block output [ubatch, width] */
    float *buf[MX_N_SCRATCH]; /* scratch for the blocks, each [ubatch, width] */
    float *logits;            /* [ubatch, vocab] */
    int *moe_counts; /* [n_layer, n_expert]: tokens routed to each expert (mixatt info --moe-stats) */
    /* Star Attention (attention/star_attend.h, run/star_pipeline.c); both 0/NULL otherwise. The token in slot p sits at
     * position p + pos_offset (RoPE, learned positions): a block after its anchor, or the query after a rank's
     * compact context. MHA layers only (run/star_pipeline.c refuses the others). */
    int pos_offset;
    struct mx_star *star; /* set: MHA layers attend through mx_attention_star (phase 2) */
    /* Tensor parallelism (tp.h): the output head's allgather buffers in backend memory, [ubatch, vocab_max]
     * and [ranks, ubatch, vocab_max]; NULL without --tp. */
    float *tp_send, *tp_recv;
    int *tok; /* [1] in backend memory: the token be->sample drew, read by the next mx_session_eval_keep */
    /* XAttention (attention/xattn.h; appended): set: MHA layers' prefill calls attend block-sparsely */
    struct mx_xattn *xattn;
} mx_session;

#endif
