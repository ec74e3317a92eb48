/* test_hf_tokenizer.c: tokenizer.json, tokenizer_config.json, chat templates and the Jinja subset (src/tok/)
 * against the Hugging Face references in fixtures/hf_tok/ (scripts/fixtures_hf_tokenizers.py): for each
 * tokenizer family (GPT-2, Llama 3, Qwen 2, SmolLM byte-level BPE; Llama 2 and Mistral SentencePiece-style
 * BPE with byte fallback) the ids of `tokenizers` with and without BOS and with special tokens not parsed,
 * its decode, transformers' apply_chat_template renders (and their ids), the template's end of turn; jinja2's
 * renders of small templates; and the refusal of constructs outside the subset, by name. Also: the written
 * GGUF tokenizer (tokenizer.huggingface.json) reads back to the same ids, and so do llama.cpp's SentencePiece
 * keys alone (model "llama": tokens, types, scores, with or without merges) for Mistral's configuration,
 * whose pipeline llama.cpp's keys describe fully. Runs from tests/. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/io/gguf.h"
#include "../../src/io/gguf_write.h"
#include "../../src/tok/jinja.h"
#include "../../src/tok/tokenizer.h"

#define FIX "fixtures/hf_tok"

static const char *const families[] = {"gpt2",   "llama3", "llama31", "qwen2",
                                       "smollm", "llama2", "mistral", "tiny"};
enum { N_FAMILIES = sizeof families / sizeof families[0] };

static cJSON *read_json(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s (cwd must be tests/; regenerate with scripts/fixtures_hf_tokenizers.py)",
              path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    cJSON *j = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    cr_assert(j, "%s: not valid JSON", path);
    return j;
}

static int *json_ids(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int *ids = malloc(sizeof(int) * (size_t)(*n + 1)), k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) ids[k++] = e->valueint;
    return ids;
}

static void expect_ids(const char *fam, const char *what, const char *text, const int *got, int n_got,
                       const cJSON *want) {
    int n;
    int *ids = json_ids(want, &n);
    bool same = n == n_got;
    for (int i = 0; same && i < n; i++) same = ids[i] == got[i];
    if (!same) {
        char g[512] = "", w[512] = "";
        for (int i = 0; i < n_got && strlen(g) < 480; i++)
            snprintf(g + strlen(g), sizeof g - strlen(g), "%d ", got[i]);
        for (int i = 0; i < n && strlen(w) < 480; i++)
            snprintf(w + strlen(w), sizeof w - strlen(w), "%d ", ids[i]);
        cr_assert_fail("%s %s: %s\n  text: '%s'\n  mixatt:     %s\n  tokenizers: %s", fam, what, "ids differ",
                       text, g, w);
    }
    free(ids);
}

static void load_family(const char *fam, mx_tokenizer **tok, mx_chat_template **chat, cJSON **ref) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, FIX "/%s", fam);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    mx_err err = {0};
    cr_assert_eq(mx_hf_load_tokenizer(dir, tok, chat, &err), 0, "%s: %s", fam, err.msg);
    cr_assert(*tok, "%s: no tokenizer loaded", fam);
    *ref = read_json(path);
}

/* Every case of one tokenizer: ids (special tokens parsed, no BOS), with BOS when the tokenizer adds one,
 * with special tokens as plain text, and the decode of the ids. */
