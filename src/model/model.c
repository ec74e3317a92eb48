/* model.c: builds an mx_model from a GGUF file: hyper-parameters from the "<arch>.*" keys, the attention plan,
 * the named weights (checked against the shapes the config implies), the tokenizer and the chat template.
 * Llama-family GGUFs only so far (general.architecture "llama"). */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../io/dtype.h"
#include "../io/quant.h"

static int get_int(const mx_gguf *g, const char *arch, const char *key, int *out, int def, mx_err *err) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v;
    int rc = mx_gguf_get_i64(g, full, &v, err);
    if (rc == MX_ERR_MISSING && def >= 0) {
        *out = def;
        return MX_OK;
    }
    if (rc) return mx_err_wrap(err, "%s", g->path);
    if (v < 0 || v > (1 << 30)) return mx_err_set(err, MX_ERR_FORMAT, "%s: %s = %lld is out of range", g->path, full, (long long)v);
    *out = (int)v;
    return MX_OK;
}

static int get_float(const mx_gguf *g, const char *arch, const char *key, float *out, float def, mx_err *err) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    double v;
    int rc = mx_gguf_get_f64(g, full, &v, err);
    if (rc == MX_ERR_MISSING) {
        *out = def;
        return MX_OK;
    }
    if (rc) return mx_err_wrap(err, "%s", g->path);
    *out = (float)v;
    return MX_OK;
}

static int read_config(const mx_gguf *g, mx_config *c, mx_err *err) {
    char *arch = NULL;
    if (mx_gguf_get_str(g, "general.architecture", &arch, err)) return mx_err_wrap(err, "%s", g->path);
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    free(arch);
    if (strcmp(c->arch_name, "llama") != 0)
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (supported: llama)",
                          g->path, c->arch_name);
    c->arch = MX_ARCH_LLAMA;
    char *name = NULL;
    if (mx_gguf_get_str(g, "general.name", &name, NULL) == MX_OK) {
        snprintf(c->name, sizeof c->name, "%s", name);
        free(name);
    }
    const char *a = c->arch_name;
    int rc = get_int(g, a, "embedding_length", &c->d_model, -1, err) ||
             get_int(g, a, "block_count", &c->n_layer, -1, err) ||
             get_int(g, a, "attention.head_count", &c->n_head, -1, err) ||
             get_int(g, a, "feed_forward_length", &c->d_ff, -1, err) ||
             get_int(g, a, "context_length", &c->max_ctx, 2048, err) ||
             get_int(g, a, "attention.head_count_kv", &c->n_kv_head, 0, err) ||
             get_int(g, a, "expert_count", &c->n_expert, 0, err) ||
             get_int(g, a, "expert_used_count", &c->n_expert_used, 0, err) ||
             get_float(g, a, "rope.freq_base", &c->rope_theta, 10000.0f, err) ||
             get_float(g, a, "attention.layer_norm_rms_epsilon", &c->norm_eps, 1e-5f, err);
    if (rc) return err->code;
    if (c->n_kv_head == 0) c->n_kv_head = c->n_head;
    if (c->n_layer < 1 || c->n_head < 1 || c->d_model % c->n_head || c->n_head % c->n_kv_head)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: inconsistent shape: %d layers, width %d, %d heads, %d KV heads",
                          g->path, c->n_layer, c->d_model, c->n_head, c->n_kv_head);
    c->head_dim = c->d_model / c->n_head;
    if (get_int(g, a, "rope.dimension_count", &c->rope_dim, c->head_dim, err)) return err->code;
    if (c->n_expert > 0)
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "%s: mixture-of-experts GGUFs are not supported yet", g->path);
    c->rope_mode = MX_ROPE_ADJACENT; /* the GGUF converter permuted Q/K rows for adjacent-pair rotation */
    return MX_OK;
}

