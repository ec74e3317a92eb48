/* model.h: a loaded model: hyper-parameters and attention plan (mx_config), named weights (mx_weights), its
 * tokenizer and chat template. Built from a GGUF file (io/gguf.h); the weights point into the file's mapping. */
#ifndef MX_MODEL_H
#define MX_MODEL_H

#include <stdbool.h>

#include "../backend/backend.h"
#include "../io/gguf.h"
#include "../tok/tokenizer.h"
#include "plan.h"

typedef enum { MX_ARCH_LLAMA, MX_ARCH_GPT2 } mx_arch;

typedef struct {
    mx_arch arch;
    char arch_name[32];
    char name[128];          /* general.name */
    int vocab, d_model, n_layer, n_head, n_kv_head, head_dim, d_ff, max_ctx, rope_dim;
    float rope_theta, norm_eps;
    mx_rope_mode rope_mode;
    bool tied_embeddings;
    int n_expert, n_expert_used; /* 0 experts: dense MLP */
    mx_layer_plan *plan;         /* n_layer entries */
    bool plan_is_trained;        /* false when the user applied a plan the weights were not trained with */
} mx_config;

typedef struct {
    mx_tensor attn_norm, wq, wk, wv, wo;   /* wq ne {C, H*D}; wk/wv ne {C, G*D}; wo ne {H*D, C} */
    mx_tensor ffn_norm, w_gate, w_up, w_down; /* gate/up ne {C, F}; down ne {F, C} */
} mx_layer_weights;

typedef struct {
    mx_tensor tok_embd;  /* ne {C, vocab} */
    mx_tensor out_norm;  /* ne {C} */
    mx_tensor output;    /* ne {C, vocab}; == tok_embd when tied */
    mx_layer_weights *layers;
} mx_weights;

typedef struct {
    char *path;
    mx_gguf *gguf;
    mx_config cfg;
    mx_weights w;
    mx_tokenizer *tok;
    mx_chat_template *chat; /* NULL when the file has no template we support */
    float **owned;          /* fp32 copies of small vectors stored in another type (norms) */
    int n_owned;
} mx_model;

typedef struct {
    const char *plan;  /* plan string or preset; NULL = the model's own */
    int window;        /* window for S layers of a preset; 0 = the model's or the default */
} mx_load_opts;

int mx_model_load(const char *path, const mx_load_opts *opts, mx_model **out, mx_err *err);
void mx_model_free(mx_model *m);

/* Places every weight on the backend (be->upload) / releases them. A CPU backend reads the mapping directly. */
int mx_model_place(mx_model *m, mx_backend *be, mx_err *err);
void mx_model_unplace(mx_model *m, mx_backend *be);

/* Parameter count (elements of every tensor) and bytes of the weights as stored. */
int64_t mx_model_n_params(const mx_model *m);
size_t mx_model_weight_bytes(const mx_model *m);
/* Bytes the matrices read once per decoded token (every layer matrix + output head). */
size_t mx_model_decode_bytes(const mx_model *m);

#endif
