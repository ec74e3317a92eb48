/* fuzz_serve.c: libFuzzer target for what `mixatt serve` parses from a client (make fuzz). Each input is an HTTP
 * request body; its first byte picks the endpoint (/v1/completions or /v1/chat/completions) and the rest is
 * handed to mx_api_parse as the body, unterminated, as libmicrohttpd hands it over. The model behind it is a
 * tokenizer and a ChatML template read once from the committed tokenizer seed (tests/fuzz/corpus/tokenizer/
 * bpe_smollm.gguf, run from the repository root). An accepted request is checked against what the scheduler
 * trusts (token ids inside the vocabulary, a budget that fits the context, stops present) and its response,
 * chunk and error JSON are built; a refused one must carry an HTTP status and a message. The seed corpus holds
 * requests of both kinds with every supported field (make_corpus.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/io/gguf.h"
#include "../../src/model/model.h"
#include "../../src/serve/api.h"
#include "../../src/tok/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_CTX = 256 };

/* The model the requests are parsed against: a tokenizer, a chat template and a vocabulary size. */
static const mx_model *fuzz_model(void) {
    static mx_model m;
    static mx_gguf *g;
    if (g) return &m;
    mx_err err = {0};
    if (mx_gguf_open("tests/fuzz/corpus/tokenizer/bpe_smollm.gguf", &g, &err) ||
        mx_tokenizer_from_gguf(g, &m.tok, &err) || mx_chat_template_from_gguf(g, &m.chat, &err) || !m.chat) {
        fprintf(stderr, "fuzz_serve: %s (run from the repository root)\n", err.msg);
        abort();
    }
    m.cfg.vocab = mx_tokenizer_vocab_size(m.tok);
    static char name[] = "fuzz.gguf";
    m.path = name;
    return &m;
}

static void check_accepted(const mx_model *m, mx_api_kind kind, const mx_job *j) {
    if (j->n_prompt <= 0 || j->n_prompt >= N_CTX || j->max_new <= 0 || j->n_prompt + j->max_new > N_CTX)
        __builtin_trap();
    for (int i = 0; i < j->n_prompt; i++)
        if (j->prompt[i] < 0 || j->prompt[i] >= m->cfg.vocab) __builtin_trap();
    for (int i = 0; i < j->n_stops; i++)
        if (!j->stops[i]) __builtin_trap();
    free(mx_api_response_json(kind, "id", 0, "fuzz", j));
    free(mx_api_chunk_json(kind, "id", 0, "fuzz", "ok", 2, NULL, kind == MX_API_CHAT, NULL));
    free(mx_api_chunk_json(kind, "id", 0, "fuzz", "", 0, mx_api_finish_reason(j), false, j));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const mx_model *m = fuzz_model();
    mx_api_kind kind = data[0] & 1 ? MX_API_CHAT : MX_API_COMPLETIONS;
    char *body = malloc(size - 1 ? size - 1 : 1); /* no terminator: the parser must use the length */
    if (!body) return 0;
    memcpy(body, data + 1, size - 1);
    mx_api_env env = {.m = m, .n_ctx = N_CTX, .seed = 7};
    mx_api_flags fl;
    mx_api_error e;
    mx_job *j = mx_job_new();
    if (!j) __builtin_trap();
    if (mx_api_parse(&env, kind, body, size - 1, j, &fl, &e) == 0) {
        check_accepted(m, kind, j);
    } else {
        if (e.status < 400 || e.status > 599 || !e.message[0]) __builtin_trap();
        free(mx_api_error_json(&e));
    }
    mx_job_unref(j);
    free(body);
    return 0;
}
