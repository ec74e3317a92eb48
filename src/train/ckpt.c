/* ckpt.c: a small safetensors writer (F32 only) and the checkpoint format of ckpt.h; reading goes through
 * io/safetensors.c, which validates every entry. */
#include "ckpt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
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

/* The checksum of the file st_write is about to write (safetensors.h: the metadata, then the data). */
static uint32_t st_checksum(const st_entry *e, int n, const st_meta *meta, int n_meta) {
    uint32_t crc = 0;
    for (int i = 0; i < n_meta; i++) crc = mx_st_checksum_meta(crc, meta[i].key, meta[i].val);
    for (int i = 0; i < n; i++)
        crc = mx_st_checksum_data(crc, e[i].data, sizeof(float) * (size_t)e[i].rows * e[i].cols);
    return crc;
}

/* Writes entries (and metadata, then its checksum) as a safetensors file, atomically. */
static int st_write(const char *path, const st_entry *e, int n, const st_meta *meta, int n_meta,
                    mx_err *err) {
    cJSON *h = cJSON_CreateObject(), *md = cJSON_AddObjectToObject(h, "__metadata__");
    for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(md, meta[i].key, meta[i].val);
    char sum[32];
    snprintf(sum, sizeof sum, "crc32:%08x", (unsigned)st_checksum(e, n, meta, n_meta));
    cJSON_AddStringToObject(md, "checksum", sum);
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

/* The first non-finite element of the entries: its entry, or -1 when every value is finite. */
static int first_nonfinite(const st_entry *e, int n, size_t *at) {
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)e[i].rows * e[i].cols;
        for (size_t j = 0; j < cnt; j++)
            if (!isfinite(e[i].data[j])) return *at = j, i;
    }
    return -1;
}

/* A checkpoint never stores a NaN or an infinity: a run that diverged keeps its previous (good) checkpoint,
 * and the error says which tensor went bad and which step the kept file holds. */
static int check_finite(const st_entry *e, int n, const char *path, int step, mx_err *err) {
    size_t j = 0;
    int i = first_nonfinite(e, n, &j);
    if (i < 0) return MX_OK;
    char last[160] = "No checkpoint was written before it.";
    mx_st_file *f = NULL;
    mx_err ignore = {0};
    if (access(path, F_OK) == 0 && mx_st_open(path, &f, &ignore) == MX_OK && mx_st_meta(f, "step"))
        snprintf(last, sizeof last, "The last good checkpoint (step %.20s) is %s, left as it was.",
                 mx_st_meta(f, "step"), path);
    mx_st_close(f);
    return mx_err_set(err, MX_ERR_FORMAT,
                      "%s: not written: '%s' holds %s after step %d (element %zu); stopping. %s", path,
                      e[i].name, isnan(e[i].data[j]) ? "a NaN" : "an infinity", step, j, last);
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
    int rc = check_finite(e, 3 * n, path, st->step, err) ||
                     st_write(path, e, 3 * n, meta, sizeof meta / sizeof meta[0], err)
                 ? err->code
                 : MX_OK;
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
    if (mx_st_check_finite(t, err)) return err->code;
    memcpy(dst, t->data, t->nbytes);
    return MX_OK;
}

/* An integer metadata value in [lo, hi]: plain decimal digits (an optional '-'), no overflow. */
static int meta_int(const mx_st_file *f, const char *path, const char *key, long long lo, long long hi,
                    long long *out, mx_err *err) {
    const char *s = mx_st_meta(f, key);
    if (!s) return mx_err_set(err, MX_ERR_MISSING, "%s: metadata '%s' missing", path, key);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    bool digits = (*s == '-' ? s[1] : *s) >= '0' && (*s == '-' ? s[1] : *s) <= '9';
    if (!digits || *end || errno == ERANGE)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: metadata '%s' = '%.40s' is not an integer", path, key, s);
    if (v < lo || v > hi)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: metadata '%s' = %lld is outside %lld..%lld", path, key, v,
                          lo, hi);
    *out = v;
    return MX_OK;
}

