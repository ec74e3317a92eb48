/* tokenizer.c: byte-level BPE from a GGUF's tokenizer.ggml.* metadata (see tokenizer.h).
 * Load: token texts are mapped from GPT-2's byte alphabet back to raw bytes once; a hash table maps raw bytes
 * to ids; merges become a hash table from (left id, right id) to (rank, merged id).
 * Encode: control tokens (when asked) and user-defined tokens are matched whole in the raw text, leftmost
 * longest, as Hugging Face's added-token split does; the text between goes through the pre-tokenizer
 * (pretok.c) and each piece through BPE: start from one token per byte and apply the lowest-ranked merge
 * (leftmost on ties) with a binary heap, skipping stale entries the way tokenizers' BPE word merge does.
 * A byte with no token of its own is dropped (tokenizers' BPE with unk_token null does the same). Long texts
 * get a per-call cache of piece -> ids (nothing is cached across calls; the tokenizer is read-only after
 * load, so one can be shared by threads). */
#include "tokenizer.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "pretok.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
enum { FIRST_CONTROL = 1, FIRST_USER = 2 };

typedef struct {
    uint32_t off, len; /* into mx_tokenizer.bytes */
} tok_span;

typedef struct {
    uint64_t key;      /* (left << 32 | right) + 1; 0 = empty slot */
    int32_t rank, out; /* the merge's rank and the token it makes */
} merge_ent;

struct mx_tokenizer {
    int n_vocab;
    char *bytes;    /* every token's raw bytes, each NUL-terminated */
    tok_span *tok;  /* n_vocab */
    uint8_t *type;  /* n_vocab GGUF token types */
    int32_t *vslot; /* vocabulary hash: id or -1; vmask + 1 slots */
    uint32_t vmask;
    merge_ent *merges; /* merge hash: mmask + 1 slots */
    uint32_t mmask;
    int32_t byte_tok[256]; /* the token of each single byte */
    int *whole;            /* control and user-defined tokens, matched whole in the text */
    int n_whole;
    uint8_t whole_first[256]; /* FIRST_* bits of the tokens that start with this byte */
    mx_pretok_kind pre;
    bool ignore_merges; /* a piece that is itself a token is not split (Llama 3) */
    int bos, eos;
    bool add_bos;
};

/* ---- hashing ---- */

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t hash_pair(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

static uint32_t table_size(uint64_t n) {
    uint32_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

static int vocab_lookup(const mx_tokenizer *t, const char *s, size_t n) {
    for (uint32_t i = hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t id = t->vslot[i];
        if (id < 0) return -1;
        if (t->tok[id].len == n && memcmp(t->bytes + t->tok[id].off, s, n) == 0) return id;
    }
}

static void vocab_insert(mx_tokenizer *t, int id) {
    const char *s = t->bytes + t->tok[id].off;
    size_t n = t->tok[id].len;
    for (uint32_t i = hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t o = t->vslot[i];
        if (o < 0) {
            t->vslot[i] = id;
            return;
        }
        if (t->tok[o].len == n && memcmp(t->bytes + t->tok[o].off, s, n) == 0) return; /* first id wins */
    }
}

/* Returns the slot of pair (a, b) in the merge table: the pair's entry, or the empty slot where it goes. */
static uint32_t merge_slot(const mx_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t i = hash_pair(key) & t->mmask;
    while (t->merges[i].key && t->merges[i].key != key) i = (i + 1) & t->mmask;
    return i;
}

/* ---- loading ---- */

/* GPT-2's byte alphabet: printable bytes stand for themselves, the other 68 for U+0100.. in byte order.
 * byte_of[cp] is the byte a character stands for, or -1 (cp < 324). */
static void byte_alphabet(int16_t byte_of[324]) {
    for (int c = 0; c < 324; c++) byte_of[c] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        byte_of[printable ? b : 256 + extra++] = (int16_t)b;
    }
}

/* Decodes byte-level text s[0..n) into dst (at most n bytes written); characters outside the alphabet are
 * copied as they are. Returns the length written. */
static size_t from_byte_level(const int16_t byte_of[324], const char *s, size_t n, char *dst) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = (unsigned char)s[i];
        if (c >= 0xC0 && c < 0xE0 && i + 1 < n && ((unsigned char)s[i + 1] & 0xC0) == 0x80) {
            unsigned cp = (c & 0x1F) << 6 | ((unsigned char)s[i + 1] & 0x3F);
            if (cp < 324 && byte_of[cp] >= 0) {
                dst[w++] = (char)byte_of[cp];
                i += 2;
                continue;
            }
        } else if (c < 0x80 && byte_of[c] >= 0) {
            dst[w++] = (char)c;
            i++;
            continue;
        }
        dst[w++] = s[i++];
    }
    return w;
}

