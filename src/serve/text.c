/* text.c: generated text released in final pieces (see text.h). */
#include "text.h"

#include <stdlib.h>
#include <string.h>

void mx_text_reset(mx_text *t) {
    t->len = t->ready = 0;
    if (t->buf) t->buf[0] = '\0';
}

void mx_text_free(mx_text *t) {
    free(t->buf);
    memset(t, 0, sizeof *t);
}

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return -1;
    *buf = b;
    *cap = c;
    return 0;
}

int mx_text_append(mx_text *t, const char *p, size_t n) {
    if (grow(&t->buf, &t->cap, t->len + n + 1)) return -1;
    memcpy(t->buf + t->len, p, n);
    t->len += n;
    t->buf[t->len] = '\0';
    return 0;
}

long mx_text_find_stop(const mx_text *t, char *const *stops, int n_stops) {
    long best = -1;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl == 0 || sl > t->len) continue;
        size_t from = t->ready >= sl ? t->ready - sl + 1 : 0;
        for (size_t p = from; p + sl <= t->len; p++)
            if (memcmp(t->buf + p, stops[i], sl) == 0) {
                if (best < 0 || (long)p < best) best = (long)p;
                break;
            }
    }
    return best;
}

void mx_text_truncate(mx_text *t, size_t len) {
    if (len >= t->len) return;
    t->len = len;
    t->buf[len] = '\0';
    if (t->ready > len) t->ready = len;
}

/* Bytes at the end that are a proper prefix of some stop string. */
static size_t stop_prefix_tail(const mx_text *t, char *const *stops, int n_stops) {
    size_t hold = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        for (size_t k = sl > 0 ? sl - 1 : 0; k > hold; k--)
            if (k <= t->len && memcmp(t->buf + t->len - k, stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* Length of the UTF-8 sequence a lead byte opens (0: not a lead byte). */
static int seq_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Bytes at the end that open a character whose remaining bytes have not come yet. */
static size_t partial_char_tail(const char *s, size_t len) {
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = (unsigned char)s[len - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        int n = seq_len(c);
        return n > (int)back ? back : 0;
    }
    return 0;
}

/* Whether s[0..n) (n = seq_len of s[0], within avail bytes) is one valid character. */
static bool valid_char(const unsigned char *s, int n, size_t avail) {
    if (n == 0 || (size_t)n > avail) return false;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return false;
    if (n == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))) return false;
    if (n == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))) return false;
    return true;
}

int mx_utf8_append(char **dst, size_t *len, size_t *cap, const char *src, size_t n) {
    if (grow(dst, cap, *len + 3 * n + 1)) return -1; /* each byte at most one U+FFFD (3 bytes) */
    const unsigned char *s = (const unsigned char *)src;
    char *w = *dst + *len;
    for (size_t i = 0; i < n;) {
        int k = seq_len(s[i]);
        if (s[i] != 0 && valid_char(s + i, k, n - i)) {
            memcpy(w, s + i, (size_t)k);
            w += k;
            i += (size_t)k;
        } else {
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            i++;
        }
    }
    *len = (size_t)(w - *dst);
    (*dst)[*len] = '\0';
    return 0;
}

int mx_text_release(mx_text *t, char *const *stops, int n_stops, bool all, char **out, size_t *out_len,
                    size_t *out_cap) {
    size_t upto = t->len;
    if (!all) {
        size_t hold = stop_prefix_tail(t, stops, n_stops);
        upto -= hold;
        upto -= partial_char_tail(t->buf, upto);
    }
    if (upto <= t->ready) return 0;
    int rc = mx_utf8_append(out, out_len, out_cap, t->buf + t->ready, upto - t->ready);
    t->ready = upto;
    return rc;
}
