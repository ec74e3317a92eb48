/* tok_hf.c: a tokenizer from a Hugging Face tokenizer.json (see tokenizer.h). Supported, and everything else
 * refused by name:
 *   model          BPE (vocab, merges as "a b" or ["a", "b"], byte_fallback, fuse_unk, unk_token,
 *                  ignore_merges); no dropout, continuing_subword_prefix or end_of_word_suffix
 *   normalizer     null, Sequence, NFC, NFKC, NFD, NFKD, Lowercase, Prepend, Replace (string pattern)
 *   pre_tokenizer  null, Sequence, ByteLevel (add_prefix_space, use_regex), Split (the regexes of GPT-2,
 *                  Llama 3 and Qwen 2, behavior Isolated), Digits, Metaspace
 *   added_tokens   special ones are control tokens (matched when special tokens are parsed), the others are
 *                  always matched; lstrip and rstrip; not single_word
 *   post_processor TemplateProcessing (a leading special token is the BOS, a trailing one the EOS),
 * ByteLevel, Sequence decoder        only read for SentencePiece's leading-space strip (Strip, Metaspace) A
 * vocabulary with a ByteLevel pre-tokenizer is byte-level BPE; one without is SentencePiece style. */
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *path;
    mx_err *err;
    mx_tokenizer *t;
} hf_ctx;

static const char *type_of(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : "";
}

static bool flag(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int unsupported(hf_ctx *c, const char *what, const char *name) {
    return mx_err_set(c->err, MX_ERR_UNSUPPORTED, "%s: %s '%s' is not supported", c->path, what, name);
}

/* ---- the pipeline ---- */

static int add_norm(hf_ctx *c, const cJSON *n) {
    const char *ty = type_of(n);
    mx_tokenizer *t = c->t;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) {
            int rc = add_norm(c, e);
            if (rc) return rc;
        }
        return 0;
    }
    if (t->n_norm == MAX_STEPS) return unsupported(c, "normalizer sequence longer than", "8");
    norm_step *s = &t->norm[t->n_norm];
    *s = (norm_step){0};
    if (!strcmp(ty, "NFC"))
        s->kind = NORM_NFC;
    else if (!strcmp(ty, "NFKC"))
        s->kind = NORM_NFKC;
    else if (!strcmp(ty, "NFD"))
        s->kind = NORM_NFD;
    else if (!strcmp(ty, "NFKD"))
        s->kind = NORM_NFKD;
    else if (!strcmp(ty, "Lowercase"))
        s->kind = NORM_LOWERCASE;
    else if (!strcmp(ty, "Prepend") && str(n, "prepend")) {
        s->kind = NORM_PREPEND;
        if (!(s->a = strdup(str(n, "prepend")))) return MX_ERR_NOMEM;
    } else if (!strcmp(ty, "Replace")) {
        const char *from = str(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "String"),
                   *to = str(n, "content");
        if (!from || !to) return unsupported(c, "normalizer Replace with a pattern that is", "not a string");
        s->kind = NORM_REPLACE;
        if (!(s->a = strdup(from)) || !(s->b = strdup(to))) return free(s->a), MX_ERR_NOMEM;
    } else {
        return unsupported(c, "normalizer", ty);
    }
    t->n_norm++;
    return 0;
}

static int add_pre(hf_ctx *c, const cJSON *p) {
    const char *ty = type_of(p);
    mx_tokenizer *t = c->t;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            int rc = add_pre(c, e);
            if (rc) return rc;
        }
        return 0;
    }
    if (t->n_pre == MAX_STEPS) return unsupported(c, "pre-tokenizer sequence longer than", "8");
    pre_step s = {0};
    if (!strcmp(ty, "ByteLevel")) {
        s.kind = PRE_BYTE_LEVEL;
        s.add_prefix_space = flag(p, "add_prefix_space", false);
        s.use_regex = flag(p, "use_regex", true);
    } else if (!strcmp(ty, "Digits")) {
        s.kind = PRE_SPLIT;
        s.split = flag(p, "individual_digits", false) ? MX_PRETOK_DIGITS : MX_PRETOK_DIGIT_RUNS;
    } else if (!strcmp(ty, "Split")) {
        const char *re = str(cJSON_GetObjectItemCaseSensitive(p, "pattern"), "Regex");
        const char *behavior = str(p, "behavior");
        int kind = re ? mx_pretok_from_regex(re) : -1;
        if (!re) return unsupported(c, "pre-tokenizer Split with a pattern that is", "not a regex");
        if (kind < 0)
            return mx_err_set(
                c->err, MX_ERR_UNSUPPORTED,
                "%s: pre-tokenizer Split regex '%.200s' is not supported (supported: the regexes "
                "of GPT-2, Llama 3 and Qwen 2)",
                c->path, re);
        if (!behavior || strcmp(behavior, "Isolated") != 0 || flag(p, "invert", false))
            return unsupported(c, "pre-tokenizer Split behavior", behavior ? behavior : "(none)");
        s.kind = PRE_SPLIT;
        s.split = (mx_pretok_kind)kind;
    } else if (!strcmp(ty, "Metaspace")) {
        const char *rep = str(p, "replacement"), *scheme = str(p, "prepend_scheme");
        if (!rep || strcmp(rep, "\xe2\x96\x81") != 0)
            return unsupported(c, "Metaspace replacement", rep ? rep : "(none)");
        s.kind = PRE_METASPACE;
        s.split_ws = flag(p, "split", true);
        if (scheme)
            s.scheme = !strcmp(scheme, "first")   ? PREPEND_FIRST
                       : !strcmp(scheme, "never") ? PREPEND_NEVER
                                                  : PREPEND_ALWAYS;
        else /* before prepend_scheme: add_prefix_space */
            s.scheme = flag(p, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    } else {
        return unsupported(c, "pre-tokenizer", ty);
    }
    t->pre[t->n_pre++] = s;
    return 0;
}

