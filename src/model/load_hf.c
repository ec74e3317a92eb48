/* load_hf.c: a Hugging Face directory (config.json + model.safetensors or shards) → mx_config and the tensor
 * dictionary under GGUF names, for model.c to bind. model_type: gpt2, llama, mistral, mixtral, deepseek_v2,
 * deepseek_v3.
 *
 * Translations: Linear weights [out, in] are GGUF's ne {in, out} as they are (no copy). GPT-2's Conv1D
 * weights are stored [in, out]: they are transposed into owned [out][in] copies, and c_attn is split into
 * attn_q/k/v (weights and biases). Per-expert MoE matrices are stacked into one owned 3-D tensor per kind,
 * ne {n_in, n_out, E}. Llama-family weights are not permuted (unlike llama.cpp's GGUF), so their RoPE is
 * MX_ROPE_HALF; DeepSeek's rotary dims are interleaved pairs (MX_ROPE_ADJACENT).
 *
 * Sliding window: transformers (masking_utils.sliding_window_overlay) lets query t see key k when
 * t - sliding_window < k <= t: sliding_window keys including its own, exactly mixatt's plan window W.
 *
 * A tensor in the checkpoint that the model does not use is an error (it means a feature mixatt does not
 * implement, e.g. biases where the config says none), except buffers transformers itself ignores. There is no
 * tokenizer reader for tokenizer.json yet: m->tok stays NULL (ids only). */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/file.h"
#include "../io/dtype.h"
#include "../io/safetensors.h"
#include "config_check.h"
#include "model.h"

/* The open checkpoint lives in m->hf (its mappings back the dictionary until the model is freed). */
void mx_hf_close(mx_model *m) {
    if (m->hf) mx_st_set_close(m->hf);
    m->hf = NULL;
}

/* ---- config.json ---- */

typedef struct {
    mx_model *m;
    mx_err *err;
    char cfg_path[4096];
    cJSON *cfg;
    const char *type; /* model_type */
    mx_st_set *st;
    const mx_st_tensor **used; /* tensors placed in the dictionary (or deliberately skipped) */
    int n_used, cap_used;
} hf_loader;

static const cJSON *key(const hf_loader *h, const char *k) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, k);
    return cJSON_IsNull(j) ? NULL : j;
}

/* An integer key; def < 0 makes it required. */
static int get_int(hf_loader *h, const char *k, int def, int *out) {
    const cJSON *j = key(h, k);
    if (!j) {
        if (def < 0) return mx_err_set(h->err, MX_ERR_MISSING, "%s: missing key \"%s\"", h->cfg_path, k);
        *out = def;
        return MX_OK;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > (1 << 30) ||
        j->valuedouble != (double)(int)j->valuedouble)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: \"%s\" must be a non-negative integer", h->cfg_path, k);
    *out = (int)j->valuedouble;
    return MX_OK;
}

static int get_float(hf_loader *h, const cJSON *obj, const char *k, float def, float *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, k);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return MX_OK;
    }
    if (!cJSON_IsNumber(j))
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: \"%s\" must be a number", h->cfg_path, k);
    *out = (float)j->valuedouble;
    return MX_OK;
}

static bool get_bool(hf_loader *h, const char *k, bool def) {
    const cJSON *j = key(h, k);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : def;
}

static const char *get_str(hf_loader *h, const char *k) {
    const cJSON *j = key(h, k);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

static int unsupported(hf_loader *h, const char *what, const char *value) {
    return mx_err_set(h->err, MX_ERR_UNSUPPORTED, "%s: %s%s%s%s is not supported", h->cfg_path, what,
                      value ? " '" : "", value ? value : "", value ? "'" : "");
}

/* rope_theta (transformers 4: top level; 5: rope_parameters) and the RoPE type, which must be plain. */
static int read_rope(hf_loader *h, float def_theta) {
    mx_config *c = &h->m->cfg;
    const cJSON *params = key(h, "rope_parameters");
    const cJSON *scaling = params ? params : key(h, "rope_scaling");
    if (get_float(h, h->cfg, "rope_theta", def_theta, &c->rope_theta) ||
        (params && get_float(h, params, "rope_theta", c->rope_theta, &c->rope_theta)))
        return h->err->code;
    if (scaling) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(scaling, "rope_type");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(scaling, "type");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "default"))
            return unsupported(h, "RoPE scaling type", t->valuestring);
    }
    return MX_OK;
}

static int read_act(hf_loader *h, const char *k, const char *want, const char *alt) {
    const char *act = get_str(h, k);
    if (act && strcmp(act, want) && (!alt || strcmp(act, alt))) return unsupported(h, k, act);
    return MX_OK;
}

