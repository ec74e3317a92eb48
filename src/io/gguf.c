/* gguf.c: GGUF v2/v3 reader (see gguf.h). The whole file is mapped read-only; the header, every metadata
 * value (nested arrays included) and every tensor info are parsed and bounds-checked at open, so later code
 * can trust sizes and pointers. Every error message starts with the file's path. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH   32

/* A cursor over the file's bytes; every read checks that it stays inside [0, size). */
typedef struct {
    const uint8_t *p;
    size_t size;
    size_t pos;
    const char *path;
    mx_err *err;
} reader;

static size_t left(const reader *r) {
    return r->size - r->pos;
}

static int truncated(reader *r, const char *what, uint64_t need) {
    return mx_err_set(r->err, MX_ERR_FORMAT,
                      "%s: truncated file: %s needs %llu bytes at offset %zu but the file has %zu bytes",
                      r->path, what, (unsigned long long)need, r->pos, r->size);
}

static int read_bytes(reader *r, void *dst, size_t n, const char *what) {
    if (left(r) < n) return truncated(r, what, n);
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return 0;
}

static int read_u32(reader *r, uint32_t *v, const char *what) {
    uint8_t b[4] = {0};
    int rc = read_bytes(r, b, 4, what);
    if (rc) return rc;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

static int read_u64(reader *r, uint64_t *v, const char *what) {
    *v = 0;
    if (left(r) < 8) return truncated(r, what, 8); /* the whole value, not its second half */
    uint32_t lo = 0, hi = 0;
    int rc = read_u32(r, &lo, what);
    if (!rc) rc = read_u32(r, &hi, what);
    if (!rc) *v = (uint64_t)hi << 32 | lo;
    return rc;
}

/* A gguf string: uint64 length + bytes, kept in place. */
static int read_str(reader *r, mx_gguf_str *s, const char *what) {
    uint64_t len;
    int rc = read_u64(r, &len, what);
    if (rc) return rc;
    if (len > left(r))
        return mx_err_set(
            r->err, MX_ERR_FORMAT,
            "%s: %s: string of %llu bytes at offset %zu runs past the end of the file (size %zu)", r->path,
            what, (unsigned long long)len, r->pos, r->size);
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return 0;
}

static char *str_dup(const mx_gguf_str *s) {
    char *c = malloc((size_t)s->len + 1);
    if (!c) return NULL;
    memcpy(c, s->ptr, (size_t)s->len);
    c[s->len] = '\0';
    return c;
}

size_t mx_gguf_scalar_size(uint32_t t) {
    switch (t) {
    case MX_GGUF_U8:
    case MX_GGUF_I8:
    case MX_GGUF_BOOL:
        return 1;
    case MX_GGUF_U16:
    case MX_GGUF_I16:
        return 2;
    case MX_GGUF_U32:
    case MX_GGUF_I32:
    case MX_GGUF_F32:
        return 4;
    case MX_GGUF_U64:
    case MX_GGUF_I64:
    case MX_GGUF_F64:
        return 8;
    default:
        return 0;
    }
}

const char *mx_gguf_vtype_name(mx_gguf_vtype t) {
    static const char *names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* Little-endian load of a scalar of type t at p into kv->v (integers sign- or zero-extended). */
static void load_scalar(uint32_t t, const uint8_t *p, mx_gguf_kv *kv) {
    uint64_t u = 0;
    size_t n = mx_gguf_scalar_size(t);
    for (size_t i = 0; i < n; i++) u |= (uint64_t)p[i] << (8 * i);
    switch (t) {
    case MX_GGUF_I8:
        kv->v.i = (int8_t)u;
        break;
    case MX_GGUF_I16:
        kv->v.i = (int16_t)u;
        break;
    case MX_GGUF_I32:
        kv->v.i = (int32_t)u;
        break;
    case MX_GGUF_I64:
        kv->v.i = (int64_t)u;
        break;
    case MX_GGUF_F32: {
        uint32_t b = (uint32_t)u;
        float f;
        memcpy(&f, &b, 4);
        kv->v.f = f;
        break;
    }
    case MX_GGUF_F64:
        memcpy(&kv->v.f, &u, 8);
        break;
    case MX_GGUF_BOOL:
        kv->v.b = u != 0;
        break;
    default:
        kv->v.u = u;
        break;
    }
}

static void kv_free_contents(mx_gguf_kv *kv) {
    if (kv->items) {
        for (uint64_t i = 0; i < kv->count; i++) kv_free_contents(&kv->items[i]);
        free(kv->items);
    }
    free(kv->strs);
    free(kv->key);
}

/* Parses an array's body (element type, count, elements) into kv. `what` names the key for messages. */
static int read_array(reader *r, mx_gguf_kv *kv, const char *what, int depth) {
    uint32_t et;
    uint64_t count;
    int rc = read_u32(r, &et, what);
    if (!rc) rc = read_u64(r, &count, what);
    if (rc) return rc;
    kv->type = MX_GGUF_ARRAY;
    kv->elem = (mx_gguf_vtype)et;
    if (et == MX_GGUF_STRING) {
        if (count > left(r) / 8) /* every string needs at least its 8-byte length */
            return mx_err_set(r->err, MX_ERR_FORMAT,
                              "%s: key '%s': string array of %llu elements cannot fit in the %zu bytes left",
                              r->path, what, (unsigned long long)count, left(r));
        kv->strs = calloc(count ? count : 1, sizeof *kv->strs);
        if (!kv->strs) return mx_err_set(r->err, MX_ERR_NOMEM, "%s: key '%s': out of memory", r->path, what);
        kv->count = count;
        for (uint64_t i = 0; i < count; i++)
            if ((rc = read_str(r, &kv->strs[i], what))) return rc;
        return 0;
    }
    if (et == MX_GGUF_ARRAY) {
        if (depth >= GGUF_MAX_ARRAY_DEPTH)
            return mx_err_set(r->err, MX_ERR_FORMAT, "%s: key '%s': arrays nested more than %d deep", r->path,
                              what, GGUF_MAX_ARRAY_DEPTH);
        if (count > left(r) / 12) /* every inner array needs its 4-byte type and 8-byte count */
            return mx_err_set(r->err, MX_ERR_FORMAT,
                              "%s: key '%s': array of %llu arrays cannot fit in the %zu bytes left", r->path,
                              what, (unsigned long long)count, left(r));
        kv->items = calloc(count ? count : 1, sizeof *kv->items);
        if (!kv->items) return mx_err_set(r->err, MX_ERR_NOMEM, "%s: key '%s': out of memory", r->path, what);
        for (uint64_t i = 0; i < count; i++) {
            kv->count = i + 1; /* so that a failure frees exactly what was parsed */
            kv->items[i].count = 0;
            if ((rc = read_array(r, &kv->items[i], what, depth + 1))) return rc;
        }
        kv->count = count;
        return 0;
    }
    size_t es = mx_gguf_scalar_size(et);
    if (!es)
        return mx_err_set(r->err, MX_ERR_FORMAT, "%s: key '%s': unknown array element type %u at offset %zu",
                          r->path, what, et, r->pos - 12);
    if (count > left(r) / es)
        return mx_err_set(
            r->err, MX_ERR_FORMAT,
            "%s: key '%s': array of %llu %s elements at offset %zu runs past the end of the file "
            "(size %zu)",
            r->path, what, (unsigned long long)count, mx_gguf_vtype_name((mx_gguf_vtype)et), r->pos, r->size);
    kv->data = r->p + r->pos;
    kv->count = count;
    r->pos += (size_t)(count * es);
    return 0;
}

/* Parses one value of type t into kv. */
static int read_value(reader *r, uint32_t t, mx_gguf_kv *kv, const char *what) {
    kv->type = (mx_gguf_vtype)t;
    kv->count = 1;
    if (t == MX_GGUF_STRING) return read_str(r, &kv->str, what);
    if (t == MX_GGUF_ARRAY) return read_array(r, kv, what, 0);
    size_t n = mx_gguf_scalar_size(t);
    if (!n)
        return mx_err_set(r->err, MX_ERR_FORMAT, "%s: key '%s': unknown value type %u at offset %zu", r->path,
                          what, t, r->pos - 4);
    if (left(r) < n) return truncated(r, what, n);
    load_scalar(t, r->p + r->pos, kv);
    r->pos += n;
    return 0;
}

static int read_kv(reader *r, mx_gguf_kv *kv, uint64_t index) {
    mx_gguf_str key = {0};
    char what[64];
    snprintf(what, sizeof what, "metadata key %llu", (unsigned long long)index);
    int rc = read_str(r, &key, what);
    if (rc) return rc;
    if (!(kv->key = str_dup(&key))) return mx_err_set(r->err, MX_ERR_NOMEM, "%s: out of memory", r->path);
    uint32_t t;
    if ((rc = read_u32(r, &t, kv->key))) return rc;
    return read_value(r, t, kv, kv->key);
}

/* qsort comparator over an array of C strings. */
static int cmp_strp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reports the first name that occurs twice in names[0..n) (which it sorts), as "duplicate <what> 'x'". */
static int check_unique(char **names, uint64_t n, const char *path, const char *what, mx_err *err) {
    if (n < 2) return 0;
    qsort(names, (size_t)n, sizeof *names, cmp_strp);
    for (uint64_t i = 1; i < n; i++)
        if (!strcmp(names[i - 1], names[i]))
            return mx_err_set(err, MX_ERR_FORMAT, "%s: duplicate %s '%s'", path, what, names[i]);
    return 0;
}

static int check_unique_keys(mx_gguf *g, mx_err *err) {
    if (g->n_kv < 2) return 0;
    char **names = malloc((size_t)g->n_kv * sizeof *names);
    if (!names) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_kv; i++) names[i] = g->kv[i].key;
    int rc = check_unique(names, g->n_kv, g->path, "metadata key", err);
    free(names);
    return rc;
}

static int check_unique_tensors(mx_gguf *g, mx_err *err) {
    if (g->n_tensors < 2) return 0;
    char **names = malloc((size_t)g->n_tensors * sizeof *names);
    if (!names) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) names[i] = g->tensors[i].name;
    int rc = check_unique(names, g->n_tensors, g->path, "tensor name", err);
    free(names);
    return rc;
}

