/* info.c: `mixatt info`: what a model is: architecture, shape, parameter count, tensor types and their bytes,
 * the attention plan, KV cache bytes per token and at a given context. */
#include <stdlib.h>
#include <string.h>

#include "../attention/kvcache.h"
#include "../io/dtype.h"
#include "commands.h"
#include "../model/session.h"
#include "../model/tp.h"
#include "kvtable.h"
#include "common.h"

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt info [-m MODEL] [--ctx N] [--plan P] [--layers] [--kv-table] [--shape "
        "mixattention24]\n\n"
        "Prints the model's architecture, parameter count, tensor types, attention plan and KV cache\n"
        "size (bytes per token, and in total at --ctx N tokens; default the model's context length),\n"
        "with the saving against the standard plan.\n\n"
        "  --layers             the plan and cache bytes per token of every layer\n"
        "  --kv-table           KV bytes per token and at 4K/32K/128K under MHA, GQA, MQA, MLA and the\n"
        "                       MixAttention plans, for this model's shape\n"
        "  --shape mixattention24  the table for the 24-layer MixAttention-shaped config (no model needed)\n"
        "  --moe-stats -p TEXT  run TEXT through a mixture-of-experts model and print how many tokens\n"
        "                       each layer routed to each expert\n\n");
    mx_common_help(f, false);
    mx_common_help_tp(f);
}

static void print_types(const mx_model *m) {
    int64_t count[64] = {0};
    size_t bytes[64] = {0};
    for (int i = 0; i < m->dict.n; i++) {
        uint32_t t = m->dict.items[i].t.type;
        if (t < 64) count[t]++, bytes[t] += m->dict.items[i].t.nbytes;
    }
    printf("tensor types:\n");
    for (int t = 0; t < 64; t++)
        if (count[t])
            printf("  %-6s %4lld tensors  %9.2f MiB\n", mx_dtype_name((uint32_t)t), (long long)count[t],
                   bytes[t] / 1048576.0);
}

static void print_layers(const mx_config *c, int ctx) {
    printf("layers (kind, window, cache read, bytes per token fp32):\n");
    for (int l = 0; l < c->n_layer; l++) {
        const mx_layer_plan *p = &c->plan[l];
        char win[24] = "full";
        if (p->window) snprintf(win, sizeof win, "window %d", p->window);
        printf("  %3d  %-7s %-12s %s%-3d  %zu\n", l, mx_attn_kind_name(p->kind), win,
               p->kv_from == l ? "own  " : "layer ", p->kv_from, mx_kv_elems_per_token(c, l) * 4);
    }
    (void)ctx;
}

/* Memory on the backend: weights as placed (measured as the drop in free memory while placing, which for
 * CUDA includes the bf16 copies the prefill GEMM reads), a session at ctx, and what is free. */
static void print_memory(const mx_model *m, mx_backend *be, int ctx) {
    size_t free_b, total_b;
    if ((be->caps & MX_CAP_HOST_MEMORY) || !be->mem_info || be->mem_info(be, &free_b, &total_b)) return;
    printf("%s memory:    weights %.1f MiB as placed; a session at %d tokens %.1f MiB (KV + workspace); "
           "%.1f MiB free of %.1f MiB\n",
           be->name, be->placed_bytes / 1048576.0, ctx, mx_session_bytes(m, be, ctx) / 1048576.0,
           free_b / 1048576.0, total_b / 1048576.0);
}

