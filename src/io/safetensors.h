/* safetensors.h: a reader for Hugging Face's safetensors format over mmap, and for sharded checkpoints
 * (model.safetensors.index.json). Layout: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data
 * (offsets relative to the end of the header). Every entry is checked at open (known dtype, shape product ==
 * byte count, offsets inside the file, no duplicates), so later code can trust sizes and pointers. Errors
 * name the file and the tensor. Tensor data is not copied: mx_st_tensor.data points into the mapping. */
#ifndef MX_SAFETENSORS_H
#define MX_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"

enum { MX_ST_MAX_DIMS = 8 };
/* mx_st_tensor.type of a valid safetensors dtype mixatt cannot compute with (I64, F8_E4M3, ...) */
#define MX_ST_NO_TYPE UINT32_MAX

typedef struct {
    char *name;
    char dtype[12];                /* the file's dtype string ("BF16") */
    uint32_t type;                 /* mx_dtype for F32/F16/BF16, MX_ST_NO_TYPE otherwise */
    int n_dims;                    /* 0 (scalar) .. MX_ST_MAX_DIMS */
    int64_t shape[MX_ST_MAX_DIMS]; /* as in the file: shape[0] is the outermost (slowest) dimension */
    const void *data;              /* into the mapping (may be unaligned) */
    size_t nbytes;
    const char *file; /* the path of the file holding it */
} mx_st_tensor;

typedef struct {
    char *path;
    const uint8_t *base; /* the file's bytes */
    size_t size;
    bool owns_map;         /* opened from a path: munmap on close */
    mx_st_tensor *tensors; /* sorted by name */
    int n_tensors;
    char **meta_keys, **meta_vals; /* __metadata__, in file order */
    int n_meta;
    size_t data_start; /* offset of the data section (8 + header length); it runs to the end of the file */
} mx_st_file;

/* Opens and validates one .safetensors file. On failure *out is NULL and err names the path. */
int mx_st_open(const char *path, mx_st_file **out, mx_err *err);
/* The same over a caller-owned buffer (kept alive until close); `name` is used in messages. */
int mx_st_open_buffer(const void *buf, size_t size, const char *name, mx_st_file **out, mx_err *err);
void mx_st_close(mx_st_file *f);
const mx_st_tensor *mx_st_find(const mx_st_file *f, const char *name);
/* A __metadata__ value, NULL when absent. */
const char *mx_st_meta(const mx_st_file *f, const char *key);

/* Integrity: mixatt's writers store __metadata__ "checksum" = "crc32:XXXXXXXX", the CRC-32 (zlib) of every
 * other metadata entry (key, NUL, value, NUL, in file order) followed by the whole data section. A writer
 * starts from 0 and feeds mx_st_checksum_meta for each entry, then mx_st_checksum_data for the data. */
uint32_t mx_st_checksum_meta(uint32_t crc, const char *key, const char *val);
uint32_t mx_st_checksum_data(uint32_t crc, const void *data, size_t n);
/* Checks the stored checksum against the file. Absent: an error when required, else MX_OK. */
int mx_st_verify_checksum(const mx_st_file *f, bool required, mx_err *err);

/* A mixatt checkpoint never holds a NaN or an infinity (its writer refuses them), so an F32 tensor with one
 * was altered or damaged: an error naming the file, the tensor and the element; MX_OK for other types. */
int mx_st_check_finite(const mx_st_tensor *t, mx_err *err);

/* A checkpoint: model.safetensors, or the shards model.safetensors.index.json lists (every tensor of its
 * weight_map must be in the shard it names). */
typedef struct mx_st_set {
    char *dir;
    mx_st_file **files;
    int n_files;
} mx_st_set;

/* Opens the checkpoint in directory dir: model.safetensors.index.json when present, else model.safetensors,
 * else the only *.safetensors file. */
int mx_st_set_open(const char *dir, mx_st_set **out, mx_err *err);
void mx_st_set_close(mx_st_set *s);
const mx_st_tensor *mx_st_set_find(const mx_st_set *s, const char *name);
/* Calls fn on every tensor of every file, in file order then name order; stops at the first non-zero return
 * and returns it. */
int mx_st_set_each(const mx_st_set *s, int (*fn)(const mx_st_tensor *, void *), void *ctx);

#endif