/* Looks up a tensor and checks its type is known and its shape is the expected one (dims < 0: any). */
static int bind(const mx_gguf *g, const char *name, int64_t d0, int64_t d1, mx_tensor *t, mx_err *err) {
    const mx_gguf_tensor *gt = mx_gguf_tensor_find(g, name);
    if (!gt) return mx_err_set(err, MX_ERR_MISSING, "%s: missing tensor '%s'", g->path, name);
    int64_t want[2] = {d0, d1};
    int nd = d1 > 0 ? 2 : 1;
    bool ok = gt->n_dims == nd;
    for (int i = 0; i < nd && ok; i++) ok = gt->ne[i] == want[i];
    if (!ok)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: tensor '%s' has shape [%lld, %lld] (%d dims), the config implies [%lld, %lld]",
                          g->path, name, (long long)gt->ne[0], (long long)gt->ne[1], gt->n_dims, (long long)d0,
                          (long long)(d1 > 0 ? d1 : 1));
    *t = (mx_tensor){.name = gt->name, .type = gt->type, .n_dims = gt->n_dims, .data = gt->data, .nbytes = gt->nbytes};
    memcpy(t->ne, gt->ne, sizeof t->ne);
    return MX_OK;
}

/* Norm vectors are used as fp32 directly; convert any other storage type once. */
static int bind_vector(mx_model *m, const char *name, int64_t n, mx_tensor *t, mx_err *err) {
    if (bind(m->gguf, name, n, 0, t, err)) return err->code;
    if (t->type == MX_F32) return MX_OK;
    float *v = malloc(sizeof(float) * (size_t)n);
    float **grown = realloc(m->owned, sizeof(float *) * (size_t)(m->n_owned + 1));
    if (!v || !grown) {
        free(v);
        if (grown) m->owned = grown;
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory converting '%s'", name);
    }
    m->owned = grown;
    m->owned[m->n_owned++] = v;
    mx_dequant_row(t->type, t->data, v, n);
    t->data = v;
    t->type = MX_F32;
    t->nbytes = sizeof(float) * (size_t)n;
    return MX_OK;
}

static int bind_layer(mx_model *m, int l, mx_err *err) {
    const mx_config *c = &m->cfg;
    mx_layer_weights *L = &m->w.layers[l];
    int64_t C = c->d_model, HD = (int64_t)c->n_head * c->head_dim, GD = (int64_t)c->n_kv_head * c->head_dim;
    char n[96];
#define NAME(suffix) (snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix), n)
    if (bind_vector(m, NAME("attn_norm"), C, &L->attn_norm, err) || bind(m->gguf, NAME("attn_q"), C, HD, &L->wq, err) ||
        bind(m->gguf, NAME("attn_k"), C, GD, &L->wk, err) || bind(m->gguf, NAME("attn_v"), C, GD, &L->wv, err) ||
        bind(m->gguf, NAME("attn_output"), HD, C, &L->wo, err) ||
        bind_vector(m, NAME("ffn_norm"), C, &L->ffn_norm, err) ||
        bind(m->gguf, NAME("ffn_gate"), C, c->d_ff, &L->w_gate, err) ||
        bind(m->gguf, NAME("ffn_up"), C, c->d_ff, &L->w_up, err) ||
        bind(m->gguf, NAME("ffn_down"), c->d_ff, C, &L->w_down, err))
        return err->code;
#undef NAME
    return MX_OK;
}

static int bind_weights(mx_model *m, mx_err *err) {
    mx_config *c = &m->cfg;
    const mx_gguf_tensor *emb = mx_gguf_tensor_find(m->gguf, "token_embd.weight");
    if (!emb) return mx_err_set(err, MX_ERR_MISSING, "%s: missing tensor 'token_embd.weight'", m->path);
    c->vocab = (int)emb->ne[1];
    if (bind(m->gguf, "token_embd.weight", c->d_model, c->vocab, &m->w.tok_embd, err) ||
        bind_vector(m, "output_norm.weight", c->d_model, &m->w.out_norm, err))
        return err->code;
    c->tied_embeddings = mx_gguf_tensor_find(m->gguf, "output.weight") == NULL;
    if (c->tied_embeddings)
        m->w.output = m->w.tok_embd;
    else if (bind(m->gguf, "output.weight", c->d_model, c->vocab, &m->w.output, err))
        return err->code;
    m->w.layers = calloc((size_t)c->n_layer, sizeof *m->w.layers);
    if (!m->w.layers) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->n_layer; l++)
        if (bind_layer(m, l, err)) return err->code;
    return MX_OK;
}

