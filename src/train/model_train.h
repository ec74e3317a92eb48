/* model_train.h: a model being trained on the CPU in fp32: the training config (model shape, attention plan,
 * data, optimizer, logging), every parameter with its gradient and AdamW moments, and the activations of one
 * (B, T) batch kept for the backward pass.
 *
 * Architectures: gpt2 (LayerNorm with bias, learned positions, GELU MLP, biases on every linear layer) and
 * llama (RMSNorm, RoPE in the rotate-half layout, SwiGLU, no biases). Attention (key `attn`) is the MHA
 * family (MHA, GQA, MQA) with the per-layer plan of plan.h: windows, and layers that read an earlier layer's
 * K/V (a reader has no K/V projections; the writer's receive the gradients of every reader); or, on every
 * layer, MLA (explicit form, llama only; mla_train.c), MKA or FastMKA (causal; mka_train.c), which must
 * write their own K/V. With n_expert > 0 the MLP of every layer is a mixture of SwiGLU experts (llama only;
 * moe_train.c) with a load-balancing auxiliary loss. mup = true applies muP (mup.c, docs/training.md).
 *
 * Parameter names follow mixatt's tensor names (model.c): token_embd.weight, position_embd.weight,
 * blk.N.attn_norm.{weight,bias}, blk.N.attn_{q,k,v,output}.{weight,bias}, blk.N.ffn_norm.{weight,bias},
 * blk.N.ffn_{gate,up,down}.weight, blk.N.ffn_{up,down}.bias, output_norm.{weight,bias}, output.weight (absent
 * when tied). Matrices are [out, in] (PyTorch's layout; GGUF ne = {in, out}). */
#ifndef MX_MODEL_TRAIN_H
#define MX_MODEL_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"
#include "../backend/backend_train.h"
#include "../model/plan.h"

typedef enum { MX_TARCH_GPT2, MX_TARCH_LLAMA } mx_tarch;

struct mx_mla_tacts;
struct mx_mka_tacts;
struct mx_moe_tacts;

typedef struct {
    /* model */
    mx_tarch arch;
    int vocab, d_model, n_layer, n_head, n_kv_head, d_ff, max_ctx;
    float norm_eps, rope_theta;
    bool tied_embeddings;
    char plan[1024];   /* plan string or preset (plan.h); "" = every layer full attention */
    int window;        /* window of S layers */
    mx_attn_kind attn; /* the attention kind of every layer (plan.h) */
    int mla_kv_rank, mla_q_rank, mla_rope_dim, mla_nope_dim, mla_v_dim; /* MLA; q_rank 0 = no query latent */
    /* mixture of experts: n_expert 0 = dense MLP; experts are d_ff wide */
    int n_expert, n_expert_used;
    bool expert_norm_topk; /* renormalize the top-k weights to sum to 1 (Mixtral) */
    float moe_aux_weight;  /* weight of the load-balancing loss added to the cross-entropy */
    /* muP (mup.c): widths relative to mup_base_width */
    bool mup;
    int mup_base_width;
    /* init */
    uint64_t seed;
    float init_std;  /* N(0, init_std); residual projections (attn_output, ffn_down) / sqrt(2 n_layer) */
    char init[1024]; /* safetensors file with every parameter to start from instead ("" = random) */
    /* data */
    char train_data
        [1024];          /* shard files (a glob pattern) or synthetic:TASK (copy, reverse, farcopy, recall) */
    char val_data[1024]; /* held-out shards ("" = none; synthetic:TASK uses another seed) */
    int batch, seq, grad_accum;
    /* optimizer: AdamW, linear warmup then cosine decay from lr to min_lr at `steps` */
    int steps, warmup;
    float lr, min_lr, weight_decay, beta1, beta2, adam_eps, grad_clip; /* grad_clip 0 = off */
    bool decay_embeddings, decay_norms_biases;
    /* logging and checkpoints (0 = never, except a checkpoint at the end) */
    int val_every, val_batches, ckpt_every, log_every;
    /* memory: keep only each layer's input and K/V; the backward runs a layer's forward again before its
     * gradients (the same ops, so the same bits), trading one more forward pass for L - 1 layers of activations */
    bool recompute;
} mx_train_config;

/* Defaults for every key (a tiny GPT-2). */
void mx_train_config_defaults(mx_train_config *c);
/* Applies the keys of a JSON object; an unknown key or a value of the wrong type is an error naming it
 * (`where` names the source in messages: the file, or "--set"). */
