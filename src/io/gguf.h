/* gguf.h: a GGUF (v2, v3) reader over mmap. Every metadata type and nested arrays are parsed and
 * bounds-checked at open; tensor data is not copied: mx_gguf_tensor.data points into the mapping. Errors name
 * the file and the offending key/tensor ("model.gguf: tensor 'blk.3.attn_q.weight': data at offset 123 + 4096
 * bytes runs past the end of the file (size 2000)"). */
#ifndef MX_GGUF_H
#define MX_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"

typedef enum {
    MX_GGUF_U8 = 0,
    MX_GGUF_I8 = 1,
    MX_GGUF_U16 = 2,
    MX_GGUF_I16 = 3,
    MX_GGUF_U32 = 4,
    MX_GGUF_I32 = 5,
    MX_GGUF_F32 = 6,
    MX_GGUF_BOOL = 7,
    MX_GGUF_STRING = 8,
    MX_GGUF_ARRAY = 9,
    MX_GGUF_U64 = 10,
    MX_GGUF_I64 = 11,
    MX_GGUF_F64 = 12,
} mx_gguf_vtype;

typedef struct {
    const char *ptr; /* into the mapping; NOT NUL-terminated */
    uint64_t len;
} mx_gguf_str;

typedef struct mx_gguf_kv {
    char *key;          /* NUL-terminated copy (NULL for the items of a nested array) */
    mx_gguf_vtype type; /* value type; for arrays MX_GGUF_ARRAY */
    mx_gguf_vtype elem; /* element type when type == MX_GGUF_ARRAY (nested arrays: MX_GGUF_ARRAY) */
    uint64_t count;     /* number of elements for arrays; 1 otherwise */
    union {             /* scalar value (type != STRING/ARRAY) */
        uint64_t u;
        int64_t i;
        double f;
        bool b;
    } v;
    mx_gguf_str str;   /* type == STRING */
    const void *data;  /* numeric arrays: the raw little-endian elements in the mapping (may be unaligned) */
    mx_gguf_str *strs; /* string arrays: count entries */
    struct mx_gguf_kv *items; /* arrays of arrays: count entries, each an array (type MX_GGUF_ARRAY) */
} mx_gguf_kv;

typedef struct {
    char *name;      /* NUL-terminated copy */
    int n_dims;      /* 1..4 */
    int64_t ne[4];   /* ne[0] is the contiguous dimension; unused dims are 1 */
    uint32_t type;   /* ggml type id (see dtype.h) */
    uint64_t offset; /* relative to the data section */
    size_t nbytes;
    const void *data; /* into the mapping */
} mx_gguf_tensor;

typedef struct {
    char *path;
    uint32_t version;
    uint64_t n_kv;
    mx_gguf_kv *kv;
    uint64_t n_tensors;
    mx_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset; /* file offset of the data section */
    const uint8_t *base;  /* start of the file's bytes */
    size_t size;          /* file size */
    int owns_map;         /* 1 when opened from a path (munmap on close) */
} mx_gguf;

/* Opens and validates a GGUF file. On failure *out is NULL and err says what is wrong, naming the path. */
int mx_gguf_open(const char *path, mx_gguf **out, mx_err *err);
/* Same over a caller-owned buffer (kept alive until close); `name` is used in messages. For fuzzing/tests. */
int mx_gguf_open_buffer(const void *buf, size_t size, const char *name, mx_gguf **out, mx_err *err);
void mx_gguf_close(mx_gguf *g);

const mx_gguf_kv *mx_gguf_kv_find(const mx_gguf *g, const char *key);
const mx_gguf_tensor *mx_gguf_tensor_find(const mx_gguf *g, const char *name);

/* Typed getters: return 0 and set *out when the key exists with a compatible type (any integer type for
 * integers, f32/f64 for floats), MX_ERR_MISSING or MX_ERR_FORMAT (with message) otherwise. */
int mx_gguf_get_i64(const mx_gguf *g, const char *key, int64_t *out, mx_err *err);
int mx_gguf_get_f64(const mx_gguf *g, const char *key, double *out, mx_err *err);
int mx_gguf_get_bool(const mx_gguf *g, const char *key, bool *out, mx_err *err);
/* Returns a malloc'd NUL-terminated copy of a string value. */
int mx_gguf_get_str(const mx_gguf *g, const char *key, char **out, mx_err *err);
/* Numeric array element i converted to int64/double (any integer/float element type). */
int64_t mx_gguf_arr_i64(const mx_gguf_kv *kv, uint64_t i);
double mx_gguf_arr_f64(const mx_gguf_kv *kv, uint64_t i);

const char *mx_gguf_vtype_name(mx_gguf_vtype t);
/* Bytes of one scalar value of type t; 0 for strings, arrays and unknown types. */
size_t mx_gguf_scalar_size(uint32_t t);

#endif