static int read_gpt2(hf_loader *h) {
    mx_config *c = &h->m->cfg;
    snprintf(c->arch_name, sizeof c->arch_name, "gpt2");
    c->arch = MX_ARCH_GPT2;
    if (get_int(h, "n_embd", -1, &c->d_model) || get_int(h, "n_layer", -1, &c->n_layer) ||
        get_int(h, "n_head", -1, &c->n_head) || get_int(h, "n_positions", 1024, &c->max_ctx) ||
        get_int(h, "n_inner", 0, &c->d_ff) ||
        get_float(h, h->cfg, "layer_norm_epsilon", 1e-5f, &c->norm_eps) ||
        read_act(h, "activation_function", "gelu_new", "gelu_pytorch_tanh"))
        return h->err->code;
    if (get_bool(h, "scale_attn_by_inverse_layer_idx", false))
        return unsupported(h, "scale_attn_by_inverse_layer_idx", NULL);
    if (!get_bool(h, "scale_attn_weights", true)) return unsupported(h, "scale_attn_weights = false", NULL);
    if (!c->d_ff) c->d_ff = 4 * c->d_model;
    c->n_kv_head = c->n_head;
    c->norm = MX_NORM_LAYER;
    c->mlp = MX_MLP_GELU;
    c->use_rope = false;
    c->attn_bias = c->mlp_bias = true;
    return MX_OK;
}

static int read_llama(hf_loader *h) {
    mx_config *c = &h->m->cfg;
    snprintf(c->arch_name, sizeof c->arch_name, "llama");
    c->arch = MX_ARCH_LLAMA;
    if (get_int(h, "hidden_size", -1, &c->d_model) || get_int(h, "num_hidden_layers", -1, &c->n_layer) ||
        get_int(h, "num_attention_heads", -1, &c->n_head) || get_int(h, "intermediate_size", -1, &c->d_ff) ||
        get_int(h, "num_key_value_heads", 0, &c->n_kv_head) ||
        get_int(h, "max_position_embeddings", 2048, &c->max_ctx) || get_int(h, "head_dim", 0, &c->head_dim) ||
        get_int(h, "sliding_window", 0, &c->window) ||
        get_float(h, h->cfg, "rms_norm_eps", 1e-6f, &c->norm_eps) || read_rope(h, 10000.0f) ||
        read_act(h, "hidden_act", "silu", NULL))
        return h->err->code;
    if (get_bool(h, "mlp_bias", false)) return unsupported(h, "mlp_bias", NULL);
    if (!strcmp(h->type, "llama") && c->window) c->window = 0; /* Llama has no sliding window */
    if (c->window >= c->max_ctx) c->window = 0;                /* a window covering the context is full */
    c->attn_bias = get_bool(h, "attention_bias", false);
    c->rope_mode = MX_ROPE_HALF;
    c->use_rope = true;
    if (!strcmp(h->type, "mixtral")) {
        if (get_int(h, "num_local_experts", -1, &c->n_expert) ||
            get_int(h, "num_experts_per_tok", -1, &c->n_expert_used))
            return h->err->code;
        if (c->n_expert < 1 || c->n_expert > MX_MAX_EXPERTS)
            return mx_err_set(h->err, MX_ERR_FORMAT, "%s: num_local_experts %d must be in 1..%d", h->cfg_path,
                              c->n_expert, MX_MAX_EXPERTS);
        if (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)
            return mx_err_set(h->err, MX_ERR_FORMAT,
                              "%s: num_experts_per_tok %d must be in 1..num_local_experts (%d)", h->cfg_path,
                              c->n_expert_used, c->n_expert);
        c->expert_norm_topk = true;
    }
    return MX_OK;
}