/* Reads one tensor info (name, dims, type, offset) and checks its shape and type; sizes come later. */
static int read_tensor_info(reader *r, mx_gguf_tensor *t, uint64_t index) {
    mx_gguf_str name;
    char what[64];
    snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)index);
    int rc = read_str(r, &name, what);
    if (rc) return rc;
    if (!(t->name = str_dup(&name))) return mx_err_set(r->err, MX_ERR_NOMEM, "%s: out of memory", r->path);
    snprintf(what, sizeof what, "tensor '%.40s'", t->name);
    uint32_t n_dims;
    if ((rc = read_u32(r, &n_dims, what))) return rc;
    if (n_dims > 4)
        return mx_err_set(r->err, MX_ERR_FORMAT, "%s: tensor '%s': %u dimensions (at most 4 are allowed)",
                          r->path, t->name, n_dims);
    t->n_dims = n_dims ? (int)n_dims : 1; /* a 0-d tensor is a scalar: one element */
    int64_t total = 1;
    for (int d = 0; d < 4; d++) {
        uint64_t ne = 1;
        if ((uint32_t)d < n_dims && (rc = read_u64(r, &ne, what))) return rc;
        if (ne > (uint64_t)INT64_MAX || (ne && (uint64_t)total > (uint64_t)INT64_MAX / ne))
            return mx_err_set(r->err, MX_ERR_FORMAT,
                              "%s: tensor '%s': dimension %d (%llu) makes the element count overflow",
                              r->path, t->name, d, (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
        total *= (int64_t)ne;
    }
    if ((rc = read_u32(r, &t->type, what)) || (rc = read_u64(r, &t->offset, what))) return rc;
    const mx_dtype_info *info = mx_dtype_get(t->type);
    if (!info)
        return mx_err_set(r->err, MX_ERR_UNSUPPORTED, "%s: tensor '%s': unknown tensor type %u", r->path,
                          t->name, t->type);
    if (t->ne[0] % info->block)
        return mx_err_set(r->err, MX_ERR_FORMAT,
                          "%s: tensor '%s': row length %lld is not a multiple of the %s block size %d",
                          r->path, t->name, (long long)t->ne[0], info->name, info->block);
    return 0;
}

/* Byte size of a tensor; 0 and an error when it does not fit in size_t / the file. */
static int tensor_nbytes(const mx_gguf *g, mx_gguf_tensor *t, mx_err *err) {
    uint64_t row =
        (uint64_t)(t->ne[0] / mx_dtype_get(t->type)->block) * (uint64_t)mx_dtype_get(t->type)->bytes;
    uint64_t n = row;
    for (int d = 1; d < 4; d++) {
        uint64_t ne = (uint64_t)t->ne[d];
        if (ne && n > UINT64_MAX / ne)
            return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': byte size overflows", g->path, t->name);
        n *= ne;
    }
    t->nbytes = (size_t)n;
    if (n != t->nbytes) return mx_err_set(err, MX_ERR_FORMAT, "%s: tensor '%s': too large", g->path, t->name);
    return 0;
}

static int place_tensor(const mx_gguf *g, mx_gguf_tensor *t, mx_err *err) {
    int rc = tensor_nbytes(g, t, err);
    if (rc) return rc;
    if (t->offset % g->alignment)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: tensor '%s': data offset %llu is not a multiple of the alignment %llu",
                          g->path, t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
    uint64_t avail = g->size - g->data_offset;
    if (t->offset > avail || t->nbytes > avail - t->offset)
        return mx_err_set(
            err, MX_ERR_FORMAT,
            "%s: tensor '%s': data at offset %llu + %zu bytes runs past the end of the file (data "
            "section at %llu, file size %zu)",
            g->path, t->name, (unsigned long long)t->offset, t->nbytes, (unsigned long long)g->data_offset,
            g->size);
    t->data = g->base + g->data_offset + t->offset;
    return 0;
}

/* general.alignment: must be a u32 power of two when present. */
static int read_alignment(mx_gguf *g, mx_err *err) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const mx_gguf_kv *kv = mx_gguf_kv_find(g, "general.alignment");
    if (!kv) return 0;
    if (kv->type != MX_GGUF_U32)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: general.alignment has type %s (u32 expected)", g->path,
                          mx_gguf_vtype_name(kv->type));
    if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)))
        return mx_err_set(err, MX_ERR_FORMAT, "%s: general.alignment %llu is not a power of two", g->path,
                          (unsigned long long)kv->v.u);
    g->alignment = kv->v.u;
    return 0;
}

