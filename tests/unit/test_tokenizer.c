/* test_tokenizer.c: the tokenizer (src/tok/) against the Hugging Face reference in
 * fixtures/tokenizer_cases.json (scripts/fixtures_tokenizer.py) on the default model: token ids, round trips,
 * chat renders, special tokens, the pre-tokenizers' pieces, invalid UTF-8, and unsupported GGUF tokenizers.
 * Runs from tests/; the model must be at ../models/ (`make model`): a missing model fails the tests. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/file.h"
#include "../../src/io/gguf.h"
#include "../../src/tok/pretok.h"
#include "../../src/tok/tokenizer.h"

#define MODEL_PATH   "../models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define FIXTURE_PATH "fixtures/tokenizer_cases.json"

static mx_gguf *g_gguf;
static mx_tokenizer *g_tok;
static cJSON *g_fix;

static char g_setup_err[sizeof(mx_err){0}.msg +
                        64]; /* why the model or the fixture could not be loaded; checked by every test */

static void open_model(void) {
    mx_err err = {0};
    FILE *f = fopen(MODEL_PATH, "rb");
    if (!f) {
        snprintf(g_setup_err, sizeof g_setup_err,
                 "model not found: %s (cwd must be tests/): run `make model` to download it", MODEL_PATH);
        return;
    }
    fclose(f);
    if (mx_gguf_open(MODEL_PATH, &g_gguf, &err) || mx_tokenizer_from_gguf(g_gguf, &g_tok, &err))
        snprintf(g_setup_err, sizeof g_setup_err, "%s", err.msg);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += r;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static void load_all(void) {
    open_model();
    if (g_setup_err[0]) return;
    size_t len;
    char *text = read_all(FIXTURE_PATH, &len);
    if (text) g_fix = cJSON_ParseWithLength(text, len);
    free(text);
    if (!g_fix)
        snprintf(g_setup_err, sizeof g_setup_err, "cannot read %s: run scripts/fixtures_tokenizer.py",
                 FIXTURE_PATH);
}

static void free_all(void) {
    cJSON_Delete(g_fix);
    mx_tokenizer_free(g_tok);
    if (g_gguf) mx_gguf_close(g_gguf);
}

/* Every test of the suite starts with this: a missing model is a failure, not a skip. */
#define NEED_MODEL() cr_assert(g_setup_err[0] == '\0', "%s", g_setup_err)

TestSuite(tokenizer, .init = load_all, .fini = free_all);

/* The case's text bytes: from "hex" when present (texts with NUL), else the string. Caller frees. */
static char *case_text(const cJSON *c, size_t *len) {
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(c, "hex");
    if (cJSON_IsString(hex)) {
        size_t n = strlen(hex->valuestring) / 2;
        char *s = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            unsigned v;
            sscanf(hex->valuestring + 2 * i, "%2x", &v);
            s[i] = (char)v;
        }
        s[n] = '\0';
        *len = n;
        return s;
    }
    const char *t = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
    *len = strlen(t);
    return strdup(t);
}

static void encode(const char *s, size_t len, bool special, int **ids, int *n) {
    mx_err err = {0};
    cr_assert_eq(mx_tokenize(g_tok, s, len, special, ids, n, &err), 0, "%s", err.msg);
}

/* Compares ids with a JSON array; prints both on mismatch. */
static void expect_ids(const char *what, const char *text, const int *ids, int n, const cJSON *want) {
    int m = cJSON_GetArraySize(want);
    bool same = m == n;
    for (int i = 0; same && i < n; i++) same = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
    if (same) return;
    char got[2048] = "", exp[2048] = "";
    for (int i = 0, w = 0; i < n && w < 2000; i++)
        w += snprintf(got + w, sizeof got - (size_t)w, " %d", ids[i]);
    for (int i = 0, w = 0; i < m && w < 2000; i++)
        w += snprintf(exp + w, sizeof exp - (size_t)w, " %d", cJSON_GetArrayItem(want, i)->valueint);
    cr_assert_fail("%s of \"%s\": got [%s ] want [%s ]", what, text, got, exp);
}