/* True when the pre-tokenizer (any step) is ByteLevel: then the vocabulary is byte-level. */
static bool has_byte_level(const cJSON *p) {
    if (!p) return false;
    if (!strcmp(type_of(p), "ByteLevel")) return true;
    const cJSON *e;
    cJSON_ArrayForEach(
        e, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) if (has_byte_level(e)) return true;
    return false;
}

/* The tokenizer.ggml.pre name of the steps, for GGUF readers that go by name (llama.cpp); NULL if none. */
static const char *pre_name(const mx_tokenizer *t) {
    const pre_step *p = t->pre;
    bool bl_last =
        t->n_pre >= 1 && p[t->n_pre - 1].kind == PRE_BYTE_LEVEL && !p[t->n_pre - 1].add_prefix_space;
    if (t->n_pre == 1 && bl_last && p[0].use_regex) return "gpt2";
    if (t->n_pre == 2 && bl_last && p[1].use_regex && p[0].kind == PRE_SPLIT &&
        p[0].split == MX_PRETOK_DIGITS)
        return "smollm";
    if (t->n_pre == 2 && bl_last && !p[1].use_regex && p[0].kind == PRE_SPLIT)
        return p[0].split == MX_PRETOK_LLAMA3 ? "llama-bpe" : p[0].split == MX_PRETOK_QWEN2 ? "qwen2" : NULL;
    return NULL;
}

static bool decoder_strips(const cJSON *d) {
    if (!d) return false;
    const char *ty = type_of(d);
    if (!strcmp(ty, "Strip")) {
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        return cJSON_IsNumber(start) && start->valueint >= 1;
    }
    if (!strcmp(ty, "Metaspace")) {
        const char *scheme = str(d, "prepend_scheme");
        return scheme ? strcmp(scheme, "never") != 0 : flag(d, "add_prefix_space", true);
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d, "decoders")) if (decoder_strips(e)) return true;
    return false;
}

/* TemplateProcessing's "single": a special token before the sequence is the BOS, one after it the EOS. */
static void post_processor(hf_ctx *c, const cJSON *p) {
    if (!p) return;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "processors")) post_processor(c, e);
    if (strcmp(type_of(p), "TemplateProcessing") != 0) return;
    bool seen_seq = false;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "single")) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) {
            seen_seq = true;
            continue;
        }
        const char *id = str(sp, "id");
        int tok = id ? mx_tokenizer_find(c->t, id) : -1;
        if (tok < 0) continue;
        if (!seen_seq)
            c->t->bos = tok, c->t->add_bos = true;
        else
            c->t->eos = tok, c->t->add_eos = true;
    }
}

/* ---- the vocabulary ---- */

static int vocab_size(hf_ctx *c, const cJSON *vocab, const cJSON *added, size_t *text_bytes) {
    int n = 0;
    size_t total = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= INT32_MAX / 2)
            return mx_err_set(c->err, MX_ERR_FORMAT, "%s: model.vocab['%.64s'] is not a token id", c->path,
                              e->string);
        if (e->valueint >= n) n = e->valueint + 1;
        total += strlen(e->string) + 1;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *content = str(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= INT32_MAX / 2 || !content)
            return mx_err_set(c->err, MX_ERR_FORMAT, "%s: an added token without an id or content", c->path);
        if (id->valueint >= n) n = id->valueint + 1;
        total += strlen(content) + 1;
    }
    if (n == 0) return mx_err_set(c->err, MX_ERR_FORMAT, "%s: the vocabulary is empty", c->path);
    *text_bytes = total;
    return n;
}

