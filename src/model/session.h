/* session.h: one conversation with a model on a backend: the KV cache, the position, scratch buffers.
 * mx_session_eval runs the transformer over new tokens (a prompt at once, or one token at a time) and returns
 * logits; the model code behind it (forward.c) is backend-agnostic. */
#ifndef MX_SESSION_H
#define MX_SESSION_H

#include <stdbool.h>

#include "../attention/kvcache.h"
#include "model.h"

typedef struct {
    const mx_model *m;
    mx_backend *be;
    int n_ctx;   /* tokens the cache holds */
    int ubatch;  /* tokens per forward chunk */
    int pos;     /* tokens already in the cache */
    mx_kvcache kv;
    /* scratch, each sized for ubatch rows: x,h [C]; q,att [H*D]; k,v [G*D]; g,u [F]; logits [vocab] */
    float *x, *h, *q, *k, *v, *att, *g, *u, *logits;
} mx_session;

int mx_session_create(const mx_model *m, mx_backend *be, int n_ctx, mx_session **out, mx_err *err);
void mx_session_free(mx_session *s);
/* Runs tokens[0..T) at positions pos..pos+T-1 and advances pos. logits (host memory) receives vocab floats
 * for the last token, or T*vocab for every token when all_logits. Fails cleanly (nothing run) when pos + T
 * exceeds n_ctx. */
int mx_session_eval(mx_session *s, const int *tokens, int T, float *logits, bool all_logits, mx_err *err);
/* Forgets every token from position pos on and returns the position actually kept: pos, or 0 when a window
 * layer's ring has already overwritten keys that tokens after pos would need again (the caller then
 * re-evaluates from the start). */
int mx_session_truncate(mx_session *s, int pos);

/* The forward pass over T <= ubatch tokens (forward.c). */
void mx_forward(mx_session *s, const int *tokens, int T, float *logits, bool all_logits);

#endif
