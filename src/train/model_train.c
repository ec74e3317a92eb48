/* model_train.c: the training config (one flat JSON object of keys, each with a type; --set key=value), the
 * parameter layout (one flat buffer each for weights, gradients and the two AdamW moments), random init and
 * the activation buffers of one (B, T) batch. See model_train.h. */
#include "model_train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/backend.h"
#include "../base/rng.h"
#include "mla_train.h"
#include "op_profile.h"
#include "mka_train.h"
#include "moe_train.h"
#include "mup.h"

/* ---- config keys ---- */

typedef enum { K_INT, K_FLOAT, K_BOOL, K_STR, K_ARCH, K_U64, K_ATTN } key_type;

typedef struct {
    const char *name;
    key_type type;
    size_t off;
} key_def;

#define KEY(n, t)                                                                                            \
    { #n, t, offsetof(mx_train_config, n) }
static const key_def KEYS[] = {
    KEY(arch, K_ARCH),
    KEY(vocab, K_INT),
    KEY(d_model, K_INT),
    KEY(n_layer, K_INT),
    KEY(n_head, K_INT),
    KEY(n_kv_head, K_INT),
    KEY(d_ff, K_INT),
    KEY(max_ctx, K_INT),
    KEY(norm_eps, K_FLOAT),
    KEY(rope_theta, K_FLOAT),
    KEY(tied_embeddings, K_BOOL),
    KEY(plan, K_STR),
    KEY(window, K_INT),
    KEY(attn, K_ATTN),
    KEY(mla_kv_rank, K_INT),
    KEY(mla_q_rank, K_INT),
    KEY(mla_rope_dim, K_INT),
    KEY(mla_nope_dim, K_INT),
    KEY(mla_v_dim, K_INT),
    KEY(n_expert, K_INT),
    KEY(n_expert_used, K_INT),
    KEY(expert_norm_topk, K_BOOL),
    KEY(moe_aux_weight, K_FLOAT),
    KEY(mup, K_BOOL),
    KEY(mup_base_width, K_INT),
    KEY(seed, K_U64),
    KEY(init_std, K_FLOAT),
    KEY(init, K_STR),
    KEY(train_data, K_STR),
    KEY(val_data, K_STR),
    KEY(batch, K_INT),
    KEY(seq, K_INT),
    KEY(grad_accum, K_INT),
    KEY(steps, K_INT),
    KEY(warmup, K_INT),
    KEY(lr, K_FLOAT),
    KEY(min_lr, K_FLOAT),
    KEY(weight_decay, K_FLOAT),
    KEY(beta1, K_FLOAT),
    KEY(beta2, K_FLOAT),
    KEY(adam_eps, K_FLOAT),
    KEY(grad_clip, K_FLOAT),
    KEY(decay_embeddings, K_BOOL),
    KEY(decay_norms_biases, K_BOOL),
    KEY(val_every, K_INT),
    KEY(val_batches, K_INT),
    KEY(ckpt_every, K_INT),
    KEY(log_every, K_INT),
    KEY(recompute, K_BOOL),
};
#undef KEY
enum { N_KEYS = sizeof KEYS / sizeof KEYS[0] };

void mx_train_config_defaults(mx_train_config *c) {
    *c = (mx_train_config){
        .arch = MX_TARCH_GPT2,
        .vocab = 256,
        .d_model = 64,
        .n_layer = 2,
        .n_head = 4,
        .n_kv_head = 4,
        .d_ff = 256,
        .max_ctx = 64,
        .norm_eps = 1e-5f,
        .rope_theta = 10000.0f,
        .tied_embeddings = true,
        .window = 16,
        .attn = MX_ATTN_MHA,
        .mla_kv_rank = 32,
        .mla_q_rank = 0,
        .mla_rope_dim = 8,
        .mla_nope_dim = 16,
        .mla_v_dim = 16,
        .n_expert = 0,
        .n_expert_used = 2,
        .expert_norm_topk = true,
        .moe_aux_weight = 0.01f,
        .mup = false,
        .mup_base_width = 64,
        .seed = 1337,
        .init_std = 0.02f,
        .train_data = "synthetic:copy",
        .batch = 8,
        .seq = 64,
        .grad_accum = 1,
        .steps = 100,
        .warmup = 10,
        .lr = 1e-3f,
        .min_lr = 1e-4f,
        .weight_decay = 0.1f,
        .beta1 = 0.9f,
        .beta2 = 0.95f,
        .adam_eps = 1e-8f,
        .grad_clip = 1.0f,
        .val_every = 50,
        .val_batches = 4,
        .ckpt_every = 0,
        .log_every = 1,
    };
}

static const key_def *find_key(const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].name, name)) return &KEYS[i];
    return NULL;
}

