/* model.c: builds an mx_model: a loader (load_gguf.c, load_hf.c) fills the config and the tensor dictionary;
 * this file applies the attention plan, binds every weight by name and checks its shape against the config
 * (so a config that does not match the tensors fails before any work), and places weights on a backend. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../io/dtype.h"
#include "../io/quant.h"

typedef struct {
    mx_model *m;
    mx_err *err;
} binder;

/* "[a, b]": the first nd dims of ne (nd <= 4), as many as the tensor has. */
static void shape_text(char *buf, size_t size, const int64_t *ne, int nd) {
    int k = snprintf(buf, size, "[");
    for (int i = 0; i < nd && i < 4 && k > 0 && (size_t)k < size; i++)
        k += snprintf(buf + k, size - (size_t)k, "%s%lld", i ? ", " : "", (long long)ne[i]);
    if (k > 0 && (size_t)k < size) snprintf(buf + k, size - (size_t)k, "]");
}

/* Binds `name` into *t when present. Expected dims: d[i] > 0 must match ne[i]; nd the number of dims.
 * A missing tensor is an error when required. Vectors (nd == 1) stored in a non-F32 type are converted. */
static int bind(binder *b, const char *name, int nd, int64_t d0, int64_t d1, int64_t d2, bool required,
                mx_tensor *t) {
    const mx_tensor *src = mx_dict_find(&b->m->dict, name);
    if (!src) {
        memset(t, 0, sizeof *t);
        return required ? mx_err_set(b->err, MX_ERR_MISSING, "%s: missing tensor '%s'", b->m->path, name)
                        : MX_OK;
    }
    int64_t want[3] = {d0, d1, d2};
    bool ok = src->n_dims == nd || (nd == 1 && src->n_dims == 2 && src->ne[1] == 1);
    for (int i = 0; i < nd && ok; i++) ok = want[i] <= 0 || src->ne[i] == want[i];
    if (!ok) {
        char got[96], implied[96];
        shape_text(got, sizeof got, src->ne, src->n_dims);
        shape_text(implied, sizeof implied, want, nd);
        return mx_err_set(b->err, MX_ERR_FORMAT, "%s: tensor '%s' has shape %s; the config implies %s",
                          b->m->path, name, got, implied);
    }
    if (!mx_dtype_get(src->type))
        return mx_err_set(b->err, MX_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown type %u", b->m->path, name,
                          src->type);
    *t = *src;
    if (nd == 1 && t->type != MX_F32) { /* norms and biases are read as fp32 vectors */
        float *v = malloc(sizeof(float) * (size_t)t->ne[0]);
        if (!v || mx_dict_own(&b->m->dict, v, b->err))
            return mx_err_set(b->err, MX_ERR_NOMEM, "out of memory converting '%s'", name);
        mx_dequant_row(t->type, t->data, v, t->ne[0]);
        t->data = v;
        t->type = MX_F32;
        t->nbytes = sizeof(float) * (size_t)t->ne[0];
    }
    return MX_OK;
}

#define BLK(suffix) (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), n)

