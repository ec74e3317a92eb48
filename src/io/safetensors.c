/* safetensors.c: safetensors reader (see safetensors.h). The file is mapped read-only; the JSON header is
 * parsed with cJSON and every entry is validated before anything is returned. Sharded checkpoints are read
 * through model.safetensors.index.json. Every error message starts with the file's path. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../base/file.h"
#include "dtype.h"

#define ST_MAX_HEADER (100u << 20)       /* the format's own limit on the JSON header */
#define ST_MAX_INT    9007199254740992.0 /* 2^53: integers a JSON double holds exactly */
#define ST_MAX_DIM    INT32_MAX          /* one dimension: every consumer indexes a row or column with int */

typedef struct {
    const char *name;
    int size;
    uint32_t type;
} st_dtype;

static const st_dtype DTYPES[] = {
    {"F32", 4, MX_F32},
    {"F16", 2, MX_F16},
    {"BF16", 2, MX_BF16},
    {"F64", 8, MX_ST_NO_TYPE},
    {"I64", 8, MX_ST_NO_TYPE},
    {"U64", 8, MX_ST_NO_TYPE},
    {"I32", 4, MX_ST_NO_TYPE},
    {"U32", 4, MX_ST_NO_TYPE},
    {"I16", 2, MX_ST_NO_TYPE},
    {"U16", 2, MX_ST_NO_TYPE},
    {"I8", 1, MX_ST_NO_TYPE},
    {"U8", 1, MX_ST_NO_TYPE},
    {"BOOL", 1, MX_ST_NO_TYPE},
    {"F8_E4M3", 1, MX_ST_NO_TYPE},
    {"F8_E5M2", 1, MX_ST_NO_TYPE},
};

static const st_dtype *dtype_find(const char *s) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (!strcmp(DTYPES[i].name, s)) return &DTYPES[i];
    return NULL;
}

static int cmp_tensor(const void *a, const void *b) {
    const char *na = ((const mx_st_tensor *)a)->name, *nb = ((const mx_st_tensor *)b)->name;
    return strcmp(na, nb);
}

/* A JSON number that is a non-negative integer below 2^53. */
static bool json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0 && d < ST_MAX_INT) || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int parse_shape(const mx_st_file *f, const char *name, const cJSON *shape, mx_st_tensor *t,
                       uint64_t *n_elem, mx_err *err) {
    int n = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
    if (n < 0 || n > MX_ST_MAX_DIMS)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: tensor '%s': shape must be an array of at most %d integers", f->path, name,
                          MX_ST_MAX_DIMS);
    t->n_dims = n;
    *n_elem = 1;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                              f->path, name, i);
        if (v > ST_MAX_DIM)
            return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': shape[%d] = %llu exceeds %d", f->path,
                              name, i, (unsigned long long)v, INT32_MAX);
        if (v && *n_elem > (UINT64_MAX >> 4) / v)
            return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': shape overflows", f->path, name);
        t->shape[i] = (int64_t)v;
        *n_elem *= v;
    }
    return MX_OK;
}

static int parse_offsets(const mx_st_file *f, const char *name, const cJSON *offs, size_t data_size,
                         uint64_t *begin, uint64_t *end, mx_err *err) {
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, begin) ||
        !json_uint(offs->child->next, end) || *begin > *end)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets must be [begin, end] with begin <= end", f->path,
                          name);
    if (*end > data_size)
        return mx_err_set(
            err, MX_ERR_FORMAT,
            "%s: tensor '%s': data [%llu, %llu) runs past the end of the data section (%zu bytes; "
            "truncated file?)",
            f->path, name, (unsigned long long)*begin, (unsigned long long)*end, data_size);
    return MX_OK;
}