/* DeepSeek's routing: softmax scores, greedy top-k (V2), or sigmoid with a score bias and groups (V3). */
static int read_deepseek_moe(hf_loader *h) {
    mx_config *c = &h->m->cfg;
    if (get_int(h, "n_routed_experts", 0, &c->n_expert) ||
        get_int(h, "num_experts_per_tok", 0, &c->n_expert_used) ||
        get_int(h, "moe_intermediate_size", 0, &c->d_ff_expert) ||
        get_int(h, "n_shared_experts", 0, &c->n_shared_expert) ||
        get_int(h, "first_k_dense_replace", 0, &c->n_dense_lead) ||
        get_float(h, h->cfg, "routed_scaling_factor", 1.0f, &c->expert_scale))
        return h->err->code;
    int freq = 1, n_group = 0, topk_group = 0;
    if (get_int(h, "moe_layer_freq", 1, &freq) || get_int(h, "n_group", 0, &n_group) ||
        get_int(h, "topk_group", 0, &topk_group))
        return h->err->code;
    c->expert_norm_topk = get_bool(h, "norm_topk_prob", false);
    if (c->n_expert > MX_MAX_EXPERTS)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: n_routed_experts %d exceeds %d", h->cfg_path,
                          c->n_expert, MX_MAX_EXPERTS);
    if (c->n_dense_lead >= c->n_layer || c->n_expert == 0) {
        c->n_expert = c->n_expert_used = c->d_ff_expert = c->n_shared_expert = c->n_dense_lead = 0;
        return MX_OK; /* dense everywhere */
    }
    if (freq != 1) return unsupported(h, "moe_layer_freq other than 1", NULL);
    if (!strcmp(h->type, "deepseek_v3"))
        return unsupported(h, "DeepSeek-V3 expert routing (sigmoid scores with e_score_correction_bias)",
                           NULL);
    const char *method = get_str(h, "topk_method");
    if (method && strcmp(method, "greedy") &&
        !(!strcmp(method, "group_limited_greedy") && topk_group >= n_group))
        return unsupported(h, "topk_method", method);
    if (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)
        return mx_err_set(h->err, MX_ERR_FORMAT,
                          "%s: num_experts_per_tok %d must be in 1..n_routed_experts (%d)", h->cfg_path,
                          c->n_expert_used, c->n_expert);
    return MX_OK;
}

static int read_deepseek(hf_loader *h) {
    mx_config *c = &h->m->cfg;
    snprintf(c->arch_name, sizeof c->arch_name, "deepseek2");
    c->arch = MX_ARCH_DEEPSEEK2;
    if (get_int(h, "hidden_size", -1, &c->d_model) || get_int(h, "num_hidden_layers", -1, &c->n_layer) ||
        get_int(h, "num_attention_heads", -1, &c->n_head) || get_int(h, "intermediate_size", -1, &c->d_ff) ||
        get_int(h, "max_position_embeddings", 2048, &c->max_ctx) ||
        get_int(h, "kv_lora_rank", -1, &c->mla_kv_rank) || get_int(h, "q_lora_rank", 0, &c->mla_q_rank) ||
        get_int(h, "qk_rope_head_dim", -1, &c->mla_rope_dim) ||
        get_int(h, "qk_nope_head_dim", -1, &c->mla_nope_dim) || get_int(h, "v_head_dim", -1, &c->mla_v_dim) ||
        get_float(h, h->cfg, "rms_norm_eps", 1e-6f, &c->norm_eps) || read_rope(h, 10000.0f) ||
        read_act(h, "hidden_act", "silu", NULL) || read_deepseek_moe(h))
        return h->err->code;
    if (get_bool(h, "attention_bias", false) || get_bool(h, "mlp_bias", false))
        return unsupported(h, "attention_bias/mlp_bias in an MLA model", NULL);
    c->n_kv_head = c->n_head; /* MLA: every head has its own k_nope/v from the shared latent */
    c->head_dim = c->mla_nope_dim + c->mla_rope_dim;
    c->rope_dim = c->mla_rope_dim;
    c->use_rope = true;
    bool interleave = strcmp(h->type, "deepseek_v3") || get_bool(h, "rope_interleave", true);
    c->rope_mode = interleave ? MX_ROPE_ADJACENT : MX_ROPE_HALF;
    return MX_OK;
}

static int check_shape(hf_loader *h) {
    mx_config *c = &h->m->cfg;
    if (c->n_layer < 1 || c->n_head < 1 || c->d_model < 1)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: %d layers, %d heads, width %d: nothing to run",
                          h->cfg_path, c->n_layer, c->n_head, c->d_model);
    if (!c->n_kv_head) c->n_kv_head = c->n_head;
    if (c->n_head % c->n_kv_head)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: %d heads are not a multiple of %d KV heads",
                          h->cfg_path, c->n_head, c->n_kv_head);
    if (!c->head_dim) {
        if (c->d_model % c->n_head)
            return mx_err_set(h->err, MX_ERR_FORMAT, "%s: hidden size %d is not a multiple of %d heads",
                              h->cfg_path, c->d_model, c->n_head);
        c->head_dim = c->d_model / c->n_head;
    }
    if (!c->rope_dim) c->rope_dim = c->head_dim;
    if (c->expert_scale == 0) c->expert_scale = 1.0f;
    return MX_OK;
}

