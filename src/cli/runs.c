/* runs.c: reading a training run directory for `mixatt compare` and `mixatt plot` (runs.h). */
#include "runs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../attention/kvcache.h"
#include "../io/safetensors.h"
#include "../train/ckpt.h"

static int curve_add(mx_curve *c, int step, double v) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        int *s = realloc(c->step, sizeof *s * (size_t)cap);
        if (s) c->step = s;
        double *d = realloc(c->value, sizeof *d * (size_t)cap);
        if (d) c->value = d;
        if (!s || !d) return 1;
        c->cap = cap;
    }
    c->step[c->n] = step, c->value[c->n++] = v;
    return 0;
}

static void base_name(char *out, size_t n, const char *dir) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(out, n, "%.*s", (int)(len - start), dir + start);
}

/* Config (mx_ckpt_read_config), plan and parameter count from the checkpoint. */
static int read_checkpoint(const char *path, mx_run *r) {
    mx_err err = {0};
    mx_st_file *f = NULL;
    if (mx_ckpt_read_config(path, &r->cfg, &err) || mx_st_open(path, &f, &err))
        return fprintf(stderr, "%s\n", err.msg), 1;
    const char *plan = mx_st_meta(f, "plan");
    if (r->cfg.attn == MX_ATTN_MHA) /* other kinds prefix the plan: "mla: G,G,..." */
        snprintf(r->plan, sizeof r->plan, "%.1000s", plan ? plan : r->cfg.plan);
    else
        snprintf(r->plan, sizeof r->plan, "%s: %.1000s", mx_attn_kind_name(r->cfg.attn),
                 plan ? plan : r->cfg.plan);
    for (int i = 0; i < f->n_tensors; i++) {
        if (!strncmp(f->tensors[i].name, "optim.", 6)) continue;
        long n = 1;
        for (int d = 0; d < f->tensors[i].n_dims; d++) n *= (long)f->tensors[i].shape[d];
        r->n_params += n;
    }
    mx_st_close(f);
    return 0;
}

static int parse_line(const char *line, mx_run *r, const char *path, int lineno) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
    if (!cJSON_IsObject(j) || !cJSON_IsNumber(step)) {
        cJSON_Delete(j);
        return fprintf(stderr, "%s:%d: not a log line ({\"step\": N, ...})\n", path, lineno), 1;
    }
    const cJSON *loss = cJSON_GetObjectItemCaseSensitive(j, "loss");
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(j, "val_loss");
    const cJSON *tps = cJSON_GetObjectItemCaseSensitive(j, "tok_per_s");
    int s = step->valueint, rc = 0;
    if (cJSON_IsNumber(loss)) rc |= curve_add(&r->train, s, loss->valuedouble);
    if (cJSON_IsNumber(val)) rc |= curve_add(&r->val, s, val->valuedouble);
    if (cJSON_IsNumber(tps)) rc |= curve_add(&r->tok_s, s, tps->valuedouble);
    cJSON_Delete(j);
    if (rc) fprintf(stderr, "%s: out of memory\n", path);
    return rc;
}

static int read_log(const char *path, mx_run *r) {
    FILE *f = fopen(path, "r");
    if (!f) return fprintf(stderr, "%s: cannot open: %s\n", path, strerror(errno)), 1;
    char line[4096];
    int rc = 0, lineno = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (line[strspn(line, " \t\r\n")]) rc = parse_line(line, r, path, lineno);
    }
    fclose(f);
    if (!rc && !r->train.n) fprintf(stderr, "%s: no training steps logged\n", path), rc = 1;
    return rc;
}

int mx_run_load(const char *dir, mx_run *r) {
    memset(r, 0, sizeof *r);
    r->dir = dir;
    base_name(r->name, sizeof r->name, dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    if (read_checkpoint(path, r)) return 1;
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    return read_log(path, r);
}

static void curve_free(mx_curve *c) {
    free(c->step), free(c->value);
}

void mx_run_free(mx_run *r) {
    curve_free(&r->train), curve_free(&r->val), curve_free(&r->tok_s);
}

double mx_run_kv_bytes_per_token(const mx_run *r) {
    const mx_train_config *t = &r->cfg;
    mx_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = t->n_layer, c.n_head = t->n_head, c.n_kv_head = t->n_kv_head, c.d_model = t->d_model;
    c.head_dim = t->d_model / t->n_head, c.max_ctx = t->max_ctx, c.window = t->window;
    c.mla_kv_rank = t->mla_kv_rank, c.mla_rope_dim = t->mla_rope_dim; /* MLA caches the latent + rope key */
    mx_layer_plan *plan = calloc((size_t)c.n_layer, sizeof *plan);
    if (!plan) return -1;
    c.plan = plan;
    mx_err err = {0};
    mx_plan_uniform(plan, c.n_layer, t->attn, 0);
    int rc = t->plan[0] ? mx_plan_parse(t->plan, c.n_layer, t->window, t->attn, plan, &err) : 0;
    double b = rc ? -1 : (double)mx_kv_bytes_at(&c, c.max_ctx, 1, sizeof(float)) / c.max_ctx;
    free(plan);
    return b;
}