static int read_header(reader *r, mx_gguf *g, uint64_t *n_tensors, uint64_t *n_kv) {
    uint8_t magic[4];
    if (r->size < 4 || memcmp(r->p, "GGUF", 4))
        return mx_err_set(r->err, MX_ERR_FORMAT, "%s: not a GGUF file (bad magic, expected \"GGUF\")",
                          r->path);
    int rc = read_bytes(r, magic, 4, "magic");
    if (!rc) rc = read_u32(r, &g->version, "version");
    if (rc) return rc;
    if (g->version == 1)
        return mx_err_set(r->err, MX_ERR_UNSUPPORTED,
                          "%s: GGUF version 1 is not supported (only versions 2 and 3; re-convert the model)",
                          r->path);
    if (g->version != 2 && g->version != 3)
        return mx_err_set(r->err, MX_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (only 2 and 3)%s",
                          r->path, g->version, (g->version & 0xFFFF) == 0 ? " (a big-endian file?)" : "");
    if ((rc = read_u64(r, n_tensors, "tensor count")) || (rc = read_u64(r, n_kv, "metadata count")))
        return rc;
    /* A tensor info takes at least 8 (name) + 4 + 4 + 8 bytes, a key/value at least 8 + 4 + 1. */
    if (*n_tensors > left(r) / 24)
        return mx_err_set(r->err, MX_ERR_FORMAT, "%s: tensor count %llu cannot fit in a file of %zu bytes",
                          r->path, (unsigned long long)*n_tensors, r->size);
    if (*n_kv > left(r) / 13)
        return mx_err_set(r->err, MX_ERR_FORMAT, "%s: metadata count %llu cannot fit in a file of %zu bytes",
                          r->path, (unsigned long long)*n_kv, r->size);
    return 0;
}