static int unknown_key(const char *name, const char *where, mx_err *err) {
    char list[1024] = "";
    for (int i = 0; i < N_KEYS; i++) {
        strncat(list, KEYS[i].name, sizeof list - strlen(list) - 1);
        if (i + 1 < N_KEYS) strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    return mx_err_set(err, MX_ERR_ARG, "%s: unknown config key '%s' (known: %s)", where, name, list);
}

static int set_str(char *dst, const char *s, const key_def *k, const char *where, mx_err *err) {
    if (strlen(s) >= sizeof((mx_train_config *)0)->plan)
        return mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' is too long", where, k->name);
    strcpy(dst, s);
    return MX_OK;
}

/* Sets key k from a string (--set) or a number/bool (JSON: s == NULL). */
static int set_value(mx_train_config *c, const key_def *k, const char *s, double num, int is_bool, bool bval,
                     const char *where, mx_err *err) {
    char *p = (char *)c + k->off, *end = NULL;
    double v = num;
    if (k->type == K_STR) {
        if (!s) return mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' expects a string", where, k->name);
        return set_str(p, s, k, where, err);
    }
    if (k->type == K_ATTN) {
        int kind = s ? mx_attn_kind_parse(s) : -1;
        if (kind < 0)
            return mx_err_set(err, MX_ERR_ARG,
                              "%s: config key 'attn' expects \"mha\", \"mla\", \"mka\" or \"fastmka\"",
                              where);
        *(mx_attn_kind *)p = (mx_attn_kind)kind;
        return MX_OK;
    }
    if (k->type == K_ARCH) {
        if (!s || (strcmp(s, "gpt2") && strcmp(s, "llama")))
            return mx_err_set(err, MX_ERR_ARG, "%s: config key 'arch' expects \"gpt2\" or \"llama\"", where);
        *(mx_tarch *)p = !strcmp(s, "gpt2") ? MX_TARCH_GPT2 : MX_TARCH_LLAMA;
        return MX_OK;
    }
    if (k->type == K_BOOL) {
        if (s && (!strcmp(s, "true") || !strcmp(s, "1")))
            bval = true, is_bool = 1;
        else if (s && (!strcmp(s, "false") || !strcmp(s, "0")))
            bval = false, is_bool = 1;
        if (!is_bool)
            return mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' expects true or false", where, k->name);
        *(bool *)p = bval;
        return MX_OK;
    }
    if (s) {
        errno = 0;
        v = strtod(s, &end);
        if (end == s || *end || errno)
            return mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' expects a number, not '%s'", where,
                              k->name, s);
    } else if (is_bool) {
        return mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' expects a number", where, k->name);
    }
    if (k->type == K_FLOAT) {
        *(float *)p = (float)v;
        return MX_OK;
    }
    if (v != floor(v) || v < (k->type == K_U64 ? 0 : -2147483648.0) ||
        v > (k->type == K_U64 ? 9.0e15 : 2147483647.0))
        return mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' expects an integer, not %g", where, k->name,
                          v);
    if (k->type == K_U64)
        *(uint64_t *)p = (uint64_t)v;
    else
        *(int *)p = (int)v;
    return MX_OK;
}

