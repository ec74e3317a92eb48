/* model.h: a loaded model: hyper-parameters and attention plan (mx_config, config.h), named weights
 * (mx_weights), its tokenizer and chat template. Built from a GGUF file (load_gguf.c) or a Hugging Face
 * directory with config.json + safetensors (load_hf.c); both fill a tensor dictionary that model.c binds by
 * name. */
#ifndef MX_MODEL_H
#define MX_MODEL_H

#include <stdbool.h>

#include "../backend/backend.h"
#include "../io/gguf.h"
#include "../tok/tokenizer.h"
#include "config.h"
#include "plan.h"
#include "tensors.h"

typedef struct {
    mx_tensor attn_norm, attn_norm_b; /* ne {C}; _b LayerNorm bias */
    mx_tensor wq, wk, wv, wo;         /* wq ne {C, H*D}; wk/wv ne {C, G*D}; wo ne {H*D, C} */
    mx_tensor bq, bk, bv, bo;         /* biases (GPT-2) */
    /* MLA: q = wq_b · norm(wq_a · x) (or wq · x when q_rank == 0); [c_kv ; k_rope] = wkv_a · x;
     * [k_nope ; v] per head = wkv_b · norm(c_kv) */
    mx_tensor wq_a, q_a_norm, wq_b, wkv_a, kv_a_norm, wkv_b;
    /* MKA router: r = softmax(W2 · tanh(W1 · x + b1) + b2), 3 memories */
    mx_tensor mka_w1, mka_b1, mka_w2, mka_b2;
    mx_tensor ffn_norm, ffn_norm_b;
    mx_tensor w_gate, w_up, w_down; /* gate/up ne {C, F}; down ne {F, C}; GPT-2: up = c_fc, down = c_proj */
    mx_tensor b_up, b_down;
    /* MoE: router ne {C, E}; experts 3-D ne {n_in, n_out, E}; shared experts as a dense SwiGLU */
    mx_tensor router, gate_exps, up_exps, down_exps;
    mx_tensor gate_shexp, up_shexp, down_shexp;
} mx_layer_weights;

typedef struct {
    mx_tensor tok_embd; /* ne {C, vocab} */
    mx_tensor pos_embd; /* ne {C, max_ctx} (GPT-2) */
    mx_tensor out_norm, out_norm_b;
    mx_tensor output; /* ne {C, vocab}; == tok_embd when tied */
    mx_layer_weights *layers;
} mx_weights;

typedef struct mx_tp mx_tp; /* a rank's share under tensor parallelism (tp.h) */

typedef struct {
    char *path;
    mx_gguf *gguf;        /* when loaded from GGUF (keeps the mapping alive) */
    struct mx_st_set *hf; /* when loaded from safetensors (keeps the mappings alive; load_hf.c) */
    char *stored_plan;    /* the plan string stored with the model (GGUF mixatt.plan), NULL if none */
    mx_tensor_dict dict;  /* every tensor by name */
    mx_config cfg;
    mx_weights w;
    mx_tokenizer *tok;      /* NULL for a model without a tokenizer (ids only) */
    mx_chat_template *chat; /* NULL when the file has no template we support */
    mx_tp *tp;              /* tensor parallelism: this rank's slice (mx_tp_shard); NULL on one rank */
} mx_model;

typedef struct {
    const char *plan; /* plan string or preset; NULL = the model's own */
    int window;       /* window for S layers; 0 = the model's or the preset's default */
    const char *attn; /* attention kind for every layer (mha, mla, mka, fastmka); NULL = the model's */
    int mla_form;     /* 0 auto, 1 explicit, 2 absorbed */
} mx_load_opts;

/* Loads a GGUF file, or a directory holding config.json + *.safetensors. */
int mx_model_load(const char *path, const mx_load_opts *opts, mx_model **out, mx_err *err);
void mx_model_free(mx_model *m);

/* Loaders fill m->cfg (without the plan) and m->dict; model.c does the rest. */
int mx_load_gguf(mx_model *m, mx_err *err);
int mx_load_hf(mx_model *m, mx_err *err);
/* A checkpoint of `mixatt train` (load_ckpt.c): the file m->path. */
int mx_load_ckpt(mx_model *m, mx_err *err);
/* Unmaps the safetensors files behind a model loaded by mx_load_hf (no-op otherwise). */
void mx_hf_close(mx_model *m);

/* Places every weight on the backend (be->upload) / releases them. A CPU backend reads the mapping directly.
 */
int mx_model_place(mx_model *m, mx_backend *be, mx_err *err);
void mx_model_unplace(mx_model *m, mx_backend *be);

/* Checks the backend implements every op this model's blocks call (MoE, MLA and MKA need more than the
 * dense path); the error names the feature and suggests --device cpu. */
int mx_model_check_backend(const mx_model *m, const mx_backend *be, mx_err *err);

/* True when layer l has a MoE MLP. */
bool mx_layer_is_moe(const mx_config *c, int l);

/* Parameter count (elements of every tensor) and bytes of the weights as stored. */
int64_t mx_model_n_params(const mx_model *m);
size_t mx_model_weight_bytes(const mx_model *m);
/* Bytes the matrices read once per decoded token (every layer matrix + output head; MoE: active experts). */
size_t mx_model_decode_bytes(const mx_model *m);

#endif