static int parse(mx_gguf *g, mx_err *err) {
    reader r = {g->base, g->size, 0, g->path, err};
    uint64_t n_kv = 0, n_t = 0; /* g->n_kv, g->n_tensors count what is parsed so far, for mx_gguf_close */
    int rc = read_header(&r, g, &n_t, &n_kv);
    if (rc) return rc;
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_t ? n_t : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = i + 1;
        if ((rc = read_kv(&r, &g->kv[i], i))) return rc;
    }
    if ((rc = check_unique_keys(g, err)) || (rc = read_alignment(g, err))) return rc;
    for (uint64_t i = 0; i < n_t; i++) {
        g->n_tensors = i + 1;
        if ((rc = read_tensor_info(&r, &g->tensors[i], i))) return rc;
    }
    /* check_unique sorts a copy of the name pointers, so the tensors keep their file order. */
    if ((rc = check_unique_tensors(g, err))) return rc;
    uint64_t data = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (n_t && data > g->size)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: truncated file: the data section at offset %llu is past the end "
                          "(size %zu)",
                          g->path, (unsigned long long)data, g->size);
    g->data_offset = data > g->size ? g->size : data;
    for (uint64_t i = 0; i < n_t; i++)
        if ((rc = place_tensor(g, &g->tensors[i], err))) return rc;
    return 0;
}

