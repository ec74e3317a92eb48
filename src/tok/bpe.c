/* bpe.c: BPE on one pre-tokenized piece (see tok_impl.h). Start from one symbol per byte (byte-level) or per
 * character (SentencePiece style: a character outside the vocabulary becomes its bytes' <0xXX> tokens with
 * byte fallback, else the unknown token, consecutive ones fused when fuse_unk), then apply the lowest-ranked
 * merge (leftmost on ties) with a binary heap, skipping stale entries the way tokenizers' BPE word merge
 * does. A byte-level byte with no token of its own is dropped (tokenizers' BPE with unk_token null does the
 * same). Long texts get a per-call cache of piece -> ids (nothing is cached across calls; the tokenizer is
 * read-only after load, so one can be shared by threads). */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t rank, pos, out;
} heap_ent;

/* A cache of this call's pieces (the same words come back again and again in a long text): piece bytes ->
 * its token ids. It lives for one encode call only and is emptied when full. */
enum {
    CACHE_SLOTS = 1 << 15,
    CACHE_MAX_ENTRIES = CACHE_SLOTS / 2,
    CACHE_MAX_PIECE = 48,
    CACHE_MIN_TEXT = 2048
};

typedef struct {
    uint32_t hash, text_off, ids_off;
    uint16_t text_len, n_ids;
} cache_ent;

typedef struct {
    int32_t slot[CACHE_SLOTS]; /* entry index or -1 */
    cache_ent ent[CACHE_MAX_ENTRIES];
    uint32_t n_ent;
    char text[CACHE_MAX_ENTRIES * 16]; /* piece bytes; when it fills up the cache is emptied */
    uint32_t text_n;
    int32_t ids[CACHE_MAX_ENTRIES * 4];
    uint32_t ids_n;
} piece_cache;

struct mx_bpe_state {
    const mx_tokenizer *t;
    int *ids;
    size_t n, cap;
    int32_t *sym, *prev, *next; /* BPE symbols of the current piece: token id (-1 once merged away), links */
    size_t sym_cap;
    heap_ent *heap;
    size_t heap_n, heap_cap;
    piece_cache *cache; /* NULL for short texts */
};

static void cache_clear(piece_cache *c) {
    memset(c->slot, 0xff, sizeof c->slot);
    c->n_ent = c->text_n = c->ids_n = 0;
}

/* The slot for piece p (its entry, or the empty slot where it would go). */
static uint32_t cache_slot(const piece_cache *c, const char *p, size_t n, uint32_t h) {
    uint32_t i = h & (CACHE_SLOTS - 1);
    for (; c->slot[i] >= 0; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_ent *e = &c->ent[c->slot[i]];
        if (e->hash == h && e->text_len == n && memcmp(c->text + e->text_off, p, n) == 0) break;
    }
    return i;
}

static void cache_put(piece_cache *c, uint32_t slot, const char *p, size_t n, uint32_t h, const int *ids,
                      size_t n_ids) {
    if (c->n_ent == CACHE_MAX_ENTRIES || c->text_n + n > sizeof c->text ||
        c->ids_n + n_ids > sizeof c->ids / sizeof c->ids[0]) {
        cache_clear(c);
        slot = cache_slot(c, p, n, h);
    }
    c->ent[c->n_ent] = (cache_ent){h, c->text_n, c->ids_n, (uint16_t)n, (uint16_t)n_ids};
    c->slot[slot] = (int32_t)c->n_ent++;
    memcpy(c->text + c->text_n, p, n);
    c->text_n += (uint32_t)n;
    for (size_t i = 0; i < n_ids; i++) c->ids[c->ids_n++] = ids[i];
}

mx_bpe_state *mx_bpe_state_new(const mx_tokenizer *t, size_t text_len) {
    mx_bpe_state *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->t = t;
    if (text_len >= CACHE_MIN_TEXT && (st->cache = malloc(sizeof *st->cache))) cache_clear(st->cache);
    return st;
}

void mx_bpe_state_free(mx_bpe_state *st) {
    if (!st) return;
    free(st->cache);
    free(st->ids);
    free(st->sym);
    free(st->prev);
    free(st->next);
    free(st->heap);
    free(st);
}

int *mx_bpe_take(mx_bpe_state *st, size_t *n) {
    int *ids = st->ids;
    *n = st->n;
    st->ids = NULL;
    st->n = st->cap = 0;
    return ids;
}

int mx_bpe_push(mx_bpe_state *st, int id) {
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        int *p = realloc(st->ids, cap * sizeof *p);
        if (!p) return MX_ERR_NOMEM;
        st->ids = p;
        st->cap = cap;
    }
    st->ids[st->n++] = id;
    return 0;
}

static bool heap_less(heap_ent a, heap_ent b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

/* Pushes the merge of symbols a and b (adjacent) if there is one; the heap has room (see reserve_piece). */
static void heap_push_pair(mx_bpe_state *st, int32_t a, int32_t b) {
    const mx_tokenizer *t = st->t;
    if (st->sym[a] < 0 || st->sym[b] < 0) return;
    uint32_t slot = mx_tok_merge_slot(t, st->sym[a], st->sym[b]);
    if (!t->merges[slot].key) return;
    heap_ent e = {t->merges[slot].rank, a, t->merges[slot].out};
    size_t i = st->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(e, st->heap[p])) break;
        st->heap[i] = st->heap[p];
        i = p;
    }
    st->heap[i] = e;
}

static heap_ent heap_pop(mx_bpe_state *st) {
    heap_ent top = st->heap[0], last = st->heap[--st->heap_n];
    size_t i = 0, n = st->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(st->heap[c + 1], st->heap[c])) c++;
        if (!heap_less(st->heap[c], last)) break;
        st->heap[i] = st->heap[c];
        i = c;
    }
    if (n) st->heap[i] = last;
    return top;
}