/* One "name": {dtype, shape, data_offsets} entry. */
static int parse_entry(mx_st_file *f, const cJSON *e, const uint8_t *data, size_t data_size, mx_st_tensor *t,
                       mx_err *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': entry is not an object", f->path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const st_dtype *d = cJSON_IsString(dt) ? dtype_find(dt->valuestring) : NULL;
    if (!d)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': unknown dtype %s%s%s", f->path, name,
                          cJSON_IsString(dt) ? "'" : "", cJSON_IsString(dt) ? dt->valuestring : "(missing)",
                          cJSON_IsString(dt) ? "'" : "");
    uint64_t n_elem = 0, begin = 0, end = 0;
    if (parse_shape(f, name, cJSON_GetObjectItemCaseSensitive(e, "shape"), t, &n_elem, err) ||
        parse_offsets(f, name, cJSON_GetObjectItemCaseSensitive(e, "data_offsets"), data_size, &begin, &end,
                      err))
        return err->code;
    if (end - begin != n_elem * (uint64_t)d->size)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: tensor '%s': %llu elements of %s need %llu bytes but data_offsets span %llu",
                          f->path, name, (unsigned long long)n_elem, d->name,
                          (unsigned long long)(n_elem * (uint64_t)d->size),
                          (unsigned long long)(end - begin));
    if (!(t->name = strdup(name))) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", f->path);
    snprintf(t->dtype, sizeof t->dtype, "%s", d->name);
    t->type = d->type;
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    t->file = f->path;
    return MX_OK;
}

/* The one __metadata__ block: string values under distinct keys. A second block, or a key given twice, is an
 * error (which of the two would a reader believe?). The arrays are sized by this block's own entry count,
 * and the count of stored entries never exceeds it. */
static int parse_metadata(mx_st_file *f, const cJSON *meta, mx_err *err) {
    if (f->meta_keys)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: the header has more than one __metadata__ block", f->path);
    if (!cJSON_IsObject(meta))
        return mx_err_set(err, MX_ERR_FORMAT, "%s: __metadata__ is not an object", f->path);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", f->path);
    for (const cJSON *m = meta->child; m && f->n_meta < n; m = m->next) {
        if (!cJSON_IsString(m))
            return mx_err_set(err, MX_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string", f->path,
                              m->string);
        if (mx_st_meta(f, m->string))
            return mx_err_set(err, MX_ERR_FORMAT, "%s: __metadata__ key '%s' appears twice", f->path,
                              m->string);
        char *k = strdup(m->string), *v = strdup(m->valuestring);
        if (!k || !v) return free(k), free(v), mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", f->path);
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta++] = v;
    }
    return MX_OK;
}

static int check_duplicates(const mx_st_file *f, mx_err *err) {
    for (int i = 1; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
            return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", f->path,
                              f->tensors[i].name);
    return MX_OK;
}

static int parse_header(mx_st_file *f, const cJSON *root, const uint8_t *data, size_t data_size,
                        mx_err *err) {
    if (!cJSON_IsObject(root))
        return mx_err_set(err, MX_ERR_FORMAT, "%s: the header is not a JSON object", f->path);
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    if (!f->tensors) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", f->path);
    for (const cJSON *e = root->child; e && f->n_tensors < n; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (parse_metadata(f, e, err)) return err->code;
            continue;
        }
        mx_st_tensor *t = &f->tensors[f->n_tensors];
        int rc = parse_entry(f, e, data, data_size, t, err);
        if (t->name) f->n_tensors++; /* owned: freed by close even when a later check failed */
        if (rc) return rc;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor);
    return check_duplicates(f, err);
}

static int parse(mx_st_file *f, mx_err *err) {
    if (f->size < 8)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: truncated file: %zu bytes, the header length alone needs 8", f->path, f->size);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)f->base[i] << (8 * i);
    if (n > ST_MAX_HEADER || n > f->size - 8)
        return mx_err_set(
            err, MX_ERR_FORMAT,
            "%s: header length %llu does not fit in the file (%zu bytes; truncated or not safetensors?)",
            f->path, (unsigned long long)n, f->size);
    cJSON *root = cJSON_ParseWithLength((const char *)f->base + 8, (size_t)n);
    if (!root) return mx_err_set(err, MX_ERR_FORMAT, "%s: the header is not valid JSON", f->path);
    f->data_start = 8 + (size_t)n;
    int rc = parse_header(f, root, f->base + 8 + n, f->size - 8 - (size_t)n, err);
    cJSON_Delete(root);
    return rc;
}

