/* tok_impl.h: the tokenizer's insides, shared by the files of src/tok/ (not a public header): the
 * mx_tokenizer struct, the builder the loaders fill it through (tok_gguf.c, tok_hf.c), and the encode
 * pipeline's stages (normalize.c, encode.c, bpe.c).
 *
 * Two kinds of BPE vocabulary:
 *   MX_TOK_BYTE_LEVEL  GPT-2 style: tokens are byte strings written in GPT-2's byte alphabet; they are stored
 *                      here as raw bytes, and BPE starts from one symbol per byte.
 *   MX_TOK_SPM         SentencePiece style (Llama 2, Mistral): tokens are UTF-8 text with U+2581 ("▁") for a
 *                      space; BPE starts from one symbol per character; a character outside the vocabulary
 *                      becomes its UTF-8 bytes' <0xXX> tokens (byte fallback) or the unknown token.
 * Each token keeps the text BPE matches (`tok`) and the bytes it decodes to (`disp`: ▁ -> ' ', <0x0A> -> "\n"
 * for SPM; the same bytes for byte-level). */
#ifndef MX_TOK_IMPL_H
#define MX_TOK_IMPL_H

#include "pretok.h"
#include "tokenizer.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
enum { FIRST_CONTROL = 1, FIRST_USER = 2 };
enum { WHOLE_LSTRIP = 1, WHOLE_RSTRIP = 2 };

typedef enum { MX_TOK_BYTE_LEVEL, MX_TOK_SPM } mx_tok_kind;

/* Normalizer steps (tokenizer.json "normalizer"), applied in order to each stretch of text between added
 * tokens. */
typedef enum {
    NORM_NFC,
    NORM_NFKC,
    NORM_NFD,
    NORM_NFKD,
    NORM_LOWERCASE,
    NORM_PREPEND,
    NORM_REPLACE
} norm_kind;
typedef struct {
    norm_kind kind;
    char *a, *b; /* PREPEND: a = the prefix; REPLACE: a -> b (literal strings) */
} norm_step;

/* Pre-tokenizer steps (tokenizer.json "pre_tokenizer"), each applied to every piece of the step before. */
typedef enum { PRE_SPLIT, PRE_BYTE_LEVEL, PRE_METASPACE } pre_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;
typedef struct {
    pre_kind kind;
    mx_pretok_kind split;  /* PRE_SPLIT: which split (pretok.h) */
    bool add_prefix_space; /* PRE_BYTE_LEVEL: prepend ' ' to a piece that does not start with one */
    bool use_regex;        /* PRE_BYTE_LEVEL: then split with GPT-2's regex */
    prepend_scheme scheme; /* PRE_METASPACE: ' ' -> ▁, prepend ▁ per scheme, split before each ▁ if split */
    bool split_ws;
} pre_step;

enum { MAX_STEPS = 8 };

typedef struct {
    uint32_t off, len; /* into mx_tokenizer.bytes or .disp */
} tok_span;

typedef struct {
    uint64_t key;      /* (left << 32 | right) + 1; 0 = empty slot */
    int32_t rank, out; /* the merge's rank and the token it makes */
} merge_ent;

