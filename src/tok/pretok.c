/* pretok.c: the pre-tokenizer splits (see pretok.h): GPT-2's regex, Llama 3's regex,
 * Qwen 2's variant of it, and the Digits pre-tokenizer, written as direct matchers over UTF-8 (no regex
 * engine). Each matcher returns the end of the regex's match at a position, trying the alternatives in the
 * regex's order with its greedy/backtracking results worked out by hand. Character classes come from
 * utf8proc. */
#include "pretok.h"

#include <stdint.h>
#include <string.h>

#include <utf8proc.h>

enum { C_L = 1, C_N = 2, C_WS = 4, C_NL = 8 }; /* letter, number, White_Space, \r or \n */

typedef struct {
    const unsigned char *s;
    size_t e; /* end of the segment being matched */
} seg;

/* Decodes one UTF-8 character at s[i] (i < e), strictly (no overlongs, surrogates or values past U+10FFFF).
 * Returns its length; *cp is -1 for a byte that does not start a valid character (length 1). */
static size_t utf8_next(const unsigned char *s, size_t i, size_t e, int32_t *cp) {
    unsigned c = s[i];
    if (c < 0x80) {
        *cp = (int32_t)c;
        return 1;
    }
    size_t n;
    int32_t v, min;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, v = c & 0x07, min = 0x10000;
    else {
        *cp = -1;
        return 1;
    }
    if (e - i < n) {
        *cp = -1;
        return 1;
    }
    for (size_t k = 1; k < n; k++) {
        unsigned b = s[i + k];
        if ((b & 0xC0) != 0x80) {
            *cp = -1;
            return 1;
        }
        v = (v << 6) | (int32_t)(b & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = -1;
        return 1;
    }
    *cp = v;
    return n;
}

static unsigned ascii_class(unsigned c) {
    if ((c | 0x20) - 'a' < 26u) return C_L;
    if (c - '0' < 10u) return C_N;
    if (c == ' ' || c - 0x09 < 5u) return c == '\n' || c == '\r' ? C_WS | C_NL : C_WS;
    return 0;
}

/* Class of a non-ASCII character (cp >= 0x80) or of an invalid byte (cp < 0). */
static unsigned unicode_class(int32_t cp) {
    if (cp < 0) return 0;
    if (cp == 0x85) return C_WS;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return C_L;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return C_N;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return C_WS;
    default:
        return 0;
    }
}

/* Class of the character at i (i < g->e); *len its byte length. */
static inline unsigned cls_at(const seg *g, size_t i, size_t *len) {
    unsigned c = g->s[i];
    if (c < 0x80) {
        *len = 1;
        return ascii_class(c);
    }
    int32_t cp;
    *len = utf8_next(g->s, i, g->e, &cp);
    return unicode_class(cp);
}

static int is_other(unsigned cls) {
    return (cls & (C_L | C_N | C_WS)) == 0;
}

/* End of the run of characters from i whose class has any of `want` bits (or, with want == 0, no L/N/WS). */
static size_t run_of(const seg *g, size_t i, unsigned want, size_t max_chars) {
    size_t n = 0;
    while (i < g->e && n < max_chars) {
        size_t len;
        unsigned c = cls_at(g, i, &len);
        if (want ? !(c & want) : !is_other(c)) break;
        i += len;
        n++;
    }
    return i;
}

