/* load_ckpt.c: a checkpoint written by `mixatt train` (src/train/ckpt.h: format "mixatt-train-1", F32 tensors
 * under mixatt's names, the training config as JSON and the expanded plan in __metadata__) → mx_config and
 * the tensor dictionary, so that `mixatt run -m RUN_DIR` (or RUN_DIR/checkpoint.safetensors) runs what was
 * trained.
 *
 * Config: arch gpt2 → MX_ARCH_GPT2 (LayerNorm, GELU, learned positions, biases); llama → MX_ARCH_LLAMA
 * (RMSNorm, SwiGLU, RoPE in the rotate-half layout); attn mla → MX_ARCH_DEEPSEEK2 with the mla_* sizes (its
 * RoPE also rotate-half, as training computes it); attn mka/fastmka → the layers' kind; n_expert > 0 → a MoE
 * MLP on every layer. The AdamW moments (optim.*) are skipped. Matrices [out, in] are ne {in, out} as they
 * are; stacked experts (E*F, C) / (E*C, F) become ne {C, F, E} / {F, C, E}.
 * muP (docs/training.md) is folded into the weights, exactly: its attention scale 1/D = (1/sqrt(D))^2 by
 * scaling the query projection by 1/sqrt(D) (RoPE is linear), its logit multiplier by scaling the output head
 * (a tied head becomes an untied, scaled copy). The checkpoint carries no tokenizer (m->tok stays NULL). */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../io/dtype.h"
#include "../io/safetensors.h"
#include "config_check.h"
#include "model.h"

typedef struct {
    mx_model *m;
    mx_err *err;
    const mx_st_file *f;
    const cJSON *cfg;
    bool mup;
    int base_width;
} ckpt_loader;

/* *out = the config's key k, a non-negative int; def when the key is absent (def < 0: the key is required). */
static int cfg_int(ckpt_loader *h, const char *k, int def, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, k);
    if (!j && def < 0)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: the stored config has no key '%s'", h->m->path, k);
    if (!j) return *out = def, MX_OK;
    /* the range first: converting a double outside int's range to int is undefined */
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= 0 && j->valuedouble <= INT_MAX) ||
        j->valuedouble != (double)(int)j->valuedouble)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: config key '%s' is not a non-negative integer",
                          h->m->path, k);
    *out = (int)j->valuedouble;
    return MX_OK;
}

static float cfg_float(const ckpt_loader *h, const char *k, float def) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, k);
    return cJSON_IsNumber(j) ? (float)j->valuedouble : def;
}

static bool cfg_bool(const ckpt_loader *h, const char *k, bool def) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, k);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : def;
}

static const char *cfg_str(const ckpt_loader *h, const char *k, const char *def) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, k);
    return cJSON_IsString(j) ? j->valuestring : def;
}

static int read_shape(ckpt_loader *h) {
    mx_config *c = &h->m->cfg;
    if (cfg_int(h, "vocab", -1, &c->vocab) || cfg_int(h, "d_model", -1, &c->d_model) ||
        cfg_int(h, "n_layer", -1, &c->n_layer) || cfg_int(h, "n_head", -1, &c->n_head) ||
        cfg_int(h, "n_kv_head", -1, &c->n_kv_head) || cfg_int(h, "d_ff", -1, &c->d_ff) ||
        cfg_int(h, "max_ctx", -1, &c->max_ctx) || cfg_int(h, "window", 0, &c->window) ||
        cfg_int(h, "n_expert", 0, &c->n_expert) || cfg_int(h, "n_expert_used", 0, &c->n_expert_used) ||
        cfg_int(h, "mla_kv_rank", 0, &c->mla_kv_rank) || cfg_int(h, "mla_q_rank", 0, &c->mla_q_rank) ||
        cfg_int(h, "mla_rope_dim", 0, &c->mla_rope_dim) || cfg_int(h, "mla_nope_dim", 0, &c->mla_nope_dim) ||
        cfg_int(h, "mla_v_dim", 0, &c->mla_v_dim) || cfg_int(h, "mup_base_width", 0, &h->base_width))
        return h->err->code;
    if (c->vocab < 1 || c->d_model < 1 || c->n_layer < 1 || c->n_head < 1 || c->n_kv_head < 1 ||
        c->d_model % c->n_head || c->n_head % c->n_kv_head)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: the stored config has an impossible shape", h->m->path);
    return MX_OK;
}