/* Finds key as an array of strings (elem == MX_GGUF_STRING) or of numbers (any other elem). */
static int find_array(const mx_gguf *g, const char *key, mx_gguf_vtype elem, const mx_gguf_kv **out,
                      mx_err *err) {
    const mx_gguf_kv *kv = mx_gguf_kv_find(g, key);
    *out = NULL;
    if (!kv) return mx_err_set(err, MX_ERR_MISSING, "%s: no '%s' in the metadata", g->path, key);
    bool ok = kv->type == MX_GGUF_ARRAY &&
              (elem == MX_GGUF_STRING ? kv->elem == MX_GGUF_STRING
                                      : kv->elem != MX_GGUF_STRING && kv->elem != MX_GGUF_ARRAY);
    if (!ok)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: '%s' is not an array of %s", g->path, key,
                          elem == MX_GGUF_STRING ? "strings" : "numbers");
    *out = kv;
    return 0;
}

static int load_tokens(mx_tokenizer *t, const mx_gguf *g, mx_err *err) {
    const mx_gguf_kv *toks, *types = NULL;
    int rc = find_array(g, "tokenizer.ggml.tokens", MX_GGUF_STRING, &toks, err);
    if (rc) return rc;
    if (toks->count == 0 || toks->count > INT32_MAX / 2)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries", g->path,
                          (unsigned long long)toks->count);
    if (mx_gguf_kv_find(g, "tokenizer.ggml.token_type") &&
        (rc = find_array(g, "tokenizer.ggml.token_type", MX_GGUF_I32, &types, err)))
        return rc;
    if (types && types->count != toks->count)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %llu token types for %llu tokens", g->path,
                          (unsigned long long)types->count, (unsigned long long)toks->count);
    t->n_vocab = (int)toks->count;
    uint64_t total = 0;
    for (int i = 0; i < t->n_vocab; i++) total += toks->strs[i].len + 1;
    if (total > UINT32_MAX) return mx_err_set(err, MX_ERR_FORMAT, "%s: token texts too large", g->path);
    t->bytes = malloc(total);
    t->tok = malloc(sizeof *t->tok * (size_t)t->n_vocab);
    t->type = malloc((size_t)t->n_vocab);
    t->vmask = table_size((uint64_t)t->n_vocab) - 1;
    t->vslot = malloc(sizeof *t->vslot * ((size_t)t->vmask + 1));
    if (!t->bytes || !t->tok || !t->type || !t->vslot)
        return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    memset(t->vslot, 0xff, sizeof *t->vslot * ((size_t)t->vmask + 1));
    int16_t byte_of[324];
    byte_alphabet(byte_of);
    uint32_t off = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        int64_t ty = types ? mx_gguf_arr_i64(types, (uint64_t)i) : TT_NORMAL;
        t->type[i] = (uint8_t)(ty >= 1 && ty <= 6 ? ty : TT_NORMAL);
        const mx_gguf_str *s = &toks->strs[i];
        size_t n;
        if (t->type[i] == TT_CONTROL || t->type[i] == TT_USER) {
            memcpy(t->bytes + off, s->ptr, s->len);
            n = s->len;
        } else {
            n = from_byte_level(byte_of, s->ptr, s->len, t->bytes + off);
        }
        t->bytes[off + n] = '\0';
        t->tok[i] = (tok_span){off, (uint32_t)n};
        off += (uint32_t)n + 1;
        vocab_insert(t, i);
    }
    /* SmolLM2's vocabulary lacks 21 of the 256 bytes (0x04, 0xC0, 0xFF, ...): -1 here, and encoding drops
     * such bytes, as tokenizers' BPE does for a character outside the vocabulary when unk_token is null. */
    int n_bytes = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_tok[b] = vocab_lookup(t, &c, 1);
        n_bytes += t->byte_tok[b] >= 0;
    }
    if (n_bytes == 0)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: the vocabulary has no single-byte tokens (not byte-level BPE?)", g->path);
    return 0;
}