static void check_cases(const char *fam, const mx_tokenizer *t, const cJSON *ref) {
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        int *ids, n;
        mx_err err = {0};
        cr_assert_eq(mx_tokenize(t, text, strlen(text), true, &ids, &n, &err), 0, "%s", err.msg);
        expect_ids(fam, "ids", text, ids, n, cJSON_GetObjectItem(c, "ids"));
        char *dec = mx_detokenize(t, ids, n);
        cr_assert_str_eq(dec, cJSON_GetObjectItem(c, "decoded")->valuestring, "%s decode of '%s'", fam, text);
        free(dec);
        if (mx_tokenizer_add_bos(t)) { /* what callers do: BOS first */
            int *with = malloc(sizeof(int) * (size_t)(n + 1));
            with[0] = mx_tokenizer_bos(t);
            memcpy(with + 1, ids, sizeof(int) * (size_t)n);
            expect_ids(fam, "ids with BOS", text, with, n + 1, cJSON_GetObjectItem(c, "ids_bos"));
            free(with);
        } else {
            expect_ids(fam, "ids with special tokens added", text, ids, n, cJSON_GetObjectItem(c, "ids_bos"));
        }
        free(ids);
        cr_assert_eq(mx_tokenize(t, text, strlen(text), false, &ids, &n, &err), 0, "%s", err.msg);
        expect_ids(fam, "ids, special tokens not parsed", text, ids, n,
                   cJSON_GetObjectItem(c, "ids_no_special"));
        free(ids);
        n_cases++;
    }
    cr_assert_gt(n_cases, 150, "%s: only %d cases", fam, n_cases);
}

Test(hf_tokenizer, ids_match_tokenizers) {
    for (int f = 0; f < N_FAMILIES; f++) {
        mx_tokenizer *t;
        mx_chat_template *ct;
        cJSON *ref;
        load_family(families[f], &t, &ct, &ref);
        cr_assert_eq(mx_tokenizer_vocab_size(t), cJSON_GetObjectItem(ref, "vocab_size")->valueint, "%s",
                     families[f]);
        check_cases(families[f], t, ref);
        mx_chat_template_free(ct);
        mx_tokenizer_free(t);
        cJSON_Delete(ref);
    }
}

static mx_chat_msg *to_msgs(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    mx_chat_msg *m = calloc((size_t)*n + 1, sizeof *m);
    int k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        m[k].role = cJSON_GetObjectItem(e, "role")->valuestring;
        m[k].content = cJSON_GetObjectItem(e, "content")->valuestring;
        k++;
    }
    return m;
}

Test(hf_tokenizer, chat_templates_match_transformers) {
    int n_chats = 0;
    for (int f = 0; f < N_FAMILIES; f++) {
        mx_tokenizer *t;
        mx_chat_template *ct;
        cJSON *ref;
        load_family(families[f], &t, &ct, &ref);
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "chats")) {
            cr_assert(ct, "%s: no chat template loaded", families[f]);
            int n;
            mx_chat_msg *msgs = to_msgs(cJSON_GetObjectItem(c, "messages"), &n);
            bool gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
            mx_err err = {0};
            char *r = mx_chat_render(ct, msgs, n, gen, &err);
            const cJSON *want_err = cJSON_GetObjectItem(c, "error");
            if (want_err) {
                cr_assert_null(r, "%s: the template should have raised '%s'", families[f],
                               want_err->valuestring);
                cr_assert(strstr(err.msg, want_err->valuestring), "%s: error '%s', wanted '%s'", families[f],
                          err.msg, want_err->valuestring);
            } else {
                cr_assert(r, "%s: %s", families[f], err.msg);
                cr_assert_str_eq(r, cJSON_GetObjectItem(c, "text")->valuestring, "%s render", families[f]);
                int *ids, n_ids;
                cr_assert_eq(mx_tokenize(t, r, strlen(r), true, &ids, &n_ids, &err), 0);
                expect_ids(families[f], "chat ids", r, ids, n_ids, cJSON_GetObjectItem(c, "ids"));
                free(ids);
            }
            free(r);
            free(msgs);
            n_chats++;
        }
        if (ct) { /* the stop text is a token of the vocabulary */
            const char *eot = mx_chat_end_of_turn(ct);
            cr_assert_geq(mx_tokenizer_find(t, eot), 0, "%s: end of turn '%s' is not a token", families[f],
                          eot);
        }
        mx_chat_template_free(ct);
        mx_tokenizer_free(t);
        cJSON_Delete(ref);
    }
    cr_assert_geq(n_chats, 30);
}