int mx_train_config_apply_json(mx_train_config *c, const char *json, const char *where, mx_err *err) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mx_err_set(err, MX_ERR_FORMAT, "%s: not a JSON object", where);
    }
    int rc = MX_OK;
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        const key_def *k = find_key(it->string);
        if (!k)
            rc = unknown_key(it->string, where, err);
        else if (cJSON_IsString(it))
            rc = set_value(c, k, it->valuestring, 0, 0, false, where, err);
        else if (cJSON_IsBool(it))
            rc = set_value(c, k, NULL, 0, 1, cJSON_IsTrue(it), where, err);
        else if (cJSON_IsNumber(it) && k->type != K_STR && k->type != K_ARCH && k->type != K_ATTN)
            rc = set_value(c, k, NULL, it->valuedouble, 0, false, where, err);
        else
            rc = mx_err_set(err, MX_ERR_ARG, "%s: config key '%s' has a value of the wrong type", where,
                            it->string);
    }
    cJSON_Delete(root);
    return rc;
}

int mx_train_config_set(mx_train_config *c, const char *kv, mx_err *err) {
    const char *eq = strchr(kv, '=');
    if (!eq) return mx_err_set(err, MX_ERR_ARG, "--set expects key=value, not '%s'", kv);
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(eq - kv) < 63 ? (int)(eq - kv) : 63, kv);
    const key_def *k = find_key(name);
    if (!k) return unknown_key(name, "--set", err);
    return set_value(c, k, eq + 1, 0, 0, false, "--set", err);
}