static int load_merges(mx_tokenizer *t, const mx_gguf *g, mx_err *err) {
    const mx_gguf_kv *m;
    int rc = find_array(g, "tokenizer.ggml.merges", MX_GGUF_STRING, &m, err);
    if (rc) return rc;
    if (m->count > INT32_MAX / 4)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %llu merges", g->path, (unsigned long long)m->count);
    size_t slots = table_size(m->count);
    t->mmask = (uint32_t)slots - 1;
    t->merges = calloc(slots, sizeof *t->merges);
    if (!t->merges) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    int16_t byte_of[324];
    byte_alphabet(byte_of);
    char *buf = NULL;
    size_t cap = 0;
    for (uint64_t r = 0; r < m->count && !rc; r++) {
        const mx_gguf_str *s = &m->strs[r];
        const char *sp = memchr(s->ptr, ' ', s->len);
        if (!sp || sp == s->ptr || sp + 1 == s->ptr + s->len) {
            rc = mx_err_set(err, MX_ERR_FORMAT, "%s: merge %llu ('%.*s') is not 'left right'", g->path,
                            (unsigned long long)r, (int)(s->len > 64 ? 64 : s->len), s->ptr);
            break;
        }
        if (s->len > cap) {
            char *nb = realloc(buf, s->len * 2);
            if (!nb) {
                rc = mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
                break;
            }
            buf = nb;
            cap = s->len * 2;
        }
        size_t la = from_byte_level(byte_of, s->ptr, (size_t)(sp - s->ptr), buf);
        size_t lb = from_byte_level(byte_of, sp + 1, (size_t)(s->ptr + s->len - sp - 1), buf + la);
        int a = vocab_lookup(t, buf, la), b = vocab_lookup(t, buf + la, lb),
            out = vocab_lookup(t, buf, la + lb);
        if (a < 0 || b < 0 || out < 0) {
            rc = mx_err_set(err, MX_ERR_FORMAT,
                            "%s: merge %llu ('%.*s') uses or makes a token not in the vocabulary", g->path,
                            (unsigned long long)r, (int)(s->len > 64 ? 64 : s->len), s->ptr);
            break;
        }
        uint32_t i = merge_slot(t, a, b);
        /* a repeated pair takes its last rank, as tokenizers' map does */
        t->merges[i] = (merge_ent){((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1, (int32_t)r, out};
    }
    free(buf);
    return rc;
}

static int load_whole_tokens(mx_tokenizer *t) {
    for (int i = 0; i < t->n_vocab; i++) t->n_whole += (t->type[i] == TT_CONTROL || t->type[i] == TT_USER);
    t->whole = malloc(sizeof *t->whole * (size_t)(t->n_whole ? t->n_whole : 1));
    if (!t->whole) return MX_ERR_NOMEM;
    int k = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        if ((t->type[i] != TT_CONTROL && t->type[i] != TT_USER) || t->tok[i].len == 0) continue;
        t->whole[k++] = i;
        unsigned char first = (unsigned char)t->bytes[t->tok[i].off];
        t->whole_first[first] |= t->type[i] == TT_CONTROL ? FIRST_CONTROL : FIRST_USER;
    }
    t->n_whole = k;
    return 0;
}

static int read_id(const mx_gguf *g, const char *key, int n_vocab, int *out, mx_err *err) {
    int64_t v;
    *out = -1;
    if (!mx_gguf_kv_find(g, key)) return 0;
    int rc = mx_gguf_get_i64(g, key, &v, err);
    if (rc) return rc;
    if (v < 0 || v >= n_vocab)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %s = %lld is outside the vocabulary (%d tokens)", g->path,
                          key, (long long)v, n_vocab);
    *out = (int)v;
    return 0;
}

static int check_kind(const mx_gguf *g, mx_tokenizer *t, mx_err *err) {
    char *model = NULL, *pre = NULL;
    int rc = mx_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
    if (rc) return rc == MX_ERR_MISSING ? mx_err_set(err, rc, "%s: no tokenizer.ggml.model", g->path) : rc;
    if (strcmp(model, "gpt2") != 0) {
        rc = mx_err_set(err, MX_ERR_UNSUPPORTED,
                        "%s: tokenizer.ggml.model '%s' is not supported (only 'gpt2', byte-level BPE)",
                        g->path, model);
    } else if (mx_gguf_kv_find(g, "tokenizer.ggml.pre")) {
        rc = mx_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err);
        if (!rc && mx_pretok_from_name(pre, &t->pre) != 0)
            rc = mx_err_set(err, MX_ERR_UNSUPPORTED,
                            "%s: pre-tokenizer tokenizer.ggml.pre '%s' is not supported (supported: smollm, "
                            "starcoder, gpt2, default, llama-bpe, llama3)",
                            g->path, pre);
    } else {
        t->pre = MX_PRETOK_GPT2; /* llama.cpp's default for files that predate the key */
    }
    t->ignore_merges = t->pre == MX_PRETOK_LLAMA3;
    free(model);
    free(pre);
    return rc;
}

