/* gguf_write.c: GGUF v3 writer (see gguf_write.h). Key/values and tensor infos are serialized as they are
 * added (little-endian, the layout gguf.c reads), so saving is header + two byte buffers + aligned data. */
#include "gguf_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

#define ALIGNMENT 32

typedef struct {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} bytes;

typedef struct {
    const void *data;
    size_t nbytes;
    uint64_t offset;
} w_tensor;

struct mx_gguf_writer {
    bytes kv, info;
    uint64_t n_kv;
    char **keys; /* for duplicate checks */
    w_tensor *tensors;
    char **names;
    uint64_t n_tensors, data_size;
};

static void put(bytes *b, const void *src, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = (b->n + n) * 2 + 256;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_le(bytes *b, uint64_t v, int size) {
    uint8_t le[8];
    for (int i = 0; i < size; i++) le[i] = (uint8_t)(v >> (8 * i));
    put(b, le, (size_t)size);
}

static void put_str(bytes *b, const char *s, uint64_t len) {
    put_le(b, len, 8);
    put(b, s, (size_t)len);
}

mx_gguf_writer *mx_gguf_writer_new(void) {
    return calloc(1, sizeof(mx_gguf_writer));
}

void mx_gguf_writer_free(mx_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (uint64_t i = 0; i < w->n_tensors; i++) free(w->names[i]);
    free(w->keys);
    free(w->names);
    free(w->tensors);
    free(w->kv.p);
    free(w->info.p);
    free(w);
}

/* Appends name to a NULL-free list of n names, refusing duplicates. */
static int add_name(char ***list, uint64_t n, const char *name, const char *what, mx_err *err) {
    for (uint64_t i = 0; i < n; i++)
        if (!strcmp((*list)[i], name))
            return mx_err_set(err, MX_ERR_ARG, "gguf writer: duplicate %s '%s'", what, name);
    char **l = realloc(*list, sizeof(char *) * (size_t)(n + 1));
    if (!l) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    *list = l;
    if (!(l[n] = strdup(name))) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    return MX_OK;
}

static int begin_kv(mx_gguf_writer *w, const char *key, uint32_t type, mx_err *err) {
    if (add_name(&w->keys, w->n_kv, key, "key", err)) return err->code;
    w->n_kv++;
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, type, 4);
    return MX_OK;
}

static int end(bytes *b, mx_err *err) {
    return b->oom ? mx_err_set(err, MX_ERR_NOMEM, "gguf writer: out of memory") : MX_OK;
}

int mx_gguf_w_u32(mx_gguf_writer *w, const char *key, uint32_t v, mx_err *err) {
    if (begin_kv(w, key, MX_GGUF_U32, err)) return err->code;
    put_le(&w->kv, v, 4);
    return end(&w->kv, err);
}

int mx_gguf_w_f32(mx_gguf_writer *w, const char *key, float v, mx_err *err) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if (begin_kv(w, key, MX_GGUF_F32, err)) return err->code;
    put_le(&w->kv, u, 4);
    return end(&w->kv, err);
}

int mx_gguf_w_bool(mx_gguf_writer *w, const char *key, bool v, mx_err *err) {
    if (begin_kv(w, key, MX_GGUF_BOOL, err)) return err->code;
    put_le(&w->kv, v ? 1 : 0, 1);
    return end(&w->kv, err);
}

int mx_gguf_w_str(mx_gguf_writer *w, const char *key, const char *v, mx_err *err) {
    if (begin_kv(w, key, MX_GGUF_STRING, err)) return err->code;
    put_str(&w->kv, v, strlen(v));
    return end(&w->kv, err);
}

int mx_gguf_w_arr_str(mx_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
                      size_t n, mx_err *err) {
    if (begin_kv(w, key, MX_GGUF_ARRAY, err)) return err->code;
    put_le(&w->kv, MX_GGUF_STRING, 4);
    put_le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++) put_str(&w->kv, strs[i], lens ? lens[i] : strlen(strs[i]));
    return end(&w->kv, err);
}

static int put_arr32(mx_gguf_writer *w, const char *key, uint32_t type, const void *v, size_t n,
                     mx_err *err) {
    if (begin_kv(w, key, MX_GGUF_ARRAY, err)) return err->code;
    put_le(&w->kv, type, 4);
    put_le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, (const char *)v + 4 * i, 4);
        put_le(&w->kv, u, 4);
    }
    return end(&w->kv, err);
}

int mx_gguf_w_arr_i32(mx_gguf_writer *w, const char *key, const int32_t *v, size_t n, mx_err *err) {
    return put_arr32(w, key, MX_GGUF_I32, v, n, err);
}

int mx_gguf_w_arr_f32(mx_gguf_writer *w, const char *key, const float *v, size_t n, mx_err *err) {
    return put_arr32(w, key, MX_GGUF_F32, v, n, err);
}

