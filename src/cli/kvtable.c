/* kvtable.c: KV cache accounting across attention variants, for `mixatt info --kv-table`: bytes per token and
 * totals at 4K, 32K and 128K tokens for a model's shape under MHA, GQA, MQA, MLA and the MixAttention plans.
 * Window layers are counted at their steady-state ring of W slots (decode); a prefill in chunks of U tokens
 * holds W + U - 1 while it runs. Elements are counted at 2 bytes (bf16, the GPU's cache). The last column is how
 * many mixatt serve slots (each one sequence of the full context) a GiB of such cache holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../attention/kvcache.h"
#include "kvtable.h"

static const int CTXS[] = {4096, 32768, 131072};

typedef struct {
    const char *name;
    int n_kv_head;    /* 0: the shape's own */
    const char *plan; /* NULL: standard */
    int mla;          /* 1: MLA latent (4·D + D/2 per token per layer, DeepSeek's 512 + 64 at D 128) */
} variant;

static double bytes_at(const mx_config *base, const variant *v, int ctx, double *per_tok, mx_err *err) {
    mx_config c = *base;
    mx_layer_plan *plan = calloc((size_t)c.n_layer, sizeof *plan);
    if (!plan) return -1;
    c.plan = plan;
    if (v->n_kv_head) c.n_kv_head = v->n_kv_head;
    int rc = v->plan ? mx_plan_parse(v->plan, c.n_layer, MX_DEFAULT_WINDOW, MX_ATTN_MHA, plan, err) : 0;
    if (!v->plan) mx_plan_uniform(plan, c.n_layer, MX_ATTN_MHA, 0);
    double total = 0;
    if (!rc && v->mla) {
        double lat = 4.0 * c.head_dim + c.head_dim / 2;
        *per_tok = lat * c.n_layer * 2;
        total = *per_tok * ctx;
    } else if (!rc) {
        total = (double)mx_kv_bytes_at(&c, ctx, 1, 2);
        size_t elems = 0;
        for (int l = 0; l < c.n_layer; l++) elems += mx_kv_elems_per_token(&c, l);
        *per_tok = (double)elems * 2;
    }
    free(plan);
    return rc ? -1 : total;
}

static void fmt_bytes(double b, char *out, size_t n) {
    if (b >= 1 << 30)
        snprintf(out, n, "%.2f GiB", b / (1 << 30));
    else
        snprintf(out, n, "%.1f MiB", b / (1 << 20));
}

int mx_print_kv_table(const mx_config *c, const char *title, FILE *f) {
    int G = c->n_kv_head == c->n_head ? (c->n_head >= 4 ? c->n_head / 4 : 1) : c->n_kv_head;
    variant vs[] = {
        {"MHA", c->n_head, NULL, 0},
        {"GQA", G, NULL, 0},
        {"MQA", 1, NULL, 0},
        {"MLA", 0, NULL, 1},
        {"MA", G, "ma", 0},
        {"MA-EndSlide", G, "ma-endslide", 0},
        {"MA-Offset", G, "ma-offset", 0},
        {"MA-Pairs", G, "ma-pairs", 0},
        {"MA-Offset-SlideShare", G, "ma-offset-slideshare", 0},
    };
    mx_err err = {0};
    fprintf(f, "\nKV cache of %s: %d layers, %d query heads, head dim %d, bf16, windows of %d as rings\n\n",
            title, c->n_layer, c->n_head, c->head_dim, MX_DEFAULT_WINDOW);
    fprintf(f, "| variant | KV heads | bytes/token (at 128K) | 4K | 32K | 128K | vs standard GQA at 32K | "
               "server slots per GiB at 4K / 32K |\n");
    fprintf(f, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    double per_tok, gqa32 = bytes_at(c, &vs[1], CTXS[1], &per_tok, &err);
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        char cells[3][32];
        double at[3];
        for (int k = 0; k < 3; k++) {
            at[k] = bytes_at(c, &vs[i], CTXS[k], &per_tok, &err);
            if (at[k] < 0) return fprintf(stderr, "mixatt info: %s\n", err.msg), 1;
            fmt_bytes(at[k], cells[k], sizeof cells[k]);
        }
        char heads[16];
        snprintf(heads, sizeof heads, "%d", vs[i].mla ? 0 : vs[i].n_kv_head);
        double r = gqa32 / at[1];
        /* mixatt serve: each slot holds one sequence's cache of the full context (--kv-budget) */
        fprintf(f, "| %s | %s | %.0f | %s | %s | %s | %s%.2f | %.1f / %.2f |\n", vs[i].name,
                vs[i].mla ? "latent" : heads, at[2] / CTXS[2], cells[0], cells[1], cells[2],
                r >= 1 ? "1/" : "x", r >= 1 ? r : 1 / r, (1 << 30) / at[0], (1 << 30) / at[1]);
    }
    return 0;
}

void mx_shape_mixattention24(mx_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "MixAttention-shaped 24 layers");
    c->n_layer = 24;
    c->n_head = 12;
    c->n_kv_head = 3;
    c->head_dim = 128;
    c->d_model = 1536;
    c->max_ctx = 131072;
}