static int read_config(hf_loader *h) {
    mx_config *c = &h->m->cfg;
    int v = 0;
    if (get_int(h, "vocab_size", 0, &v)) return h->err->code;
    c->vocab = v;
    h->type = get_str(h, "model_type");
    if (!h->type) return mx_err_set(h->err, MX_ERR_MISSING, "%s: missing key \"model_type\"", h->cfg_path);
    snprintf(c->name, sizeof c->name, "%s", h->type);
    c->expert_scale = 1.0f;
    int rc;
    if (!strcmp(h->type, "gpt2"))
        rc = read_gpt2(h);
    else if (!strcmp(h->type, "llama") || !strcmp(h->type, "mistral") || !strcmp(h->type, "mixtral"))
        rc = read_llama(h);
    else if (!strcmp(h->type, "deepseek_v2") || !strcmp(h->type, "deepseek_v3"))
        rc = read_deepseek(h);
    else
        rc = mx_err_set(h->err, MX_ERR_UNSUPPORTED,
                        "%s: model_type '%s' is not supported (supported: gpt2, llama, mistral, mixtral, "
                        "deepseek_v2, deepseek_v3)",
                        h->cfg_path, h->type);
    return rc || check_shape(h) || mx_config_check(c, h->cfg_path, h->err) ? h->err->code : MX_OK;
}

/* ---- tensors ---- */

static int mark_used(hf_loader *h, const mx_st_tensor *t) {
    if (h->n_used == h->cap_used) {
        int cap = h->cap_used ? 2 * h->cap_used : 256;
        const mx_st_tensor **u = realloc(h->used, sizeof *u * (size_t)cap);
        if (!u) return mx_err_set(h->err, MX_ERR_NOMEM, "out of memory");
        h->used = u;
        h->cap_used = cap;
    }
    h->used[h->n_used++] = t;
    return MX_OK;
}

/* The HF tensor `name`, checked to be of a type mixatt computes with; NULL (and an error when required) if
 * absent. */
static const mx_st_tensor *get(hf_loader *h, const char *name, bool required) {
    const mx_st_tensor *t = mx_st_set_find(h->st, name);
    if (!t) {
        if (required) mx_err_set(h->err, MX_ERR_MISSING, "%s: missing tensor '%s'", h->m->path, name);
        return NULL;
    }
    if (t->type == MX_ST_NO_TYPE) {
        mx_err_set(h->err, MX_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (supported: F32, F16, BF16)",
                   t->file, name, t->dtype);
        return NULL;
    }
    return mark_used(h, t) ? NULL : t;
}

static size_t elem_size(uint32_t type) {
    return type == MX_F32 ? 4 : 2;
}

/* Adds t under gname with ne = t's shape reversed; data stays in the mapping unless it is not aligned to
 * its element (then an owned copy). */
static int add_as_is(hf_loader *h, const mx_st_tensor *t, const char *gname) {
    if (t->n_dims < 1 || t->n_dims > 4)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: tensor '%s' has %d dims (expected 1 to 4)", t->file,
                          t->name, t->n_dims);
    int64_t ne[4];
    for (int i = 0; i < t->n_dims; i++) ne[i] = t->shape[t->n_dims - 1 - i];
    const void *data = t->data;
    bool copy = (uintptr_t)data % elem_size(t->type) != 0;
    if (copy) {
        void *p = malloc(t->nbytes ? t->nbytes : 1);
        if (!p) return mx_err_set(h->err, MX_ERR_NOMEM, "out of memory copying '%s'", t->name);
        memcpy(p, data, t->nbytes);
        data = p;
    }
    return mx_dict_add(&h->m->dict, gname, t->type, t->n_dims, ne, data, t->nbytes, copy, h->err);
}

/* HF name → GGUF name, as stored. An absent optional tensor is skipped (MX_OK whatever err held before). */
static int map(hf_loader *h, const char *hf, const char *gguf, bool required) {
    if (!required && !mx_st_set_find(h->st, hf)) return MX_OK;
    const mx_st_tensor *t = get(h, hf, required);
    if (!t) return h->err->code;
    return add_as_is(h, t, gguf);
}

/* An owned row-major [cols][rows] copy of the 2-D t ([rows][cols]), columns [c0, c0 + n) only:
 * ne {rows, n}. Used for GPT-2's Conv1D weights ([in, out]) → [out][in]. */