static int open_common(mx_st_file *f, mx_st_file **out, mx_err *err) {
    if (parse(f, err)) {
        mx_st_close(f);
        return err->code;
    }
    *out = f;
    return MX_OK;
}

int mx_st_open_buffer(const void *buf, size_t size, const char *name, mx_st_file **out, mx_err *err) {
    *out = NULL;
    mx_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name))) return free(f), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    f->base = buf;
    f->size = size;
    return open_common(f, out, err);
}

int mx_st_open(const char *path, mx_st_file **out, mx_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mx_err_set(err, MX_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *p = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (p == MAP_FAILED) return mx_err_set(err, MX_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    mx_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        if (p) munmap(p, size);
        free(f);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    f->base = p;
    f->size = size;
    f->owns_map = p != NULL;
    return open_common(f, out, err);
}

void mx_st_close(mx_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) free(f->meta_keys[i]), free(f->meta_vals[i]);
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->owns_map) munmap((void *)f->base, f->size);
    free(f->path);
    free(f);
}

const mx_st_tensor *mx_st_find(const mx_st_file *f, const char *name) {
    mx_st_tensor key = {.name = (char *)name};
    return f->n_tensors ? bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof key, cmp_tensor) : NULL;
}

const char *mx_st_meta(const mx_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_vals[i];
    return NULL;
}

/* ---- integrity ---- */

uint32_t mx_st_checksum_data(uint32_t crc, const void *data, size_t n) {
    return (uint32_t)crc32_z(crc, data, n);
}

uint32_t mx_st_checksum_meta(uint32_t crc, const char *key, const char *val) {
    crc = mx_st_checksum_data(crc, key, strlen(key) + 1);
    return mx_st_checksum_data(crc, val, strlen(val) + 1);
}

int mx_st_verify_checksum(const mx_st_file *f, bool required, mx_err *err) {
    const char *stored = mx_st_meta(f, "checksum");
    if (!stored)
        return required
                   ? mx_err_set(err, MX_ERR_FORMAT,
                                "%s: no checksum in the metadata (written by an older mixatt, or damaged)",
                                f->path)
                   : MX_OK;
    unsigned int want = 0;
    int used = 0;
    if (sscanf(stored, "crc32:%8x%n", &want, &used) != 1 || used != 14 || stored[used])
        return mx_err_set(err, MX_ERR_FORMAT, "%s: metadata checksum '%.40s' is not crc32:XXXXXXXX", f->path,
                          stored);
    uint32_t crc = 0;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], "checksum"))
            crc = mx_st_checksum_meta(crc, f->meta_keys[i], f->meta_vals[i]);
    crc = mx_st_checksum_data(crc, f->base + f->data_start, f->size - f->data_start);
    if (crc != want)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: checksum mismatch (stored %08x, contents %08x): the file is damaged or was "
                          "changed after it was written",
                          f->path, want, crc);
    return MX_OK;
}

/* ---- checkpoints (one file or shards) ---- */

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int set_add(mx_st_set *s, const char *name, mx_err *err) {
    for (int i = 0; i < s->n_files; i++) {
        const char *base = strrchr(s->files[i]->path, '/');
        if (!strcmp(base ? base + 1 : s->files[i]->path, name)) return MX_OK;
    }
    char *path = join(s->dir, name);
    mx_st_file **fs = realloc(s->files, sizeof *fs * (size_t)(s->n_files + 1));
    if (!path || !fs) return free(path), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    s->files = fs;
    int rc = mx_st_open(path, &s->files[s->n_files], err);
    free(path);
    if (!rc) s->n_files++;
    return rc;
}