Test(tokenizer, fixture_ids) {
    NEED_MODEL();
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(g_fix, "cases"), *c;
    cr_assert_geq(cJSON_GetArraySize(cases), 250);
    cJSON_ArrayForEach(c, cases) {
        size_t len;
        char *s = case_text(c, &len);
        int *ids, n;
        encode(s, len, true, &ids, &n);
        expect_ids("ids", s, ids, n, cJSON_GetObjectItemCaseSensitive(c, "ids"));
        free(ids);
        const cJSON *plain = cJSON_GetObjectItemCaseSensitive(c, "ids_no_special");
        if (plain) {
            encode(s, len, false, &ids, &n);
            expect_ids("ids without special tokens", s, ids, n, plain);
            free(ids);
        }
        free(s);
    }
}

/* decode(encode(s)) is s less the bytes that have no token in this vocabulary (0x04, 0xFF, ...). */
static void check_round_trip(const char *s, size_t len, bool special) {
    int *ids, n;
    encode(s, len, special, &ids, &n);
    char *d = mx_detokenize(g_tok, ids, n);
    cr_assert_not_null(d);
    char *want = malloc(len + 1);
    size_t w = 0;
    for (size_t i = 0; i < len; i++)
        if (mx_tokenizer_byte_token(g_tok, (uint8_t)s[i]) >= 0) want[w++] = s[i];
    want[w] = '\0';
    cr_assert(strlen(d) == w || memchr(want, 0, w), "round trip length %zu, want %zu", strlen(d), w);
    cr_assert(memcmp(d, want, w) == 0, "round trip of \"%s\" gave \"%s\"", s, d);
    free(want);
    free(d);
    free(ids);
}

Test(tokenizer, round_trip_fixture) {
    NEED_MODEL();
    const cJSON *c;
    int exact = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(g_fix, "cases")) {
        size_t len;
        char *s = case_text(c, &len);
        check_round_trip(s, len, true);
        check_round_trip(s, len, false);
        int *ids, n;
        encode(s, len, true, &ids, &n);
        char *d = mx_detokenize(g_tok, ids, n);
        exact += len == 0 || (strlen(d) == len && memcmp(d, s, len) == 0);
        free(d);
        free(ids);
        free(s);
    }
    /* all but the case of control characters without tokens, and the two texts with NUL (strlen) */
    cr_assert_geq(exact, cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(g_fix, "cases")) - 3);
}

Test(tokenizer, chat_renders) {
    NEED_MODEL();
    mx_err err = {0};
    mx_chat_template *ct;
    cr_assert_eq(mx_chat_template_from_gguf(g_gguf, &ct, &err), 0, "%s", err.msg);
    cr_assert_str_eq(mx_chat_end_of_turn(ct), "<|im_end|>");
    const cJSON *chat;
    cJSON_ArrayForEach(chat, cJSON_GetObjectItemCaseSensitive(g_fix, "chats")) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(chat, "messages"), *m;
        int n = cJSON_GetArraySize(msgs), i = 0;
        mx_chat_msg *cm = calloc((size_t)n + 1, sizeof *cm);
        cJSON_ArrayForEach(m, msgs) {
            cm[i].role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
            cm[i++].content = cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring;
        }
        bool gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(chat, "add_generation_prompt"));
        char *r = mx_chat_render(ct, cm, n, gen, &err);
        cr_assert(r, "%s", err.msg);
        const char *want = cJSON_GetObjectItemCaseSensitive(chat, "text")->valuestring;
        cr_assert_str_eq(r, want);
        int *ids, nid;
        encode(r, strlen(r), true, &ids, &nid);
        expect_ids("chat ids", r, ids, nid, cJSON_GetObjectItemCaseSensitive(chat, "ids"));
        free(ids);
        free(r);
        free(cm);
    }
    mx_chat_template_free(ct);
}

