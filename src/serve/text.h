/* text.h: the text a sequence has generated, released to its client only when it is final: never the start
 * of a stop string that may still complete, never half a UTF-8 character (tokens split characters), and
 * always valid UTF-8 (an invalid byte becomes U+FFFD), so every chunk is a valid JSON string. */
#ifndef MX_SERVE_TEXT_H
#define MX_SERVE_TEXT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *buf;
    size_t len, cap;
    size_t ready; /* bytes of buf already released */
} mx_text;

void mx_text_reset(mx_text *t);
void mx_text_free(mx_text *t);
int mx_text_append(mx_text *t, const char *p, size_t n); /* 0, or -1 when out of memory */
/* The earliest stop string in the text not yet released (or overlapping its end): its offset, or -1. */
long mx_text_find_stop(const mx_text *t, char *const *stops, int n_stops);
/* Cuts the text at offset len (a stop string's). */
void mx_text_truncate(mx_text *t, size_t len);
/* Releases what is final into out (appending sanitized UTF-8): everything when all is true (the sequence
 * ended), else all but a tail that could grow into a stop string or completes a character. 0 or -1. */
int mx_text_release(mx_text *t, char *const *stops, int n_stops, bool all, char **out, size_t *out_len,
                    size_t *out_cap);

/* Appends src[0..n) to a growing buffer as valid UTF-8: each invalid sequence, and NUL, becomes U+FFFD. */
int mx_utf8_append(char **dst, size_t *len, size_t *cap, const char *src, size_t n);

#endif