/* 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII case-insensitive; returns the end or 0 when none matches. */
static size_t match_contraction(const seg *g, size_t i, int icase) {
    const unsigned char *s = g->s;
    if (s[i] != '\'' || i + 1 >= g->e) return 0;
    unsigned a = s[i + 1], b = i + 2 < g->e ? s[i + 2] : 0;
    if (icase) {
        if (a >= 'A' && a <= 'Z') a |= 0x20;
        if (b >= 'A' && b <= 'Z') b |= 0x20;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

/* \s+(?!\S)|\s+ at i (a whitespace character): the whole run when it reaches the end of the segment or is one
 * character long, otherwise the run less its last character (which then starts the next piece). */
static size_t match_spaces(const seg *g, size_t i) {
    size_t last = i, k = i, n = 0;
    while (k < g->e) {
        size_t len;
        if (!(cls_at(g, k, &len) & C_WS)) break;
        last = k;
        k += len;
        n++;
    }
    if (k == g->e || n == 1) return k;
    return last;
}

static size_t match_gpt2(const seg *g, size_t i) {
    size_t end = match_contraction(g, i, 0);
    if (end) return end;
    size_t j = g->s[i] == ' ' && i + 1 < g->e ? i + 1 : i, len;
    unsigned c = cls_at(g, j, &len);
    if (!(c & C_WS)) { /*  ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+ */
        if (c & C_L) return run_of(g, j, C_L, SIZE_MAX);
        if (c & C_N) return run_of(g, j, C_N, SIZE_MAX);
        return run_of(g, j, 0, SIZE_MAX);
    }
    return match_spaces(g, i);
}

static size_t match_llama3(const seg *g, size_t i, size_t max_digits) {
    size_t end = match_contraction(g, i, 1);
    if (end) return end;
    size_t len;
    unsigned c = cls_at(g, i, &len);
    if (c & C_L) return run_of(g, i, C_L, SIZE_MAX);
    if (!(c & (C_NL | C_N)) && i + len < g->e) { /* [^\r\n\p{L}\p{N}]\p{L}+ */
        size_t len2;
        if (cls_at(g, i + len, &len2) & C_L) return run_of(g, i + len, C_L, SIZE_MAX);
    }
    if (c & C_N) return run_of(g, i, C_N, max_digits);
    size_t j = i;
    if (g->s[i] == ' ' && i + 1 < g->e) {
        size_t len2;
        if (is_other(cls_at(g, i + 1, &len2))) j = i + 1;
    }
    if (j > i || is_other(c)) { /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
        size_t k = run_of(g, j, 0, SIZE_MAX);
        while (k < g->e && (g->s[k] == '\r' || g->s[k] == '\n')) k++;
        return k;
    }
    /* c is whitespace: \s*[\r\n]+ ends after the run's last newline, if it has one */
    size_t k = i, nl_end = 0;
    while (k < g->e) {
        size_t l;
        unsigned ck = cls_at(g, k, &l);
        if (!(ck & C_WS)) break;
        k += l;
        if (ck & C_NL) nl_end = k;
    }
    if (nl_end) return nl_end;
    return match_spaces(g, i);
}

static int split_regex(mx_pretok_kind kind, const unsigned char *s, size_t len, mx_pretok_emit emit,
                       void *ctx) {
    seg g = {s, len};
    size_t i = 0;
    while (i < len) {
        size_t end = kind == MX_PRETOK_LLAMA3  ? match_llama3(&g, i, 3)
                     : kind == MX_PRETOK_QWEN2 ? match_llama3(&g, i, 1)
                                               : match_gpt2(&g, i);
        int rc = emit(ctx, (const char *)s + i, end - i);
        if (rc) return rc;
        i = end;
    }
    return 0;
}

/* Digits: each \p{N} character (or run of them) is a piece, and so is each stretch between. */
static int split_digits(const unsigned char *s, size_t len, bool runs, mx_pretok_emit emit, void *ctx) {
    seg g = {s, len};
    size_t start = 0, i = 0;
    while (i < len) {
        size_t clen;
        unsigned c = cls_at(&g, i, &clen);
        if (c & C_N) {
            size_t end = runs ? run_of(&g, i, C_N, SIZE_MAX) : i + clen;
            int rc = start < i ? emit(ctx, (const char *)s + start, i - start) : 0;
            if (!rc) rc = emit(ctx, (const char *)s + i, end - i);
            if (rc) return rc;
            start = i = end;
            continue;
        }
        i += clen;
    }
    return start < len ? emit(ctx, (const char *)s + start, len - start) : 0;
}

int mx_pretok_split(mx_pretok_kind kind, const char *text, size_t len, mx_pretok_emit emit, void *ctx) {
    const unsigned char *s = (const unsigned char *)text;
    if (kind == MX_PRETOK_DIGITS || kind == MX_PRETOK_DIGIT_RUNS)
        return split_digits(s, len, kind == MX_PRETOK_DIGIT_RUNS, emit, ctx);
    return split_regex(kind, s, len, emit, ctx);
}

int mx_pretok_from_regex(const char *regex) {
    static const struct {
        const char *regex;
        mx_pretok_kind kind;
    } known[] = {
        {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
         MX_PRETOK_GPT2},
        {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
         "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
         MX_PRETOK_LLAMA3},
        {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
         MX_PRETOK_QWEN2},
    };
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
        if (strcmp(regex, known[k].regex) == 0) return (int)known[k].kind;
    return -1;
}
