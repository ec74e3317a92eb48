/* generate.c: the generation loop (see generate.h). Text is streamed as soon as it cannot be the start of a
 * stop string, so stop strings never reach the output. */
#include "generate.h"

#include <stdlib.h>
#include <string.h>

#include "../base/clock.h"

typedef struct {
    char *buf;
    size_t len, cap, flushed; /* bytes already written to the stream */
} text_buf;

static int text_append(text_buf *t, const char *p, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->cap ? t->cap * 2 : 256) + n;
        char *b = realloc(t->buf, cap);
        if (!b) return -1;
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
    t->buf[t->len] = 0;
    return 0;
}

/* Returns the position of the earliest stop string found in the unflushed text, or -1. */
static long find_stop(const text_buf *t, const mx_gen_opts *o) {
    long best = -1;
    for (int i = 0; i < o->n_stops; i++) {
        size_t from = t->flushed > strlen(o->stops[i]) ? t->flushed - strlen(o->stops[i]) : 0;
        const char *hit = strstr(t->buf + from, o->stops[i]);
        if (hit && (best < 0 || hit - t->buf < best)) best = hit - t->buf;
    }
    return best;
}

/* Bytes at the end that could still grow into a stop string: they wait. */
static size_t held_back(const text_buf *t, const mx_gen_opts *o) {
    size_t hold = 0;
    for (int i = 0; i < o->n_stops; i++) {
        size_t sl = strlen(o->stops[i]);
        for (size_t k = sl - 1; k > hold && k > 0; k--)
            if (k <= t->len && memcmp(t->buf + t->len - k, o->stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

static void flush_to(text_buf *t, size_t upto, FILE *out) {
    if (upto <= t->flushed) return;
    if (out) {
        fwrite(t->buf + t->flushed, 1, upto - t->flushed, out);
        fflush(out);
    }
    t->flushed = upto;
}

/* What a generated token did: go on, or the reason to stop. */
enum { TAKE_NEXT, TAKE_EOS, TAKE_STOP, TAKE_ERR };

typedef struct {
    const mx_model *m;
    const mx_gen_opts *o;
    mx_gen_result *res;
    int *hist; /* prompt then generated tokens */
    int n_prompt;
    text_buf text;
    mx_err *err;
} gen_state;

/* Appends token i to the result and streams its text; stops on EOS or a stop string. */
static int take_token(gen_state *g, int i, int tok) {
    int eos = g->m->tok ? mx_tokenizer_eos(g->m->tok) : -1;
    if (tok == eos || tok == g->o->stop_token) {
        g->res->stop_reason = "eos";
        return TAKE_EOS;
    }
    g->hist[g->n_prompt + i] = tok;
    g->res->tokens[g->res->n_gen++] = tok;
    size_t len;
    char id_text[16]; /* a model without a tokenizer streams its ids, one "ID " each */
    const char *piece = id_text;
    if (!g->m->tok)
        len = (size_t)snprintf(id_text, sizeof id_text, "%d ", tok);
    else if (!(piece = mx_tokenizer_is_special(g->m->tok, tok) ? "" : mx_token_bytes(g->m->tok, tok, &len)))
        piece = "";
    if (!*piece) len = 0;
    if (text_append(&g->text, piece, len)) {
        mx_err_set(g->err, MX_ERR_NOMEM, "out of memory");
        return TAKE_ERR;
    }
    long stop = find_stop(&g->text, g->o);
    if (stop >= 0) {
        flush_to(&g->text, (size_t)stop, g->o->out);
        g->text.len = (size_t)stop;
        g->text.buf[stop] = 0;
        g->res->stop_reason = "stop string";
        return TAKE_STOP;
    }
    flush_to(&g->text, g->text.len - held_back(&g->text, g->o), g->o->out);
    return TAKE_NEXT;
}

/* The sampler's draw on the backend (backend.h: sample), if it has one for these settings: greedy, or top-k
 * with 1 <= k <= MX_SAMPLE_TOPK_MAX, and no repetition penalty (it needs the history on the device). */
static bool device_sampling(const mx_session *s, const mx_sampler *smp) {
    const mx_sampler_params *p = &smp->p;
    bool topk_ok = p->temperature <= 0.0f || (p->top_k >= 1 && p->top_k <= MX_SAMPLE_TOPK_MAX);
    return mx_session_can_keep(s) && p->repeat_penalty == 1.0f && topk_ok;
}

/* Queues the draw of the next token from the logits the last step left on the backend. */
static int queue_sample(mx_session *s, mx_sampler *smp) {
    const mx_sampler_params *p = &smp->p;
    mx_sample_spec sp = {
        .temperature = p->temperature, .top_p = p->top_p, .min_p = p->min_p, .top_k = p->top_k};
    if (p->temperature > 0.0f) sp.u = mx_rng_float(&smp->rng); /* one draw per token, as mx_sample makes */
    return s->be->sample(s->be, s->logits, s->m->cfg.vocab, &sp, s->tok);
}

/* The loop with the host in it: logits to the host, mx_sample, the next step. */
static int decode_host(mx_session *s, mx_sampler *smp, gen_state *g, float *logits, int max_new) {
    int rc = MX_OK;
    for (int i = 0; !rc && i < max_new; i++) {
        int tok = mx_sample(smp, logits, g->hist, g->n_prompt + i);
        int t = take_token(g, i, tok);
        if (t == TAKE_ERR) return g->err->code;
        if (t != TAKE_NEXT) break;
        if (i + 1 < max_new) rc = mx_session_eval(s, &tok, 1, logits, false, g->err);
    }
    return rc;
}

/* The loop with the host beside it: each step embeds the token the previous draw left on the backend and
 * draws the next there, so the host queues step i+1 (and i+2) while the GPU runs step i, and only reads the
 * tokens back. On a stop the steps queued past it are taken back: the session ends where decode_host's would.
 */
enum { DECODE_AHEAD = 2 };
static int decode_device(mx_session *s, mx_sampler *smp, gen_state *g, int max_new) {
    int *ticket = malloc(sizeof(int) * (size_t)(max_new + 1));
    mx_rng *rng_at = malloc(sizeof(mx_rng) * (size_t)(max_new + 1)); /* the generator before each draw */
    if (!ticket || !rng_at) {
        free(ticket);
        free(rng_at);
        return mx_err_set(g->err, MX_ERR_NOMEM, "out of memory");
    }
    int pos0 = s->pos, rc = MX_OK, queued = 0, evaluated = 0, taken = 0;
    rng_at[queued] = smp->rng;
    ticket[queued++] = queue_sample(s, smp); /* token 0, from the prompt's logits */
    for (int i = 0; i < max_new; i++) {
        /* token j is embedded by the step that draws token j + 1; the last token is not evaluated */
        while (queued < max_new && queued - i <= DECODE_AHEAD) {
            if ((rc = mx_session_eval_keep(s, NULL, 1, g->err))) break;
            rng_at[queued] = smp->rng;
            ticket[queued++] = queue_sample(s, smp);
        }
        if (rc) break;
        int tok = s->be->sample_wait(s->be, ticket[i]);
        if (tok < 0 || tok >= s->m->cfg.vocab) {
            rc = mx_err_set(g->err, MX_ERR_IO, "the backend's sampler returned token %d for step %d", tok, i);
            break;
        }
        taken = i + 1;
        int t = take_token(g, i, tok);
        if (t == TAKE_ERR) {
            rc = g->err->code;
            break;
        }
        if (t != TAKE_NEXT) break;
        if (i + 1 < max_new) evaluated++;
    }
    s->be->sync(s->be); /* the queued steps are done before the session moves back */
    if (!rc) mx_session_truncate(s, pos0 + evaluated);
    if (taken < queued) smp->rng = rng_at[taken]; /* the draws of the steps taken back are not spent either */
    free(ticket);
    free(rng_at);
    return rc;
}

int mx_generate(mx_session *s, mx_sampler *smp, const int *prompt, int n_prompt, const mx_gen_opts *o,
                mx_gen_result *res, mx_err *err) {
    memset(res, 0, sizeof *res);
    const mx_model *m = s->m;
    int vocab = m->cfg.vocab;
    int budget = s->n_ctx - s->pos - n_prompt;
    if (budget < 0)
        return mx_err_set(
            err, MX_ERR_ARG,
            "the prompt is %d tokens but only %d fit in the context (%d tokens, --ctx to change)", n_prompt,
            s->n_ctx - s->pos, s->n_ctx);
    int max_new = o->n_predict >= 0 && o->n_predict < budget ? o->n_predict : budget;
    bool on_device = device_sampling(s, smp) && max_new > 0;
    float *logits = on_device ? NULL : malloc(sizeof(float) * (size_t)vocab);
    int *hist = malloc(sizeof(int) * (size_t)(n_prompt + max_new + 1));
    res->tokens = malloc(sizeof(int) * (size_t)(max_new + 1));
    if ((!on_device && !logits) || !hist || !res->tokens) {
        free(logits);
        free(hist);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    memcpy(hist, prompt, sizeof(int) * (size_t)n_prompt);
    gen_state g = {.m = m, .o = o, .res = res, .hist = hist, .n_prompt = n_prompt, .err = err};
    res->n_prompt = n_prompt;
    res->stop_reason =
        max_new == budget && (o->n_predict < 0 || o->n_predict > budget) ? "context full" : "length";

    double t0 = mx_now();
    int rc = on_device ? mx_session_eval_keep(s, prompt, n_prompt, err)
                       : mx_session_eval(s, prompt, n_prompt, logits, false, err);
    if (on_device && !rc) s->be->sync(s->be); /* prefill time is prefill's */
    res->prefill_s = mx_now() - t0;
    t0 = mx_now();
    if (!rc) rc = on_device ? decode_device(s, smp, &g, max_new) : decode_host(s, smp, &g, logits, max_new);
    res->decode_s = mx_now() - t0;
    if (!rc && strcmp(res->stop_reason, "stop string") != 0) flush_to(&g.text, g.text.len, o->out);
    res->text = g.text.buf ? g.text.buf : calloc(1, 1);
    free(logits);
    free(hist);
    return rc;
}

void mx_gen_result_free(mx_gen_result *r) {
    free(r->text);
    free(r->tokens);
    r->text = NULL;
    r->tokens = NULL;
}
