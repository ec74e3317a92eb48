/* session.c: session lifetime and chunking of long inputs into ubatch-sized forward passes. */
#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "tp.h"

enum { DEFAULT_UBATCH = 512 };

static size_t max_sz(size_t a, size_t b) {
    return a > b ? a : b;
}

/* The widest per-token activation any block of this model writes into a scratch buffer. */
static size_t activation_width(const mx_config *c) {
    size_t H = (size_t)c->n_head, w = (size_t)c->d_model;
    w = max_sz(w, H * c->head_dim);
    w = max_sz(w, (size_t)c->d_ff);
    w = max_sz(w, (size_t)c->d_ff_expert * (c->n_shared_expert > 0 ? c->n_shared_expert : 1));
    w = max_sz(w, (size_t)c->n_expert);
    w = max_sz(w, H * (c->mla_nope_dim + c->mla_rope_dim));
    w = max_sz(w, H * (c->mla_nope_dim + c->mla_v_dim));
    w = max_sz(w, H * (c->mla_kv_rank + c->mla_rope_dim)); /* absorbed MLA: per-head latent queries */
    w = max_sz(w, (size_t)c->mla_kv_rank + c->mla_rope_dim);
    w = max_sz(w, (size_t)c->mla_q_rank);
    return w;
}

static int alloc_scratch(mx_session *s, mx_err *err) {
    const mx_config *c = &s->m->cfg;
    mx_backend *be = s->be;
    size_t U = (size_t)s->ubatch, F = sizeof(float);
    s->width = activation_width(c);
    s->x = be->alloc(be, U * c->d_model * F);
    s->h = be->alloc(be, U * s->width * F);
    bool ok = s->x && s->h;
    for (int i = 0; i < MX_N_SCRATCH; i++) ok = ok && (s->buf[i] = be->alloc(be, U * s->width * F));
    s->logits = be->alloc(be, U * c->vocab * F);
    if (c->n_expert > 0) s->moe_counts = calloc((size_t)c->n_layer * c->n_expert, sizeof(int));
    if (be->sample) ok = ok && (s->tok = be->alloc(be, 64)); /* the sampled token (mx_session_eval_keep) */
    if (!ok || !s->logits || (c->n_expert > 0 && !s->moe_counts))
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating activation buffers for %d tokens",
                          s->ubatch);
    return MX_OK;
}

size_t mx_session_bytes(const mx_model *m, const mx_backend *be, int n_ctx) {
    const mx_config *c = &m->cfg;
    int ub = be->ubatch > 0 ? be->ubatch : DEFAULT_UBATCH;
    size_t U = (size_t)(n_ctx < ub ? n_ctx : ub);
    size_t scratch = U * ((size_t)c->d_model + activation_width(c) * (1 + MX_N_SCRATCH) + (size_t)c->vocab);
    return mx_kv_bytes_at(c, n_ctx, (int)U, be->kv_elem_bytes) + scratch * sizeof(float);
}

/* Refuses, before allocating anything, a context whose cache and buffers exceed the backend's free memory. */
static int check_fits(const mx_model *m, mx_backend *be, int n_ctx, mx_err *err) {
    size_t free_b, total_b;
    if (!be->mem_info || be->mem_info(be, &free_b, &total_b)) return MX_OK;
    size_t need = mx_session_bytes(m, be, n_ctx);
    if (need <= free_b) return MX_OK;
    return mx_err_set(
        err, MX_ERR_NOMEM,
        "a context of %d tokens needs %.1f MiB on %s (KV cache and activation buffers) but only %.1f "
        "MiB of %.1f MiB are free; lower --ctx",
        n_ctx, need / 1048576.0, be->name, free_b / 1048576.0, total_b / 1048576.0);
}