/* mx_config from the training config (the "config" metadata, JSON). */
static int read_config(ckpt_loader *h) {
    mx_config *c = &h->m->cfg;
    if (read_shape(h)) return h->err->code;
    const char *arch = cfg_str(h, "arch", ""), *attn = cfg_str(h, "attn", "mha");
    int kind = mx_attn_kind_parse(attn);
    if (strcmp(arch, "gpt2") && strcmp(arch, "llama"))
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: unknown arch '%s' in the stored config", h->m->path,
                          arch);
    if (kind < 0)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: unknown attn '%s' in the stored config", h->m->path,
                          attn);
    bool gpt2 = !strcmp(arch, "gpt2");
    snprintf(c->name, sizeof c->name, "mixatt-train");
    c->norm_eps = cfg_float(h, "norm_eps", 1e-5f);
    c->rope_theta = cfg_float(h, "rope_theta", 10000.0f);
    c->head_dim = c->d_model / c->n_head;
    c->norm = gpt2 ? MX_NORM_LAYER : MX_NORM_RMS;
    c->mlp = gpt2 ? MX_MLP_GELU : MX_MLP_SWIGLU;
    c->use_rope = !gpt2;
    c->attn_bias = c->mlp_bias = gpt2;
    c->rope_mode = MX_ROPE_HALF;
    c->arch = gpt2 ? MX_ARCH_GPT2 : MX_ARCH_LLAMA;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    c->attn_kind = kind == MX_ATTN_MLA ? MX_ATTN_MHA : (mx_attn_kind)kind;
    if (kind == MX_ATTN_MLA) {
        c->arch = MX_ARCH_DEEPSEEK2;
        snprintf(c->arch_name, sizeof c->arch_name, "deepseek2");
        c->n_kv_head = c->n_head;
        c->head_dim = c->mla_nope_dim + c->mla_rope_dim;
        c->rope_dim = c->mla_rope_dim;
    }
    if (!c->rope_dim) c->rope_dim = c->head_dim;
    c->expert_norm_topk = cfg_bool(h, "expert_norm_topk", true);
    c->expert_scale = 1.0f;
    c->d_ff_expert = c->n_expert > 0 ? c->d_ff : 0;
    if (c->window >= c->max_ctx) c->window = 0;
    h->mup = cfg_bool(h, "mup", false);
    if (h->mup && h->base_width < 1)
        return mx_err_set(h->err, MX_ERR_FORMAT, "%s: mup without a positive mup_base_width", h->m->path);
    return mx_config_check(c, h->m->path, h->err);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The factor muP folds into tensor `name` (1 without muP): queries 1/sqrt(D), the head base / width. */
static float mup_factor(const ckpt_loader *h, const char *name) {
    const mx_config *c = &h->m->cfg;
    if (!h->mup) return 1.0f;
    if (ends_with(name, "attn_q.weight") || ends_with(name, "attn_q.bias") ||
        ends_with(name, "attn_q_b.weight"))
        return 1.0f / sqrtf((float)c->head_dim); /* MLA: head_dim = nope + rope, the score width */
    if (!strcmp(name, "output.weight")) return (float)h->base_width / (float)c->d_model;
    return 1.0f;
}

