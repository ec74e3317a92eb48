/* convert.c: `mixatt convert`: writes a loaded model (a Hugging Face directory or a GGUF file) as GGUF v3.
 * Tensors keep their stored type and bytes (F32/F16/BF16 from safetensors; any GGUF type from a GGUF) under
 * GGUF names. Metadata: general.architecture (llama, gpt2, deepseek2) with llama.cpp's standard keys, and
 * mixatt's own keys for what GGUF has no name for: mixatt.rope_half (Hugging Face Llama/Mistral weights are
 * not permuted the way llama.cpp's converter permutes them) and mixatt.plan (the attention plan string).
 * From a GGUF source every other key (tokenizer, chat template, general.*) is copied as it is; from a Hugging
 * Face directory with a tokenizer.json, the tokenizer and chat template are written by
 * mx_tokenizer_write_gguf (llama.cpp's tokenizer.ggml.* keys plus the tokenizer.json whole). */
#include <stdio.h>
#include <string.h>

#include "../io/gguf_write.h"
#include "../model/model.h"
#include "commands.h"
#include "common.h"

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt convert -m MODEL -o OUT.gguf\n\n"
        "Writes MODEL as a GGUF v3 file that `mixatt run/logits -m OUT.gguf` loads with the same logits.\n\n"
        "  -m, --model PATH   a Hugging Face directory (config.json + model.safetensors or shards;\n"
        "                     model_type gpt2, llama, mistral, mixtral, deepseek_v2, deepseek_v3) or a GGUF "
        "file\n"
        "  -o, --out FILE     the GGUF to write (written to FILE.tmp, then renamed)\n"
        "  --plan P, --window W, --attn KIND   store this attention plan with the model (mixatt.plan): the\n"
        "                     converted file then runs with it as its own plan\n\n"
        "Tensors keep their stored type (F32, F16, BF16; quantized types from a GGUF); nothing is\n"
        "re-quantized. Keys: general.architecture llama | gpt2 | deepseek2 with llama.cpp's names, plus\n"
        "mixatt.rope_half and mixatt.plan. A Hugging Face tokenizer (tokenizer.json, tokenizer_config.json)\n"
        "goes in as llama.cpp's tokenizer.ggml.* keys, tokenizer.chat_template, and the tokenizer.json whole\n"
        "(tokenizer.huggingface.json), so the GGUF tokenizes exactly as the directory did. A directory\n"
        "without tokenizer.json gives a GGUF without a tokenizer, which takes token ids (logits --ids).\n");
}

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

static int write_tensors(mx_gguf_writer *w, const mx_model *m, mx_err *err) {
    for (int i = 0; i < m->dict.n; i++) {
        const mx_tensor *t = &m->dict.items[i].t;
        if (mx_gguf_w_tensor(w, m->dict.items[i].name, t->type, t->n_dims, t->ne, t->data, t->nbytes, err))
            return err->code;
    }
    return MX_OK;
}

static int convert(const char *in, const char *out, const mx_load_opts *opts) {
    mx_err err = {0};
    mx_model *m = NULL;
    if (mx_model_load(in, opts, &m, &err)) {
        fprintf(stderr, "mixatt convert: cannot load model: %s\n", err.msg);
        return 1;
    }
    mx_gguf_writer *w = mx_gguf_writer_new();
    int rc = !w ? mx_err_set(&err, MX_ERR_NOMEM, "out of memory") : MX_OK;
    if (!rc)
        rc = write_config(w, m, &err) || copy_source_keys(w, m->gguf, &err) ||
             (!m->gguf && m->tok && mx_tokenizer_write_gguf(m->tok, m->chat, w, &err)) || write_tensors(w, m, &err) ||
             mx_gguf_writer_save(w, out, &err);
    if (rc)
        fprintf(stderr, "mixatt convert: %s: %s\n", out, err.msg);
    else
        fprintf(stderr, "mixatt convert: wrote %s (%s, %d tensors, %.1f MB)%s\n", out, m->cfg.arch_name,
                m->dict.n, mx_model_weight_bytes(m) / 1e6, m->tok ? "" : "; no tokenizer: use token ids");
    mx_gguf_writer_free(w);
    mx_model_free(m);
    return rc ? 1 : 0;
}

static int out_flag(void *ctx, const char *a, const char *val, int *i) {
    if ((strcmp(a, "-o") && strcmp(a, "--out")) || !val) return 0;
    *(const char **)ctx = val;
    ++*i;
    return 1;
}

int mx_cmd_convert(int argc, char **argv, mx_comm *comm) {
    mx_common_opts o;
    mx_common_defaults(&o);
    o.comm = comm;
    const char *out = NULL;
    int rc = mx_parse_args("convert", argc, argv, &o, out_flag, &out, help);
    if (rc) return rc < 0 ? 0 : rc;
    if (!o.model || !out) {
        fprintf(stderr, "mixatt convert: need -m MODEL and -o OUT.gguf (see --help)\n");
        return 2;
    }
    return convert(o.model, out, &o.load);
}
