/* session.c: session lifetime and chunking of long inputs into ubatch-sized forward passes. */
#include "session.h"

#include <stdlib.h>

enum { DEFAULT_UBATCH = 512 };

static int alloc_scratch(mx_session *s, mx_err *err) {
    const mx_config *c = &s->m->cfg;
    mx_backend *be = s->be;
    size_t U = (size_t)s->ubatch, F = sizeof(float);
    size_t HD = (size_t)c->n_head * c->head_dim, GD = (size_t)c->n_kv_head * c->head_dim;
    s->x = be->alloc(be, U * c->d_model * F);
    s->h = be->alloc(be, U * c->d_model * F);
    s->q = be->alloc(be, U * HD * F);
    s->att = be->alloc(be, U * HD * F);
    s->k = be->alloc(be, U * GD * F);
    s->v = be->alloc(be, U * GD * F);
    s->g = be->alloc(be, U * c->d_ff * F);
    s->u = be->alloc(be, U * c->d_ff * F);
    s->logits = be->alloc(be, U * c->vocab * F);
    if (!s->x || !s->h || !s->q || !s->att || !s->k || !s->v || !s->g || !s->u || !s->logits)
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating activation buffers for %d tokens", s->ubatch);
    return MX_OK;
}

int mx_session_create(const mx_model *m, mx_backend *be, int n_ctx, mx_session **out, mx_err *err) {
    *out = NULL;
    if (n_ctx <= 0 || n_ctx > m->cfg.max_ctx)
        return mx_err_set(err, MX_ERR_ARG, "context of %d tokens is outside 1..%d (the model's context length)",
                          n_ctx, m->cfg.max_ctx);
    mx_session *s = calloc(1, sizeof *s);
    if (!s) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    s->m = m;
    s->be = be;
    s->n_ctx = n_ctx;
    s->ubatch = n_ctx < DEFAULT_UBATCH ? n_ctx : DEFAULT_UBATCH;
    int rc = mx_kvcache_init(&s->kv, &m->cfg, be, n_ctx, s->ubatch, err);
    if (!rc) rc = alloc_scratch(s, err);
    if (rc) {
        mx_session_free(s);
        return rc;
    }
    *out = s;
    return MX_OK;
}

void mx_session_free(mx_session *s) {
    if (!s) return;
    mx_kvcache_free(&s->kv);
    float *bufs[] = {s->x, s->h, s->q, s->att, s->k, s->v, s->g, s->u, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) s->be->free(s->be, bufs[i]);
    free(s);
}

int mx_session_eval(mx_session *s, const int *tokens, int T, float *logits, bool all_logits, mx_err *err) {
    if (T <= 0) return mx_err_set(err, MX_ERR_ARG, "nothing to evaluate (0 tokens)");
    if (s->pos + T > s->n_ctx)
        return mx_err_set(err, MX_ERR_ARG, "%d tokens at position %d exceed the context of %d tokens", T, s->pos,
                          s->n_ctx);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= s->m->cfg.vocab)
            return mx_err_set(err, MX_ERR_ARG, "token id %d at index %d is outside the vocabulary (0..%d)",
                              tokens[t], t, s->m->cfg.vocab - 1);
    for (int done = 0; done < T;) {
        int n = T - done < s->ubatch ? T - done : s->ubatch;
        bool last = done + n == T;
        float *dst = all_logits ? logits + (size_t)done * s->m->cfg.vocab : logits;
        mx_forward(s, tokens + done, n, (all_logits || last) ? dst : NULL, all_logits);
        done += n;
    }
    return MX_OK;
}

int mx_session_truncate(mx_session *s, int pos) {
    if (pos < 0) pos = 0;
    if (pos >= s->pos) return s->pos;
    const mx_config *c = &s->m->cfg;
    for (int l = 0; l < c->n_layer; l++) {
        int w = c->plan[l].window;
        /* the ring still holds positions > s->pos - n_slots; re-evaluating from pos needs pos - w + 1 on */
        if (w > 0 && pos - w + 1 <= s->pos - s->kv.layers[l].n_slots && pos - w + 1 > 0) pos = 0;
    }
    s->pos = pos;
    return pos;
}
