/* tokenizer.c: the tokenizer's vocabulary (see tok_impl.h): the builder the loaders fill, the hash tables
 * (token text -> id, merge pair -> rank and result), the public look-ups, and decoding.
 * Byte-level token texts are mapped from GPT-2's byte alphabet back to raw bytes once, at mx_tok_set; the
 * merge table is keyed by (left id, right id). */
#include "tok_impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- hashing ---- */

uint32_t mx_tok_hash_bytes(const char *s, size_t n) {
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

int mx_tok_vocab_lookup(const mx_tokenizer *t, const char *s, size_t n) {
    for (uint32_t i = mx_tok_hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t id = t->vslot[i];
        if (id < 0) return -1;
        if (t->tok[id].len == n && memcmp(t->bytes + t->tok[id].off, s, n) == 0) return id;
    }
}

static void vocab_insert(mx_tokenizer *t, int id) {
    const char *s = t->bytes + t->tok[id].off;
    size_t n = t->tok[id].len;
    for (uint32_t i = mx_tok_hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t o = t->vslot[i];
        if (o < 0) {
            t->vslot[i] = id;
            return;
        }
        if (t->tok[o].len == n && memcmp(t->bytes + t->tok[o].off, s, n) == 0) return; /* first id wins */
    }
}

uint32_t mx_tok_merge_slot(const mx_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t i = hash_pair(key) & t->mmask;
    while (t->merges[i].key && t->merges[i].key != key) i = (i + 1) & t->mmask;
    return i;
}

/* ---- GPT-2's byte alphabet ---- */

/* Printable bytes stand for themselves, the other 68 for U+0100.. in byte order. byte_of[cp] is the byte a
 * character stands for, or -1 (cp < 324). */
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
static size_t from_byte_level(const char *s, size_t n, char *dst) {
    static int16_t byte_of[324];
    static bool ready; /* written once with the same values by any thread: a benign constant table */
    if (!ready) byte_alphabet(byte_of), ready = true;
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

size_t mx_tok_to_byte_level(const char *s, size_t n, char *dst) {
    int16_t byte_of[324];
    byte_alphabet(byte_of);
    uint16_t char_of[256];
    for (int c = 0; c < 324; c++)
        if (byte_of[c] >= 0) char_of[byte_of[c]] = (uint16_t)c;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned cp = char_of[(unsigned char)s[i]];
        if (cp < 0x80) {
            dst[w++] = (char)cp;
        } else {
            dst[w++] = (char)(0xC0 | cp >> 6);
            dst[w++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return w;
}

/* ---- builder ---- */

mx_tokenizer *mx_tok_new(mx_tok_kind kind, int n_vocab, size_t text_bytes) {
    mx_tokenizer *t = calloc(1, sizeof *t);
    if (!t || n_vocab <= 0 || text_bytes + (size_t)n_vocab >= UINT32_MAX) return free(t), NULL;
    t->kind = kind;
    t->n_vocab = n_vocab;
    t->bos = t->eos = t->unk = -1;
    t->bytes_cap = (uint32_t)(text_bytes + (size_t)n_vocab + 1);
    t->bytes = malloc(t->bytes_cap);
    t->disp = malloc(t->bytes_cap);
    t->tok = calloc((size_t)n_vocab, sizeof *t->tok);
    t->dsp = calloc((size_t)n_vocab, sizeof *t->dsp);
    t->type = malloc((size_t)n_vocab);
    t->strip = calloc((size_t)n_vocab, 1);
    if (!t->bytes || !t->disp || !t->tok || !t->dsp || !t->type || !t->strip)
        return mx_tokenizer_free(t), NULL;
    memset(t->type, TT_UNUSED, (size_t)n_vocab);
    t->bytes[0] = t->disp[0] = '\0';
    t->bytes_n = t->disp_n = 1; /* offset 0 is the empty text of unset tokens */
    for (int i = 0; i < 256; i++) t->byte_tok[i] = -1;
    return t;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xAB>" -> 0xAB, or -1. */
static int byte_token_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi << 4 | lo;
}

/* SentencePiece text -> the bytes it decodes to: ▁ (E2 96 81) -> ' '. Returns the length. */
static size_t spm_display(const char *s, size_t n, char *dst) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 2 < n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
            (unsigned char)s[i + 2] == 0x81) {
            dst[w++] = ' ';
            i += 2;
        } else {
            dst[w++] = s[i];
        }
    }
    return w;
}

int mx_tok_set(mx_tokenizer *t, int id, const char *text, size_t len, int type) {
    if (id < 0 || id >= t->n_vocab || (size_t)t->bytes_n + len + 1 > t->bytes_cap ||
        (size_t)t->disp_n + len + 1 > t->bytes_cap)
        return MX_ERR_NOMEM;
    t->type[id] = (uint8_t)(type >= TT_NORMAL && type <= TT_BYTE ? type : TT_NORMAL);
    bool whole = type == TT_CONTROL || type == TT_USER;
    char *b = t->bytes + t->bytes_n, *d = t->disp + t->disp_n;
    size_t nb, nd;
    if (whole) {
        memcpy(b, text, len);
        memcpy(d, text, len);
        nb = nd = len;
    } else if (t->kind == MX_TOK_BYTE_LEVEL) {
        nb = nd = from_byte_level(text, len, b);
        memcpy(d, b, nb);
    } else {
        memcpy(b, text, len);
        nb = len;
        int v = byte_token_value(text, len);
        if (v >= 0 && (type == TT_BYTE || type == TT_NORMAL)) {
            t->type[id] = TT_BYTE;
            d[0] = (char)v;
            nd = 1;
        } else {
            nd = spm_display(text, len, d);
        }
    }
    b[nb] = d[nd] = '\0';
    t->tok[id] = (tok_span){t->bytes_n, (uint32_t)nb};
    t->dsp[id] = (tok_span){t->disp_n, (uint32_t)nd};
    t->bytes_n += (uint32_t)nb + 1;
    t->disp_n += (uint32_t)nd + 1;
    return 0;
}

int mx_tok_index(mx_tokenizer *t, const char *path, mx_err *err) {
    t->vmask = table_size((uint64_t)t->n_vocab) - 1;
    t->vslot = malloc(sizeof *t->vslot * ((size_t)t->vmask + 1));
    if (!t->vslot) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    memset(t->vslot, 0xff, sizeof *t->vslot * ((size_t)t->vmask + 1));
    for (int i = 0; i < t->n_vocab; i++)
        if (t->type[i] != TT_UNUSED || t->tok[i].len) vocab_insert(t, i);
    int n_bytes = 0;
    for (int i = 0; i < t->n_vocab && t->kind == MX_TOK_SPM; i++)
        if (t->type[i] == TT_BYTE) {
            int v = byte_token_value(t->bytes + t->tok[i].off, t->tok[i].len);
            if (v >= 0 && t->byte_tok[v] < 0) t->byte_tok[v] = i, n_bytes++;
        }
    /* SmolLM2's vocabulary lacks 21 of the 256 bytes (0x04, 0xC0, 0xFF, ...): -1 here, and encoding drops
     * such bytes, as tokenizers' BPE does for a character outside the vocabulary when unk_token is null. */
    for (int b = 0; b < 256 && t->kind == MX_TOK_BYTE_LEVEL; b++) {
        char c = (char)b;
        t->byte_tok[b] = mx_tok_vocab_lookup(t, &c, 1);
        n_bytes += t->byte_tok[b] >= 0;
    }
    if (n_bytes == 0 && t->kind == MX_TOK_BYTE_LEVEL)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: the vocabulary has no single-byte tokens (not byte-level BPE?)", path);
    return 0;
}

int mx_tok_merges_reserve(mx_tokenizer *t, size_t n, mx_err *err) {
    if (n > INT32_MAX / 4) return mx_err_set(err, MX_ERR_FORMAT, "tokenizer: %zu merges", n);
    size_t slots = table_size(n);
    t->mmask = (uint32_t)slots - 1;
    t->merges = calloc(slots, sizeof *t->merges);
    if (!t->merges) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    return 0;
}

int mx_tok_lookup_written(const mx_tokenizer *t, const char *text, size_t len) {
    if (t->kind == MX_TOK_SPM) return mx_tok_vocab_lookup(t, text, len);
    char small[256], *buf = len <= sizeof small ? small : malloc(len);
    if (!buf) return -1;
    int id = mx_tok_vocab_lookup(t, buf, from_byte_level(text, len, buf));
    if (buf != small) free(buf);
    return id;
}

int mx_tok_add_merge(mx_tokenizer *t, int rank, const char *a, size_t alen, const char *b, size_t blen,
                     const char *path, mx_err *err) {
    size_t n = alen + blen;
    char small[512], *buf = n <= sizeof small ? small : malloc(n);
    if (!buf) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    int ia = mx_tok_lookup_written(t, a, alen), ib = mx_tok_lookup_written(t, b, blen), out = -1;
    memcpy(buf, a, alen);
    memcpy(buf + alen, b, blen);
    out = mx_tok_lookup_written(t, buf, n);
    if (buf != small) free(buf);
    if (ia < 0 || ib < 0 || out < 0)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: merge %d ('%.*s %.*s') uses or makes a token not in the vocabulary", path,
                          rank, (int)(alen > 64 ? 64 : alen), a, (int)(blen > 64 ? 64 : blen), b);
    uint32_t i = mx_tok_merge_slot(t, ia, ib);
    /* a repeated pair takes its last rank, as tokenizers' map does */
    if (!t->merges[i].key) t->n_merges++;
    t->merges[i] = (merge_ent){((uint64_t)(uint32_t)ia << 32 | (uint32_t)ib) + 1, rank, out};
    return 0;
}

