/* tokenizer.h: byte-level BPE (GPT-2 style, tokenizer.ggml.model == "gpt2") built from a GGUF's metadata:
 * tokens, merges (ranked), token types (control/user-defined tokens are matched whole before BPE), the
 * pre-tokenizer named by tokenizer.ggml.pre, BOS/EOS. Encoding matches Hugging Face's tokenizers for the same
 * model; decode(encode(s)) == s for any valid UTF-8 s. */
#ifndef MX_TOKENIZER_H
#define MX_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"
#include "../io/gguf.h"

typedef struct mx_tokenizer mx_tokenizer;

int mx_tokenizer_from_gguf(const mx_gguf *g, mx_tokenizer **out, mx_err *err);
void mx_tokenizer_free(mx_tokenizer *t);

int mx_tokenizer_vocab_size(const mx_tokenizer *t);
int mx_tokenizer_bos(const mx_tokenizer *t); /* -1 if none */
int mx_tokenizer_eos(const mx_tokenizer *t);
bool mx_tokenizer_add_bos(const mx_tokenizer *t); /* tokenizer.ggml.add_bos_token */
/* Id of a token's exact text (e.g. "<|im_end|>"), or -1. */
int mx_tokenizer_find(const mx_tokenizer *t, const char *text);
bool mx_tokenizer_is_special(const mx_tokenizer *t, int id); /* control tokens */
/* The token of one raw byte, or -1 when the vocabulary has none (SmolLM2 lacks 21 bytes, e.g. 0x04 and 0xFF:
 * encoding drops such bytes, as Hugging Face's tokenizer does; decode(encode(s)) is s less those bytes). */
int mx_tokenizer_byte_token(const mx_tokenizer *t, uint8_t byte);

/* Encodes len bytes of UTF-8 text. Special tokens written literally in the text ("<|im_start|>") become their
 * ids when parse_special is true, as Hugging Face does for added tokens. *ids is malloc'd (caller frees);
 * no BOS is added (callers decide). */
int mx_tokenize(const mx_tokenizer *t, const char *text, size_t len, bool parse_special, int **ids,
                int *n_ids, mx_err *err);
/* The bytes of one token (byte-level alphabet mapped back to raw bytes); *len set. Pointer valid until free.
 * Special tokens return their text. */
const char *mx_token_bytes(const mx_tokenizer *t, int id, size_t *len);
/* Decodes ids into a malloc'd NUL-terminated string. */
char *mx_detokenize(const mx_tokenizer *t, const int *ids, int n_ids);

/* Chat template rendering for the model's tokenizer.chat_template. Supported: the ChatML family
 * ("<|im_start|>role\ncontent<|im_end|>\n", with SmolLM2's default system prompt when the first message is
 * not a system message). Unknown templates give MX_ERR_UNSUPPORTED with the template's first line. */
typedef struct {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} mx_chat_msg;

typedef struct mx_chat_template mx_chat_template;
int mx_chat_template_from_gguf(const mx_gguf *g, mx_chat_template **out, mx_err *err);
void mx_chat_template_free(mx_chat_template *ct);
/* Renders msgs; add_generation_prompt appends the assistant turn's opening. Returns a malloc'd string. */
char *mx_chat_render(const mx_chat_template *ct, const mx_chat_msg *msgs, int n, bool add_generation_prompt);
/* The text that ends an assistant turn ("<|im_end|>"), used as a stop string. */
const char *mx_chat_end_of_turn(const mx_chat_template *ct);

#endif