Test(hf_tokenizer, end_of_turn_per_family) {
    static const struct {
        const char *fam, *eot;
    } want[] = {{"llama3", "<|eot_id|>"}, {"llama31", "<|eot_id|>"}, {"qwen2", "<|im_end|>"},
                {"smollm", "<|im_end|>"}, {"mistral", "</s>"},       {"llama2", "</s>"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        mx_tokenizer *t;
        mx_chat_template *ct;
        cJSON *ref;
        load_family(want[i].fam, &t, &ct, &ref);
        cr_assert(ct);
        cr_assert_str_eq(mx_chat_end_of_turn(ct), want[i].eot, "%s", want[i].fam);
        mx_chat_template_free(ct);
        mx_tokenizer_free(t);
        cJSON_Delete(ref);
    }
}

Test(hf_tokenizer, jinja_matches_jinja2) {
    cJSON *fix = read_json(FIX "/jinja_cases.json");
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(fix, "cases")) {
        const char *src = cJSON_GetObjectItem(c, "template")->valuestring;
        mx_jinja *j;
        mx_err err = {0};
        cr_assert_eq(mx_jinja_parse(src, "case", &j, &err), 0, "%s\n  template: %s", err.msg, src);
        char *r = mx_jinja_render(j, cJSON_GetObjectItem(c, "vars"), &err);
        cr_assert(r, "%s\n  template: %s", err.msg, src);
        cr_expect_str_eq(r, cJSON_GetObjectItem(c, "text")->valuestring, "template: %s", src);
        free(r);
        mx_jinja_free(j);
        n++;
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(fix, "refused")) {
        const char *src = cJSON_GetObjectItem(c, "template")->valuestring;
        const char *want = cJSON_GetObjectItem(c, "error")->valuestring;
        mx_jinja *j = NULL;
        mx_err err = {0};
        cr_assert_neq(mx_jinja_parse(src, "case", &j, &err), 0, "accepted: %s", src);
        cr_assert_null(j);
        cr_assert(strstr(err.msg, want), "error for %s: '%s' does not name '%s'", src, err.msg, want);
        cr_assert(strstr(err.msg, "line 1"), "error without its line: %s", err.msg);
    }
    cr_assert_gt(n, 20);
    cJSON_Delete(fix);
}

/* The GGUF written for a tokenizer (convert's path) reads back to a tokenizer with the same ids. */
Test(hf_tokenizer, gguf_round_trip) {
    for (int f = 0; f < N_FAMILIES; f++) {
        mx_tokenizer *t, *back;
        mx_chat_template *ct, *ct_back = NULL;
        cJSON *ref;
        load_family(families[f], &t, &ct, &ref);
        char path[128];
        snprintf(path, sizeof path, "/tmp/mixatt_test_tok_%d_%s.gguf", (int)getpid(), families[f]);
        mx_gguf_writer *w = mx_gguf_writer_new();
        mx_err err = {0};
        cr_assert_eq(mx_tokenizer_write_gguf(t, ct, w, &err), 0, "%s", err.msg);
        cr_assert_eq(mx_gguf_writer_save(w, path, &err), 0, "%s", err.msg);
        mx_gguf_writer_free(w);
        mx_gguf *g;
        cr_assert_eq(mx_gguf_open(path, &g, &err), 0, "%s", err.msg);
        cr_assert_eq(mx_tokenizer_from_gguf(g, &back, &err), 0, "%s", err.msg);
        cr_assert_eq(mx_tokenizer_bos(back), mx_tokenizer_bos(t));
        cr_assert_eq(mx_tokenizer_eos(back), mx_tokenizer_eos(t));
        cr_assert_eq(mx_tokenizer_add_bos(back), mx_tokenizer_add_bos(t));
        if (ct) {
            cr_assert_eq(mx_chat_template_from_gguf(g, &ct_back, &err), 0, "%s", err.msg);
            cr_assert_str_eq(mx_chat_end_of_turn(ct_back), mx_chat_end_of_turn(ct));
        }
        check_cases(families[f], back, ref);
        mx_chat_template_free(ct_back);
        mx_gguf_close(g);
        remove(path);
        mx_tokenizer_free(back);
        mx_chat_template_free(ct);
        mx_tokenizer_free(t);
        cJSON_Delete(ref);
    }
}

