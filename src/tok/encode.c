/* encode.c: text -> token ids (mx_tokenize, see tokenizer.h), Hugging Face's order of work:
 *   1. added tokens (control tokens when asked, user-defined tokens always) are matched whole in the raw
 *      text, leftmost longest, as tokenizers' added-vocabulary split does; an lstrip/rstrip token also takes
 *      the whitespace before/after it;
 *   2. each stretch between them is normalized (normalize.c),
 *   3. split by the pre-tokenizer steps in order (each step splits every piece of the one before: pretok.c
 *      splits, ByteLevel's prefix space and regex, Metaspace's ▁),
 *   4. and each piece goes through BPE (bpe.c). */
#include "tok_impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define SPM_SPACE     "\xe2\x96\x81" /* U+2581, SentencePiece's space */
#define SPM_SPACE_LEN 3

typedef struct {
    mx_bpe_state *st;
    const mx_tokenizer *t;
    int step;         /* the pre-tokenizer step that the pieces go to next */
    const char *base; /* the text being split, to tell a piece's offset */
    bool at_start;    /* the text being split starts the input (Metaspace's prepend_scheme "first") */
} pre_ctx;

static int run_pre(const mx_tokenizer *t, mx_bpe_state *st, int step, const char *s, size_t n, bool at_start);

static int emit_next(void *ctx, const char *piece, size_t len) {
    pre_ctx *c = ctx;
    return run_pre(c->t, c->st, c->step, piece, len, c->at_start && piece == c->base);
}

/* Metaspace: ' ' -> ▁, ▁ prepended per scheme, then (split) a piece before each ▁. */
static int metaspace(const mx_tokenizer *t, mx_bpe_state *st, int step, const char *s, size_t n,
                     bool at_start) {
    const pre_step *p = &t->pre[step];
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    char *buf = malloc(n + 2 * spaces + SPM_SPACE_LEN + 1);
    if (!buf) return MX_ERR_NOMEM;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ')
            memcpy(buf + w, SPM_SPACE, SPM_SPACE_LEN), w += SPM_SPACE_LEN;
        else
            buf[w++] = s[i];
    }
    bool starts = w >= SPM_SPACE_LEN && memcmp(buf, SPM_SPACE, SPM_SPACE_LEN) == 0;
    if (!starts && (p->scheme == PREPEND_ALWAYS || (p->scheme == PREPEND_FIRST && at_start))) {
        memmove(buf + SPM_SPACE_LEN, buf, w);
        memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
        w += SPM_SPACE_LEN;
    }
    int rc = 0;
    if (!p->split_ws) {
        rc = run_pre(t, st, step + 1, buf, w, at_start);
    } else {
        size_t start = 0;
        for (size_t i = 1; i + SPM_SPACE_LEN <= w && !rc; i++) {
            if (memcmp(buf + i, SPM_SPACE, SPM_SPACE_LEN) != 0) continue;
            rc = run_pre(t, st, step + 1, buf + start, i - start, at_start && start == 0);
            start = i;
        }
        if (!rc && start < w) rc = run_pre(t, st, step + 1, buf + start, w - start, at_start && start == 0);
    }
    free(buf);
    return rc;
}

static int byte_level(const mx_tokenizer *t, mx_bpe_state *st, int step, const char *s, size_t n,
                      bool at_start) {
    const pre_step *p = &t->pre[step];
    char *buf = NULL;
    if (p->add_prefix_space && (n == 0 || s[0] != ' ')) {
        if (!(buf = malloc(n + 1))) return MX_ERR_NOMEM;
        buf[0] = ' ';
        memcpy(buf + 1, s, n);
        s = buf, n++;
    }
    int rc;
    if (p->use_regex) {
        pre_ctx c = {st, t, step + 1, s, at_start};
        rc = mx_pretok_split(MX_PRETOK_GPT2, s, n, emit_next, &c);
    } else {
        rc = run_pre(t, st, step + 1, s, n, at_start);
    }
    free(buf);
    return rc;
}