char *mx_train_config_to_json(const mx_train_config *c) {
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &KEYS[i];
        const char *p = (const char *)c + k->off;
        switch (k->type) {
        case K_INT:
            cJSON_AddNumberToObject(o, k->name, *(const int *)p);
            break;
        case K_U64:
            cJSON_AddNumberToObject(o, k->name, (double)*(const uint64_t *)p);
            break;
        case K_FLOAT: {
            /* the shortest decimal that reads back as the same float */
            char buf[32];
            snprintf(buf, sizeof buf, "%.9g", *(const float *)p);
            cJSON_AddRawToObject(o, k->name, buf);
            break;
        }
        case K_BOOL:
            cJSON_AddBoolToObject(o, k->name, *(const bool *)p);
            break;
        case K_STR:
            cJSON_AddStringToObject(o, k->name, p);
            break;
        case K_ARCH:
            cJSON_AddStringToObject(o, k->name, *(const mx_tarch *)p == MX_TARCH_GPT2 ? "gpt2" : "llama");
            break;
        case K_ATTN:
            cJSON_AddStringToObject(o, k->name, mx_attn_kind_name(*(const mx_attn_kind *)p));
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

static int check_positive(const char *name, long v, mx_err *err) {
    return v > 0 ? MX_OK : mx_err_set(err, MX_ERR_ARG, "config: %s must be positive (got %ld)", name, v);
}

/* The sizes of MLA, MoE and muP, and the architectures they train with. */
static int check_blocks(const mx_train_config *c, mx_err *err) {
    bool llama = c->arch == MX_TARCH_LLAMA;
    if (c->attn == MX_ATTN_MLA) {
        if (!llama)
            return mx_err_set(err, MX_ERR_UNSUPPORTED, "config: attn mla trains with arch llama only");
        const struct {
            const char *n;
            long v;
        } pos[] = {{"mla_kv_rank", c->mla_kv_rank},
                   {"mla_rope_dim", c->mla_rope_dim},
                   {"mla_nope_dim", c->mla_nope_dim},
                   {"mla_v_dim", c->mla_v_dim}};
        for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
            if (check_positive(pos[i].n, pos[i].v, err)) return err->code;
        if (c->mla_q_rank < 0 || c->mla_rope_dim % 2)
            return mx_err_set(err, MX_ERR_ARG,
                              "config: need mla_q_rank >= 0 and an even mla_rope_dim (got %d)",
                              c->mla_rope_dim);
    }
    if (c->n_expert < 0) return mx_err_set(err, MX_ERR_ARG, "config: n_expert must be >= 0");
    if (c->n_expert > 0) {
        if (!llama)
            return mx_err_set(err, MX_ERR_UNSUPPORTED,
                              "config: experts (n_expert) train with arch llama only");
        if (c->n_expert < 2) return mx_err_set(err, MX_ERR_ARG, "config: n_expert must be 0 or at least 2");
        if (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)
            return mx_err_set(err, MX_ERR_ARG, "config: n_expert_used must be in 1..n_expert (%d), got %d",
                              c->n_expert, c->n_expert_used);
        if (c->moe_aux_weight < 0) return mx_err_set(err, MX_ERR_ARG, "config: moe_aux_weight must be >= 0");
    }
    if (c->mup && c->mup_base_width <= 0)
        return mx_err_set(err, MX_ERR_ARG, "config: mup_base_width must be positive (got %d)",
                          c->mup_base_width);
    return MX_OK;
}

int mx_train_config_check(const mx_train_config *c, mx_err *err) {
    const struct {
        const char *n;
        long v;
    } pos[] = {{"vocab", c->vocab},           {"d_model", c->d_model},     {"n_layer", c->n_layer},
               {"n_head", c->n_head},         {"n_kv_head", c->n_kv_head}, {"d_ff", c->d_ff},
               {"max_ctx", c->max_ctx},       {"batch", c->batch},         {"seq", c->seq},
               {"grad_accum", c->grad_accum}, {"steps", c->steps}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (check_positive(pos[i].n, pos[i].v, err)) return err->code;
    if (c->d_model % c->n_head)
        return mx_err_set(err, MX_ERR_ARG, "config: d_model %d is not a multiple of n_head %d", c->d_model,
                          c->n_head);
    if (c->n_head % c->n_kv_head)
        return mx_err_set(err, MX_ERR_ARG, "config: n_head %d is not a multiple of n_kv_head %d", c->n_head,
                          c->n_kv_head);
    if (c->arch == MX_TARCH_GPT2 && c->n_kv_head != c->n_head)
        return mx_err_set(err, MX_ERR_ARG,
                          "config: gpt2 has n_kv_head == n_head (%d); use arch llama for GQA", c->n_head);
    if (c->arch == MX_TARCH_LLAMA && (c->d_model / c->n_head) % 2)
        return mx_err_set(err, MX_ERR_ARG, "config: RoPE needs an even head dim (got %d)",
                          c->d_model / c->n_head);
    if (c->seq > c->max_ctx)
        return mx_err_set(err, MX_ERR_ARG, "config: seq %d is longer than max_ctx %d", c->seq, c->max_ctx);
    if (c->vocab > 1 << 30) return mx_err_set(err, MX_ERR_ARG, "config: vocab %d is too large", c->vocab);
    if (c->warmup < 0 || c->lr < 0 || c->min_lr < 0 || c->weight_decay < 0 || c->grad_clip < 0)
        return mx_err_set(err, MX_ERR_ARG,
                          "config: warmup, lr, min_lr, weight_decay, grad_clip must be >= 0");
    if (!(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 && c->adam_eps > 0))
        return mx_err_set(err, MX_ERR_ARG, "config: need 0 <= beta1, beta2 < 1 and adam_eps > 0");
    if (c->val_every < 0 || c->val_batches < 0 || c->ckpt_every < 0 || c->log_every < 0)
        return mx_err_set(err, MX_ERR_ARG,
                          "config: val_every, val_batches, ckpt_every, log_every must be >= 0");
    if (check_blocks(c, err)) return err->code;
    mx_layer_plan *plan = calloc((size_t)c->n_layer, sizeof *plan);
    if (!plan) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    mx_plan_uniform(plan, c->n_layer, c->attn, 0);
    int rc = c->plan[0] ? mx_plan_parse(c->plan, c->n_layer, c->window, c->attn, plan, err) : MX_OK;
    if (!rc) rc = mx_plan_validate(plan, c->n_layer, c->max_ctx, err);
    for (int l = 0; l < c->n_layer && !rc; l++)
        if (plan[l].kind != MX_ATTN_MHA && plan[l].kv_from != l)
            rc = mx_err_set(err, MX_ERR_UNSUPPORTED,
                            "layer %d is %s reading layer %d's cache; training shares K/V between "
                            "mha layers only",
                            l, mx_attn_kind_name(plan[l].kind), plan[l].kv_from);
    free(plan);
    return rc ? mx_err_wrap(err, "config") : MX_OK;
}

/* ---- parameters ---- */

typedef struct {
    mx_tmodel *m;
    int cap;
} layout;

static mx_param *add_param(layout *lo, const char *name, int rows, int cols, bool decay) {
    mx_tmodel *m = lo->m;
    if (m->n_params == lo->cap) return NULL;
    mx_param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->rows = rows, p->cols = cols, p->decay = decay, p->off = m->n_floats;
    m->n_floats += (size_t)rows * cols;
    return p;
}

/* Lays out every parameter (offsets only; pointers are set once the buffers exist). */
static void layout_params(mx_tmodel *m, layout *lo) {
    const mx_train_config *c = &m->cfg;
    int C = c->d_model, HD = c->n_head * m->head_dim, GD = c->n_kv_head * m->head_dim, F = c->d_ff;
    int H = c->n_head, E = c->n_expert, R = c->mla_kv_rank, QR = c->mla_q_rank, r = c->mla_rope_dim;
    int QD = H * (c->mla_nope_dim + r), KVB = H * (c->mla_nope_dim + c->mla_v_dim), OD = H * c->mla_v_dim;
    bool gpt2 = c->arch == MX_TARCH_GPT2, de = c->decay_embeddings, dn = c->decay_norms_biases;
    bool moe = E > 0;
    char n[64];
    m->tok_embd = add_param(lo, "token_embd.weight", c->vocab, C, de);
    m->pos_embd = gpt2 ? add_param(lo, "position_embd.weight", c->max_ctx, C, de) : NULL;
    for (int l = 0; l < c->n_layer; l++) {
        mx_tlayer *L = &m->layers[l];
        bool w = m->plan[l].kv_from == l, mla = m->plan[l].kind == MX_ATTN_MLA,
             mka = m->plan[l].kind == MX_ATTN_MKA || m->plan[l].kind == MX_ATTN_FASTMKA;
#define P(field, suffix, r, cc, decay, when)                                                                 \
    do {                                                                                                     \
        snprintf(n, sizeof n, "blk.%d.%s", l, suffix);                                                       \
        L->field = (when) ? add_param(lo, n, r, cc, decay) : NULL;                                           \
    } while (0)
        P(attn_norm, "attn_norm.weight", 1, C, dn, true);
        P(attn_norm_b, "attn_norm.bias", 1, C, dn, gpt2);
        P(wq, "attn_q.weight", mla ? QD : HD, C, true, !mla || QR == 0);
        P(bq, "attn_q.bias", 1, HD, dn, gpt2);
        P(wq_a, "attn_q_a.weight", QR, C, true, mla && QR > 0);
        P(q_a_norm, "attn_q_a_norm.weight", 1, QR, dn, mla && QR > 0);
        P(wq_b, "attn_q_b.weight", QD, QR, true, mla && QR > 0);
        P(wkv_a, "attn_kv_a_mqa.weight", R + r, C, true, mla);
        P(kv_a_norm, "attn_kv_a_norm.weight", 1, R, dn, mla);
        P(wkv_b, "attn_kv_b.weight", KVB, R, true, mla);
        P(wk, "attn_k.weight", GD, C, true, w && !mla);
        P(bk, "attn_k.bias", 1, GD, dn, gpt2 && w);
        P(wv, "attn_v.weight", GD, C, true, w && !mla);
        P(bv, "attn_v.bias", 1, GD, dn, gpt2 && w);
        P(wo, "attn_output.weight", C, mla ? OD : HD, true, true);
        P(bo, "attn_output.bias", 1, C, dn, gpt2);
        P(mka_w1, "mka_router1.weight", C, C, true, mka);
        P(mka_b1, "mka_router1.bias", 1, C, dn, mka);
        P(mka_w2, "mka_router2.weight", 3, C, true, mka);
        P(mka_b2, "mka_router2.bias", 1, 3, dn, mka);
        P(ffn_norm, "ffn_norm.weight", 1, C, dn, true);
        P(ffn_norm_b, "ffn_norm.bias", 1, C, dn, gpt2);
        P(w_gate, "ffn_gate.weight", F, C, true, !gpt2 && !moe);
        P(w_up, "ffn_up.weight", F, C, true, !moe);
        P(b_up, "ffn_up.bias", 1, F, dn, gpt2);
        P(w_down, "ffn_down.weight", C, F, true, !moe);
        P(router, "ffn_gate_inp.weight", E, C, true, moe);
        P(gate_exps, "ffn_gate_exps.weight", E * F, C, true, moe);
        P(up_exps, "ffn_up_exps.weight", E * F, C, true, moe);
        P(down_exps, "ffn_down_exps.weight", E * C, F, true, moe);
        P(b_down, "ffn_down.bias", 1, C, dn, gpt2);
#undef P
    }
    m->out_norm = add_param(lo, "output_norm.weight", 1, C, dn);
    m->out_norm_b = gpt2 ? add_param(lo, "output_norm.bias", 1, C, dn) : NULL;
    m->output = c->tied_embeddings ? m->tok_embd : add_param(lo, "output.weight", c->vocab, C, true);
}

mx_param *mx_tmodel_find(mx_tmodel *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name)) return &m->params[i];
    return NULL;
}

void mx_tmodel_init_random(mx_tmodel *m, uint64_t seed) {
    mx_rng rng;
    mx_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_params; i++) { /* in layout order, so a seed gives one model */
        mx_param *p = &m->params[i];
        size_t n = (size_t)p->rows * p->cols;
        bool vec = p->rows == 1, norm = strstr(p->name, "norm.weight") != NULL;
        float s = mx_mup_init_std(m, p); /* the standard rules too (mup.c) */
        for (size_t j = 0; j < n; j++) p->w[j] = vec ? (norm ? 1.0f : 0.0f) : s * mx_rng_normal(&rng);
    }
}

