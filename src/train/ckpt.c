/* ckpt.c: a small safetensors writer (F32 only) and the checkpoint format of ckpt.h; reading goes through
 * io/safetensors.c, which validates every entry. */
#include "ckpt.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../io/dtype.h"
#include "../io/safetensors.h"

#define CKPT_FORMAT "mixatt-train-1"

typedef struct {
    char name[80];
    int rows, cols;
    const float *data;
} st_entry;

typedef struct {
    const char *key, *val;
} st_meta;

/* Writes entries (and metadata) as a safetensors file, atomically. */
static int st_write(const char *path, const st_entry *e, int n, const st_meta *meta, int n_meta,
                    mx_err *err) {
    cJSON *h = cJSON_CreateObject(), *md = cJSON_AddObjectToObject(h, "__metadata__");
    for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(md, meta[i].key, meta[i].val);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(h, e[i].name);
        cJSON_AddStringToObject(t, "dtype", "F32");
        cJSON *shape = cJSON_AddArrayToObject(t, "shape"), *offs = cJSON_AddArrayToObject(t, "data_offsets");
        if (e[i].rows > 1) cJSON_AddItemToArray(shape, cJSON_CreateNumber(e[i].rows));
        cJSON_AddItemToArray(shape, cJSON_CreateNumber(e[i].cols));
        size_t bytes = sizeof(float) * (size_t)e[i].rows * e[i].cols;
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!json) return mx_err_set(err, MX_ERR_NOMEM, "out of memory writing %s", path);
    size_t len = strlen(json), padded = (len + 7) / 8 * 8;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(json);
        return mx_err_set(err, MX_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    uint64_t hl = padded;
    bool ok = fwrite(&hl, 8, 1, f) == 1 && fwrite(json, 1, len, f) == len;
    for (size_t i = len; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; i < n && ok; i++) {
        size_t cnt = (size_t)e[i].rows * e[i].cols;
        ok = fwrite(e[i].data, sizeof(float), cnt, f) == cnt;
    }
    free(json);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) || !ok || rename(tmp, path)) {
        int e2 = errno;
        remove(tmp);
        return mx_err_set(err, MX_ERR_IO, "%s: write failed: %s", path, strerror(e2));
    }
    return MX_OK;
}

int mx_ckpt_save(const mx_tmodel *m, const char *path, const mx_ckpt_state *st, mx_err *err) {
    int n = m->n_params;
    st_entry *e = calloc((size_t)n * 3, sizeof *e);
    char *cfg = mx_train_config_to_json(&m->cfg), plan[4096], step[32], shard[32], pos[32];
    if (!e || !cfg) return free(e), free(cfg), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        const mx_param *p = &m->params[i];
        e[i] = (st_entry){.rows = p->rows, .cols = p->cols, .data = p->w};
        e[n + i] = (st_entry){.rows = p->rows, .cols = p->cols, .data = p->m};
        e[2 * n + i] = (st_entry){.rows = p->rows, .cols = p->cols, .data = p->v};
        snprintf(e[i].name, sizeof e[i].name, "%s", p->name);
        snprintf(e[n + i].name, sizeof e[i].name, "optim.m.%s", p->name);
        snprintf(e[2 * n + i].name, sizeof e[i].name, "optim.v.%s", p->name);
    }
    mx_plan_to_string(m->plan, m->cfg.n_layer, plan, sizeof plan);
    snprintf(step, sizeof step, "%d", st->step);
    snprintf(shard, sizeof shard, "%d", st->shard);
    snprintf(pos, sizeof pos, "%ld", st->pos);
    st_meta meta[] = {{"format", CKPT_FORMAT}, {"config", cfg},       {"plan", plan},
                      {"step", step},          {"data_shard", shard}, {"data_pos", pos}};
    int rc = st_write(path, e, 3 * n, meta, sizeof meta / sizeof meta[0], err);
    free(e);
    free(cfg);
    return rc;
}