static int load_vocab(hf_ctx *c, const cJSON *model, const cJSON *added, mx_tok_kind kind) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return mx_err_set(c->err, MX_ERR_FORMAT, "%s: no model.vocab object", c->path);
    size_t total = 0;
    int n = vocab_size(c, vocab, added, &total);
    if (n <= 0) return c->err->code;
    mx_tokenizer *t = c->t = mx_tok_new(kind, n, total);
    if (!t) return mx_err_set(c->err, MX_ERR_NOMEM, "tokenizer: no memory");
    const char *unk = str(model, "unk_token");
    char *seen = calloc((size_t)n, 1);
    if (!seen) return mx_err_set(c->err, MX_ERR_NOMEM, "tokenizer: no memory");
    const cJSON *e;
    int rc = 0;
    cJSON_ArrayForEach(e, added) { /* first: an added token's id takes its content and type */
        int id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        const char *content = str(e, "content");
        if (flag(e, "single_word", false)) {
            rc = unsupported(c, "added token with single_word", content);
            break;
        }
        if (seen[id]) continue;
        seen[id] = 1;
        if ((rc = mx_tok_set(t, id, content, strlen(content),
                             flag(e, "special", false) ? TT_CONTROL : TT_USER)))
            break;
        t->strip[id] = (uint8_t)((flag(e, "lstrip", false) ? WHOLE_LSTRIP : 0) |
                                 (flag(e, "rstrip", false) ? WHOLE_RSTRIP : 0));
    }
    cJSON_ArrayForEach(e, vocab) {
        if (rc) break;
        int id = e->valueint;
        if (seen[id]) continue;
        seen[id] = 1;
        rc = mx_tok_set(t, id, e->string, strlen(e->string),
                        unk && !strcmp(e->string, unk) ? TT_UNKNOWN : TT_NORMAL);
    }
    free(seen);
    if (rc) return rc == MX_ERR_NOMEM ? mx_err_set(c->err, rc, "tokenizer: no memory") : rc;
    if ((rc = mx_tok_index(t, c->path, c->err))) return rc;
    if (unk) t->unk = mx_tokenizer_find(t, unk);
    return 0;
}

static int load_merges(hf_ctx *c, const cJSON *model) {
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges"), *e;
    int n = cJSON_GetArraySize(merges), rank = 0, rc = mx_tok_merges_reserve(c->t, (size_t)n, c->err);
    cJSON_ArrayForEach(e, merges) {
        if (rc) break;
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (cJSON_IsString(e)) { /* "left right" */
            const char *sp = strchr(e->valuestring, ' ');
            if (sp) a = e->valuestring, alen = (size_t)(sp - a), b = sp + 1, blen = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            a = e->child->valuestring, alen = strlen(a), b = e->child->next->valuestring, blen = strlen(b);
        }
        if (!a || !alen || !blen)
            return mx_err_set(c->err, MX_ERR_FORMAT, "%s: merge %d is not 'left right' or [left, right]",
                              c->path, rank);
        rc = mx_tok_add_merge(c->t, rank++, a, alen, b, blen, c->path, c->err);
    }
    return rc;
}

static int check_model(hf_ctx *c, const cJSON *model) {
    const char *ty = type_of(model);
    if (!cJSON_IsObject(model)) return mx_err_set(c->err, MX_ERR_FORMAT, "%s: no 'model' object", c->path);
    if (ty[0] && strcmp(ty, "BPE") != 0)
        return mx_err_set(c->err, MX_ERR_UNSUPPORTED, "%s: tokenizer model '%s' is not supported (only BPE)",
                          c->path, ty);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) return unsupported(c, "BPE with", "dropout");
    const char *prefix = str(model, "continuing_subword_prefix"), *suffix = str(model, "end_of_word_suffix");
    if (prefix && prefix[0]) return unsupported(c, "BPE continuing_subword_prefix", prefix);
    if (suffix && suffix[0]) return unsupported(c, "BPE end_of_word_suffix", suffix);
    return 0;
}

int mx_tokenizer_from_hf_json(const char *json, size_t len, const char *path, mx_tokenizer **out,
                              mx_err *err) {
    *out = NULL;
    hf_ctx c = {path, err, NULL};
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return mx_err_set(err, MX_ERR_FORMAT, "%s: not valid JSON", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    int rc = check_model(&c, model);
    if (!rc) rc = load_vocab(&c, model, added, has_byte_level(pre) ? MX_TOK_BYTE_LEVEL : MX_TOK_SPM);
    if (!rc) rc = load_merges(&c, model);
    if (!rc && norm && !cJSON_IsNull(norm)) rc = add_norm(&c, norm);
    if (!rc && pre && !cJSON_IsNull(pre)) rc = add_pre(&c, pre);
    if (rc == MX_ERR_NOMEM) mx_err_set(err, rc, "tokenizer: no memory");
    if (!rc) rc = mx_tok_finish(c.t, err);
    if (!rc) {
        mx_tokenizer *t = c.t;
        t->ignore_merges = flag(model, "ignore_merges", false);
        t->byte_fallback = flag(model, "byte_fallback", false);
        t->fuse_unk = flag(model, "fuse_unk", false);
        t->strip_lead_space =
            t->kind == MX_TOK_SPM && decoder_strips(cJSON_GetObjectItemCaseSensitive(root, "decoder"));
        t->pre_name = pre_name(t);
        post_processor(&c, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
        if (!(t->hf_json = strndup(json, len))) rc = mx_err_set(err, MX_ERR_NOMEM, "tokenizer: no memory");
    }
    cJSON_Delete(root);
    if (rc) {
        mx_tokenizer_free(c.t);
        return rc;
    }
    *out = c.t;
    return 0;
}