/* ---- activations ---- */

/* Whether another layer reads the K/V that layer w writes. */
static bool kv_is_read(const mx_tmodel *m, int w) {
    for (int r = 0; r < m->cfg.n_layer; r++)
        if (r != w && m->plan[r].kv_from == w) return true;
    return false;
}

int mx_tmodel_shared_writers(const mx_tmodel *m) {
    int n = 0;
    for (int w = 0; w < m->cfg.n_layer; w++) n += kv_is_read(m, w);
    return n;
}

size_t mx_tmodel_slot(const mx_tmodel *m, int l) {
    return m->cfg.recompute ? 0 : (size_t)l;
}

int mx_tmodel_dkv_slot(const mx_tmodel *m, int w) {
    if (!kv_is_read(m, w)) return 0;
    int slot = 1;
    for (int u = 0; u < w; u++) slot += kv_is_read(m, u);
    return slot;
}

float *mx_tmodel_alloc(mx_tmodel *m, size_t n) {
    if (!n) return NULL;
    if (!m->on_device) return calloc(n, sizeof(float));
    float *p = m->be->alloc(m->be, sizeof(float) * n);
    if (p) m->ops->zero(m->be, p, n);
    return p;
}

const char *mx_tmodel_where(const mx_tmodel *m) {
    return m->on_device ? m->be->name : "host";
}