int mx_tokenizer_from_gguf(const mx_gguf *g, mx_tokenizer **out, mx_err *err) {
    *out = NULL;
    mx_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    int rc = check_kind(g, t, err);
    if (!rc) rc = load_tokens(t, g, err);
    if (!rc) rc = load_merges(t, g, err);
    if (!rc && load_whole_tokens(t)) rc = mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    if (!rc) rc = read_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err);
    if (!rc) rc = read_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err);
    if (!rc && mx_gguf_kv_find(g, "tokenizer.ggml.add_bos_token"))
        rc = mx_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err);
    if (rc) {
        mx_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void mx_tokenizer_free(mx_tokenizer *t) {
    if (!t) return;
    free(t->bytes);
    free(t->tok);
    free(t->type);
    free(t->vslot);
    free(t->merges);
    free(t->whole);
    free(t);
}

int mx_tokenizer_vocab_size(const mx_tokenizer *t) {
    return t->n_vocab;
}
int mx_tokenizer_bos(const mx_tokenizer *t) {
    return t->bos;
}
int mx_tokenizer_eos(const mx_tokenizer *t) {
    return t->eos;
}
bool mx_tokenizer_add_bos(const mx_tokenizer *t) {
    return t->add_bos;
}

int mx_tokenizer_find(const mx_tokenizer *t, const char *text) {
    return vocab_lookup(t, text, strlen(text));
}

bool mx_tokenizer_is_special(const mx_tokenizer *t, int id) {
    return id >= 0 && id < t->n_vocab && t->type[id] == TT_CONTROL;
}

int mx_tokenizer_byte_token(const mx_tokenizer *t, uint8_t byte) {
    return t->byte_tok[byte];
}

const char *mx_token_bytes(const mx_tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->tok[id].len;
    return t->bytes + t->tok[id].off;
}

char *mx_detokenize(const mx_tokenizer *t, const int *ids, int n_ids) {
    size_t total = 1;
    for (int i = 0; i < n_ids; i++)
        if (ids[i] >= 0 && ids[i] < t->n_vocab) total += t->tok[ids[i]].len;
    char *s = malloc(total), *w = s;
    if (!s) return NULL;
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) continue; /* ids outside the vocabulary decode to nothing */
        memcpy(w, t->bytes + t->tok[ids[i]].off, t->tok[ids[i]].len);
        w += t->tok[ids[i]].len;
    }
    *w = '\0';
    return s;
}

/* ---- encoding ---- */

typedef struct {
    int32_t rank, pos, out;
} heap_ent;

/* A cache of this call's pieces (the same words come back again and again in a long text): piece bytes ->
 * its token ids. It lives for one mx_tokenize call only and is emptied when full. */
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

typedef struct {
    const mx_tokenizer *t;
    int *ids;
    size_t n, cap;
    int32_t *sym, *prev, *next; /* BPE symbols of the current piece: token id (-1 once merged away), links */
    size_t sym_cap;
    heap_ent *heap;
    size_t heap_n, heap_cap;
    piece_cache *cache; /* NULL for short texts */
} enc_state;

