/* save_gguf.h: a loaded model written as GGUF v3 (through io/gguf_write.h), as load_gguf.c reads it back.
 * Tensors keep their stored type and bytes (F32/F16/BF16 from safetensors; any GGUF type from a GGUF) under
 * GGUF names. Metadata: general.architecture (llama, gpt2, deepseek2) with llama.cpp's standard keys, and
 * mixatt's own keys for what GGUF has no name for: mixatt.rope_half (Hugging Face Llama/Mistral weights are
 * not permuted the way llama.cpp's converter permutes them) and mixatt.plan (the attention plan string).
 * From a GGUF source every other key (tokenizer, chat template, general.*) is copied as it is. */
#ifndef MX_SAVE_GGUF_H
#define MX_SAVE_GGUF_H

#include "../io/gguf_write.h"
#include "model.h"

/* The config as GGUF keys, then every key of a GGUF source not written already. */
int mx_save_gguf_keys(mx_gguf_writer *w, const mx_model *m, mx_err *err);
/* Every tensor of m->dict under its name, as stored (the data is referenced until mx_gguf_writer_save). */
int mx_save_gguf_tensors(mx_gguf_writer *w, const mx_model *m, mx_err *err);

#endif