void mx_tmodel_copy(mx_tmodel *m, float *dst, const float *src, size_t n) {
    if (!m->on_device) {
        memcpy(dst, src, sizeof(float) * n);
        return;
    }
    for (size_t done = 0; done < n;) { /* copy_cols takes an int width */
        int w = n - done > (1u << 30) ? 1 << 30 : (int)(n - done);
        MX_OP(m, copy_cols, dst + done, 0, src + done, 0, w, 1, false);
        done += (size_t)w;
    }
}

void mx_tmodel_release(mx_tmodel *m, float *p) {
    if (!p) return;
    if (m->on_device)
        m->be->free(m->be, p);
    else
        free(p);
}

/* The activations of the MLA, MKA and MoE blocks (each allocates nothing when the plan has none of its layers),
 * where m runs. */
static int alloc_block_acts(mx_tmodel *m, mx_err *err) {
    if (mx_mla_tacts_alloc(m, err) || mx_mka_tacts_alloc(m, err) || mx_moe_tacts_alloc(m, err))
        return err->code;
    return MX_OK;
}

static void free_block_acts(mx_tmodel *m) {
    mx_mla_tacts_free(m);
    mx_mka_tacts_free(m);
    mx_moe_tacts_free(m);
}

/* The activations of one batch: host memory (be NULL) or be's. */
static int alloc_acts(mx_tmodel *m, mx_backend *be, mx_err *err) {
    const mx_train_config *c = &m->cfg;
    mx_tacts *a = &m->acts;
    a->B = c->batch, a->T = c->seq;
    size_t N = (size_t)a->B * a->T, L = (size_t)c->n_layer, C = (size_t)c->d_model, F = (size_t)c->d_ff;
    size_t HD = (size_t)c->n_head * m->head_dim, GD = (size_t)c->n_kv_head * m->head_dim,
           H = (size_t)c->n_head;
    size_t Ls = c->recompute ? 1 : L; /* layers of the (Ls, ...) activations */
    size_t up = c->arch == MX_TARCH_LLAMA && c->n_expert == 0 ? Ls * N * F : 0;
    size_t slots = 1 + (size_t)mx_tmodel_shared_writers(m);
    /* the MHA family's buffers, unused where every layer is MLA, MKA or FastMKA (their own: mla_train.c,
     * mka_train.c), and the dense MLP's, unused with experts (moe_train.c) */
    size_t mha = 0, dense = c->n_expert == 0;
    for (int l = 0; l < c->n_layer; l++) mha |= m->plan[l].kind == MX_ATTN_MHA;
    HD *= mha, GD *= mha, H *= mha, F *= dense;
    struct {
        float **p;
        size_t n;
    } bufs[] = {
        {&a->x, (L + 1) * N * C}, {&a->xm, Ls * N * C},   {&a->ln1, Ls * N * C},  {&a->ln2, Ls * N * C},
        {&a->ln1_mean, Ls * N},   {&a->ln1_rstd, Ls * N}, {&a->ln2_mean, Ls * N}, {&a->ln2_rstd, Ls * N},
        {&a->q, Ls * N * HD},     {&a->k, L * N * GD},    {&a->v, L * N * GD},    {&a->att, Ls * N * HD},
        {&a->lse, Ls * N * H},    {&a->pre, Ls * N * F},  {&a->up, up},

        {&a->lnf, N * C},         {&a->lnf_mean, N},      {&a->lnf_rstd, N},      {&a->dx, N * C},
        {&a->dln, N * C},         {&a->dq, N * HD},       {&a->datt, N * HD},     {&a->dk, slots * N * GD},
        {&a->dv, slots * N * GD}, {&a->dpre, N * F},      {&a->dup, N * F},       {&a->dact, N * F},
        {&a->tmp, N * C},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) total += bufs[i].n;
    a->floats = total;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (!bufs[i].n) continue; /* not used by this model: stays NULL */
        *bufs[i].p = be ? be->alloc(be, sizeof(float) * bufs[i].n) : calloc(bufs[i].n, sizeof(float));
        if (!*bufs[i].p)
            return mx_err_set(
                err, MX_ERR_NOMEM,
                "out of memory for the activations of batch %d x %d (%.1f MiB of %s memory in all; "
                "use a smaller batch)",
                a->B, a->T, total * 4.0 / 1048576.0, be ? be->name : "host");
        if (be) m->ops->zero(be, *bufs[i].p, bufs[i].n);
    }
    return MX_OK;
}