static int add_transposed(hf_loader *h, const mx_st_tensor *t, int64_t c0, int64_t n, const char *gname) {
    if (t->n_dims != 2 || c0 + n > t->shape[1])
        return mx_err_set(h->err, MX_ERR_FORMAT,
                          "%s: tensor '%s' is not a [in, out] matrix of at least %lld columns", t->file,
                          t->name, (long long)(c0 + n));
    int64_t rows = t->shape[0], cols = t->shape[1];
    size_t es = elem_size(t->type), nbytes = (size_t)(rows * n) * es;
    uint8_t *dst = malloc(nbytes ? nbytes : 1);
    if (!dst) return mx_err_set(h->err, MX_ERR_NOMEM, "out of memory transposing '%s'", t->name);
    const uint8_t *src = t->data;
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < rows; i++)
            memcpy(dst + (size_t)(j * rows + i) * es, src + (size_t)(i * cols + c0 + j) * es, es);
    int64_t ne[2] = {rows, n};
    return mx_dict_add(&h->m->dict, gname, t->type, 2, ne, dst, nbytes, true, h->err);
}

/* Elements [e0, e0 + n) of a 1-D tensor as its own tensor (c_attn's bias split into q, k, v). */
static int add_slice(hf_loader *h, const mx_st_tensor *t, int64_t e0, int64_t n, const char *gname) {
    if (t->n_dims != 1 || e0 + n > t->shape[0])
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: tensor '%s' is not a vector of at least %lld elements",
                          t->file, t->name, (long long)(e0 + n));
    size_t es = elem_size(t->type);
    void *dst = malloc((size_t)n * es + 1);
    if (!dst) return mx_err_set(h->err, MX_ERR_NOMEM, "out of memory");
    memcpy(dst, (const uint8_t *)t->data + (size_t)e0 * es, (size_t)n * es);
    return mx_dict_add(&h->m->dict, gname, t->type, 1, &n, dst, (size_t)n * es, true, h->err);
}

/* Stacks E per-expert matrices (printf pattern with %d for the layer, then %d for the expert) into one
 * owned tensor ne {n_in, n_out, E}. */
static int add_experts(hf_loader *h, int l, const char *pattern, const char *gname) {
    int E = h->m->cfg.n_expert;
    if (E < 1) /* read_config guarantees it; a loader never sizes a stack from an unchecked count */
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: layer %d: a MoE layer with %d experts", h->cfg_path, l,
                          E);
    const mx_st_tensor **ts = calloc((size_t)E, sizeof *ts);
    if (!ts) return mx_err_set(h->err, MX_ERR_NOMEM, "out of memory");
    char name[256];
    int rc = MX_OK;
    for (int e = 0; e < E && !rc; e++) { /* every expert present, 2-D, alike: then the size is known */
        snprintf(name, sizeof name, pattern, l, e);
        const mx_st_tensor *t = ts[e] = get(h, name, true), *first = ts[0];
        if (!t)
            rc = h->err->code;
        else if (t->n_dims != 2)
            rc = mx_err_set(h->err, MX_ERR_FORMAT,
                            "%s: tensor '%s': expected an expert matrix (2 dims), got %d", t->file, name,
                            t->n_dims);
        else if (t->type != first->type || t->shape[0] != first->shape[0] || t->shape[1] != first->shape[1])
            rc = mx_err_set(h->err, MX_ERR_FORMAT, "%s: tensor '%s' (%s) differs in shape or dtype from '%s'",
                            t->file, name, t->dtype, first->name);
    }
    size_t each = rc ? 0 : ts[0]->nbytes;
    uint8_t *buf = NULL;
    if (!rc && each > (SIZE_MAX - 1) / (size_t)E)
        rc = mx_err_set(h->err, MX_ERR_FORMAT, "%s: layer %d: %d experts of %zu bytes overflow", h->cfg_path,
                        l, E, each);
    if (!rc && !(buf = malloc(each * (size_t)E + 1)))
        rc = mx_err_set(h->err, MX_ERR_NOMEM, "out of memory stacking %d experts of layer %d", E, l);
    if (rc) return free(ts), rc;
    for (int e = 0; e < E; e++) memcpy(buf + each * (size_t)e, ts[e]->data, each);
    int64_t ne[3] = {ts[0]->shape[1], ts[0]->shape[0], E};
    uint32_t type = ts[0]->type;
    free(ts);
    return mx_dict_add(&h->m->dict, gname, type, 3, ne, buf, each * (size_t)E, true, h->err);
}

#define HF(...)  (snprintf(hf, sizeof hf, __VA_ARGS__), hf)
#define BLK(sfx) (snprintf(gg, sizeof gg, "blk.%d.%s", l, sfx), gg)