/* Every shard of the weight map, then a check that each tensor is where the map says. */
static int open_index(mx_st_set *s, const char *index_path, const cJSON *map, mx_err *err) {
    if (!cJSON_IsObject(map))
        return mx_err_set(err, MX_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !strcmp(e->valuestring, "..") ||
            !*e->valuestring)
            return mx_err_set(err, MX_ERR_FORMAT,
                              "%s: weight_map entry '%s' is not a file name in the directory", index_path,
                              e->string);
        if (set_add(s, e->valuestring, err)) return mx_err_wrap(err, "%s", index_path);
    }
    for (const cJSON *e = map->child; e; e = e->next) {
        const mx_st_tensor *t = mx_st_set_find(s, e->string);
        const char *base = t ? strrchr(t->file, '/') : NULL;
        if (!t || strcmp(base ? base + 1 : t->file, e->valuestring))
            return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s' is not in %s as the weight_map says",
                              index_path, e->string, e->valuestring);
    }
    return MX_OK;
}

static int open_sharded(mx_st_set *s, const char *index_path, mx_err *err) {
    char *text = mx_file_read(index_path, NULL, err);
    if (!text) return err->code;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return mx_err_set(err, MX_ERR_FORMAT, "%s: not valid JSON", index_path);
    int rc = open_index(s, index_path, cJSON_GetObjectItemCaseSensitive(root, "weight_map"), err);
    cJSON_Delete(root);
    return rc;
}

/* The only *.safetensors file of dir (for checkpoints saved under another name). */
static int find_single(const char *dir, char *name, size_t size, mx_err *err) {
    DIR *d = opendir(dir);
    if (!d) return mx_err_set(err, MX_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors") && n++ == 0)
            snprintf(name, size, "%s", e->d_name);
    }
    closedir(d);
    if (n == 1) return MX_OK;
    if (n > 1)
        return mx_err_set(err, MX_ERR_MISSING,
                          "%s: %d .safetensors files but no model.safetensors.index.json saying how they fit",
                          dir, n);
    return mx_err_set(err, MX_ERR_MISSING,
                      "%s: no model.safetensors (or model.safetensors.index.json) in the directory", dir);
}

int mx_st_set_open(const char *dir, mx_st_set **out, mx_err *err) {
    *out = NULL;
    mx_st_set *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) return free(s), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    char *index = join(dir, "model.safetensors.index.json"), *single = join(dir, "model.safetensors");
    char name[256];
    int rc;
    if (!index || !single)
        rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    else if (access(index, F_OK) == 0)
        rc = open_sharded(s, index, err);
    else if (access(single, F_OK) == 0)
        rc = set_add(s, "model.safetensors", err);
    else
        rc = find_single(dir, name, sizeof name, err) || set_add(s, name, err);
    free(index);
    free(single);
    if (rc) {
        mx_st_set_close(s);
        return err->code;
    }
    *out = s;
    return MX_OK;
}

void mx_st_set_close(mx_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) mx_st_close(s->files[i]);
    free(s->files);
    free(s->dir);
    free(s);
}

const mx_st_tensor *mx_st_set_find(const mx_st_set *s, const char *name) {
    for (int i = 0; i < s->n_files; i++) {
        const mx_st_tensor *t = mx_st_find(s->files[i], name);
        if (t) return t;
    }
    return NULL;
}

int mx_st_set_each(const mx_st_set *s, int (*fn)(const mx_st_tensor *, void *), void *ctx) {
    for (int i = 0; i < s->n_files; i++)
        for (int j = 0; j < s->files[i]->n_tensors; j++) {
            int rc = fn(&s->files[i]->tensors[j], ctx);
            if (rc) return rc;
        }
    return 0;
}

int mx_st_check_finite(const mx_st_tensor *t, mx_err *err) {
    if (t->type != MX_F32) return MX_OK;
    size_t n = t->nbytes / sizeof(float);
    for (size_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, (const char *)t->data + i * sizeof v, sizeof v); /* the mapping may be unaligned */
        if (!isfinite(v))
            return mx_err_set(
                err, MX_ERR_FORMAT,
                "%s: tensor '%s' holds %s at element %zu; weights and optimizer state must be finite "
                "(mixatt train never writes one: the file was altered or damaged)",
                t->file, t->name, isnan(v) ? "a NaN" : "an infinity", i);
    }
    return MX_OK;
}