int mx_grads_save(const mx_tmodel *m, const char *path, double loss, mx_err *err) {
    st_entry *e = calloc((size_t)m->n_params, sizeof *e);
    if (!e) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (int i = 0; i < m->n_params; i++) {
        const mx_param *p = &m->params[i];
        e[i] = (st_entry){.rows = p->rows, .cols = p->cols, .data = p->g};
        snprintf(e[i].name, sizeof e[i].name, "%s", p->name);
    }
    char l[64];
    snprintf(l, sizeof l, "%.17g", loss);
    st_meta meta[] = {{"format", "mixatt-grads-1"}, {"loss", l}};
    int rc = st_write(path, e, m->n_params, meta, 2, err);
    free(e);
    return rc;
}

int mx_ckpt_read_config(const char *path, mx_train_config *cfg, mx_err *err) {
    mx_st_file *f;
    if (mx_st_open(path, &f, err)) return err->code;
    const char *fmt = mx_st_meta(f, "format"), *json = mx_st_meta(f, "config");
    int rc = MX_OK;
    if (!fmt || strcmp(fmt, CKPT_FORMAT) || !json)
        rc = mx_err_set(err, MX_ERR_FORMAT, "%s: not a mixatt training checkpoint (format '%s')", path,
                        fmt ? fmt : "none");
    else {
        mx_train_config_defaults(cfg);
        rc = mx_train_config_apply_json(cfg, json, path, err);
    }
    mx_st_close(f);
    return rc;
}

static int load_tensor(const mx_st_file *f, const char *path, const char *name, const mx_param *p, float *dst,
                       mx_err *err) {
    const mx_st_tensor *t = mx_st_find(f, name);
    if (!t) return mx_err_set(err, MX_ERR_MISSING, "%s: missing tensor '%s'", path, name);
    int64_t want0 = p->rows > 1 ? p->rows : p->cols, want1 = p->rows > 1 ? p->cols : -1;
    bool ok = t->type == MX_F32 && t->n_dims == (p->rows > 1 ? 2 : 1) && t->shape[0] == want0 &&
              (want1 < 0 || t->shape[1] == want1);
    if (!ok)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: tensor '%s' is %s with %d dims [%lld, ...]; expected F32 [%d, %d]", path, name,
                          t->dtype, t->n_dims, (long long)(t->n_dims ? t->shape[0] : 0), p->rows, p->cols);
    memcpy(dst, t->data, t->nbytes);
    return MX_OK;
}

static int meta_long(const mx_st_file *f, const char *path, const char *key, long *out, mx_err *err) {
    const char *s = mx_st_meta(f, key);
    char *end;
    if (!s) return mx_err_set(err, MX_ERR_MISSING, "%s: metadata '%s' missing", path, key);
    *out = strtol(s, &end, 10);
    if (*end || end == s)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: metadata '%s' is not an integer", path, key);
    return MX_OK;
}

int mx_ckpt_load(mx_tmodel *m, const char *path, bool optim, mx_ckpt_state *st, mx_err *err) {
    mx_st_file *f;
    if (mx_st_open(path, &f, err)) return err->code;
    int rc = MX_OK;
    char name[96];
    for (int i = 0; i < m->n_params && !rc; i++) {
        const mx_param *p = &m->params[i];
        rc = load_tensor(f, path, p->name, p, p->w, err);
        if (optim && !rc) {
            snprintf(name, sizeof name, "optim.m.%s", p->name);
            rc = load_tensor(f, path, name, p, p->m, err);
            snprintf(name, sizeof name, "optim.v.%s", p->name);
            if (!rc) rc = load_tensor(f, path, name, p, p->v, err);
        }
    }
    if (optim && !rc) {
        long step = 0, shard = 0, pos = 0;
        rc = meta_long(f, path, "step", &step, err) || meta_long(f, path, "data_shard", &shard, err) ||
             meta_long(f, path, "data_pos", &pos, err);
        if (!rc) *st = (mx_ckpt_state){.step = (int)step, .shard = (int)shard, .pos = pos};
    }
    mx_st_close(f);
    return rc ? err->code : MX_OK;
}
