/* synthetic.c: the copy, reverse, copy-at-a-distance and associative-recall tasks (synthetic.h). */
#include "synthetic.h"

#include <stdlib.h>
#include <string.h>

#include "../base/rng.h"
#include "shards.h"

enum { TOK_BOS = 0, TOK_SEP = 1, TOK_QUERY = 2, TOK_FILL = 3, TOK_FIRST = 4 };

int mx_synth_known(const char *task) {
    return !strcmp(task, "copy") || !strcmp(task, "reverse") || !strcmp(task, "farcopy") ||
           !strcmp(task, "recall");
}

static int content(mx_rng *r, int vocab) {
    return TOK_FIRST + (int)(mx_rng_u64(r) % (uint64_t)(vocab - TOK_FIRST));
}

/* One document into doc (at most seq tokens); returns its length. */
static int copy_doc(mx_rng *r, int *doc, int vocab, int seq, int reverse) {
    int n = (seq - 2) / 2, len = 0;
    doc[len++] = TOK_BOS;
    for (int i = 0; i < n; i++) doc[len++] = content(r, vocab);
    doc[len++] = TOK_SEP;
    for (int i = 0; i < n; i++) doc[len++] = doc[1 + (reverse ? n - 1 - i : i)];
    return len;
}

/* A short span, filler, then the span again: the copy must reach back about seq - 2n tokens. */
static int farcopy_doc(mx_rng *r, int *doc, int vocab, int seq) {
    int n = (seq - 2) / 8 > 0 ? (seq - 2) / 8 : 1, len = 0;
    doc[len++] = TOK_BOS;
    for (int i = 0; i < n; i++) doc[len++] = content(r, vocab);
    while (len < seq - 1 - n) doc[len++] = TOK_FILL;
    doc[len++] = TOK_SEP;
    for (int i = 0; i < n; i++) doc[len++] = doc[1 + i];
    return len;
}

static int recall_doc(mx_rng *r, int *doc, int vocab, int seq) {
    int half = (vocab - TOK_FIRST) / 2, pairs = (seq - 4) / 4, len = 0;
    if (pairs > half) pairs = half;
    if (pairs > 16) pairs = 16;
    int keys[16];
    doc[len++] = TOK_BOS;
    for (int i = 0; i < pairs; i++) {
        int k, dup;
        do { /* distinct keys from the lower half of the content tokens, values from the upper half */
            k = TOK_FIRST + (int)(mx_rng_u64(r) % (uint64_t)half);
            dup = 0;
            for (int j = 0; j < i; j++) dup |= keys[j] == k;
        } while (dup);
        keys[i] = k;
        doc[len++] = k;
        doc[len++] = TOK_FIRST + half + (int)(mx_rng_u64(r) % (uint64_t)half);
    }
    while (len < seq - 3) doc[len++] = TOK_FILL;
    int ask = (int)(mx_rng_u64(r) % (uint64_t)pairs);
    doc[len++] = TOK_QUERY;
    doc[len++] = doc[1 + 2 * ask];
    doc[len++] = doc[2 + 2 * ask];
    return len;
}

int mx_synth_generate(const char *task, int *tokens, long n, int vocab, int seq, uint64_t seed, mx_err *err) {
    if (!mx_synth_known(task))
        return mx_err_set(err, MX_ERR_ARG, "unknown synthetic task '%s' (copy, reverse, farcopy, recall)",
                          task);
    if (vocab < 16 || seq < 8)
        return mx_err_set(err, MX_ERR_ARG, "synthetic task '%s' needs vocab >= 16 and seq >= 8 (got %d, %d)",
                          task, vocab, seq);
    int *doc = malloc(sizeof(int) * (size_t)seq);
    if (!doc) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    mx_rng r;
    mx_rng_seed(&r, seed);
    for (long off = 0; off < n;) {
        int len = !strcmp(task, "recall")    ? recall_doc(&r, doc, vocab, seq)
                  : !strcmp(task, "farcopy") ? farcopy_doc(&r, doc, vocab, seq)
                                             : copy_doc(&r, doc, vocab, seq, !strcmp(task, "reverse"));
        for (int i = 0; i < len && off < n; i++) tokens[off++] = doc[i];
    }
    free(doc);
    return MX_OK;
}

int mx_synth_write(const char *task, const char *path, long n, int vocab, int seq, uint64_t seed,
                   mx_err *err) {
    int *tokens = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!tokens) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    int rc = mx_synth_generate(task, tokens, n, vocab, seq, seed, err);
    if (!rc) rc = mx_shard_write(path, tokens, n, vocab > 65536, err);
    free(tokens);
    return rc;
}