int mx_session_create(const mx_model *m, mx_backend *be, int n_ctx, mx_session **out, mx_err *err) {
    *out = NULL;
    if (n_ctx <= 0 || n_ctx > m->cfg.max_ctx)
        return mx_err_set(err, MX_ERR_ARG,
                          "context of %d tokens is outside 1..%d (the model's context length)", n_ctx,
                          m->cfg.max_ctx);
    if (check_fits(m, be, n_ctx, err)) return err->code;
    mx_session *s = calloc(1, sizeof *s);
    if (!s) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    s->m = m;
    s->be = be;
    s->n_ctx = n_ctx;
    int ub = be->ubatch > 0 ? be->ubatch : DEFAULT_UBATCH;
    s->ubatch = n_ctx < ub ? n_ctx : ub;
    int rc = mx_kvcache_init(&s->kv, &m->cfg, be, n_ctx, s->ubatch, err);
    s->kv.mla_form = (mx_mla_form)m->cfg.mla_form;
    if (!rc) rc = alloc_scratch(s, err);
    if (!rc) rc = mx_tp_session_init(s, err);
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
    float *bufs[] = {s->x, s->h, s->logits, s->tp_send, s->tp_recv, (float *)s->tok};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) s->be->free(s->be, bufs[i]);
    for (int i = 0; i < MX_N_SCRATCH; i++)
        if (s->buf[i]) s->be->free(s->be, s->buf[i]);
    free(s->moe_counts);
    free(s);
}

/* T tokens fit at s->pos and are in the vocabulary (tokens NULL: the backend's sampled token, valid by
 * making) */
static int check_tokens(const mx_session *s, const int *tokens, int T, mx_err *err) {
    if (T <= 0) return mx_err_set(err, MX_ERR_ARG, "nothing to evaluate (0 tokens)");
    if (s->pos + T > s->n_ctx)
        return mx_err_set(err, MX_ERR_ARG, "%d tokens at position %d exceed the context of %d tokens", T,
                          s->pos, s->n_ctx);
    for (int t = 0; tokens && t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= s->m->cfg.vocab)
            return mx_err_set(err, MX_ERR_ARG, "token id %d at index %d is outside the vocabulary (0..%d)",
                              tokens[t], t, s->m->cfg.vocab - 1);
    return MX_OK;
}

int mx_session_eval(mx_session *s, const int *tokens, int T, float *logits, bool all_logits, mx_err *err) {
    int rc = check_tokens(s, tokens, T, err);
    if (rc) return rc;
    if (!tokens) return mx_err_set(err, MX_ERR_ARG, "no tokens given");
    for (int done = 0; done < T;) {
        int n = T - done < s->ubatch ? T - done : s->ubatch;
        bool last = done + n == T;
        float *dst = all_logits ? logits + (size_t)done * s->m->cfg.vocab : logits;
        mx_forward(s, tokens + done, n, (all_logits || last) ? dst : NULL, all_logits);
        done += n;
    }
    return MX_OK;
}

bool mx_session_can_keep(const mx_session *s) {
    const char *e = getenv("MX_HOST_SAMPLING");
    if (e && strcmp(e, "0") != 0) return false;
    return s->be->sample && s->be->sample_wait && s->be->embed_dev && !s->m->tp && !s->star && s->ubatch >= 3;
}

int mx_session_eval_keep(mx_session *s, const int *tokens, int T, mx_err *err) {
    if (!mx_session_can_keep(s))
        return mx_err_set(err, MX_ERR_ARG, "this session cannot keep its logits on the backend (%s)",
                          s->be->name);
    if (!tokens && T != 1) return mx_err_set(err, MX_ERR_ARG, "the sampled token is one token, not %d", T);
    if (!tokens && !s->tok)
        return mx_err_set(err, MX_ERR_ARG, "no token has been sampled on the backend yet");
    int rc = check_tokens(s, tokens, T, err);
    if (rc) return rc;
    for (int done = 0; done < T;) {
        int n = T - done < s->ubatch ? T - done : s->ubatch;
        if (done + n == T)
            mx_forward_keep(s, tokens ? tokens + done : NULL, n);
        else
            mx_forward(s, tokens + done, n, NULL, false);
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