static int bind_attention(binder *b, int l, mx_layer_weights *L) {
    const mx_config *c = &b->m->cfg;
    int64_t C = c->d_model, HD = (int64_t)c->n_head * c->head_dim, GD = (int64_t)c->n_kv_head * c->head_dim;
    char n[96];
    bool bias = c->attn_bias, writes = c->plan[l].kv_from == l;
    if (c->arch == MX_ARCH_DEEPSEEK2) {
        int64_t qk = c->mla_nope_dim + c->mla_rope_dim, H = c->n_head;
        if (c->mla_q_rank > 0) {
            if (bind(b, BLK("attn_q_a.weight"), 2, C, c->mla_q_rank, 0, true, &L->wq_a) ||
                bind(b, BLK("attn_q_a_norm.weight"), 1, c->mla_q_rank, 0, 0, true, &L->q_a_norm) ||
                bind(b, BLK("attn_q_b.weight"), 2, c->mla_q_rank, H * qk, 0, true, &L->wq_b))
                return b->err->code;
        } else if (bind(b, BLK("attn_q.weight"), 2, C, H * qk, 0, true, &L->wq))
            return b->err->code;
        return bind(b, BLK("attn_kv_a_mqa.weight"), 2, C, c->mla_kv_rank + c->mla_rope_dim, 0, true,
                    &L->wkv_a) ||
               bind(b, BLK("attn_kv_a_norm.weight"), 1, c->mla_kv_rank, 0, 0, true, &L->kv_a_norm) ||
               bind(b, BLK("attn_kv_b.weight"), 2, c->mla_kv_rank, H * (c->mla_nope_dim + c->mla_v_dim), 0,
                    true, &L->wkv_b) ||
               bind(b, BLK("attn_output.weight"), 2, H * c->mla_v_dim, C, 0, true, &L->wo);
    }
    if (bind(b, BLK("attn_q.weight"), 2, C, HD, 0, true, &L->wq) ||
        bind(b, BLK("attn_k.weight"), 2, C, GD, 0, writes, &L->wk) ||
        bind(b, BLK("attn_v.weight"), 2, C, GD, 0, writes, &L->wv) ||
        bind(b, BLK("attn_output.weight"), 2, HD, C, 0, true, &L->wo) ||
        bind(b, BLK("attn_q.bias"), 1, HD, 0, 0, bias, &L->bq) ||
        bind(b, BLK("attn_k.bias"), 1, GD, 0, 0, bias && writes, &L->bk) ||
        bind(b, BLK("attn_v.bias"), 1, GD, 0, 0, bias && writes, &L->bv) ||
        bind(b, BLK("attn_output.bias"), 1, C, 0, 0, bias, &L->bo))
        return b->err->code;
    if (c->plan[l].kind == MX_ATTN_MKA || c->plan[l].kind == MX_ATTN_FASTMKA)
        return bind(b, BLK("mka_router1.weight"), 2, C, C, 0, true, &L->mka_w1) ||
               bind(b, BLK("mka_router1.bias"), 1, C, 0, 0, true, &L->mka_b1) ||
               bind(b, BLK("mka_router2.weight"), 2, C, 3, 0, true, &L->mka_w2) ||
               bind(b, BLK("mka_router2.bias"), 1, 3, 0, 0, true, &L->mka_b2);
    return MX_OK;
}

static int bind_mlp(binder *b, int l, mx_layer_weights *L) {
    const mx_config *c = &b->m->cfg;
    int64_t C = c->d_model, F = c->d_ff;
    char n[96];
    if (mx_layer_is_moe(c, l)) {
        int64_t E = c->n_expert, Fe = c->d_ff_expert ? c->d_ff_expert : c->d_ff;
        if (bind(b, BLK("ffn_gate_inp.weight"), 2, C, E, 0, true, &L->router) ||
            bind(b, BLK("ffn_gate_exps.weight"), 3, C, Fe, E, true, &L->gate_exps) ||
            bind(b, BLK("ffn_up_exps.weight"), 3, C, Fe, E, true, &L->up_exps) ||
            bind(b, BLK("ffn_down_exps.weight"), 3, Fe, C, E, true, &L->down_exps))
            return b->err->code;
        if (c->n_shared_expert > 0) {
            int64_t Fs = Fe * c->n_shared_expert;
            return bind(b, BLK("ffn_gate_shexp.weight"), 2, C, Fs, 0, true, &L->gate_shexp) ||
                   bind(b, BLK("ffn_up_shexp.weight"), 2, C, Fs, 0, true, &L->up_shexp) ||
                   bind(b, BLK("ffn_down_shexp.weight"), 2, Fs, C, 0, true, &L->down_shexp);
        }
        return MX_OK;
    }
    bool swiglu = c->mlp == MX_MLP_SWIGLU, bias = c->mlp_bias;
    return bind(b, BLK("ffn_gate.weight"), 2, C, F, 0, swiglu, &L->w_gate) ||
           bind(b, BLK("ffn_up.weight"), 2, C, F, 0, true, &L->w_up) ||
           bind(b, BLK("ffn_down.weight"), 2, F, C, 0, true, &L->w_down) ||
           bind(b, BLK("ffn_up.bias"), 1, F, 0, 0, bias, &L->b_up) ||
           bind(b, BLK("ffn_down.bias"), 1, C, 0, 0, bias, &L->b_down);
}