static int load_gpt2_layer(hf_loader *h, const char *p, int l) {
    char hf[256], gg[96];
    int64_t C = h->m->cfg.d_model;
    if (map(h, HF("%sh.%d.ln_1.weight", p, l), BLK("attn_norm.weight"), true) ||
        map(h, HF("%sh.%d.ln_1.bias", p, l), BLK("attn_norm.bias"), true) ||
        map(h, HF("%sh.%d.ln_2.weight", p, l), BLK("ffn_norm.weight"), true) ||
        map(h, HF("%sh.%d.ln_2.bias", p, l), BLK("ffn_norm.bias"), true))
        return h->err->code;
    const mx_st_tensor *w = get(h, HF("%sh.%d.attn.c_attn.weight", p, l), true);
    const mx_st_tensor *b = w ? get(h, HF("%sh.%d.attn.c_attn.bias", p, l), true) : NULL;
    if (!b) return h->err->code;
    static const char *qkv[3] = {"attn_q", "attn_k", "attn_v"};
    for (int i = 0; i < 3; i++) {
        char wn[32], bn[32];
        snprintf(wn, sizeof wn, "%s.weight", qkv[i]);
        snprintf(bn, sizeof bn, "%s.bias", qkv[i]);
        if (add_transposed(h, w, i * C, C, BLK(wn)) || add_slice(h, b, i * C, C, BLK(bn)))
            return h->err->code;
    }
    const char *conv[3][2] = {
        {"attn.c_proj", "attn_output"}, {"mlp.c_fc", "ffn_up"}, {"mlp.c_proj", "ffn_down"}};
    for (int i = 0; i < 3; i++) {
        char gn[48];
        const mx_st_tensor *t = get(h, HF("%sh.%d.%s.weight", p, l, conv[i][0]), true);
        if (!t || add_transposed(h, t, 0, t->n_dims == 2 ? t->shape[1] : 0,
                                 (snprintf(gn, sizeof gn, "%s.weight", conv[i][1]), BLK(gn))))
            return h->err->code;
        snprintf(gn, sizeof gn, "%s.bias", conv[i][1]);
        if (map(h, HF("%sh.%d.%s.bias", p, l, conv[i][0]), BLK(gn), true)) return h->err->code;
    }
    return MX_OK;
}

static int load_gpt2(hf_loader *h) {
    const char *p = mx_st_set_find(h->st, "transformer.wte.weight") ? "transformer." : "";
    char hf[256];
    if (map(h, HF("%swte.weight", p), "token_embd.weight", true) ||
        map(h, HF("%swpe.weight", p), "position_embd.weight", true) ||
        map(h, HF("%sln_f.weight", p), "output_norm.weight", true) ||
        map(h, HF("%sln_f.bias", p), "output_norm.bias", true))
        return h->err->code;
    for (int l = 0; l < h->m->cfg.n_layer; l++)
        if (load_gpt2_layer(h, p, l)) return h->err->code;
    return MX_OK;
}

static int load_llama_mlp(hf_loader *h, int l) {
    char hf[256], gg[96];
    if (!strcmp(h->type, "mixtral")) {
        return map(h, HF("model.layers.%d.block_sparse_moe.gate.weight", l), BLK("ffn_gate_inp.weight"),
                   true) ||
               add_experts(h, l, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
                           BLK("ffn_gate_exps.weight")) ||
               add_experts(h, l, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
                           BLK("ffn_up_exps.weight")) ||
               add_experts(h, l, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight",
                           BLK("ffn_down_exps.weight"));
    }
    return map(h, HF("model.layers.%d.mlp.gate_proj.weight", l), BLK("ffn_gate.weight"), true) ||
           map(h, HF("model.layers.%d.mlp.up_proj.weight", l), BLK("ffn_up.weight"), true) ||
           map(h, HF("model.layers.%d.mlp.down_proj.weight", l), BLK("ffn_down.weight"), true);
}

static int load_llama_layer(hf_loader *h, int l) {
    char hf[256], gg[96];
    const char *proj[4][2] = {
        {"q_proj", "attn_q"}, {"k_proj", "attn_k"}, {"v_proj", "attn_v"}, {"o_proj", "attn_output"}};
    if (map(h, HF("model.layers.%d.input_layernorm.weight", l), BLK("attn_norm.weight"), true) ||
        map(h, HF("model.layers.%d.post_attention_layernorm.weight", l), BLK("ffn_norm.weight"), true))
        return h->err->code;
    for (int i = 0; i < 4; i++) {
        char gn[48];
        snprintf(gn, sizeof gn, "%s.weight", proj[i][1]);
        if (map(h, HF("model.layers.%d.self_attn.%s.weight", l, proj[i][0]), BLK(gn), true))
            return h->err->code;
        snprintf(gn, sizeof gn, "%s.bias", proj[i][1]);
        if (h->m->cfg.attn_bias &&
            map(h, HF("model.layers.%d.self_attn.%s.bias", l, proj[i][0]), BLK(gn), true))
            return h->err->code;
    }
    return load_llama_mlp(h, l);
}