int mx_tok_finish(mx_tokenizer *t, mx_err *err) {
    for (int i = 0; i < t->n_vocab; i++) t->n_whole += (t->type[i] == TT_CONTROL || t->type[i] == TT_USER);
    t->whole = malloc(sizeof *t->whole * (size_t)(t->n_whole ? t->n_whole : 1));
    if (!t->whole) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
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

void mx_tokenizer_free(mx_tokenizer *t) {
    if (!t) return;
    free(t->bytes);
    free(t->disp);
    free(t->tok);
    free(t->dsp);
    free(t->type);
    free(t->strip);
    free(t->vslot);
    free(t->merges);
    free(t->whole);
    free(t->hf_json);
    for (int i = 0; i < t->n_norm; i++) free(t->norm[i].a), free(t->norm[i].b);
    free(t);
}

/* ---- look-ups ---- */

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
    return t->add_bos && t->bos >= 0;
}

int mx_tokenizer_find(const mx_tokenizer *t, const char *text) {
    return mx_tok_vocab_lookup(t, text, strlen(text));
}

bool mx_tokenizer_is_special(const mx_tokenizer *t, int id) {
    return id >= 0 && id < t->n_vocab && t->type[id] == TT_CONTROL;
}

int mx_tokenizer_byte_token(const mx_tokenizer *t, uint8_t byte) {
    return t->byte_tok[byte];
}

bool mx_tokenizer_byte_fallback(const mx_tokenizer *t) {
    return t->kind == MX_TOK_SPM && t->byte_fallback;
}

const char *mx_token_bytes(const mx_tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->dsp[id].len;
    return t->disp + t->dsp[id].off;
}

const char *mx_token_text(const mx_tokenizer *t, int id, size_t *len) {
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
        if (ids[i] >= 0 && ids[i] < t->n_vocab) total += t->dsp[ids[i]].len;
    char *s = malloc(total), *w = s;
    if (!s) return NULL;
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) continue; /* ids outside the vocabulary decode to nothing */
        memcpy(w, t->disp + t->dsp[ids[i]].off, t->dsp[ids[i]].len);
        w += t->dsp[ids[i]].len;
    }
    *w = '\0';
    if (t->strip_lead_space && s[0] == ' ') memmove(s, s + 1, (size_t)(w - s));
    return s;
}