/* The resume state: a step within the run's schedule, a shard index and a token position that are
 * non-negative and fit their types (the loader checks them against the shards themselves at seek). */
static int read_state(const mx_st_file *f, const char *path, int steps, mx_ckpt_state *st, mx_err *err) {
    long long step = 0, shard = 0, pos = 0;
    if (meta_int(f, path, "step", 0, INT_MAX, &step, err) ||
        meta_int(f, path, "data_shard", 0, INT_MAX, &shard, err) ||
        meta_int(f, path, "data_pos", 0, LONG_MAX, &pos, err))
        return err->code;
    if (step > steps)
        return mx_err_set(
            err, MX_ERR_FORMAT,
            "%s: the checkpoint is at step %lld, past the run's %d steps (raise them with --set "
            "steps=N)",
            path, step, steps);
    *st = (mx_ckpt_state){.step = (int)step, .shard = (int)shard, .pos = (long)pos};
    return MX_OK;
}

/* A mixatt checkpoint (its "format" says so) must carry a checksum that matches; a plain safetensors file
 * (an `init` made elsewhere) has no metadata to check. */
static int verify(const mx_st_file *f, mx_err *err) {
    const char *fmt = mx_st_meta(f, "format");
    return mx_st_verify_checksum(f, fmt && !strcmp(fmt, CKPT_FORMAT), err);
}

int mx_ckpt_load(mx_tmodel *m, const char *path, bool optim, mx_ckpt_state *st, mx_err *err) {
    mx_st_file *f;
    if (mx_st_open(path, &f, err)) return err->code;
    if (verify(f, err)) return mx_st_close(f), err->code;
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
    if (optim && !rc) rc = read_state(f, path, m->cfg.steps, st, err);
    mx_st_close(f);
    return rc ? err->code : MX_OK;
}

/* ---- the run directory ---- */

int mx_ckpt_remove_stale(const char *run_dir, mx_err *err) {
    DIR *d = opendir(run_dir);
    if (!d)
        return errno == ENOENT ? MX_OK
                               : mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", run_dir, strerror(errno));
    int rc = MX_OK;
    for (struct dirent *e; (e = readdir(d)) && !rc;) {
        size_t n = strlen(e->d_name);
        if (n > 16 && !strcmp(e->d_name + n - 16, ".safetensors.tmp")) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", run_dir, e->d_name);
            if (unlink(p) && errno != ENOENT)
                rc = mx_err_set(err, MX_ERR_IO, "%s: cannot remove a leftover temp file: %s", p,
                                strerror(errno));
        }
    }
    closedir(d);
    return rc;
}

/* The step of a log line ({"step": N, ...}), -1 when it has none. */
static long line_step(const char *line) {
    const char *k = strstr(line, "\"step\":");
    if (!k) return -1;
    char *end;
    long v = strtol(k + 7, &end, 10);
    return end == k + 7 ? -1 : v;
}

int mx_ckpt_truncate_log(const char *path, int step, mx_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? MX_OK
                               : mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *o = fopen(tmp, "wb");
    if (!o) {
        fclose(f);
        return mx_err_set(err, MX_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    bool ok = true;
    while (ok && (n = getline(&line, &cap, f)) > 0) {
        long s = line_step(line);
        if (line[n - 1] == '\n' && s >= 0 && s <= step) ok = fwrite(line, 1, (size_t)n, o) == (size_t)n;
    }
    free(line);
    ok = ok && !ferror(f);
    fclose(f);
    if (fclose(o) || !ok || rename(tmp, path)) {
        int e = errno;
        remove(tmp);
        return mx_err_set(err, MX_ERR_IO, "%s: cannot rewrite to step %d: %s", path, step, strerror(e));
    }
    return MX_OK;
}