static int run_pre(const mx_tokenizer *t, mx_bpe_state *st, int step, const char *s, size_t n,
                   bool at_start) {
    if (n == 0) return 0;
    if (step == t->n_pre) return mx_bpe_piece(st, s, n);
    const pre_step *p = &t->pre[step];
    if (p->kind == PRE_METASPACE) return metaspace(t, st, step, s, n, at_start);
    if (p->kind == PRE_BYTE_LEVEL) return byte_level(t, st, step, s, n, at_start);
    pre_ctx c = {st, t, step + 1, s, at_start};
    return mx_pretok_split(p->split, s, n, emit_next, &c);
}

/* One stretch of text between added tokens: normalize, pre-tokenize, BPE. */
static int encode_stretch(const mx_tokenizer *t, mx_bpe_state *st, const char *s, size_t n, bool at_start) {
    if (n == 0) return 0;
    char *norm;
    size_t len;
    int rc = mx_tok_normalize(t, s, n, &norm, &len);
    if (rc) return rc;
    rc = run_pre(t, st, 0, norm ? norm : s, len, at_start);
    free(norm);
    return rc;
}

/* The longest whole-matched token at text[i..len), or -1. */
static int match_whole(const mx_tokenizer *t, const char *text, size_t i, size_t len, bool parse_special) {
    int best = -1;
    size_t best_len = 0;
    for (int k = 0; k < t->n_whole; k++) {
        int id = t->whole[k];
        size_t n = t->tok[id].len;
        if (t->type[id] == TT_CONTROL && !parse_special) continue;
        if (n > best_len && n <= len - i && memcmp(text + i, t->bytes + t->tok[id].off, n) == 0) {
            best = id;
            best_len = n;
        }
    }
    return best;
}

static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int encode_text(const mx_tokenizer *t, mx_bpe_state *st, const char *text, size_t len,
                       bool parse_special) {
    uint8_t mask = FIRST_USER | (parse_special ? FIRST_CONTROL : 0);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (!(t->whole_first[(unsigned char)text[i]] & mask)) continue;
        int id = match_whole(t, text, i, len, parse_special);
        if (id < 0) continue;
        size_t end = i; /* the stretch before the token is text[start..end) */
        if (t->strip[id] & WHOLE_LSTRIP)
            while (end > start && is_space(text[end - 1])) end--;
        int rc = encode_stretch(t, st, text + start, end - start, start == 0);
        if (rc || (rc = mx_bpe_push(st, id))) return rc;
        i += t->tok[id].len;
        if (t->strip[id] & WHOLE_RSTRIP)
            while (i < len && is_space(text[i])) i++;
        start = i;
        i--;
    }
    return encode_stretch(t, st, text + start, len - start, start == 0);
}

int mx_tokenize(const mx_tokenizer *t, const char *text, size_t len, bool parse_special, int **ids,
                int *n_ids, mx_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!t)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "the model has no tokenizer mixatt can read: give token ids instead (--ids)");
    if (!text && len) return mx_err_set(err, MX_ERR_ARG, "tokenize: NULL text");
    mx_bpe_state *st = mx_bpe_state_new(t, len);
    if (!st) return mx_err_set(err, MX_ERR_NOMEM, "tokenize: no memory for %zu bytes of text", len);
    int rc = encode_text(t, st, text, len, parse_special);
    size_t n = 0;
    int *out = rc ? NULL : mx_bpe_take(st, &n);
    mx_bpe_state_free(st);
    if (!rc && n > INT_MAX) rc = MX_ERR_ARG;
    if (!rc && !out && !(out = malloc(sizeof *out))) rc = MX_ERR_NOMEM; /* empty: still a malloc'd array */
    if (rc) {
        free(out);
        if (rc == MX_ERR_ARG) return mx_err_set(err, rc, "tokenize: more than %d tokens", INT_MAX);
        return mx_err_set(err, MX_ERR_NOMEM, "tokenize: no memory for %zu bytes of text", len);
    }
    *ids = out;
    *n_ids = (int)n;
    return 0;
}