static void free_acts(mx_tacts *a, mx_backend *be) {
    float *bufs[] = {a->x,        a->xm,  a->ln1,      a->ln2,      a->ln1_mean, a->ln1_rstd, a->ln2_mean,
                     a->ln2_rstd, a->q,   a->k,        a->v,        a->att,      a->lse,      a->pre,
                     a->up,       a->lnf, a->lnf_mean, a->lnf_rstd, a->dx,       a->dln,      a->dq,
                     a->datt,     a->dk,  a->dv,       a->dpre,     a->dup,      a->dact,     a->tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (!bufs[i]) continue;
        if (be)
            be->free(be, bufs[i]);
        else
            free(bufs[i]);
    }
}

/* Points m->w, g, m, v and every parameter's w, g, m, v into base[0..3] (a NULL base: NULL pointers, as
 * ZeRO-1 leaves the moments). */
static void bind(mx_tmodel *m, float *const base[4]) {
    float **flat[] = {&m->w, &m->g, &m->m, &m->v};
    for (int i = 0; i < 4; i++) *flat[i] = base[i];
    for (int i = 0; i < m->n_params; i++) {
        mx_param *p = &m->params[i];
        float **pp[] = {&p->w, &p->g, &p->m, &p->v};
        for (int j = 0; j < 4; j++) *pp[j] = base[j] ? base[j] + p->off : NULL;
    }
}