static int load_deepseek_attn(hf_loader *h, int l) {
    char hf[256], gg[96];
    const char *a = "model.layers.%d.self_attn.%s";
    if (h->m->cfg.mla_q_rank > 0) {
        if (map(h, HF(a, l, "q_a_proj.weight"), BLK("attn_q_a.weight"), true) ||
            map(h, HF(a, l, "q_a_layernorm.weight"), BLK("attn_q_a_norm.weight"), true) ||
            map(h, HF(a, l, "q_b_proj.weight"), BLK("attn_q_b.weight"), true))
            return h->err->code;
    } else if (map(h, HF(a, l, "q_proj.weight"), BLK("attn_q.weight"), true)) {
        return h->err->code;
    }
    return map(h, HF(a, l, "kv_a_proj_with_mqa.weight"), BLK("attn_kv_a_mqa.weight"), true) ||
           map(h, HF(a, l, "kv_a_layernorm.weight"), BLK("attn_kv_a_norm.weight"), true) ||
           map(h, HF(a, l, "kv_b_proj.weight"), BLK("attn_kv_b.weight"), true) ||
           map(h, HF(a, l, "o_proj.weight"), BLK("attn_output.weight"), true);
}

static int load_deepseek_layer(hf_loader *h, int l) {
    char hf[256], gg[96];
    if (map(h, HF("model.layers.%d.input_layernorm.weight", l), BLK("attn_norm.weight"), true) ||
        map(h, HF("model.layers.%d.post_attention_layernorm.weight", l), BLK("ffn_norm.weight"), true) ||
        load_deepseek_attn(h, l))
        return h->err->code;
    if (!mx_layer_is_moe(&h->m->cfg, l))
        return map(h, HF("model.layers.%d.mlp.gate_proj.weight", l), BLK("ffn_gate.weight"), true) ||
               map(h, HF("model.layers.%d.mlp.up_proj.weight", l), BLK("ffn_up.weight"), true) ||
               map(h, HF("model.layers.%d.mlp.down_proj.weight", l), BLK("ffn_down.weight"), true);
    if (map(h, HF("model.layers.%d.mlp.gate.weight", l), BLK("ffn_gate_inp.weight"), true) ||
        add_experts(h, l, "model.layers.%d.mlp.experts.%d.gate_proj.weight", BLK("ffn_gate_exps.weight")) ||
        add_experts(h, l, "model.layers.%d.mlp.experts.%d.up_proj.weight", BLK("ffn_up_exps.weight")) ||
        add_experts(h, l, "model.layers.%d.mlp.experts.%d.down_proj.weight", BLK("ffn_down_exps.weight")))
        return h->err->code;
    if (h->m->cfg.n_shared_expert == 0) return MX_OK;
    return map(h, HF("model.layers.%d.mlp.shared_experts.gate_proj.weight", l), BLK("ffn_gate_shexp.weight"),
               true) ||
           map(h, HF("model.layers.%d.mlp.shared_experts.up_proj.weight", l), BLK("ffn_up_shexp.weight"),
               true) ||
           map(h, HF("model.layers.%d.mlp.shared_experts.down_proj.weight", l), BLK("ffn_down_shexp.weight"),
               true);
}
#undef BLK

/* lm_head: its own output matrix, or (tied) the embedding; a tied config may still store a copy. */
static int load_head(hf_loader *h) {
    bool tied = get_bool(h, "tie_word_embeddings", !strcmp(h->type, "gpt2"));
    if (tied && !mx_st_set_find(h->st, "lm_head.weight")) return MX_OK;
    const mx_st_tensor *t = get(h, "lm_head.weight", true);
    if (!t) return h->err->code;
    return tied ? MX_OK : add_as_is(h, t, "output.weight");
}