/* A GGUF with only llama.cpp's keys (no tokenizer.json inside): model "llama", merges derived from the scores
 * when the file has no merges. */
Test(hf_tokenizer, gguf_sentencepiece_keys) {
    mx_tokenizer *t;
    mx_chat_template *ct;
    cJSON *ref;
    load_family("mistral", &t, &ct, &ref);
    mx_err err = {0};
    char full[128], keys[128];
    snprintf(full, sizeof full, "/tmp/mixatt_test_spm_%d.gguf", (int)getpid());
    snprintf(keys, sizeof keys, "/tmp/mixatt_test_spm_keys_%d.gguf", (int)getpid());
    mx_gguf_writer *w = mx_gguf_writer_new();
    cr_assert_eq(mx_tokenizer_write_gguf(t, ct, w, &err), 0, "%s", err.msg);
    cr_assert_eq(mx_gguf_writer_save(w, full, &err), 0, "%s", err.msg);
    mx_gguf_writer_free(w);
    mx_gguf *g;
    cr_assert_eq(mx_gguf_open(full, &g, &err), 0, "%s", err.msg);
    for (int with_merges = 1; with_merges >= 0; with_merges--) {
        w = mx_gguf_writer_new();
        for (uint64_t i = 0; i < g->n_kv; i++) {
            const char *k = g->kv[i].key;
            if (!strcmp(k, MX_GGUF_HF_JSON_KEY) || !strcmp(k, "general.alignment") ||
                (!with_merges && !strcmp(k, "tokenizer.ggml.merges")))
                continue;
            cr_assert_eq(mx_gguf_w_copy(w, &g->kv[i], &err), 0, "%s", err.msg);
        }
        cr_assert_eq(mx_gguf_writer_save(w, keys, &err), 0, "%s", err.msg);
        mx_gguf_writer_free(w);
        mx_gguf *g2;
        mx_tokenizer *back;
        cr_assert_eq(mx_gguf_open(keys, &g2, &err), 0, "%s", err.msg);
        cr_assert_eq(mx_tokenizer_from_gguf(g2, &back, &err), 0, "%s", err.msg);
        cr_assert(mx_tokenizer_byte_fallback(back));
        check_cases(with_merges ? "mistral (ggml keys)" : "mistral (ggml keys, merges from scores)", back,
                    ref);
        mx_tokenizer_free(back);
        mx_gguf_close(g2);
    }
    mx_gguf_close(g);
    remove(full);
    remove(keys);
    mx_chat_template_free(ct);
    mx_tokenizer_free(t);
    cJSON_Delete(ref);
}

Test(hf_tokenizer, refuses_unsupported_parts_by_name) {
    static const struct {
        const char *json, *want;
    } bad[] = {
        {"{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "Unigram"},
        {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", "WordPiece"},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"normalizer\":{\"type\":"
         "\"BertNormalizer\"}}",
         "BertNormalizer"},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":"
         "\"Whitespace\"}}",
         "Whitespace"},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":"
         "\"Split\","
         "\"pattern\":{\"Regex\":\"\\\\w+\"},\"behavior\":\"Isolated\",\"invert\":false}}",
         "\\w+"},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]}}",
         "not in the vocabulary"},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"end_of_word_suffix\":\"</w>\"}}",
         "</w>"},
        {"not json", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mx_tokenizer *t = NULL;
        mx_err err = {0};
        cr_assert_neq(mx_tokenizer_from_hf_json(bad[i].json, strlen(bad[i].json), "x.json", &t, &err), 0,
                      "%s", bad[i].json);
        cr_assert_null(t);
        cr_assert(strstr(err.msg, bad[i].want), "'%s' does not name '%s'", err.msg, bad[i].want);
    }
}