/* Adds an owned F32 copy of t scaled by s under `name`, with ne (n_dims of them). */
static int add_copy(ckpt_loader *h, const mx_st_tensor *t, const char *name, int n_dims, const int64_t *ne,
                    float s) {
    size_t n = t->nbytes / sizeof(float);
    if (mx_st_check_finite(t, h->err)) return h->err->code;
    float *dst = malloc(t->nbytes ? t->nbytes : 1);
    if (!dst) return mx_err_set(h->err, MX_ERR_NOMEM, "out of memory copying '%s'", t->name);
    memcpy(dst, t->data, t->nbytes);
    for (size_t i = 0; s != 1.0f && i < n; i++) dst[i] *= s;
    return mx_dict_add(&h->m->dict, name, MX_F32, n_dims, ne, dst, t->nbytes, true, h->err);
}

static int add_tensor(ckpt_loader *h, const mx_st_tensor *t) {
    const mx_config *c = &h->m->cfg;
    if (t->type != MX_F32 || t->n_dims < 1 || t->n_dims > 2)
        return mx_err_set(h->err, MX_ERR_FORMAT,
                          "%s: tensor '%s' is %s with %d dims; a checkpoint holds F32 "
                          "vectors and matrices",
                          h->m->path, t->name, t->dtype, t->n_dims);
    int64_t ne[3] = {t->shape[t->n_dims - 1], t->n_dims == 2 ? t->shape[0] : 1, 1};
    int nd = t->n_dims;
    bool gate_up = ends_with(t->name, "ffn_gate_exps.weight") || ends_with(t->name, "ffn_up_exps.weight");
    if ((gate_up || ends_with(t->name, "ffn_down_exps.weight")) && c->n_expert > 0) {
        ne[1] = gate_up ? c->d_ff : c->d_model; /* (E*F, C) → ne {C, F, E}; (E*C, F) → ne {F, C, E} */
        ne[2] = c->n_expert;
        nd = 3;
        if (t->shape[0] != ne[1] * ne[2])
            return mx_err_set(h->err, MX_ERR_FORMAT, "%s: tensor '%s' has %lld rows, not %d experts x %lld",
                              h->m->path, t->name, (long long)t->shape[0], c->n_expert, (long long)ne[1]);
    }
    const char *name = t->name;
    if (add_copy(h, t, name, nd, ne, mup_factor(h, name))) return h->err->code;
    bool tied = !mx_st_find(h->f, "output.weight");
    if (h->mup && tied && !strcmp(name, "token_embd.weight")) /* the scaled head, untied */
        return add_copy(h, t, "output.weight", nd, ne, (float)h->base_width / (float)c->d_model);
    return MX_OK;
}

int mx_load_ckpt(mx_model *m, mx_err *err) {
    mx_st_file *f;
    if (mx_st_open(m->path, &f, err)) return err->code;
    ckpt_loader h = {.m = m, .err = err, .f = f};
    const char *fmt = mx_st_meta(f, "format"), *json = mx_st_meta(f, "config"), *plan = mx_st_meta(f, "plan");
    cJSON *cfg = NULL;
    int rc = MX_OK;
    if (!fmt || strcmp(fmt, "mixatt-train-1") || !json || !plan)
        rc =
            mx_err_set(err, MX_ERR_FORMAT,
                       "%s: not a mixatt training checkpoint (format '%s'); give a GGUF file, a Hugging Face "
                       "directory or a checkpoint of mixatt train",
                       m->path, fmt ? fmt : "none");
    else if (mx_st_verify_checksum(f, true, err))
        rc = err->code;
    else if (!(cfg = cJSON_Parse(json)) || !cJSON_IsObject(cfg))
        rc = mx_err_set(err, MX_ERR_FORMAT, "%s: the stored config is not a JSON object", m->path);
    h.cfg = cfg;
    if (!rc) rc = read_config(&h);
    if (!rc && !(m->stored_plan = strdup(plan))) rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < f->n_tensors; i++)
        if (strncmp(f->tensors[i].name, "optim.", 6)) rc = add_tensor(&h, &f->tensors[i]);
    cJSON_Delete(cfg);
    mx_st_close(f);
    m->tok = NULL;
    m->chat = NULL;
    return rc;
}