static int bind_layer(binder *b, int l) {
    const mx_config *c = &b->m->cfg;
    mx_layer_weights *L = &b->m->w.layers[l];
    bool ln = c->norm == MX_NORM_LAYER;
    char n[96];
    if (bind(b, BLK("attn_norm.weight"), 1, c->d_model, 0, 0, true, &L->attn_norm) ||
        bind(b, BLK("attn_norm.bias"), 1, c->d_model, 0, 0, ln, &L->attn_norm_b) ||
        bind(b, BLK("ffn_norm.weight"), 1, c->d_model, 0, 0, true, &L->ffn_norm) ||
        bind(b, BLK("ffn_norm.bias"), 1, c->d_model, 0, 0, ln, &L->ffn_norm_b) || bind_attention(b, l, L) ||
        bind_mlp(b, l, L))
        return mx_err_wrap(b->err, "layer %d", l);
    return MX_OK;
}
#undef BLK

static int bind_weights(mx_model *m, mx_err *err) {
    mx_config *c = &m->cfg;
    binder b = {m, err};
    const mx_tensor *emb = mx_dict_find(&m->dict, "token_embd.weight");
    if (!emb) return mx_err_set(err, MX_ERR_MISSING, "%s: missing tensor 'token_embd.weight'", m->path);
    c->vocab = (int)emb->ne[1];
    bool ln = c->norm == MX_NORM_LAYER;
    if (bind(&b, "token_embd.weight", 2, c->d_model, c->vocab, 0, true, &m->w.tok_embd) ||
        bind(&b, "position_embd.weight", 2, c->d_model, c->max_ctx, 0, !c->use_rope, &m->w.pos_embd) ||
        bind(&b, "output_norm.weight", 1, c->d_model, 0, 0, true, &m->w.out_norm) ||
        bind(&b, "output_norm.bias", 1, c->d_model, 0, 0, ln, &m->w.out_norm_b))
        return err->code;
    c->tied_embeddings = mx_dict_find(&m->dict, "output.weight") == NULL;
    if (c->tied_embeddings)
        m->w.output = m->w.tok_embd;
    else if (bind(&b, "output.weight", 2, c->d_model, c->vocab, 0, true, &m->w.output))
        return err->code;
    m->w.output.exact = true; /* logits decide the token: no 8-bit activations there */
    m->w.layers = calloc((size_t)c->n_layer, sizeof *m->w.layers);
    if (!m->w.layers) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->n_layer; l++)
        if (bind_layer(&b, l)) return err->code;
    return MX_OK;
}