int mx_train_config_apply_json(mx_train_config *c, const char *json, const char *where, mx_err *err);
/* Applies one key=value (as --set). */
int mx_train_config_set(mx_train_config *c, const char *kv, mx_err *err);
/* Checks the values (positive sizes, heads dividing the width, the plan) before any work. */
int mx_train_config_check(const mx_train_config *c, mx_err *err);
/* Every key as one JSON object (malloc'd string), readable by apply_json. */
char *mx_train_config_to_json(const mx_train_config *c);

typedef struct {
    char name[64];
    int rows, cols; /* a vector has rows == 1 */
    size_t off;     /* offset into the flat buffers */
    bool decay;     /* AdamW weight decay applies */
    float lr_mult;  /* the parameter's learning rate is lr * lr_mult (muP; 1 otherwise) */
    float *w, *g, *m, *v;
} mx_param;

typedef struct {
    mx_param *attn_norm, *attn_norm_b, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo;
    mx_param *ffn_norm, *ffn_norm_b, *w_gate, *w_up, *w_down, *b_up, *b_down;
    /* MLA (mla_train.h): wq_a (q_rank, C), q_a_norm (q_rank), wq_b (H*(n + r), q_rank) or wq (H*(n + r), C),
     * wkv_a (R + r, C), kv_a_norm (R), wkv_b (H*(n + v), R), wo (C, H*v) */
    mx_param *wq_a, *q_a_norm, *wq_b, *wkv_a, *kv_a_norm, *wkv_b;
    /* MKA router: w1 (C, C), b1 (C), w2 (3, C), b2 (3) */
    mx_param *mka_w1, *mka_b1, *mka_w2, *mka_b2;
    /* MoE: router (E, C); experts stacked: gate/up (E*F, C), down (E*C, F) */
    mx_param *router, *gate_exps, *up_exps, *down_exps;
} mx_tlayer;

/* Activations of one batch, kept for the backward pass (per layer l, rows N = B*T). The buffers marked (Ls, ...)
 * hold every layer (Ls = L), or with recompute one layer (Ls = 1, slot 0): mx_tmodel_slot. */
typedef struct {
    int B, T;
    size_t floats;    /* of every buffer below together (the blocks' own not counted) */
    float *x;         /* (L+1, N, C) residual stream entering layer l; x[L] leaves the last layer */
    float *xm;        /* (Ls, N, C) residual stream after attention */
    float *ln1, *ln2; /* (Ls, N, C) normalized inputs of attention and MLP */
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd; /* (Ls, N) */
    float *q;                                         /* (Ls, N, H*D) after RoPE */
    float *k, *v; /* (L, N, G*D) after RoPE; filled for layers that write their own K/V */
    float *att;   /* (Ls, N, H*D) attention output */
    float *lse;   /* (Ls, N, H) log-sum-exp of each attention row */
    float *pre;   /* (Ls, N, F) MLP pre-activation (GPT-2: before GELU; Llama: the gate) */
    float *up;    /* (Ls, N, F) Llama without experts: the up projection (NULL otherwise) */
    /* the input of ffn_down, gelu(pre) or silu(pre) * up, is not kept: the forward forms it in dpre and the
     * backward forms it again there (as llm.c recomputes its GELU), which saves L x N x F floats */
    float *lnf, *lnf_mean, *lnf_rstd; /* (N, C), (N) */
    /* backward scratch */
    float *dx;                /* (N, C) gradient of the residual stream */
    float *dln;               /* (N, C) */
    float *dq, *datt;         /* (N, H*D) */
    float *dk, *dv;           /* (1 + S, N, G*D): slot 0 for a layer whose K/V no other layer reads, then one
                                 per writer that has readers (S of them), summed over its readers: dkv_slot() */
    float *dpre, *dup, *dact; /* (N, F) */
    float *tmp;               /* (N, C) */
    /* the blocks beyond MHA and the dense MLP (NULL when unused) */
    struct mx_mla_tacts *mla;
    struct mx_mka_tacts *mka;
    struct mx_moe_tacts *moe;
} mx_tacts;

