/* generate.c: the generation loop (see generate.h). Text is streamed as soon as it cannot be the start of a
 * stop string, so stop strings never reach the output. */
#include "generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

double mx_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

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

int mx_generate(mx_session *s, mx_sampler *smp, const int *prompt, int n_prompt, const mx_gen_opts *o,
                mx_gen_result *res, mx_err *err) {
    memset(res, 0, sizeof *res);
    const mx_model *m = s->m;
    int vocab = m->cfg.vocab, eos = m->tok ? mx_tokenizer_eos(m->tok) : -1;
    int budget = s->n_ctx - s->pos - n_prompt;
    if (budget < 0)
        return mx_err_set(
            err, MX_ERR_ARG,
            "the prompt is %d tokens but only %d fit in the context (%d tokens, --ctx to change)", n_prompt,
            s->n_ctx - s->pos, s->n_ctx);
    int max_new = o->n_predict >= 0 && o->n_predict < budget ? o->n_predict : budget;
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    int *hist = malloc(sizeof(int) * (size_t)(n_prompt + max_new + 1));
    res->tokens = malloc(sizeof(int) * (size_t)(max_new + 1));
    if (!logits || !hist || !res->tokens) {
        free(logits);
        free(hist);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    memcpy(hist, prompt, sizeof(int) * (size_t)n_prompt);
    text_buf text = {0};
    res->n_prompt = n_prompt;
    res->stop_reason =
        max_new == budget && (o->n_predict < 0 || o->n_predict > budget) ? "context full" : "length";

    double t0 = mx_now();
    int rc = mx_session_eval(s, prompt, n_prompt, logits, false, err);
    res->prefill_s = mx_now() - t0;
    t0 = mx_now();
    for (int i = 0; !rc && i < max_new; i++) {
        int tok = mx_sample(smp, logits, hist, n_prompt + i);
        if (tok == eos || tok == o->stop_token) {
            res->stop_reason = "eos";
            break;
        }
        hist[n_prompt + i] = tok;
        res->tokens[res->n_gen++] = tok;
        size_t len;
        char id_text[16]; /* a model without a tokenizer streams its ids, one "ID " each */
        const char *piece = id_text;
        if (!m->tok)
            len = (size_t)snprintf(id_text, sizeof id_text, "%d ", tok);
        else if (!(piece = mx_tokenizer_is_special(m->tok, tok) ? "" : mx_token_bytes(m->tok, tok, &len)))
            piece = "";
        if (!*piece) len = 0;
        if (text_append(&text, piece, len)) {
            rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
            break;
        }
        long stop = find_stop(&text, o);
        if (stop >= 0) {
            flush_to(&text, (size_t)stop, o->out);
            text.len = (size_t)stop;
            text.buf[stop] = 0;
            res->stop_reason = "stop string";
            break;
        }
        flush_to(&text, text.len - held_back(&text, o), o->out);
        if (i + 1 < max_new) rc = mx_session_eval(s, &tok, 1, logits, false, err);
    }
    res->decode_s = mx_now() - t0;
    if (!rc && strcmp(res->stop_reason, "stop string") != 0) flush_to(&text, text.len, o->out);
    res->text = text.buf ? text.buf : calloc(1, 1);
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
