/* fuzz_tokenizer.c: libFuzzer target for tokenizer and chat-template loading (make fuzz). Each input is a GGUF
 * buffer; when it opens, the tokenizer (tokenizer.ggml.*) and the chat template (tokenizer.chat_template) are
 * built from it, and whatever was accepted is used: a text with special tokens, raw bytes and invalid UTF-8 is
 * encoded (every id inside the vocabulary), decoded, and a conversation is rendered. The seed corpus holds tiny
 * byte-level BPE vocabularies with merges, special tokens and a ChatML template (make_corpus.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/io/gguf.h"
#include "../../src/tok/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char TEXT[] = "<|im_start|>user\nHello, wörld! 123 \xff\xfe\xc3 tabs\there  <|im_end|>\n日本";

static void use_tokenizer(const mx_tokenizer *t) {
    int n = mx_tokenizer_vocab_size(t), *ids = NULL, n_ids = 0;
    mx_err err = {0};
    for (int special = 0; special < 2; special++) {
        if (mx_tokenize(t, TEXT, sizeof TEXT - 1, special, &ids, &n_ids, &err) != MX_OK) continue;
        for (int i = 0; i < n_ids; i++)
            if (ids[i] < 0 || ids[i] >= n) __builtin_trap();
        free(mx_detokenize(t, ids, n_ids));
        free(ids);
        ids = NULL;
    }
    for (int id = 0; id < n && id < 64; id++) {
        size_t len = 0;
        const char *b = mx_token_bytes(t, id, &len);
        volatile size_t sum = 0;
        for (size_t i = 0; b && i < len; i++) sum += (uint8_t)b[i];
        (void)sum;
    }
    mx_tokenizer_find(t, "<|im_end|>");
    for (int b = 0; b < 256; b++) mx_tokenizer_byte_token(t, (uint8_t)b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mx_gguf *g = NULL;
    mx_err err = {0};
    if (mx_gguf_open_buffer(data, size, "fuzz.gguf", &g, &err)) return 0;
    mx_tokenizer *t = NULL;
    if (mx_tokenizer_from_gguf(g, &t, &err) == MX_OK) {
        use_tokenizer(t);
        mx_tokenizer_free(t);
    } else if (!strstr(err.msg, "fuzz.gguf")) {
        __builtin_trap(); /* every message names the file */
    }
    mx_chat_template *ct = NULL;
    if (mx_chat_template_from_gguf(g, &ct, &err) == MX_OK && ct) {
        mx_chat_msg msgs[3] = {{"system", "be brief"}, {"user", "hi <|im_end|>"}, {"assistant", ""}};
        for (int n = 0; n <= 3; n++) free(mx_chat_render(ct, msgs, n, n % 2, &err));
        mx_chat_end_of_turn(ct);
        mx_chat_template_free(ct);
    }
    mx_gguf_close(g);
    return 0;
}
