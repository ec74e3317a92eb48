/* normalize.c: the normalizers of tokenizer.json that mixatt supports (see tok_impl.h), applied in order to
 * one stretch of text between added tokens: NFC, NFKC, NFD, NFKD (utf8proc), Lowercase, Prepend (a prefix on
 * non-empty text) and Replace (a literal string by another). Text that is not valid UTF-8 passes the Unicode
 * forms unchanged (Hugging Face only ever sees valid UTF-8). */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

typedef struct {
    char *s;
    size_t n;
} text_buf;

static int unicode_form(text_buf *b, norm_kind kind) {
    int opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    if (kind == NORM_NFD || kind == NORM_NFKD) opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    if (kind == NORM_NFKC || kind == NORM_NFKD) opts |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)b->s, (utf8proc_ssize_t)b->n, &out, opts);
    if (n == UTF8PROC_ERROR_NOMEM) return MX_ERR_NOMEM;
    if (n < 0) return 0; /* invalid UTF-8: left as it is */
    free(b->s);
    b->s = (char *)out;
    b->n = (size_t)n;
    return 0;
}

static int lowercase(text_buf *b) {
    char *out = malloc(b->n * 2 + 4);
    if (!out) return MX_ERR_NOMEM;
    size_t w = 0;
    for (utf8proc_ssize_t i = 0; i < (utf8proc_ssize_t)b->n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len =
            utf8proc_iterate((const utf8proc_uint8_t *)b->s + i, (utf8proc_ssize_t)b->n - i, &cp);
        if (len <= 0) { /* an invalid byte: copied */
            out[w++] = b->s[i++];
            continue;
        }
        w += (size_t)utf8proc_encode_char(utf8proc_tolower(cp), (utf8proc_uint8_t *)out + w);
        i += len;
    }
    free(b->s);
    b->s = out;
    b->n = w;
    return 0;
}

static int prepend(text_buf *b, const char *prefix) {
    if (b->n == 0) return 0;
    size_t k = strlen(prefix);
    char *out = malloc(b->n + k + 1);
    if (!out) return MX_ERR_NOMEM;
    memcpy(out, prefix, k);
    memcpy(out + k, b->s, b->n);
    free(b->s);
    b->s = out;
    b->n += k;
    return 0;
}

static int replace(text_buf *b, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to), count = 0;
    if (nf == 0) return 0;
    for (size_t i = 0; i + nf <= b->n; i++)
        if (memcmp(b->s + i, from, nf) == 0) count++, i += nf - 1;
    if (!count) return 0;
    char *out = malloc(b->n + count * nt + 1);
    if (!out) return MX_ERR_NOMEM;
    size_t w = 0;
    for (size_t i = 0; i < b->n;) {
        if (i + nf <= b->n && memcmp(b->s + i, from, nf) == 0) {
            memcpy(out + w, to, nt);
            w += nt;
            i += nf;
        } else {
            out[w++] = b->s[i++];
        }
    }
    free(b->s);
    b->s = out;
    b->n = w;
    return 0;
}

int mx_tok_normalize(const mx_tokenizer *t, const char *s, size_t n, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = n;
    if (t->n_norm == 0) return 0;
    text_buf b = {malloc(n + 1), n};
    if (!b.s) return MX_ERR_NOMEM;
    memcpy(b.s, s, n);
    int rc = 0;
    for (int k = 0; k < t->n_norm && !rc; k++) {
        const norm_step *st = &t->norm[k];
        switch (st->kind) {
        case NORM_NFC:
        case NORM_NFKC:
        case NORM_NFD:
        case NORM_NFKD:
            rc = unicode_form(&b, st->kind);
            break;
        case NORM_LOWERCASE:
            rc = lowercase(&b);
            break;
        case NORM_PREPEND:
            rc = prepend(&b, st->a);
            break;
        case NORM_REPLACE:
            rc = replace(&b, st->a, st->b);
            break;
        }
    }
    if (rc) return free(b.s), rc;
    *out = b.s;
    *out_len = b.n;
    return 0;
}