int mx_model_load(const char *path, const mx_load_opts *opts, mx_model **out, mx_err *err) {
    *out = NULL;
    mx_model *m = calloc(1, sizeof *m);
    if (!m) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    m->path = strdup(path);
    int rc = mx_gguf_open(path, &m->gguf, err);
    if (!rc) rc = read_config(m->gguf, &m->cfg, err);
    if (!rc) rc = bind_weights(m, err);
    if (!rc) {
        m->cfg.plan = calloc((size_t)m->cfg.n_layer, sizeof *m->cfg.plan);
        if (!m->cfg.plan) rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    if (!rc) {
        mx_plan_standard(m->cfg.plan, m->cfg.n_layer);
        m->cfg.plan_is_trained = true;
        (void)opts;
        rc = mx_plan_validate(m->cfg.plan, m->cfg.n_layer, m->cfg.max_ctx, err);
    }
    if (!rc) rc = mx_tokenizer_from_gguf(m->gguf, &m->tok, err);
    if (!rc && mx_chat_template_from_gguf(m->gguf, &m->chat, NULL) != MX_OK) m->chat = NULL;
    if (rc) {
        mx_model_free(m);
        return rc;
    }
    *out = m;
    return MX_OK;
}

void mx_model_free(mx_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->w.layers);
    free(m->cfg.plan);
    mx_tokenizer_free(m->tok);
    mx_chat_template_free(m->chat);
    mx_gguf_close(m->gguf);
    free(m->path);
    free(m);
}

int64_t mx_model_n_params(const mx_model *m) {
    int64_t n = 0;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const mx_gguf_tensor *t = &m->gguf->tensors[i];
        n += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    return n;
}

size_t mx_model_weight_bytes(const mx_model *m) {
    size_t n = 0;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) n += m->gguf->tensors[i].nbytes;
    return n;
}

size_t mx_model_decode_bytes(const mx_model *m) {
    size_t n = m->w.output.nbytes;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const mx_layer_weights *L = &m->w.layers[l];
        n += L->wq.nbytes + L->wk.nbytes + L->wv.nbytes + L->wo.nbytes + L->w_gate.nbytes + L->w_up.nbytes +
             L->w_down.nbytes;
    }
    return n;
}

/* Calls fn on every distinct weight tensor of the model (the tied output head is visited once, as the
 * embedding). Stops at the first non-zero return. */
static int for_each_weight(mx_model *m, int (*fn)(mx_tensor *, void *), void *ctx) {
    mx_weights *w = &m->w;
    mx_tensor *top[] = {&w->tok_embd, &w->out_norm, m->cfg.tied_embeddings ? NULL : &w->output};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (top[i] && fn(top[i], ctx)) return 1;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        mx_layer_weights *L = &w->layers[l];
        mx_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
            if (fn(ts[i], ctx)) return 1;
    }
    return 0;
}

typedef struct {
    mx_backend *be;
    mx_err *err;
} place_ctx;

static int place_one(mx_tensor *t, void *ctx) {
    place_ctx *p = ctx;
    return p->be->upload(p->be, t, p->err);
}

static int release_one(mx_tensor *t, void *ctx) {
    mx_backend *be = ctx;
    if (t->dev) be->release(be, t);
    t->dev = NULL;
    return 0;
}

int mx_model_place(mx_model *m, mx_backend *be, mx_err *err) {
    place_ctx p = {be, err};
    if (for_each_weight(m, place_one, &p)) {
        mx_model_unplace(m, be);
        if (!err->code) mx_err_set(err, MX_ERR_NOMEM, "cannot place the weights on %s", be->name);
        return err->code;
    }
    if (m->cfg.tied_embeddings) m->w.output = m->w.tok_embd;
    return MX_OK;
}

void mx_model_unplace(mx_model *m, mx_backend *be) {
    for_each_weight(m, release_one, be);
    if (m->cfg.tied_embeddings) m->w.output = m->w.tok_embd;
}
