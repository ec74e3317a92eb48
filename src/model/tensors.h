/* tensors.h: a dictionary of named weight tensors, filled by a file loader (GGUF, safetensors) and read by
 * the model binder. Names follow GGUF's convention ("blk.3.attn_q.weight"); loaders of other formats
 * translate. Tensors point into a file mapping or into buffers the dictionary owns (converted or transposed
 * copies). */
#ifndef MX_TENSORS_H
#define MX_TENSORS_H

#include "../backend/backend.h"

typedef struct {
    char *name;
    mx_tensor t;
} mx_named_tensor;

typedef struct {
    mx_named_tensor *items;
    int n, cap;
    void **owned;
    int n_owned, cap_owned;
} mx_tensor_dict;

/* Adds a tensor (name copied). data stays owned by the caller unless take_ownership. */
int mx_dict_add(mx_tensor_dict *d, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                const void *data, size_t nbytes, bool take_ownership, mx_err *err);
/* Keeps buf alive until mx_dict_free (for buffers shared by several tensors). */
int mx_dict_own(mx_tensor_dict *d, void *buf, mx_err *err);
const mx_tensor *mx_dict_find(const mx_tensor_dict *d, const char *name);
void mx_dict_free(mx_tensor_dict *d);

#endif