static int apply_plan(mx_model *m, const mx_load_opts *opts, mx_err *err) {
    mx_config *c = &m->cfg;
    c->plan = calloc((size_t)c->n_layer, sizeof *c->plan);
    if (!c->plan) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    mx_attn_kind native = c->arch == MX_ARCH_DEEPSEEK2 ? MX_ATTN_MLA : c->attn_kind, kind = native;
    if (opts && opts->attn) {
        int k = mx_attn_kind_parse(opts->attn);
        if (k < 0)
            return mx_err_set(err, MX_ERR_ARG, "unknown attention kind '%s' (mha, mla, mka, fastmka)",
                              opts->attn);
        kind = (mx_attn_kind)k;
        if ((kind == MX_ATTN_MLA) != (native == MX_ATTN_MLA))
            return mx_err_set(
                err, MX_ERR_ARG, "%s: attention kind %s needs %s weights; this model has %s weights", m->path,
                opts->attn, kind == MX_ATTN_MLA ? "MLA" : "MHA-family", mx_attn_kind_name(native));
    }
    int window = opts && opts->window > 0 ? opts->window : c->window;
    mx_plan_uniform(c->plan, c->n_layer, kind, c->window);
    c->plan_is_trained = true;
    if (m->stored_plan) { /* the plan the weights were saved with is the model's own */
        if (mx_plan_parse(m->stored_plan, c->n_layer, window > 0 ? window : MX_DEFAULT_WINDOW, native,
                          c->plan, err))
            return mx_err_wrap(err, "%s: the stored plan (mixatt.plan)", m->path);
        if (opts && opts->plan) {
            mx_layer_plan *stored = malloc(sizeof *stored * (size_t)c->n_layer);
            if (!stored) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
            memcpy(stored, c->plan, sizeof *stored * (size_t)c->n_layer);
            int rc = mx_plan_parse(opts->plan, c->n_layer, window > 0 ? window : MX_DEFAULT_WINDOW, kind,
                                   c->plan, err);
            c->plan_is_trained = !rc && memcmp(stored, c->plan, sizeof *stored * (size_t)c->n_layer) == 0;
            free(stored);
            if (rc) return rc;
        }
        if (kind != native) {
            for (int l = 0; l < c->n_layer; l++) c->plan[l].kind = kind;
            c->plan_is_trained = false;
        }
        if (opts) c->mla_form = opts->mla_form;
        return mx_plan_validate(c->plan, c->n_layer, c->max_ctx, err);
    }
    if (opts && opts->plan) {
        if (mx_plan_parse(opts->plan, c->n_layer, window > 0 ? window : MX_DEFAULT_WINDOW, kind, c->plan,
                          err))
            return err->code;
        mx_layer_plan *trained = calloc((size_t)c->n_layer, sizeof *trained);
        if (!trained) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
        mx_plan_uniform(trained, c->n_layer, native, c->window);
        c->plan_is_trained = memcmp(trained, c->plan, sizeof *trained * (size_t)c->n_layer) == 0;
        free(trained);
    } else if (opts && opts->window > 0) {
        for (int l = 0; l < c->n_layer; l++)
            if (c->plan[l].window > 0) c->plan[l].window = opts->window;
        c->plan_is_trained = opts->window == c->window;
    }
    if (kind != native) c->plan_is_trained = false;
    if (opts) c->mla_form = opts->mla_form;
    return mx_plan_validate(c->plan, c->n_layer, c->max_ctx, err);
}

static bool has_kind(const mx_config *c, mx_attn_kind a, mx_attn_kind b) {
    for (int l = 0; l < c->n_layer; l++)
        if (c->plan[l].kind == a || c->plan[l].kind == b) return true;
    return false;
}

int mx_model_check_backend(const mx_model *m, const mx_backend *be, mx_err *err) {
    const mx_config *c = &m->cfg;
    const char *missing = NULL;
    if (c->n_expert > 0 && !(be->row_views && be->copy3d && be->fill && be->gather_rows && be->moe_route &&
                             be->scatter_add_rows))
        missing = "mixture-of-experts layers";
    else if (has_kind(c, MX_ATTN_MLA, MX_ATTN_MLA) &&
             !(be->row_views && be->copy3d && be->kv_read && be->matmul_t))
        missing = "MLA attention";
    else if (has_kind(c, MX_ATTN_MKA, MX_ATTN_FASTMKA) &&
             !(be->copy3d && be->fill && be->prefix_mean && be->scale_add_rows && be->softmax_rows &&
               be->tanh_))
        missing = "MKA attention";
    if (missing)
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "%s: the %s backend does not run %s yet; use --device cpu",
                          m->path, be->name, missing);
    return MX_OK;
}

bool mx_layer_is_moe(const mx_config *c, int l) {
    return c->n_expert > 0 && l >= c->n_dense_lead;
}

int mx_model_load(const char *path, const mx_load_opts *opts, mx_model **out, mx_err *err) {
    *out = NULL;
    mx_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) return free(m), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    m->cfg.expert_scale = 1.0f;
    struct stat st;
    bool dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    size_t len = strlen(path);
    bool ckpt = !dir && len > 12 && !strcmp(path + len - 12, ".safetensors");
    if (dir) { /* a training run directory: its checkpoint (a Hugging Face directory has config.json) */
        char cfg[4096], run[4096];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        snprintf(run, sizeof run, "%s/checkpoint.safetensors", path);
        if (stat(cfg, &st) != 0 && stat(run, &st) == 0) {
            char *p = strdup(run);
            if (!p) return mx_model_free(m), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
            free(m->path);
            m->path = p;
            dir = false, ckpt = true;
        }
    }
    int rc = dir ? mx_load_hf(m, err) : ckpt ? mx_load_ckpt(m, err) : mx_load_gguf(m, err);
    if (!rc && dir) rc = mx_hf_load_tokenizer(m->path, &m->tok, &m->chat, err); /* tokenizer.json, if any */
    if (!rc && dir && m->tok && mx_tokenizer_vocab_size(m->tok) > m->cfg.vocab)
        rc = mx_err_set(err, MX_ERR_FORMAT, "%s: tokenizer.json has %d tokens, more than the model's %d",
                        m->path, mx_tokenizer_vocab_size(m->tok), m->cfg.vocab);
    if (!rc) rc = apply_plan(m, opts, err);
    if (!rc) rc = bind_weights(m, err);
    if (rc) {
        mx_model_free(m);
        return rc;
    }
    *out = m;
    return MX_OK;
}