typedef struct mx_tmodel {
    mx_train_config cfg;
    mx_layer_plan *plan; /* n_layer entries */
    int head_dim;
    mx_param *params;
    int n_params;
    size_t n_floats;                                                /* elements of all parameters */
    float *w, *g, *m, *v;                                           /* flat buffers of n_floats */
    mx_param *tok_embd, *pos_embd, *out_norm, *out_norm_b, *output; /* output == tok_embd when tied */
    mx_tlayer *layers;
    mx_tacts acts;
    float attn_scale_pow; /* attention scores scaled by head_dim^-attn_scale_pow: 0.5, or 1 under muP */
    float logit_scale;    /* logits = logit_scale · lnf · Wᵀ: 1, or base / width under muP */
    double aux_loss;      /* the last forward's load-balancing loss (unweighted; 0 without experts) */
    /* where the step runs: the training ops of a backend (backend_train.h). After mx_tmodel_create the CPU's,
     * on host buffers; mx_tmodel_place moves parameters, gradients, moments and activations to a backend
     * whose memory the host cannot read (on_device), and the host copies below are then refreshed only by
     * mx_tmodel_to_host (checkpoints). m->w, g, m, v and every mx_param's pointers are the bound copy. */
    mx_backend *be;
    const mx_train_ops *ops;
    bool on_device;
    bool bf16;                  /* this model's matmuls on bf16 tensor cores (set before each step: a backend
                                may train several models) */
    float *host[4], *dev[4];    /* w, g, m, v */
    mx_tr_seg *segs;            /* n_params AdamW segments (off, n, lr_mult, decay) */
    struct mx_op_profile *prof; /* per-op timing (op_profile.h; --profile), NULL: off. Not owned */
} mx_tmodel;

/* Builds the model of a checked config: parameters laid out, randomly initialized from cfg.seed (or read
 * from cfg.init), optimizer state zero; activations for (batch, seq). */
int mx_tmodel_create(const mx_train_config *cfg, mx_tmodel **out, mx_err *err);
void mx_tmodel_free(mx_tmodel *m);
mx_param *mx_tmodel_find(mx_tmodel *m, const char *name);
/* GPT-2-style random init: N(0, std) matrices and embeddings, residual projections std / sqrt(2 n_layer),
 * biases 0, norm weights 1. */
void mx_tmodel_init_random(mx_tmodel *m, uint64_t seed);

/* Runs the model's steps on be (its training ops; bf16 matmuls where the backend has them and bf16 is set).
 * A backend with host memory keeps the buffers as they are; another gets copies of the parameters, gradients
 * and AdamW moments and its own activations, those of the MLA, MKA and MoE blocks included. Refuses a backend
 * without training ops, and bf16 where the backend has none. */
int mx_tmodel_place(mx_tmodel *m, mx_backend *be, bool bf16, mx_err *err);
/* On a device: copies parameters, gradients and moments back into the host buffers and binds them (the host
 * code of checkpoints reads them); mx_tmodel_to_device binds the device copies again. No-ops on the host. */
void mx_tmodel_to_host(mx_tmodel *m);
void mx_tmodel_to_device(mx_tmodel *m);

/* Forward over a batch tokens (B, T); with targets returns the mean cross-entropy plus moe_aux_weight times
 * the load-balancing loss (the objective; m->aux_loss keeps the unweighted aux), else 0. With backward,
 * also accumulates every parameter's gradient of loss · grad_scale into m->g (the caller zeroes it). */
double mx_tmodel_step(mx_tmodel *m, const int *tokens, const int *targets, bool backward, float grad_scale);
/* The forward pass alone (fills m->acts); forward_train.c. */
void mx_tmodel_forward(mx_tmodel *m, const int *tokens);
/* The backward pass given the gradient of the final norm's output in acts.dln; backward.c. */
void mx_tmodel_backward(mx_tmodel *m, const int *tokens);
/* The layers whose K/V another layer reads, and the slot of acts.dk/dv that writer w's gradients gather in (0: no
 * other layer reads them, a scratch slot shared by all such writers; else 1 + its rank among those read). */
int mx_tmodel_shared_writers(const mx_tmodel *m);
int mx_tmodel_dkv_slot(const mx_tmodel *m, int w);
/* n floats of zeroed activation memory where m runs (its backend's once placed on a device, else the host's);
 * NULL when out of memory, or for n = 0. mx_tmodel_release frees it (NULL: nothing). */
float *mx_tmodel_alloc(mx_tmodel *m, size_t n);
void mx_tmodel_release(mx_tmodel *m, float *p);
/* The memory m runs in, for messages: its backend's name once placed on a device, else "host". */
const char *mx_tmodel_where(const mx_tmodel *m);
/* dst[0..n) = src[0..n), buffers where m runs (the host's memcpy, or the backend's copy_cols). */
void mx_tmodel_copy(mx_tmodel *m, float *dst, const float *src, size_t n);
/* The slot of layer l in the (Ls, ...) activations: l, or 0 with recompute. */
size_t mx_tmodel_slot(const mx_tmodel *m, int l);
/* One layer's forward (forward_train.c): the block's activations in its slot and x[l + 1]. The backward calls
 * it again under recompute. */
void mx_tmodel_layer_forward(mx_tmodel *m, int l);

#endif