static int load_tensors(hf_loader *h) {
    bool gpt2 = h->m->cfg.arch == MX_ARCH_GPT2;
    if (gpt2) return load_gpt2(h) || load_head(h);
    if (map(h, "model.embed_tokens.weight", "token_embd.weight", true) ||
        map(h, "model.norm.weight", "output_norm.weight", true) || load_head(h))
        return h->err->code;
    for (int l = 0; l < h->m->cfg.n_layer; l++) {
        int rc = h->m->cfg.arch == MX_ARCH_DEEPSEEK2 ? load_deepseek_layer(h, l) : load_llama_layer(h, l);
        if (rc) return mx_err_wrap(h->err, "layer %d", l);
    }
    return MX_OK;
}
#undef HF

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

/* Buffers transformers stores but does not read, and DeepSeek-V3's multi-token-prediction layers (after
 * the last decoder layer; only used for speculative decoding). */
static bool ignorable(const hf_loader *h, const char *name) {
    size_t n = strlen(name);
    const char *tail[] = {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"};
    for (size_t i = 0; i < sizeof tail / sizeof tail[0]; i++)
        if (n > strlen(tail[i]) && !strcmp(name + n - strlen(tail[i]), tail[i])) return true;
    int l;
    return !strcmp(h->type, "deepseek_v3") && sscanf(name, "model.layers.%d.", &l) == 1 &&
           l >= h->m->cfg.n_layer;
}

static int check_one(const mx_st_tensor *t, void *ctx) {
    hf_loader *h = ctx;
    const mx_st_tensor *key = t;
    if (bsearch(&key, h->used, (size_t)h->n_used, sizeof key, cmp_ptr) || ignorable(h, t->name)) return 0;
    return mx_err_set(
        h->err, MX_ERR_UNSUPPORTED,
        "%s: tensor '%s' is not used by mixatt's %s model: the checkpoint has a feature mixatt does "
        "not implement, or %s does not describe these weights",
        t->file, t->name, h->type, h->cfg_path);
}

static int check_unused(hf_loader *h) {
    qsort(h->used, (size_t)h->n_used, sizeof *h->used, cmp_ptr);
    return mx_st_set_each(h->st, check_one, h) ? h->err->code : MX_OK;
}

/* vocab_size, when the config gives it, must be the embedding's row count (model.c takes the vocabulary from
 * the embedding): a config that says otherwise describes other weights. */
static int check_vocab(hf_loader *h) {
    const mx_tensor *emb = mx_dict_find(&h->m->dict, "token_embd.weight");
    if (!key(h, "vocab_size") || !emb) return MX_OK;
    if (h->m->cfg.vocab < 1 || emb->ne[1] != h->m->cfg.vocab)
        return mx_err_set(h->err, MX_ERR_FORMAT,
                          "%s: vocab_size %d does not match the token embedding's %lld rows", h->cfg_path,
                          h->m->cfg.vocab, (long long)emb->ne[1]);
    return MX_OK;
}

/* Line and column (1-based) of byte offset `at` of text. */
static void text_position(const char *text, size_t at, int *line, int *col) {
    *line = 1, *col = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n')
            ++*line, *col = 1;
        else
            ++*col;
    }
}

static int open_config(hf_loader *h) {
    snprintf(h->cfg_path, sizeof h->cfg_path, "%s/config.json", h->m->path);
    size_t n;
    char *text = mx_file_read(h->cfg_path, &n, h->err);
    if (!text) return mx_err_wrap(h->err, "%s as a Hugging Face model directory", h->m->path);
    const char *end = strlen(text) < n ? text + strlen(text) : NULL; /* a NUL byte ends the text */
    if (!end) h->cfg = cJSON_ParseWithOpts(text, &end, true);
    int line = 0, col = 0;
    if (!h->cfg && end) text_position(text, (size_t)(end - text), &line, &col);
    bool nul = !h->cfg && end && !*end && (size_t)(end - text) < n;
    free(text);
    if (!h->cfg)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: invalid JSON at line %d, column %d%s", h->cfg_path,
                          line, col, nul ? " (a NUL byte)" : "");
    if (!cJSON_IsObject(h->cfg))
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: the top level is not a JSON object", h->cfg_path);
    return MX_OK;
}

int mx_load_hf(mx_model *m, mx_err *err) {
    hf_loader h = {.m = m, .err = err};
    int rc = open_config(&h) || read_config(&h) || mx_st_set_open(m->path, &h.st, err) ? err->code : MX_OK;
    if (!rc) m->hf = h.st;
    if (!rc) rc = load_tensors(&h) || check_unused(&h) || check_vocab(&h) ? err->code : MX_OK;
    free(h.used);
    cJSON_Delete(h.cfg);
    m->tok = NULL;
    m->chat = NULL;
    return rc;
}