/* Routes the prompt through the model and prints tokens per expert per layer. */
static int print_moe_stats(const mx_model *m, mx_backend *be, const char *text) {
    const mx_config *c = &m->cfg;
    if (c->n_expert == 0) return fprintf(stderr, "mixatt info: %s has no experts\n", m->path), 1;
    if (!m->tok) return fprintf(stderr, "mixatt info: %s has no tokenizer for --moe-stats -p\n", m->path), 1;
    mx_err err = {0};
    int *ids = NULL, n = 0, rc = 1;
    mx_session *s = NULL;
    float *logits = malloc(sizeof(float) * (size_t)c->vocab);
    if (!logits || mx_tokenize(m->tok, text, strlen(text), true, &ids, &n, &err) || n == 0 ||
        mx_session_create(m, be, n, &s, &err) || mx_session_eval(s, ids, n, logits, false, &err)) {
        fprintf(stderr, "mixatt info: %s\n", err.msg[0] ? err.msg : "nothing to route");
    } else {
        printf("expert load on %d tokens (top-%d of %d experts; a balanced router gives %.1f per expert):\n",
               n, c->n_expert_used, c->n_expert, (double)n * c->n_expert_used / c->n_expert);
        for (int l = 0; l < c->n_layer; l++) {
            if (!mx_layer_is_moe(c, l)) continue;
            printf("  layer %3d:", l);
            for (int e = 0; e < c->n_expert; e++) printf(" %5d", s->moe_counts[l * c->n_expert + e]);
            printf("\n");
        }
        rc = 0;
    }
    mx_session_free(s);
    free(ids);
    free(logits);
    return rc;
}

static void print_kv(const mx_model *m, int ctx) {
    const mx_config *c = &m->cfg;
    size_t per_tok = 0;
    int writers = 0;
    for (int l = 0; l < c->n_layer; l++) {
        per_tok += mx_kv_elems_per_token(c, l);
        writers += c->plan[l].kv_from == l;
    }
    printf("KV cache:       %d of %d layers write a cache; %zu elements per token per writing layer\n",
           writers, c->n_layer, writers ? per_tok / writers : 0);
    printf("  per token:    %zu bytes fp32 (CPU), %zu bytes bf16 (GPU)\n", per_tok * 4, per_tok * 2);
    size_t total = mx_kv_bytes_at(c, ctx, 512, 4), ring1 = mx_kv_bytes_at(c, ctx, 1, 4);
    printf("  at %d tokens: %.2f MiB fp32 (CPU), %.2f MiB bf16", ctx, total / 1048576.0,
           total / 2 / 1048576.0);
    if (ring1 != total)
        printf(" (window rings hold W + 511 slots for 512-token prefill chunks; %.2f MiB at W)",
               ring1 / 1048576.0);
    printf("\n");
    mx_config std = *c;
    mx_layer_plan *plan = calloc((size_t)c->n_layer, sizeof *plan);
    if (plan) {
        mx_plan_uniform(plan, c->n_layer, c->plan[0].kind, 0);
        std.plan = plan;
        size_t base = mx_kv_bytes_at(&std, ctx, 512, 4);
        if (base != total)
            printf("  vs the standard plan (every layer full, own cache): %.2f MiB, %.1fx smaller\n",
                   base / 1048576.0, (double)base / total);
        free(plan);
    }
}

typedef struct {
    bool layers, table;
    const char *moe_text, *shape;
} info_opts;

/* The flags a table cannot say: --moe-stats, then -p TEXT for it; --shape's one known value. */
static int info_flag(void *ctx, const char *a, const char *val, int *i) {
    info_opts *io = ctx;
    if (!strcmp(a, "--moe-stats")) {
        io->moe_text = "";
    } else if (!strcmp(a, "-p") && val && io->moe_text) {
        io->moe_text = val, ++*i;
    } else if (!strcmp(a, "--shape") && val) {
        if (strcmp(val, "mixattention24"))
            return fprintf(stderr, "mixatt info: unknown shape '%s' (known: mixattention24)\n", val), -1;
        io->shape = val, ++*i;
    } else {
        return 0;
    }
    return 1;
}

