/* pretok.h: the pre-tokenizers of byte-level BPE vocabularies (internal to src/tok/): the split of text into
 * the pieces that BPE runs on, for the regexes that tokenizer.ggml.pre names. Hand-written matchers that give
 * the same pieces as Hugging Face tokenizers' regex splits (Oniguruma semantics: \p{L}, \p{N} by general
 * category, \s by the Unicode White_Space property). Bytes that are not valid UTF-8 are kept, each as one
 * character of no class (like punctuation), so every input byte lands in exactly one piece. */
#ifndef MX_PRETOK_H
#define MX_PRETOK_H

#include <stddef.h>

typedef enum {
    MX_PRETOK_GPT2,       /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    MX_PRETOK_LLAMA3,     /* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
                             ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    MX_PRETOK_QWEN2,      /* Llama 3's regex with \p{N} instead of \p{N}{1,3} (one digit a piece) */
    MX_PRETOK_DIGITS,     /* Digits(individual_digits=true): every \p{N} character alone, the rest between */
    MX_PRETOK_DIGIT_RUNS, /* Digits(individual_digits=false): runs of \p{N} characters, the rest between */
} mx_pretok_kind;

/* The kind whose regex is exactly `regex` (as tokenizer.json writes a Split's pattern), or -1. */
int mx_pretok_from_regex(const char *regex);

/* Called once per piece, in order; a nonzero return stops the split and is returned by mx_pretok_split. */
typedef int (*mx_pretok_emit)(void *ctx, const char *piece, size_t len);

/* Splits text[0..len) into pieces (their concatenation is the text). Returns 0 or emit's nonzero value. */
int mx_pretok_split(mx_pretok_kind kind, const char *text, size_t len, mx_pretok_emit emit, void *ctx);

#endif
