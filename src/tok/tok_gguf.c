/* tok_gguf.c: a tokenizer from a GGUF's metadata (see tokenizer.h). A file that carries the Hugging Face
 * tokenizer.json whole (tokenizer.huggingface.json, as `mixatt convert` writes it) is read through tok_hf.c,
 * so it encodes exactly as the directory it came from. Otherwise the llama.cpp keys: tokenizer.ggml.model
 * "gpt2" (byte-level BPE) with tokens, token types, ranked merges, the pre-tokenizer named by
 * tokenizer.ggml.pre; or "llama" (SentencePiece-style BPE, byte fallback) with tokens, token types and
 * scores (merges derived from them as llama.cpp does, or the merges when the file has them); BOS/EOS and
 * add_bos_token. */
#include "tok_impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

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

static int load_tokens(mx_tokenizer **out, mx_tok_kind kind, const mx_gguf *g, mx_err *err) {
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
    int n = (int)toks->count;
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += toks->strs[i].len + 1;
    if (total > UINT32_MAX / 2) return mx_err_set(err, MX_ERR_FORMAT, "%s: token texts too large", g->path);
    mx_tokenizer *t = *out = mx_tok_new(kind, n, total);
    if (!t) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    for (int i = 0; i < n; i++) {
        int64_t ty = types ? mx_gguf_arr_i64(types, (uint64_t)i) : TT_NORMAL;
        if (mx_tok_set(t, i, toks->strs[i].ptr, toks->strs[i].len, ty >= 1 && ty <= 6 ? (int)ty : TT_NORMAL))
            return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    }
    return mx_tok_index(t, g->path, err);
}

static int load_merges(mx_tokenizer *t, const mx_gguf *g, mx_err *err) {
    const mx_gguf_kv *m;
    int rc = find_array(g, "tokenizer.ggml.merges", MX_GGUF_STRING, &m, err);
    if (rc) return rc;
    rc = mx_tok_merges_reserve(t, m->count, err);
    for (uint64_t r = 0; r < m->count && !rc; r++) {
        const mx_gguf_str *s = &m->strs[r];
        const char *sp = memchr(s->ptr, ' ', s->len);
        if (!sp || sp == s->ptr || sp + 1 == s->ptr + s->len)
            return mx_err_set(err, MX_ERR_FORMAT, "%s: merge %llu ('%.*s') is not 'left right'", g->path,
                              (unsigned long long)r, (int)(s->len > 64 ? 64 : s->len), s->ptr);
        rc = mx_tok_add_merge(t, (int)r, s->ptr, (size_t)(sp - s->ptr), sp + 1,
                              (size_t)(s->ptr + s->len - sp - 1), g->path, err);
    }
    return rc;
}

/* SentencePiece GGUFs (model "llama") carry scores, not merges: as llama.cpp does, any two tokens whose texts
 * join into a normal token merge into it, the higher the merged token's score the earlier. */
typedef struct {
    float score;
    int id;
} scored;

static int by_score(const void *a, const void *b) {
    const scored *x = a, *y = b;
    return x->score != y->score ? (x->score < y->score ? 1 : -1) : x->id - y->id;
}

