/* session.h: one conversation with a model on a backend: the KV cache, the position, scratch buffers (the
 * struct is in session_state.h). mx_session_eval runs the transformer over new tokens (a prompt at once, or one token at a time) and returns
 * logits; the model code behind it (forward.c and the blocks it calls) is backend-agnostic. */
#ifndef MX_SESSION_H
#define MX_SESSION_H

#include <stdbool.h>

#include "model.h"
#include "session_state.h"

int mx_session_create(const mx_model *m, mx_backend *be, int n_ctx, mx_session **out, mx_err *err);
void mx_session_free(mx_session *s);
/* Bytes a session of n_ctx tokens allocates on the backend (KV cache + activation buffers). */
size_t mx_session_bytes(const mx_model *m, const mx_backend *be, int n_ctx);
/* Runs tokens[0..T) at positions pos..pos+T-1 and advances pos. logits (host memory) receives vocab floats
 * for the last token, or T*vocab for every token when all_logits. Fails cleanly (nothing run) when pos + T
 * exceeds n_ctx or a token id is outside the vocabulary. */
int mx_session_eval(mx_session *s, const int *tokens, int T, float *logits, bool all_logits, mx_err *err);
/* Decode with the host out of the loop (backend.h: sample). Whether this session can: the backend samples on
 * its side, no tensor parallelism or Star Attention, and a ubatch of at least 3 (rolling back two queued steps
 * never needs keys a window ring has overwritten); MX_HOST_SAMPLING=1 says no (A/B). */
bool mx_session_can_keep(const mx_session *s);
/* Like mx_session_eval, but the last token's logits stay in backend memory (s->logits, vocab floats) for
 * be->sample; tokens NULL runs the one token at s->tok (T = 1), which be->sample wrote. */
int mx_session_eval_keep(mx_session *s, const int *tokens, int T, mx_err *err);
/* Forgets every token from position pos on and returns the position actually kept: pos, or 0 when a window
 * layer's ring has already overwritten keys that tokens after pos would need again (the caller then
 * re-evaluates from the start). */
int mx_session_truncate(mx_session *s, int pos);

/* The forward pass over T <= ubatch tokens (forward.c). */
void mx_forward(mx_session *s, const int *tokens, int T, float *logits, bool all_logits);
/* The same, the last token's logits left in s->logits; tokens NULL: the one token at s->tok. */
void mx_forward_keep(mx_session *s, const int *tokens, int T);
/* The blocks it calls: attention of layer l by the plan's kind (attention/attention.h) reads s->h (normed
 * input) and leaves the block output in s->h; the MLP (mlp.c, moe.c) likewise. */
void mx_mlp_dense(mx_session *s, int l, int T);
void mx_mlp_moe(mx_session *s, int l, int T);
/* Norm of the model's kind (RMSNorm or LayerNorm with bias) over T rows of C. */
void mx_norm(mx_session *s, const float *x, const mx_tensor *w, const mx_tensor *b, float *out, int T);

#endif