Test(tokenizer, special_tokens) {
    NEED_MODEL();
    cr_assert_eq(mx_tokenizer_vocab_size(g_tok), 49152);
    cr_assert_eq(mx_tokenizer_bos(g_tok), 1);
    cr_assert_eq(mx_tokenizer_eos(g_tok), 2);
    cr_assert(!mx_tokenizer_add_bos(g_tok));
    const cJSON *sp, *special = cJSON_GetObjectItemCaseSensitive(g_fix, "special");
    cr_assert_eq(cJSON_GetArraySize(special), 17);
    cJSON_ArrayForEach(sp, special) {
        int id = sp->valueint;
        cr_assert_eq(mx_tokenizer_find(g_tok, sp->string), id, "%s", sp->string);
        cr_assert(mx_tokenizer_is_special(g_tok, id));
        size_t len;
        const char *b = mx_token_bytes(g_tok, id, &len);
        cr_assert(len == strlen(sp->string) && memcmp(b, sp->string, len) == 0);
        int *ids, n;
        encode(sp->string, strlen(sp->string), true, &ids, &n);
        cr_assert(n == 1 && ids[0] == id, "%s parsed as %d tokens", sp->string, n);
        free(ids);
        encode(sp->string, strlen(sp->string), false, &ids, &n);
        cr_assert_gt(n, 1);
        for (int i = 0; i < n; i++) cr_assert(!mx_tokenizer_is_special(g_tok, ids[i]));
        free(ids);
    }
    cr_assert(!mx_tokenizer_is_special(g_tok, 17));
    cr_assert(!mx_tokenizer_is_special(g_tok, -1));
    cr_assert(!mx_tokenizer_is_special(g_tok, 49152));
    cr_assert_eq(mx_tokenizer_find(g_tok, "<|not_a_token|>"), -1);
    cr_assert_eq(mx_tokenizer_find(g_tok, " the"), 260, "raw-byte lookup of ' the' (byte-level 'Ġthe')");
    size_t len;
    cr_assert_null(mx_token_bytes(g_tok, 49152, &len));
    cr_assert_eq(len, 0);
    int bad[] = {-5, 2, 99999};
    char *d = mx_detokenize(g_tok, bad, 3);
    cr_assert_str_eq(d, "<|im_end|>");
    free(d);
}

Test(tokenizer, empty_input) {
    NEED_MODEL();
    int *ids, n;
    encode("", 0, true, &ids, &n);
    cr_assert_eq(n, 0);
    cr_assert_not_null(ids);
    free(ids);
    char *d = mx_detokenize(g_tok, NULL, 0);
    cr_assert_str_eq(d, "");
    free(d);
}

Test(tokenizer, invalid_utf8) {
    NEED_MODEL();
    static const char *bad[] = {
        "\xff\xfe",
        "abc\x80"
        "def",
        "\xe4\xb8",
        "\xe4\xb8 x",
        "\xc0\xaf",
        "\xed\xa0\x80",
        "\xf4\x90\x80\x80",
        "1\xe2\x82"
        "2",
        " \xf0\x9f\x98",
        "\xc3\xa9\xc3",
        "it\xff's",
        "<|im_end|\xff>",
        "\x04\x06\x13",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        check_round_trip(bad[i], strlen(bad[i]), true);
        check_round_trip(bad[i], strlen(bad[i]), false);
    }
    int *ids, n;
    encode("\x04", 1, true, &ids, &n); /* no token for 0x04: dropped, as tokenizers does (unk_token null) */
    cr_assert_eq(n, 0);
    free(ids);
    uint64_t x = 0x9E3779B97F4A7C15ULL; /* random bytes, biased towards UTF-8 lead/continuation bytes */
    for (int round = 0; round < 200; round++) {
        char buf[257];
        size_t len = (size_t)(round + 1);
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            unsigned v = (unsigned)(x >> 32);
            buf[i] = (char)(v % 3 == 0   ? 0x80 | (v >> 8 & 0x7F)
                            : v % 3 == 1 ? (v >> 8)
                                         : ' ' + (v >> 8) % 96);
        }
        buf[len] = '\0';
        check_round_trip(buf, len, round % 2 == 0);
    }
}