static int open_common(const void *buf, size_t size, const char *name, int owns, mx_gguf **out, mx_err *err) {
    mx_gguf *g = calloc(1, sizeof *g);
    if (!g) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", name);
    g->path = strdup(name);
    g->base = buf;
    g->size = size;
    g->owns_map = owns;
    int rc = g->path ? parse(g, err) : mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", name);
    if (rc) {
        mx_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int mx_gguf_open_buffer(const void *buf, size_t size, const char *name, mx_gguf **out, mx_err *err) {
    *out = NULL;
    if (!name) name = "(buffer)";
    if (!buf && size) return mx_err_set(err, MX_ERR_ARG, "%s: NULL buffer", name);
    return open_common(buf, size, name, 0, out, err);
}

int mx_gguf_open(const char *path, mx_gguf **out, mx_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mx_err_set(err, MX_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mx_err_set(err, MX_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return mx_err_set(err, MX_ERR_FORMAT, "%s: not a GGUF file (only %lld bytes)", path,
                          (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return mx_err_set(err, MX_ERR_IO, "%s: cannot mmap: %s", path, strerror(e));
    return open_common(map, (size_t)st.st_size, path, 1, out, err); /* on failure, its close unmaps */
}

void mx_gguf_close(mx_gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; i < g->n_kv; i++) kv_free_contents(&g->kv[i]);
    for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->owns_map && g->base) munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

const mx_gguf_kv *mx_gguf_kv_find(const mx_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && !strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const mx_gguf_tensor *mx_gguf_tensor_find(const mx_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

static bool is_int_type(mx_gguf_vtype t) {
    return t == MX_GGUF_U8 || t == MX_GGUF_I8 || t == MX_GGUF_U16 || t == MX_GGUF_I16 || t == MX_GGUF_U32 ||
           t == MX_GGUF_I32 || t == MX_GGUF_U64 || t == MX_GGUF_I64;
}
static bool is_signed(mx_gguf_vtype t) {
    return t == MX_GGUF_I8 || t == MX_GGUF_I16 || t == MX_GGUF_I32 || t == MX_GGUF_I64;
}

static const mx_gguf_kv *find_typed(const mx_gguf *g, const char *key, mx_err *err) {
    const mx_gguf_kv *kv = mx_gguf_kv_find(g, key);
    if (!kv) mx_err_set(err, MX_ERR_MISSING, "%s: metadata key '%s' is missing", g->path, key);
    return kv;
}

static int wrong_type(const mx_gguf *g, const mx_gguf_kv *kv, const char *want, mx_err *err) {
    return mx_err_set(err, MX_ERR_FORMAT, "%s: metadata key '%s' has type %s (%s expected)", g->path, kv->key,
                      mx_gguf_vtype_name(kv->type), want);
}

int mx_gguf_get_i64(const mx_gguf *g, const char *key, int64_t *out, mx_err *err) {
    const mx_gguf_kv *kv = find_typed(g, key, err);
    if (!kv) return MX_ERR_MISSING;
    if (!is_int_type(kv->type)) return wrong_type(g, kv, "an integer", err);
    if (!is_signed(kv->type) && kv->v.u > (uint64_t)INT64_MAX)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: metadata key '%s': value %llu is too large", g->path, key,
                          (unsigned long long)kv->v.u);
    *out = is_signed(kv->type) ? kv->v.i : (int64_t)kv->v.u;
    return 0;
}

int mx_gguf_get_f64(const mx_gguf *g, const char *key, double *out, mx_err *err) {
    const mx_gguf_kv *kv = find_typed(g, key, err);
    if (!kv) return MX_ERR_MISSING;
    if (kv->type != MX_GGUF_F32 && kv->type != MX_GGUF_F64) return wrong_type(g, kv, "f32 or f64", err);
    *out = kv->v.f;
    return 0;
}

int mx_gguf_get_bool(const mx_gguf *g, const char *key, bool *out, mx_err *err) {
    const mx_gguf_kv *kv = find_typed(g, key, err);
    if (!kv) return MX_ERR_MISSING;
    if (kv->type != MX_GGUF_BOOL) return wrong_type(g, kv, "bool", err);
    *out = kv->v.b;
    return 0;
}

int mx_gguf_get_str(const mx_gguf *g, const char *key, char **out, mx_err *err) {
    const mx_gguf_kv *kv = find_typed(g, key, err);
    if (!kv) return MX_ERR_MISSING;
    if (kv->type != MX_GGUF_STRING) return wrong_type(g, kv, "string", err);
    if (!(*out = str_dup(&kv->str))) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", g->path);
    return 0;
}

/* Element i of a numeric array, as the kv union would hold it. */
static mx_gguf_kv arr_elem(const mx_gguf_kv *kv, uint64_t i) {
    mx_gguf_kv e = {0};
    e.type = kv->elem;
    if (kv->type == MX_GGUF_ARRAY && kv->data && i < kv->count)
        load_scalar(kv->elem, (const uint8_t *)kv->data + i * mx_gguf_scalar_size(kv->elem), &e);
    return e;
}

int64_t mx_gguf_arr_i64(const mx_gguf_kv *kv, uint64_t i) {
    mx_gguf_kv e = arr_elem(kv, i);
    if (e.type == MX_GGUF_F32 || e.type == MX_GGUF_F64) {
        if (!(fabs(e.v.f) < 9.2e18)) return 0; /* NaN or out of range: no meaningful integer */
        return (int64_t)e.v.f;
    }
    if (e.type == MX_GGUF_BOOL) return e.v.b;
    return is_signed(e.type) ? e.v.i : (int64_t)e.v.u;
}

double mx_gguf_arr_f64(const mx_gguf_kv *kv, uint64_t i) {
    mx_gguf_kv e = arr_elem(kv, i);
    if (e.type == MX_GGUF_F32 || e.type == MX_GGUF_F64) return e.v.f;
    if (e.type == MX_GGUF_BOOL) return e.v.b;
    return is_signed(e.type) ? (double)e.v.i : (double)e.v.u;
}
