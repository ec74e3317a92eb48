/* config.h: a model's hyper-parameters and attention plan (mx_config), apart from its weights and tokenizer, so
 * that what lays out memory from them (attention/kvcache.c, info's tables) needs no more than this.
 *
 * Architectures: MX_ARCH_LLAMA covers Llama, Mistral (sliding window) and Mixtral (MoE); MX_ARCH_GPT2
 * (LayerNorm, GELU, learned positions, biases); MX_ARCH_DEEPSEEK2 (MLA attention, optional MoE with shared
 * experts). */
#ifndef MX_CONFIG_H
#define MX_CONFIG_H

#include <stdbool.h>

#include "../backend/backend.h"
#include "plan.h"

typedef enum { MX_ARCH_LLAMA, MX_ARCH_GPT2, MX_ARCH_DEEPSEEK2 } mx_arch;
typedef enum { MX_NORM_RMS, MX_NORM_LAYER } mx_norm_kind;
typedef enum { MX_MLP_SWIGLU, MX_MLP_GELU } mx_mlp_kind;

typedef struct {
    mx_arch arch;
    char arch_name[32];
    char name[128]; /* general.name or the HF model type */
    int vocab, d_model, n_layer, n_head, n_kv_head, head_dim, d_ff, max_ctx, rope_dim;
    float rope_theta, norm_eps;
    mx_rope_mode rope_mode;
    mx_norm_kind norm;
    mx_mlp_kind mlp;
    bool use_rope; /* false: learned absolute positions (GPT-2) */
    bool tied_embeddings;
    bool attn_bias, mlp_bias; /* GPT-2 style biases on every linear layer */
    /* mixture of experts (0 experts: dense MLP everywhere) */
    int n_expert, n_expert_used, d_ff_expert, n_shared_expert,
        n_dense_lead;      /* first n_dense_lead layers dense */
    bool expert_norm_topk; /* renormalize the top-k weights (Mixtral: yes) */
    float expert_scale;    /* routed_scaling_factor (DeepSeek), 1 otherwise */
    /* MLA (DeepSeek-V2/V3) */
    int mla_kv_rank, mla_q_rank, mla_rope_dim, mla_nope_dim, mla_v_dim; /* q_rank 0: no query latent */
    /* attention plan */
    mx_attn_kind attn_kind; /* the kind the weights were trained with (MHA unless a checkpoint says MKA;
                               MLA models are MX_ARCH_DEEPSEEK2) */
    int window;             /* default window for S layers (Mistral's sliding_window), 0 = none */
    mx_layer_plan *plan;    /* n_layer entries */
    bool plan_is_trained;   /* false when the user applied a plan the weights were not trained with */
    int mla_form;           /* MLA: 0 auto, 1 explicit, 2 absorbed (attention/kvcache.h mx_mla_form) */
} mx_config;

#endif