/* Collects the pieces of mx_pretok_split. */
typedef struct {
    char pieces[512][256];
    int n;
} piece_list;

static int collect(void *ctx, const char *p, size_t len) {
    piece_list *pl = ctx;
    if (pl->n == 512 || len >= 256) return 1;
    memcpy(pl->pieces[pl->n], p, len);
    pl->pieces[pl->n++][len] = '\0';
    return 0;
}

static void expect_pieces(mx_pretok_kind kind, const char *name, const char *text, const cJSON *want) {
    static piece_list pl;
    pl.n = 0;
    cr_assert_eq(mx_pretok_split(kind, text, strlen(text), collect, &pl), 0);
    bool same = pl.n == cJSON_GetArraySize(want);
    for (int i = 0; same && i < pl.n; i++)
        same = strcmp(pl.pieces[i], cJSON_GetArrayItem(want, i)->valuestring) == 0;
    if (same) return;
    char got[4096] = "";
    for (int i = 0, w = 0; i < pl.n && w < 4000; i++)
        w += snprintf(got + w, sizeof got - (size_t)w, "[%s]", pl.pieces[i]);
    char exp[4096] = "", *p = cJSON_PrintUnformatted(want);
    snprintf(exp, sizeof exp, "%s", p ? p : "?");
    free(p);
    cr_assert_fail("%s pieces of \"%s\": got %s want %s", name, text, got, exp);
}

Test(tokenizer, pretokenizer_pieces) {
    NEED_MODEL();
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(g_fix, "pretok")) {
        const char *text = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        expect_pieces(MX_PRETOK_GPT2, "gpt2", text, cJSON_GetObjectItemCaseSensitive(c, "gpt2"));
        expect_pieces(MX_PRETOK_LLAMA3, "llama3", text, cJSON_GetObjectItemCaseSensitive(c, "llama3"));
    }
    cr_assert_eq(mx_pretok_from_regex("\\w+|[^\\w\\s]+"), -1); /* an unknown Split regex */
    /* and the known ones, as the fixture tokenizers (scripts/fixtures_hf_tokenizers.py) spell them */
    static const struct {
        const char *dir;
        mx_pretok_kind kind;
    } known[] = {{"llama3", MX_PRETOK_LLAMA3}, {"qwen2", MX_PRETOK_QWEN2}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        char path[256];
        mx_err err = {0};
        snprintf(path, sizeof path, "fixtures/hf_tok/%s/tokenizer.json", known[i].dir);
        char *text = mx_file_read(path, NULL, &err);
        cr_assert(text, "%s", err.msg);
        cJSON *j = cJSON_Parse(text);
        const cJSON *split =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(
                                   cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"), "pretokenizers"),
                               0);
        const cJSON *re =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex");
        cr_assert(cJSON_IsString(re), "%s: no Split regex", path);
        cr_assert_eq(mx_pretok_from_regex(re->valuestring), (int)known[i].kind, "%s", path);
        cJSON_Delete(j);
        free(text);
    }
}

/* ---- unsupported tokenizers, through small GGUFs built in memory ---- */

typedef struct {
    unsigned char buf[4096];
    size_t n;
} gguf_buf;

