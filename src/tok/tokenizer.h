/* tokenizer.h: BPE tokenizers and chat templates. Two sources:
 *   - a GGUF's metadata: byte-level BPE (tokenizer.ggml.model == "gpt2": tokens, ranked merges, token types,
 *     the pre-tokenizer named by tokenizer.ggml.pre, BOS/EOS), or the tokenizer.json it carries whole
 *     (tokenizer.huggingface.json, written by `mixatt convert`);
 *   - a Hugging Face directory: tokenizer.json (byte-level BPE as GPT-2, Llama 3, Qwen 2, SmolLM; or
 *     SentencePiece-style BPE with byte fallback as Llama 2, Mistral: tok_hf.c lists what is read),
 *     tokenizer_config.json and generation_config.json (BOS/EOS, add_bos_token, the chat template).
 * Control tokens (Hugging Face's special added tokens) and user-defined tokens are matched whole before BPE.
 * Encoding matches Hugging Face's tokenizers for the same model; decode(encode(s)) == s for any valid UTF-8 s
 * whose characters the vocabulary covers. */
#ifndef MX_TOKENIZER_H
#define MX_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"
#include "../io/gguf.h"

typedef struct mx_tokenizer mx_tokenizer;

/* The GGUF key that carries a whole tokenizer.json (the GGUF specification's name). */
#define MX_GGUF_HF_JSON_KEY "tokenizer.huggingface.json"

int mx_tokenizer_from_gguf(const mx_gguf *g, mx_tokenizer **out, mx_err *err);
/* From the text of a tokenizer.json (len bytes); path names it in errors. BOS/EOS come from its
 * post-processor; mx_hf_load_tokenizer also reads the configs beside it. */
int mx_tokenizer_from_hf_json(const char *json, size_t len, const char *path, mx_tokenizer **out,
                              mx_err *err);
void mx_tokenizer_free(mx_tokenizer *t);

int mx_tokenizer_vocab_size(const mx_tokenizer *t);
int mx_tokenizer_bos(const mx_tokenizer *t); /* -1 if none */
int mx_tokenizer_eos(const mx_tokenizer *t);
bool mx_tokenizer_add_bos(const mx_tokenizer *t); /* tokenizer.ggml.add_bos_token */
/* Id of a token's exact text (e.g. "<|im_end|>"), or -1. */
int mx_tokenizer_find(const mx_tokenizer *t, const char *text);
bool mx_tokenizer_is_special(const mx_tokenizer *t, int id); /* control tokens */
/* Byte-level: the token of one raw byte; SentencePiece style: its <0xXX> token; -1 when the vocabulary has
 * none (SmolLM2 lacks 21 bytes, e.g. 0x04 and 0xFF: encoding drops such bytes, as Hugging Face's tokenizer
 * does; decode(encode(s)) is s less those bytes). */
int mx_tokenizer_byte_token(const mx_tokenizer *t, uint8_t byte);

/* Encodes len bytes of UTF-8 text. Special tokens written literally in the text ("<|im_start|>") become their
 * ids when parse_special is true, as Hugging Face does for added tokens. *ids is malloc'd (caller frees);
 * no BOS is added (callers decide). */
int mx_tokenize(const mx_tokenizer *t, const char *text, size_t len, bool parse_special, int **ids,
                int *n_ids, mx_err *err);
/* True for a SentencePiece-style vocabulary with byte fallback (no byte is ever dropped). */
bool mx_tokenizer_byte_fallback(const mx_tokenizer *t);
/* The bytes one token decodes to (byte-level alphabet mapped back to raw bytes; SentencePiece's ▁ as ' ' and
 * <0xXX> as its byte); *len set. Pointer valid until free. Special tokens return their text. */
const char *mx_token_bytes(const mx_tokenizer *t, int id, size_t *len);
/* The text BPE matches for a token (raw bytes for byte-level, ▁ kept for SentencePiece style). */
const char *mx_token_text(const mx_tokenizer *t, int id, size_t *len);
/* Decodes ids into a malloc'd NUL-terminated string (SentencePiece style: without the text's first space, as
 * its decoder does). */
char *mx_detokenize(const mx_tokenizer *t, const int *ids, int n_ids);

/* Chat templates: the Jinja template of the model (tokenizer.chat_template in a GGUF; chat_template.jinja or
 * tokenizer_config.json's chat_template in a Hugging Face directory), rendered by mixatt's Jinja subset
 * (jinja.h) the way transformers' apply_chat_template renders it (trim_blocks, lstrip_blocks; messages,
 * add_generation_prompt, bos_token, eos_token, raise_exception). A template that uses a construct outside the
 * subset is refused at load with the construct's name and line. */
typedef struct {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} mx_chat_msg;

typedef struct mx_chat_template mx_chat_template;
int mx_chat_template_from_gguf(const mx_gguf *g, mx_chat_template **out, mx_err *err);
/* From the template's source; bos and eos are the texts of bos_token and eos_token ("" when none); where
 * names the source in errors. */
int mx_chat_template_new(const char *source, const char *bos, const char *eos, const char *where,
                         mx_chat_template **out, mx_err *err);
void mx_chat_template_free(mx_chat_template *ct);
/* The template's source text. */
const char *mx_chat_template_source(const mx_chat_template *ct);
/* Renders msgs; add_generation_prompt appends the assistant turn's opening. Returns a malloc'd string, or
 * NULL with err set (the template's raise_exception, or out of memory). */
char *mx_chat_render(const mx_chat_template *ct, const mx_chat_msg *msgs, int n, bool add_generation_prompt,
                     mx_err *err);
/* The text that ends an assistant turn ("<|im_end|>", "<|eot_id|>", "</s>"), found by rendering a probe
 * conversation: used as a stop token. */
const char *mx_chat_end_of_turn(const mx_chat_template *ct);

/* A Hugging Face directory's tokenizer (tokenizer.json, with tokenizer_config.json's and
 * generation_config.json's BOS/EOS/add_bos_token) and chat template. A directory without tokenizer.json gives
 * *tok = NULL (ids only) and 0; without a template, *chat = NULL. */
int mx_hf_load_tokenizer(const char *dir, mx_tokenizer **tok, mx_chat_template **chat, mx_err *err);
/* Writes the tokenizer and the chat template (ct may be NULL) as GGUF metadata (tok_gguf_write.c). */
struct mx_gguf_writer;
int mx_tokenizer_write_gguf(const mx_tokenizer *t, const mx_chat_template *ct, struct mx_gguf_writer *w,
                            mx_err *err);
/* The tokenizer of a model path: a Hugging Face directory or a GGUF file. */
int mx_tokenizer_open(const char *path, mx_tokenizer **out, mx_err *err);

#endif