/* Every merge pushes at most two entries, so a piece of n symbols needs at most 3n heap entries. */
static int reserve_piece(mx_bpe_state *st, size_t n) {
    if (n > st->sym_cap) {
        size_t cap = n < 256 ? 256 : n;
        int32_t *a = realloc(st->sym, cap * sizeof *a);
        if (a) st->sym = a;
        int32_t *b = realloc(st->prev, cap * sizeof *b);
        if (b) st->prev = b;
        int32_t *c = realloc(st->next, cap * sizeof *c);
        if (c) st->next = c;
        heap_ent *h = realloc(st->heap, 3 * cap * sizeof *h);
        if (h) st->heap = h;
        if (!a || !b || !c || !h) return MX_ERR_NOMEM;
        st->sym_cap = cap;
    }
    return 0;
}

/* Length of the UTF-8 character at p[0] (1 for an invalid lead byte or a truncated character). */
static size_t char_len(const char *p, size_t n) {
    unsigned c = (unsigned char)p[0];
    size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (len > n) return 1;
    for (size_t k = 1; k < len; k++)
        if (((unsigned char)p[k] & 0xC0) != 0x80) return 1;
    return len;
}

/* The initial symbols of a piece; returns their count. */
static size_t initial_symbols(mx_bpe_state *st, const char *p, size_t n) {
    const mx_tokenizer *t = st->t;
    size_t m = 0;
    if (t->kind == MX_TOK_BYTE_LEVEL) { /* one per byte that has a token; the others vanish */
        for (size_t i = 0; i < n; i++) {
            int id = t->byte_tok[(unsigned char)p[i]];
            if (id >= 0) st->sym[m++] = id;
        }
        return m;
    }
    bool last_unk = false;
    for (size_t i = 0; i < n;) {
        size_t len = char_len(p + i, n - i);
        int id = mx_tok_vocab_lookup(t, p + i, len);
        if (id >= 0) {
            st->sym[m++] = id;
            last_unk = false;
        } else {
            bool all = t->byte_fallback;
            for (size_t k = 0; k < len && all; k++) all = t->byte_tok[(unsigned char)p[i + k]] >= 0;
            if (all) {
                for (size_t k = 0; k < len; k++) st->sym[m++] = t->byte_tok[(unsigned char)p[i + k]];
                last_unk = false;
            } else if (t->unk >= 0 && !(t->fuse_unk && last_unk)) {
                st->sym[m++] = t->unk;
                last_unk = true;
            }
        }
        i += len;
    }
    return m;
}

/* BPE on one piece: the initial symbols, then the merges by rank. */
static int bpe_merge(mx_bpe_state *st, const char *p, size_t n) {
    const mx_tokenizer *t = st->t;
    if (n == 1 && t->kind == MX_TOK_BYTE_LEVEL)
        return t->byte_tok[(unsigned char)p[0]] < 0 ? 0 : mx_bpe_push(st, t->byte_tok[(unsigned char)p[0]]);
    if (t->ignore_merges) {
        int id = mx_tok_vocab_lookup(t, p, n);
        if (id >= 0 && t->type[id] != TT_CONTROL && t->type[id] != TT_USER) return mx_bpe_push(st, id);
    }
    if (n > INT32_MAX / 4 || reserve_piece(st, n)) return MX_ERR_NOMEM;
    size_t m = initial_symbols(st, p, n);
    if (m == 0) return 0;
    for (size_t i = 0; i < m; i++) st->prev[i] = (int32_t)i - 1, st->next[i] = (int32_t)i + 1;
    st->next[m - 1] = -1;
    st->heap_n = 0;
    for (size_t i = 0; i + 1 < m; i++) heap_push_pair(st, (int32_t)i, (int32_t)i + 1);
    while (st->heap_n) {
        heap_ent e = heap_pop(st);
        int32_t a = e.pos, b = st->next[a];
        if (st->sym[a] < 0 || b < 0) continue;
        uint32_t slot = mx_tok_merge_slot(t, st->sym[a], st->sym[b]);
        if (!t->merges[slot].key || t->merges[slot].out != e.out)
            continue; /* stale: a neighbour changed since */
        st->sym[a] = e.out;
        st->sym[b] = -1;
        st->next[a] = st->next[b];
        if (st->next[a] >= 0) st->prev[st->next[a]] = a;
        if (st->prev[a] >= 0) heap_push_pair(st, st->prev[a], a);
        if (st->next[a] >= 0) heap_push_pair(st, a, st->next[a]);
    }
    for (int32_t i = 0; i >= 0; i = st->next[i])
        if (mx_bpe_push(st, st->sym[i])) return MX_ERR_NOMEM;
    return 0;
}

int mx_bpe_piece(mx_bpe_state *st, const char *p, size_t n) {
    piece_cache *c = st->cache;
    if (n == 0) return 0;
    if (!c || n < 2 || n > CACHE_MAX_PIECE) return bpe_merge(st, p, n);
    uint32_t h = mx_tok_hash_bytes(p, n), slot = cache_slot(c, p, n, h);
    if (c->slot[slot] >= 0) {
        const cache_ent *e = &c->ent[c->slot[slot]];
        for (uint32_t i = 0; i < e->n_ids; i++)
            if (mx_bpe_push(st, c->ids[e->ids_off + i])) return MX_ERR_NOMEM;
        return 0;
    }
    size_t start = st->n;
    int rc = bpe_merge(st, p, n);
    if (!rc) cache_put(c, slot, p, n, h, st->ids + start, st->n - start);
    return rc;
}