int mx_tmodel_place(mx_tmodel *m, mx_backend *be, bool bf16, mx_err *err) {
    if (!be->train) return mx_err_set(err, MX_ERR_UNSUPPORTED, "the %s backend cannot train", be->name);
    if (bf16 && !be->train->set_bf16)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--precision bf16 needs a GPU; the %s backend trains in fp32", be->name);
    m->be = be, m->ops = be->train, m->bf16 = bf16;
    if (be->caps & MX_CAP_HOST_MEMORY) return MX_OK;
    for (int i = 0; i < 4; i++) {
        if (!m->host[i]) continue; /* ZeRO-1's moments */
        if (!(m->dev[i] = be->alloc(be, sizeof(float) * m->n_floats)))
            return mx_err_set(err, MX_ERR_NOMEM, "out of %s memory for %zu parameters (%.1f MiB per copy)",
                              be->name, m->n_floats, m->n_floats * 4.0 / 1048576.0);
        m->ops->upload(be, m->dev[i], m->host[i], m->n_floats);
    }
    free_acts(&m->acts, NULL);
    free_block_acts(m);
    m->on_device = true;
    bind(m, m->dev);
    return alloc_acts(m, be, err) || alloc_block_acts(m, err) ? err->code : MX_OK;
}

void mx_tmodel_to_host(mx_tmodel *m) {
    if (!m->on_device) return;
    for (int i = 0; i < 4; i++)
        if (m->dev[i]) m->be->to_host(m->be, m->host[i], m->dev[i], m->n_floats);
    bind(m, m->host);
}

void mx_tmodel_to_device(mx_tmodel *m) {
    if (m->on_device) bind(m, m->dev);
}

int mx_tmodel_create(const mx_train_config *cfg, mx_tmodel **out, mx_err *err) {
    *out = NULL;
    if (mx_train_config_check(cfg, err)) return err->code;
    mx_tmodel *m = calloc(1, sizeof *m);
    if (!m) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->head_dim = cfg->d_model / cfg->n_head;
    m->plan = calloc((size_t)cfg->n_layer, sizeof *m->plan);
    m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
    layout lo = {m, 8 + 40 * cfg->n_layer};
    m->params = calloc((size_t)lo.cap, sizeof *m->params);
    if (!m->plan || !m->layers || !m->params) goto nomem;
    mx_plan_uniform(m->plan, cfg->n_layer, cfg->attn, 0);
    if (cfg->plan[0] && mx_plan_parse(cfg->plan, cfg->n_layer, cfg->window, cfg->attn, m->plan, err))
        goto fail;
    layout_params(m, &lo);
    for (int i = 0; i < 4; i++)
        if (!(m->host[i] = calloc(m->n_floats, sizeof(float)))) goto nomem;
    m->ops = &mx_cpu_train_ops;
    bind(m, m->host);
    mx_mup_setup(m);
    if (!(m->segs = calloc((size_t)m->n_params, sizeof *m->segs))) goto nomem;
    if (alloc_acts(m, NULL, err) || alloc_block_acts(m, err)) goto fail;
    mx_tmodel_init_random(m, cfg->seed);
    *out = m;
    return MX_OK;
nomem:
    mx_err_set(err, MX_ERR_NOMEM, "out of memory for the model");
fail:
    mx_tmodel_free(m);
    return err->code;
}

void mx_tmodel_free(mx_tmodel *m) {
    if (!m) return;
    free_acts(&m->acts, m->on_device ? m->be : NULL);
    free_block_acts(m);
    for (int i = 0; i < 4; i++) {
        free(m->host[i]);
        if (m->dev[i]) m->be->free(m->be, m->dev[i]);
    }
    free(m->segs);
    free(m->params), free(m->layers), free(m->plan);
    free(m);
}