static int derive_merges(mx_tokenizer *t, const mx_gguf *g, mx_err *err) {
    const mx_gguf_kv *sc;
    int rc = find_array(g, "tokenizer.ggml.scores", MX_GGUF_F32, &sc, err);
    if (rc) return rc;
    if (sc->count != (uint64_t)t->n_vocab)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %llu scores for %d tokens", g->path,
                          (unsigned long long)sc->count, t->n_vocab);
    scored *order = malloc(sizeof *order * (size_t)t->n_vocab);
    if (!order) return mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    size_t n_pairs = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        order[i] = (scored){(float)mx_gguf_arr_f64(sc, (uint64_t)i), i};
        n_pairs += t->type[i] == TT_NORMAL ? t->tok[i].len : 0;
    }
    qsort(order, (size_t)t->n_vocab, sizeof *order, by_score);
    rc = mx_tok_merges_reserve(t, n_pairs, err);
    for (int r = 0; r < t->n_vocab && !rc; r++) {
        int id = order[r].id;
        if (t->type[id] != TT_NORMAL) continue;
        const char *s = t->bytes + t->tok[id].off;
        size_t n = t->tok[id].len;
        for (size_t k = 1; k < n && !rc; k++) {
            if (((unsigned char)s[k] & 0xC0) == 0x80) continue; /* inside a character */
            int a = mx_tok_vocab_lookup(t, s, k), b = mx_tok_vocab_lookup(t, s + k, n - k);
            if (a < 0 || b < 0) continue;
            uint32_t slot = mx_tok_merge_slot(t, a, b);
            if (t->merges[slot].key) continue;
            t->merges[slot] = (merge_ent){((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1, r, id};
            t->n_merges++;
        }
    }
    free(order);
    return rc;
}

/* SentencePiece's pipeline as llama.cpp runs it: ' ' -> ▁, a ▁ before the text's start
 * (tokenizer.ggml.add_space_prefix, default true), byte fallback, the decoder's leading-space strip. */
static int spm_setup(mx_tokenizer *t, const mx_gguf *g, mx_err *err) {
    bool prefix = true;
    int rc = 0;
    if (mx_gguf_kv_find(g, "tokenizer.ggml.add_space_prefix"))
        rc = mx_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &prefix, err);
    t->pre[t->n_pre++] = (pre_step){.kind = PRE_METASPACE, .scheme = prefix ? PREPEND_FIRST : PREPEND_NEVER};
    t->byte_fallback = true;
    t->strip_lead_space = prefix;
    for (int i = 0; i < t->n_vocab && t->unk < 0; i++)
        if (t->type[i] == TT_UNKNOWN) t->unk = i;
    return rc;
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

/* The pre-tokenizer steps that tokenizer.ggml.pre names (t NULL: only whether it is known). */
static int set_pre(mx_tokenizer *t, const char *name) {
    static const struct {
        const char *name, *canon;
        mx_pretok_kind first;
        int second; /* a second split, or -1 */
    } names[] = {
        {"gpt2", "gpt2", MX_PRETOK_GPT2, -1},
        {"default", "gpt2", MX_PRETOK_GPT2, -1},
        {"gpt-2", "gpt2", MX_PRETOK_GPT2, -1},
        {"smollm", "smollm", MX_PRETOK_DIGITS, MX_PRETOK_GPT2},
        {"starcoder", "smollm", MX_PRETOK_DIGITS, MX_PRETOK_GPT2},
        {"llama3", "llama-bpe", MX_PRETOK_LLAMA3, -1},
        {"llama-bpe", "llama-bpe", MX_PRETOK_LLAMA3, -1},
        {"llama-v3", "llama-bpe", MX_PRETOK_LLAMA3, -1},
        {"qwen2", "qwen2", MX_PRETOK_QWEN2, -1},
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        if (strcmp(name, names[k].name) != 0) continue;
        if (!t) return 0;
        t->pre_name = names[k].canon;
        t->pre[t->n_pre++] = (pre_step){.kind = PRE_SPLIT, .split = names[k].first};
        if (names[k].second >= 0)
            t->pre[t->n_pre++] = (pre_step){.kind = PRE_SPLIT, .split = (mx_pretok_kind)names[k].second};
        t->ignore_merges = names[k].first == MX_PRETOK_LLAMA3;
        return 0;
    }
    return -1;
}

static int check_kind(const mx_gguf *g, char **pre, mx_tok_kind *kind, mx_err *err) {
    char *model = NULL;
    *pre = NULL;
    int rc = mx_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
    if (rc) return rc == MX_ERR_MISSING ? mx_err_set(err, rc, "%s: no tokenizer.ggml.model", g->path) : rc;
    *kind = strcmp(model, "llama") == 0 ? MX_TOK_SPM : MX_TOK_BYTE_LEVEL;
    if (strcmp(model, "gpt2") != 0 && strcmp(model, "llama") != 0)
        rc = mx_err_set(err, MX_ERR_UNSUPPORTED,
                        "%s: tokenizer.ggml.model '%s' is not supported (only 'gpt2', byte-level BPE, and "
                        "'llama', SentencePiece-style BPE)",
                        g->path, model);
    else if (*kind == MX_TOK_BYTE_LEVEL && mx_gguf_kv_find(g, "tokenizer.ggml.pre"))
        rc = mx_gguf_get_str(g, "tokenizer.ggml.pre", pre, err);
    free(model);
    return rc;
}

static int from_ggml_keys(const mx_gguf *g, mx_tokenizer **out, mx_err *err) {
    char *pre = NULL;
    mx_tokenizer *t = NULL;
    mx_tok_kind kind = MX_TOK_BYTE_LEVEL;
    int rc = check_kind(g, &pre, &kind, err);
    if (!rc && kind == MX_TOK_BYTE_LEVEL &&
        set_pre(NULL, pre ? pre : "gpt2") != 0) /* no key: GPT-2's regex */
        rc = mx_err_set(err, MX_ERR_UNSUPPORTED,
                        "%s: pre-tokenizer tokenizer.ggml.pre '%s' is not supported (supported: smollm, "
                        "starcoder, gpt2, default, llama-bpe, llama3, qwen2)",
                        g->path, pre);
    if (!rc) rc = load_tokens(&t, kind, g, err);
    if (!rc && kind == MX_TOK_BYTE_LEVEL) set_pre(t, pre ? pre : "gpt2");
    free(pre);
    if (!rc && kind == MX_TOK_SPM) rc = spm_setup(t, g, err);
    if (!rc) /* a SentencePiece GGUF written by mixatt convert has merges too: they are exact */
        rc = kind == MX_TOK_SPM && !mx_gguf_kv_find(g, "tokenizer.ggml.merges") ? derive_merges(t, g, err)
                                                                                : load_merges(t, g, err);
    if (!rc) rc = mx_tok_finish(t, err);
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

int mx_tokenizer_from_gguf(const mx_gguf *g, mx_tokenizer **out, mx_err *err) {
    *out = NULL;
    if (!mx_gguf_kv_find(g, MX_GGUF_HF_JSON_KEY)) return from_ggml_keys(g, out, err);
    char *json = NULL;
    int rc = mx_gguf_get_str(g, MX_GGUF_HF_JSON_KEY, &json, err);
    if (!rc) rc = mx_tokenizer_from_hf_json(json, strlen(json), g->path, out, err);
    free(json);
    if (rc) return rc;
    /* BOS/EOS and add_bos come from tokenizer_config/generation_config at conversion: the ggml keys */
    mx_tokenizer *t = *out;
    if (!rc) rc = read_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err);
    if (!rc) rc = read_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err);
    if (!rc && mx_gguf_kv_find(g, "tokenizer.ggml.add_bos_token"))
        rc = mx_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err);
    if (rc) mx_tokenizer_free(t), *out = NULL;
    return rc;
}
