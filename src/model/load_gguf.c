/* load_gguf.c: a GGUF file → mx_config (from the "<arch>.*" keys) and the tensor dictionary (pointing into
 * the mapping). Architectures: "llama" (incl. Mistral/Mixtral-style files), "gpt2", "deepseek2". mixatt's own
 * keys ("mixatt.*") carry what GGUF has no name for: the plan, the RoPE pair layout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_check.h"
#include "model.h"

static int get_int(const mx_gguf *g, const char *arch, const char *key, int *out, int def, mx_err *err) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v;
    int rc = mx_gguf_get_i64(g, full, &v, err);
    if (rc == MX_ERR_MISSING && def >= 0) {
        *out = def;
        return MX_OK;
    }
    if (rc) return rc; /* the message names the file */
    if (v < 0 || v > (1 << 30))
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %s = %lld is out of range", g->path, full, (long long)v);
    *out = (int)v;
    return MX_OK;
}

static int get_float(const mx_gguf *g, const char *arch, const char *key, float *out, float def,
                     mx_err *err) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    double v;
    int rc = mx_gguf_get_f64(g, full, &v, err);
    if (rc == MX_ERR_MISSING) {
        *out = def;
        return MX_OK;
    }
    if (rc) return rc; /* the message names the file */
    *out = (float)v;
    return MX_OK;
}

static int read_arch(const mx_gguf *g, mx_config *c, mx_err *err) {
    char *arch = NULL;
    if (mx_gguf_get_str(g, "general.architecture", &arch, err)) return err->code;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    free(arch);
    if (!strcmp(c->arch_name, "llama"))
        c->arch = MX_ARCH_LLAMA;
    else if (!strcmp(c->arch_name, "gpt2"))
        c->arch = MX_ARCH_GPT2;
    else if (!strcmp(c->arch_name, "deepseek2"))
        c->arch = MX_ARCH_DEEPSEEK2;
    else
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "%s: architecture '%s' is not supported (supported: llama, gpt2, deepseek2)",
                          g->path, c->arch_name);
    char *name = NULL;
    if (mx_gguf_get_str(g, "general.name", &name, NULL) == MX_OK) {
        snprintf(c->name, sizeof c->name, "%s", name);
        free(name);
    }
    return MX_OK;
}

static int read_config(const mx_gguf *g, mx_config *c, mx_err *err) {
    if (read_arch(g, c, err)) return err->code;
    const char *a = c->arch_name;
    bool gpt2 = c->arch == MX_ARCH_GPT2;
    int rc = get_int(g, a, "embedding_length", &c->d_model, -1, err) ||
             get_int(g, a, "block_count", &c->n_layer, -1, err) ||
             get_int(g, a, "attention.head_count", &c->n_head, -1, err) ||
             get_int(g, a, "feed_forward_length", &c->d_ff, -1, err) ||
             get_int(g, a, "context_length", &c->max_ctx, 2048, err) ||
             get_int(g, a, "attention.head_count_kv", &c->n_kv_head, 0, err) ||
             get_int(g, a, "expert_count", &c->n_expert, 0, err) ||
             get_int(g, a, "expert_used_count", &c->n_expert_used, 0, err) ||
             get_int(g, a, "expert_feed_forward_length", &c->d_ff_expert, 0, err) ||
             get_int(g, a, "expert_shared_count", &c->n_shared_expert, 0, err) ||
             get_int(g, a, "leading_dense_block_count", &c->n_dense_lead, 0, err) ||
             get_int(g, a, "attention.kv_lora_rank", &c->mla_kv_rank, 0, err) ||
             get_int(g, a, "attention.q_lora_rank", &c->mla_q_rank, 0, err) ||
             get_int(g, a, "attention.sliding_window", &c->window, 0, err) ||
             get_float(g, a, "rope.freq_base", &c->rope_theta, 10000.0f, err) ||
             get_float(g, a, "expert_weights_scale", &c->expert_scale, 1.0f, err) ||
             get_float(g, a, gpt2 ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon",
                       &c->norm_eps, 1e-5f, err);
    if (rc) return err->code;
    if (c->n_kv_head == 0) c->n_kv_head = c->n_head;
    if (c->n_layer < 1 || c->n_head < 1 || c->n_head % c->n_kv_head)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: inconsistent shape: %d layers, %d heads, %d KV heads",
                          g->path, c->n_layer, c->n_head, c->n_kv_head);
    c->head_dim = c->d_model % c->n_head ? 0 : c->d_model / c->n_head;
    if (get_int(g, a, "attention.key_length", &c->head_dim, c->head_dim, err)) return err->code;
    if (c->head_dim <= 0)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: width %d is not a multiple of %d heads and no key_length is given", g->path,
                          c->d_model, c->n_head);
    if (get_int(g, a, "rope.dimension_count", &c->rope_dim, c->head_dim, err)) return err->code;
    if (c->expert_scale == 0) c->expert_scale = 1.0f;
    bool norm_topk = c->arch != MX_ARCH_DEEPSEEK2; /* Mixtral renormalizes the top-k; DeepSeek-V2 does not */
    char key[160];
    snprintf(key, sizeof key, "%s.expert_weights_norm", a);
    mx_gguf_get_bool(g, key, &norm_topk, NULL);
    c->expert_norm_topk = norm_topk;
    c->norm = gpt2 ? MX_NORM_LAYER : MX_NORM_RMS;
    c->mlp = gpt2 ? MX_MLP_GELU : MX_MLP_SWIGLU;
    c->use_rope = !gpt2;
    c->attn_bias = c->mlp_bias = gpt2;
    if (c->arch == MX_ARCH_DEEPSEEK2) {
        int v_dim = 0;
        if (get_int(g, a, "attention.value_length", &v_dim, 0, err)) return err->code;
        c->mla_rope_dim = c->rope_dim;
        c->mla_nope_dim = c->head_dim - c->rope_dim;
        c->mla_v_dim = v_dim ? v_dim : c->mla_nope_dim;
    }
    /* Llama: llama.cpp's converter permuted Q/K rows for adjacent-pair rotation. DeepSeek-V2 rotates adjacent
     * pairs natively. Files written by mixatt convert from unpermuted HF weights say so with
     * mixatt.rope_half. */
    int64_t half = 0;
    c->rope_mode = mx_gguf_get_i64(g, "mixatt.rope_half", &half, NULL) == MX_OK && half ? MX_ROPE_HALF
                                                                                        : MX_ROPE_ADJACENT;
    return mx_config_check(c, g->path, err);
}

static int fill_dict(mx_model *m, mx_err *err) {
    const mx_gguf *g = m->gguf;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const mx_gguf_tensor *t = &g->tensors[i];
        if (mx_dict_add(&m->dict, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes, false, err))
            return err->code;
    }
    return MX_OK;
}

int mx_load_gguf(mx_model *m, mx_err *err) {
    if (mx_gguf_open(m->path, &m->gguf, err) || read_config(m->gguf, &m->cfg, err) || fill_dict(m, err))
        return err->code;
    if (mx_gguf_kv_find(m->gguf, "tokenizer.ggml.model") && mx_tokenizer_from_gguf(m->gguf, &m->tok, err))
        return err->code;
    if (mx_chat_template_from_gguf(m->gguf, &m->chat, NULL) != MX_OK) m->chat = NULL;
    if (mx_gguf_get_str(m->gguf, "mixatt.plan", &m->stored_plan, NULL) != MX_OK) m->stored_plan = NULL;
    return MX_OK;
}