/* The blocks as the config says they are: norm, positions, MLP (dense or experts), attention weights, head. */
static void print_architecture(const mx_config *c) {
    char pos[96], mlp[96];
    if (c->use_rope)
        snprintf(pos, sizeof pos, "RoPE theta %g over %d dims", c->rope_theta, c->rope_dim);
    else
        snprintf(pos, sizeof pos, "learned positions");
    const char *act = c->mlp == MX_MLP_SWIGLU ? "SwiGLU" : "GELU";
    if (c->n_expert > 0)
        snprintf(mlp, sizeof mlp, "%s experts (top-%d of %d%s)", act, c->n_expert_used, c->n_expert,
                 c->n_shared_expert ? ", plus shared" : "");
    else
        snprintf(mlp, sizeof mlp, "%s", act);
    printf("architecture:   %s (%s, %s, %s%s, %s embeddings)\n", c->arch_name,
           c->norm == MX_NORM_LAYER ? "LayerNorm" : "RMSNorm", pos, mlp,
           c->arch == MX_ARCH_DEEPSEEK2 ? ", MLA attention" : "", c->tied_embeddings ? "tied" : "separate");
}

int mx_cmd_info(int argc, char **argv, mx_comm *comm) {
    info_opts io = {0};
    const mx_opt opts[] = {MX_OPT_B("--layers", NULL, &io.layers), MX_OPT_B("--kv-table", NULL, &io.table),
                           MX_OPT_END};
    mx_common_opts o;
    int status;
    const mx_command cmd = {.name = "info", .help = help, .opts = opts, .flag = info_flag, .ctx = &io};
    if (!mx_command_start(&cmd, argc, argv, comm, &o, &status)) return status;
    if (io.moe_text && !*io.moe_text) return fprintf(stderr, "mixatt info: --moe-stats needs -p TEXT\n"), 2;
    if (io.shape) {
        mx_config c;
        mx_shape_mixattention24(&c);
        return mx_print_kv_table(&c, c.name, stdout);
    }
    bool layers = io.layers, table = io.table;
    const char *moe_text = io.moe_text;
    mx_model *m;
    mx_backend *be;
    if (mx_open_model(&o, &m, &be)) return 1;
    const mx_config *c = &m->cfg;
    int ctx = o.ctx ? o.ctx : c->max_ctx;
    char plan[4096];
    mx_plan_to_string(c->plan, c->n_layer, plan, sizeof plan);
    printf("model:          %s\n", m->path);
    printf("name:           %s\n", c->name);
    print_architecture(c);
    const mx_tp *tp = m->tp; /* sharded: the config holds this rank's counts, tp the model's */
    printf(
        "shape:          %d layers, width %d, %d query heads / %d KV heads (head dim %d), MLP %d, vocab %d\n",
        c->n_layer, c->d_model, tp ? tp->n_head : c->n_head, tp ? tp->n_kv_head : c->n_kv_head, c->head_dim,
        tp ? tp->d_ff : c->d_ff, c->vocab);
    mx_tp_describe(m, stdout);
    printf("context:        %d tokens\n", c->max_ctx);
    printf("parameters:     %.2f M (%lld)\n", mx_model_n_params(m) / 1e6, (long long)mx_model_n_params(m));
    printf("weights:        %.2f MiB in the file; %.2f MiB read per decoded token\n",
           mx_model_weight_bytes(m) / 1048576.0,
           (tp ? tp->decode_bytes : mx_model_decode_bytes(m)) / 1048576.0);
    if (m->gguf)
        printf("GGUF version:   %u, %llu tensors, %llu metadata keys\n", m->gguf->version,
               (unsigned long long)m->gguf->n_tensors, (unsigned long long)m->gguf->n_kv);
    printf("attention plan: %s%s\n", plan,
           c->plan_is_trained ? "" : "  (not the plan the model was trained with)");
    print_types(m);
    print_kv(m, ctx);
    print_memory(m, be, ctx);
    if (layers) print_layers(c, ctx);
    if (moe_text && print_moe_stats(m, be, moe_text)) return mx_close_model(m, be), 1;
    if (table && mx_print_kv_table(c, c->name, stdout)) return mx_close_model(m, be), 1;
    mx_close_model(m, be);
    return 0;
}