/* The value of kv (without key and type for arrays' items: `typed` writes the type first). */
static void put_value(bytes *b, const mx_gguf_kv *kv, bool typed) {
    if (typed) put_le(b, kv->type, 4);
    if (kv->type == MX_GGUF_STRING) {
        put_str(b, kv->str.ptr, kv->str.len);
    } else if (kv->type == MX_GGUF_ARRAY) {
        put_le(b, kv->elem, 4);
        put_le(b, kv->count, 8);
        for (uint64_t i = 0; kv->elem == MX_GGUF_STRING && i < kv->count; i++)
            put_str(b, kv->strs[i].ptr, kv->strs[i].len);
        for (uint64_t i = 0; kv->elem == MX_GGUF_ARRAY && i < kv->count; i++)
            put_value(b, &kv->items[i], false);
        if (mx_gguf_scalar_size(kv->elem))
            put(b, kv->data, (size_t)kv->count * mx_gguf_scalar_size(kv->elem));
    } else if (kv->type == MX_GGUF_F32) {
        float f = (float)kv->v.f;
        uint32_t u;
        memcpy(&u, &f, 4);
        put_le(b, u, 4);
    } else if (kv->type == MX_GGUF_F64) {
        uint64_t u;
        memcpy(&u, &kv->v.f, 8);
        put_le(b, u, 8);
    } else if (kv->type == MX_GGUF_BOOL) {
        put_le(b, kv->v.b ? 1 : 0, 1);
    } else {
        put_le(b, kv->v.u, (int)mx_gguf_scalar_size(kv->type));
    }
}

int mx_gguf_w_copy(mx_gguf_writer *w, const mx_gguf_kv *kv, mx_err *err) {
    if (add_name(&w->keys, w->n_kv, kv->key, "key", err)) return err->code;
    w->n_kv++;
    put_str(&w->kv, kv->key, strlen(kv->key));
    put_value(&w->kv, kv, true);
    return end(&w->kv, err);
}

bool mx_gguf_w_has(const mx_gguf_writer *w, const char *key) {
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return true;
    return false;
}

int mx_gguf_w_tensor(mx_gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                     const void *data, size_t nbytes, mx_err *err) {
    if (n_dims < 1 || n_dims > 4)
        return mx_err_set(err, MX_ERR_ARG, "gguf writer: tensor '%s' has %d dims (1 to 4)", name, n_dims);
    if (add_name(&w->names, w->n_tensors, name, "tensor", err)) return err->code;
    w_tensor *t = realloc(w->tensors, sizeof *t * (size_t)(w->n_tensors + 1));
    if (!t) return free(w->names[w->n_tensors]), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    w->tensors = t;
    t[w->n_tensors++] = (w_tensor){data, nbytes, w->data_size};
    put_str(&w->info, name, strlen(name));
    put_le(&w->info, (uint64_t)n_dims, 4);
    for (int i = 0; i < n_dims; i++) put_le(&w->info, (uint64_t)ne[i], 8);
    put_le(&w->info, type, 4);
    put_le(&w->info, w->data_size, 8);
    w->data_size += (nbytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    return end(&w->info, err);
}

static bool write_pad(FILE *f, uint64_t *pos) {
    static const uint8_t zero[ALIGNMENT];
    size_t n = (size_t)((ALIGNMENT - *pos % ALIGNMENT) % ALIGNMENT);
    *pos += n;
    return fwrite(zero, 1, n, f) == n;
}

static bool write_all(mx_gguf_writer *w, FILE *f) {
    bytes h = {0};
    put(&h, "GGUF", 4);
    put_le(&h, 3, 4);
    put_le(&h, w->n_tensors, 8);
    put_le(&h, w->n_kv, 8);
    bool ok =
        !h.oom && fwrite(h.p, 1, h.n, f) == h.n && (!w->kv.n || fwrite(w->kv.p, 1, w->kv.n, f) == w->kv.n) &&
        (!w->info.n || fwrite(w->info.p, 1, w->info.n, f) == w->info.n); /* no tensors: info.p is NULL */
    uint64_t pos = h.n + w->kv.n + w->info.n;
    free(h.p);
    ok = ok && write_pad(f, &pos);
    for (uint64_t i = 0; ok && i < w->n_tensors; i++) {
        const w_tensor *t = &w->tensors[i];
        ok = (t->nbytes == 0 || fwrite(t->data, 1, t->nbytes, f) == t->nbytes);
        pos += t->nbytes;
        ok = ok && write_pad(f, &pos);
    }
    return ok;
}

int mx_gguf_writer_save(mx_gguf_writer *w, const char *path, mx_err *err) {
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int rc = MX_OK;
    if (!f) {
        rc = mx_err_set(err, MX_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        bool ok = write_all(w, f);
        int e = errno;
        if (fclose(f) != 0 && ok) ok = false, e = errno;
        if (!ok)
            rc = mx_err_set(err, MX_ERR_IO, "%s: cannot write: %s", tmp, strerror(e));
        else if (rename(tmp, path) != 0)
            rc = mx_err_set(err, MX_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        if (rc) remove(tmp);
    }
    free(tmp);
    return rc;
}