static int push_id(enc_state *st, int id) {
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
static void heap_push_pair(enc_state *st, int32_t a, int32_t b) {
    const mx_tokenizer *t = st->t;
    uint32_t slot = merge_slot(t, st->sym[a], st->sym[b]);
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

static heap_ent heap_pop(enc_state *st) {
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

/* Every merge pushes at most two entries, so a piece of n bytes needs at most 3n heap entries. */
static int reserve_piece(enc_state *st, size_t n) {
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

static int bpe_merge(enc_state *st, const char *p, size_t n);

/* Emits the tokens of one pre-tokenizer piece, through the cache when there is one. */
static int bpe_piece(void *ctx, const char *p, size_t n) {
    enc_state *st = ctx;
    piece_cache *c = st->cache;
    if (!c || n < 2 || n > CACHE_MAX_PIECE) return bpe_merge(st, p, n);
    uint32_t h = hash_bytes(p, n), slot = cache_slot(c, p, n, h);
    if (c->slot[slot] >= 0) {
        const cache_ent *e = &c->ent[c->slot[slot]];
        for (uint32_t i = 0; i < e->n_ids; i++)
            if (push_id(st, c->ids[e->ids_off + i])) return MX_ERR_NOMEM;
        return 0;
    }
    size_t start = st->n;
    int rc = bpe_merge(st, p, n);
    if (!rc) cache_put(c, slot, p, n, h, st->ids + start, st->n - start);
    return rc;
}

/* BPE on one piece: one symbol per byte, then the merges by rank. */
static int bpe_merge(enc_state *st, const char *p, size_t n) {
    const mx_tokenizer *t = st->t;
    if (n == 1)
        return t->byte_tok[(unsigned char)p[0]] < 0 ? 0 : push_id(st, t->byte_tok[(unsigned char)p[0]]);
    if (t->ignore_merges) {
        int id = vocab_lookup(t, p, n);
        if (id >= 0 && t->type[id] != TT_CONTROL && t->type[id] != TT_USER) return push_id(st, id);
    }
    if (n > INT32_MAX / 4 || reserve_piece(st, n)) return MX_ERR_NOMEM;
    size_t m = 0; /* symbols: one per byte that has a token; the others vanish and their neighbours meet */
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_tok[(unsigned char)p[i]];
        if (id < 0) continue;
        st->sym[m] = id;
        st->prev[m] = (int32_t)m - 1;
        st->next[m] = (int32_t)m + 1;
        m++;
    }
    if (m == 0) return 0;
    st->next[m - 1] = -1;
    n = m;
    st->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) heap_push_pair(st, (int32_t)i, (int32_t)i + 1);
    while (st->heap_n) {
        heap_ent e = heap_pop(st);
        int32_t a = e.pos, b = st->next[a];
        if (st->sym[a] < 0 || b < 0) continue;
        uint32_t slot = merge_slot(t, st->sym[a], st->sym[b]);
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
        if (push_id(st, st->sym[i])) return MX_ERR_NOMEM;
    return 0;
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

static int encode_text(enc_state *st, const char *text, size_t len, bool parse_special) {
    const mx_tokenizer *t = st->t;
    uint8_t mask = FIRST_USER | (parse_special ? FIRST_CONTROL : 0);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (!(t->whole_first[(unsigned char)text[i]] & mask)) continue;
        int id = match_whole(t, text, i, len, parse_special);
        if (id < 0) continue;
        int rc = mx_pretok_split(t->pre, text + start, i - start, bpe_piece, st);
        if (rc || (rc = push_id(st, id))) return rc;
        i += t->tok[id].len - 1;
        start = i + 1;
    }
    return mx_pretok_split(t->pre, text + start, len - start, bpe_piece, st);
}

int mx_tokenize(const mx_tokenizer *t, const char *text, size_t len, bool parse_special, int **ids,
                int *n_ids, mx_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!t)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "the model has no tokenizer mixatt can read (tokenizer.json is not supported yet): "
                          "give token ids instead (mixatt logits --ids)");
    if (!text && len) return mx_err_set(err, MX_ERR_ARG, "tokenize: NULL text");
    enc_state st = {.t = t};
    if (len >= CACHE_MIN_TEXT && (st.cache = malloc(sizeof *st.cache))) cache_clear(st.cache);
    int rc = encode_text(&st, text, len, parse_special);
    free(st.cache);
    if (!rc && st.n > INT_MAX) rc = MX_ERR_ARG;
    if (!rc && !st.ids && push_id(&st, 0) == 0) st.n = 0; /* an empty result is still a malloc'd array */
    if (!rc && !st.ids) rc = MX_ERR_NOMEM;
    free(st.sym);
    free(st.prev);
    free(st.next);
    free(st.heap);
    if (rc) {
        free(st.ids);
        if (rc == MX_ERR_ARG) return mx_err_set(err, rc, "tokenize: more than %d tokens", INT_MAX);
        return mx_err_set(err, MX_ERR_NOMEM, "tokenize: no memory for %zu bytes of text", len);
    }
    *ids = st.ids;
    *n_ids = (int)st.n;
    return 0;
}