static void put(gguf_buf *b, const void *p, size_t n) {
    cr_assert_leq(b->n + n, sizeof b->buf);
    memcpy(b->buf + b->n, p, n);
    b->n += n;
}
static void put_u32(gguf_buf *b, uint32_t v) {
    put(b, &v, 4);
}
static void put_u64(gguf_buf *b, uint64_t v) {
    put(b, &v, 8);
}
static void put_str(gguf_buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_kv_str(gguf_buf *b, const char *key, const char *val) {
    put_str(b, key);
    put_u32(b, MX_GGUF_STRING);
    put_str(b, val);
}

/* A GGUF v3 with no tensors and the given string key/value pairs (keys[i], vals[i]). */
static mx_gguf *tiny_gguf(gguf_buf *b, const char **keys, const char **vals, int n) {
    b->n = 0;
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, 0);
    put_u64(b, (uint64_t)n);
    for (int i = 0; i < n; i++) put_kv_str(b, keys[i], vals[i]);
    while (b->n % 32) put(b, "", 1);
    mx_gguf *g;
    mx_err err = {0};
    cr_assert_eq(mx_gguf_open_buffer(b->buf, b->n, "tiny.gguf", &g, &err), 0, "%s", err.msg);
    return g;
}

Test(tokenizer_meta, unsupported_model_and_pre) {
    static gguf_buf b;
    mx_err err = {0};
    mx_tokenizer *t = (mx_tokenizer *)1;
    const char *k1[] = {"tokenizer.ggml.model"}, *v1[] = {"bert"};
    mx_gguf *g = tiny_gguf(&b, k1, v1, 1);
    cr_assert_eq(mx_tokenizer_from_gguf(g, &t, &err), MX_ERR_UNSUPPORTED);
    cr_assert_null(t);
    cr_assert(strstr(err.msg, "'bert'") && strstr(err.msg, "tiny.gguf"), "%s", err.msg);
    mx_gguf_close(g);
    const char *k2[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre"}, *v2[] = {"gpt2", "deepseek-llm"};
    g = tiny_gguf(&b, k2, v2, 2);
    cr_assert_eq(mx_tokenizer_from_gguf(g, &t, &err), MX_ERR_UNSUPPORTED);
    cr_assert(strstr(err.msg, "'deepseek-llm'"), "%s", err.msg);
    mx_gguf_close(g);
    const char *v3[] = {"gpt2", "smollm"};
    g = tiny_gguf(&b, k2, v3, 2);
    cr_assert_eq(mx_tokenizer_from_gguf(g, &t, &err), MX_ERR_MISSING, "no tokens: %s", err.msg);
    mx_gguf_close(g);
}

Test(tokenizer_meta, chat_templates) {
    static gguf_buf b;
    mx_err err = {0};
    mx_chat_template *ct;
    const char *k[] = {"tokenizer.chat_template"};
    /* a construct outside the Jinja subset is refused by name and line */
    const char *v1[] = {
        "{% for m in messages %}{{ m['content'] }}{% endfor %}\n{% macro f() %}x{% endmacro %}"};
    mx_gguf *g = tiny_gguf(&b, k, v1, 1);
    cr_assert_eq(mx_chat_template_from_gguf(g, &ct, &err), MX_ERR_UNSUPPORTED);
    cr_assert(strstr(err.msg, "'macro'") && strstr(err.msg, "line 2") && strstr(err.msg, "tiny.gguf"), "%s",
              err.msg);
    mx_gguf_close(g);
    /* raise_exception's message comes back from the render */
    const char *v2[] = {
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('users first') }}{% endif %}ok"};
    g = tiny_gguf(&b, k, v2, 1);
    cr_assert_eq(mx_chat_template_from_gguf(g, &ct, &err), 0, "%s", err.msg);
    mx_chat_msg m = {"assistant", "hi"};
    char *r = mx_chat_render(ct, &m, 1, true, &err);
    cr_assert_null(r);
    cr_assert(strstr(err.msg, "raise_exception: users first"), "%s", err.msg);
    mx_chat_template_free(ct);
    mx_gguf_close(g);
    g = tiny_gguf(&b, k, v2, 0);
    cr_assert_eq(mx_chat_template_from_gguf(g, &ct, &err), MX_ERR_MISSING);
    mx_gguf_close(g);
}
