/* gguf_write.h: writes GGUF v3 files. Metadata and tensor infos are collected in memory (tensor data is
 * referenced, not copied) and written in one pass by mx_gguf_writer_save: header, key/values, tensor infos,
 * padding to the alignment (32), then every tensor's bytes, each starting at a multiple of the alignment.
 * The file is written under a temporary name and renamed, so a failed write never leaves a partial OUT. */
#ifndef MX_GGUF_WRITE_H
#define MX_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"
#include "gguf.h"

typedef struct mx_gguf_writer mx_gguf_writer;

mx_gguf_writer *mx_gguf_writer_new(void); /* NULL when out of memory */
void mx_gguf_writer_free(mx_gguf_writer *w);

/* Metadata. Each returns MX_OK or MX_ERR_NOMEM / MX_ERR_ARG (duplicate key), with err set. */
int mx_gguf_w_u32(mx_gguf_writer *w, const char *key, uint32_t v, mx_err *err);
int mx_gguf_w_f32(mx_gguf_writer *w, const char *key, float v, mx_err *err);
int mx_gguf_w_bool(mx_gguf_writer *w, const char *key, bool v, mx_err *err);
int mx_gguf_w_str(mx_gguf_writer *w, const char *key, const char *v, mx_err *err);
/* Arrays: n strings (lens[i] bytes each, or NUL-terminated when lens is NULL), n int32 or n float32 values. */
int mx_gguf_w_arr_str(mx_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
                      size_t n, mx_err *err);
int mx_gguf_w_arr_i32(mx_gguf_writer *w, const char *key, const int32_t *v, size_t n, mx_err *err);
int mx_gguf_w_arr_f32(mx_gguf_writer *w, const char *key, const float *v, size_t n, mx_err *err);
/* A key/value read by gguf.c (any type, arrays of strings and nested arrays included), under its own key. */
int mx_gguf_w_copy(mx_gguf_writer *w, const mx_gguf_kv *kv, mx_err *err);

/* True when key was already added. */
bool mx_gguf_w_has(const mx_gguf_writer *w, const char *key);

/* A tensor: ggml type id, ne (ne[0] contiguous), data of nbytes (kept by the caller until save). */
int mx_gguf_w_tensor(mx_gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                     const void *data, size_t nbytes, mx_err *err);

/* Writes everything to path (through path + ".tmp", renamed at the end). */
int mx_gguf_writer_save(mx_gguf_writer *w, const char *path, mx_err *err);

#endif