void mx_model_free(mx_model *m) {
    if (!m) return;
    free(m->w.layers);
    free(m->tp);
    free(m->cfg.plan);
    mx_tokenizer_free(m->tok);
    mx_chat_template_free(m->chat);
    mx_dict_free(&m->dict);
    mx_gguf_close(m->gguf);
    mx_hf_close(m);
    free(m->stored_plan);
    free(m->path);
    free(m);
}

int64_t mx_model_n_params(const mx_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->dict.n; i++) {
        const mx_tensor *t = &m->dict.items[i].t;
        n += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    return n;
}

size_t mx_model_weight_bytes(const mx_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->dict.n; i++) n += m->dict.items[i].t.nbytes;
    return n;
}

size_t mx_model_decode_bytes(const mx_model *m) {
    const mx_config *c = &m->cfg;
    size_t n = m->w.output.nbytes;
    for (int l = 0; l < c->n_layer; l++) {
        const mx_layer_weights *L = &m->w.layers[l];
        const mx_tensor *ts[] = {&L->wq,     &L->wk,     &L->wv,         &L->wo,       &L->wq_a,
                                 &L->wq_b,   &L->wkv_a,  &L->wkv_b,      &L->w_gate,   &L->w_up,
                                 &L->w_down, &L->router, &L->gate_shexp, &L->up_shexp, &L->down_shexp};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) n += ts[i]->nbytes;
        if (c->n_expert > 0 && L->gate_exps.data)
            n += (L->gate_exps.nbytes + L->up_exps.nbytes + L->down_exps.nbytes) / (size_t)c->n_expert *
                 (size_t)c->n_expert_used;
    }
    return n;
}

/* Calls fn on every distinct weight tensor of the model (the tied output head is visited once, as the
 * embedding; absent optional tensors are skipped). Stops at the first non-zero return. */
static int for_each_weight(mx_model *m, int (*fn)(mx_tensor *, void *), void *ctx) {
    mx_weights *w = &m->w;
    mx_tensor *top[] = {&w->tok_embd, &w->pos_embd, &w->out_norm, &w->out_norm_b,
                        m->cfg.tied_embeddings ? NULL : &w->output};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (top[i] && top[i]->data && fn(top[i], ctx)) return 1;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        mx_tensor *first = (mx_tensor *)&w->layers[l];
        size_t count = sizeof(mx_layer_weights) / sizeof(mx_tensor);
        for (size_t i = 0; i < count; i++)
            if (first[i].data && fn(&first[i], ctx)) return 1;
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
    size_t free0 = 0, free1 = 0, total;
    bool measure = be->mem_info && be->mem_info(be, &free0, &total) == 0;
    if (for_each_weight(m, place_one, &p)) {
        mx_model_unplace(m, be);
        if (!err->code) mx_err_set(err, MX_ERR_NOMEM, "cannot place the weights on %s", be->name);
        return err->code;
    }
    if (m->cfg.tied_embeddings) m->w.output = m->w.tok_embd, m->w.output.exact = true;
    if (measure && !(be->caps & MX_CAP_HOST_MEMORY) && be->mem_info(be, &free1, &total) == 0 && free0 > free1)
        be->placed_bytes = free0 - free1;
    return MX_OK;
}

void mx_model_unplace(mx_model *m, mx_backend *be) {
    for_each_weight(m, release_one, be);
    if (m->cfg.tied_embeddings) m->w.output = m->w.tok_embd, m->w.output.exact = true;
}
