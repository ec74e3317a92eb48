/* save_gguf.c: a loaded model's keys and tensors into a GGUF writer (see save_gguf.h): the inverse of
 * load_gguf.c, which reads the same llama.cpp names back. */
#include "save_gguf.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    mx_gguf_writer *w;
    const char *a; /* architecture prefix */
    mx_err *err;
} keys;

static int u32(keys *k, const char *name, int v) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", k->a, name);
    return mx_gguf_w_u32(k->w, full, (uint32_t)v, k->err);
}

static int f32(keys *k, const char *name, float v) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", k->a, name);
    return mx_gguf_w_f32(k->w, full, v, k->err);
}

static int write_moe(keys *k, const mx_config *c) {
    if (!c->n_expert) return MX_OK;
    int rc = u32(k, "expert_count", c->n_expert) || u32(k, "expert_used_count", c->n_expert_used);
    if (!rc && c->d_ff_expert) rc = u32(k, "expert_feed_forward_length", c->d_ff_expert);
    if (!rc && c->arch == MX_ARCH_DEEPSEEK2) {
        char full[128];
        snprintf(full, sizeof full, "%s.expert_weights_norm", k->a);
        rc = u32(k, "expert_shared_count", c->n_shared_expert) ||
             u32(k, "leading_dense_block_count", c->n_dense_lead) ||
             f32(k, "expert_weights_scale", c->expert_scale) ||
             mx_gguf_w_bool(k->w, full, c->expert_norm_topk, k->err) ||
             u32(k, "expert_gating_func", 1); /* softmax */
    }
    return rc ? k->err->code : MX_OK;
}

static int write_config(mx_gguf_writer *w, const mx_model *m, mx_err *err) {
    const mx_config *c = &m->cfg;
    keys k = {w, c->arch_name, err};
    bool gpt2 = c->arch == MX_ARCH_GPT2;
    int v_dim = c->arch == MX_ARCH_DEEPSEEK2 ? c->mla_v_dim : c->head_dim;
    int rc = mx_gguf_w_str(w, "general.architecture", c->arch_name, err) ||
             (c->name[0] && !(m->gguf && mx_gguf_kv_find(m->gguf, "general.name")) &&
              mx_gguf_w_str(w, "general.name", c->name, err)) ||
             u32(&k, "context_length", c->max_ctx) || u32(&k, "embedding_length", c->d_model) ||
             u32(&k, "block_count", c->n_layer) || u32(&k, "feed_forward_length", c->d_ff) ||
             u32(&k, "attention.head_count", c->n_head) || u32(&k, "attention.head_count_kv", c->n_kv_head) ||
             u32(&k, "attention.key_length", c->head_dim) || u32(&k, "attention.value_length", v_dim) ||
             f32(&k, gpt2 ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon", c->norm_eps);
    if (!rc && c->use_rope)
        rc = f32(&k, "rope.freq_base", c->rope_theta) || u32(&k, "rope.dimension_count", c->rope_dim);
    if (!rc && c->window > 0) rc = u32(&k, "attention.sliding_window", c->window);
    if (!rc && c->mla_kv_rank)
        rc = u32(&k, "attention.kv_lora_rank", c->mla_kv_rank) ||
             u32(&k, "attention.q_lora_rank", c->mla_q_rank);
    if (!rc) rc = write_moe(&k, c);
    char plan[4096];
    mx_plan_to_string(c->plan, c->n_layer, plan, sizeof plan);
    if (!rc)
        rc = mx_gguf_w_u32(w, "mixatt.rope_half", c->rope_mode == MX_ROPE_HALF, err) ||
             mx_gguf_w_str(w, "mixatt.plan", plan, err);
    return rc ? err->code : MX_OK;
}

/* Every key of a GGUF source that write_config did not write (tokenizer, chat template, general.*). */
static int copy_source_keys(mx_gguf_writer *w, const mx_gguf *g, mx_err *err) {
    for (uint64_t i = 0; g && i < g->n_kv; i++) {
        const mx_gguf_kv *kv = &g->kv[i];
        if (mx_gguf_w_has(w, kv->key) || !strcmp(kv->key, "general.alignment")) continue;
        if (mx_gguf_w_copy(w, kv, err)) return err->code;
    }
    return MX_OK;
}

int mx_save_gguf_tensors(mx_gguf_writer *w, const mx_model *m, mx_err *err) {
    for (int i = 0; i < m->dict.n; i++) {
        const mx_tensor *t = &m->dict.items[i].t;
        if (mx_gguf_w_tensor(w, m->dict.items[i].name, t->type, t->n_dims, t->ne, t->data, t->nbytes, err))
            return err->code;
    }
    return MX_OK;
}

int mx_save_gguf_keys(mx_gguf_writer *w, const mx_model *m, mx_err *err) {
    return write_config(w, m, err) || copy_source_keys(w, m->gguf, err) ? err->code : MX_OK;
}