struct mx_tokenizer {
    mx_tok_kind kind;
    int n_vocab;
    char *bytes; /* every token's text as BPE matches it, each NUL-terminated */
    char *disp;  /* every token's decoded bytes, each NUL-terminated */
    uint32_t bytes_n, disp_n, bytes_cap;
    tok_span *tok;  /* n_vocab */
    tok_span *dsp;  /* n_vocab */
    uint8_t *type;  /* n_vocab GGUF token types */
    uint8_t *strip; /* n_vocab WHOLE_* bits of added tokens */
    int32_t *vslot; /* vocabulary hash: id or -1; vmask + 1 slots */
    uint32_t vmask;
    merge_ent *merges; /* merge hash: mmask + 1 slots */
    uint32_t mmask;
    int n_merges;
    int32_t byte_tok[256]; /* the token of each single byte (byte-level), or its <0xXX> token (SPM), or -1 */
    int *whole;            /* control and user-defined tokens, matched whole in the text */
    int n_whole;
    uint8_t whole_first[256]; /* FIRST_* bits of the tokens that start with this byte */
    /* pipeline */
    norm_step norm[MAX_STEPS];
    int n_norm;
    pre_step pre[MAX_STEPS];
    int n_pre;
    const char
        *pre_name;      /* the tokenizer.ggml.pre name of the pre-tokenizer, for writing GGUF; NULL if none */
    bool ignore_merges; /* a piece that is itself a token is not split (Llama 3) */
    bool byte_fallback; /* SPM: characters outside the vocabulary become <0xXX> tokens */
    bool fuse_unk;      /* SPM: consecutive unknown characters become one unknown token */
    bool strip_lead_space; /* decoding drops the first ' ' of a text (SentencePiece's decoder) */
    char *hf_json;         /* the tokenizer.json this was read from (written into GGUF by convert), or NULL */
    int unk;
    int bos, eos;
    bool add_bos, add_eos;
};

/* ---- builder (tokenizer.c) ---- */

/* A tokenizer of n_vocab empty tokens (type TT_UNUSED) with room for text_bytes bytes of token text. */
mx_tokenizer *mx_tok_new(mx_tok_kind kind, int n_vocab, size_t text_bytes);
/* Sets token id's text as the file writes it (GPT-2 byte alphabet or SentencePiece ▁) and its type; returns
 * MX_ERR_NOMEM when the text does not fit. Every id is set once, before mx_tok_index. */
int mx_tok_set(mx_tokenizer *t, int id, const char *text, size_t len, int type);
/* Builds the vocabulary hash and the byte tokens; err names path when the vocabulary is unusable. */
int mx_tok_index(mx_tokenizer *t, const char *path, mx_err *err);
/* Allocates the merge table for n merges. */
int mx_tok_merges_reserve(mx_tokenizer *t, size_t n, mx_err *err);
/* Adds merge `rank` (left, right, in the file's writing); a pair outside the vocabulary is an error. */
int mx_tok_add_merge(mx_tokenizer *t, int rank, const char *a, size_t alen, const char *b, size_t blen,
                     const char *path, mx_err *err);
/* Collects the control and user-defined tokens that are matched whole; call last. */
int mx_tok_finish(mx_tokenizer *t, mx_err *err);
/* The id of a token by its text as the file writes it, or -1 (used while loading). */
int mx_tok_lookup_written(const mx_tokenizer *t, const char *text, size_t len);

/* ---- the vocabulary hash (tokenizer.c) ---- */
int mx_tok_vocab_lookup(const mx_tokenizer *t, const char *s, size_t n);
/* The slot of pair (a, b) in the merge table: the pair's entry, or the empty slot where it goes. */
uint32_t mx_tok_merge_slot(const mx_tokenizer *t, int32_t a, int32_t b);
uint32_t mx_tok_hash_bytes(const char *s, size_t n);
size_t mx_tok_to_byte_level(const char *s, size_t n,
                            char *dst); /* raw bytes -> GPT-2 alphabet; dst holds 2n */

/* ---- normalizers (normalize.c) ---- */
/* Applies t's normalizer steps to s[0..n) into a malloc'd string (*out, *out_len); *out is NULL when there
 * are no steps (the text is used as it is). */
int mx_tok_normalize(const mx_tokenizer *t, const char *s, size_t n, char **out, size_t *out_len);

/* ---- BPE on one piece (bpe.c) ---- */
typedef struct mx_bpe_state mx_bpe_state;
mx_bpe_state *mx_bpe_state_new(const mx_tokenizer *t, size_t text_len);
void mx_bpe_state_free(mx_bpe_state *st);
/* Appends the tokens of one pre-tokenized piece. */
int mx_bpe_piece(mx_bpe_state *st, const char *p, size_t n);
int mx_bpe_push(mx_bpe_state *st, int id);
/* Hands over the ids (malloc'd, possibly NULL when none) and their count. */
int *mx_bpe_take(mx_bpe_state *st, size_t *n);

#endif
