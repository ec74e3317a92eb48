/* dtype.h: tensor element types (ggml's ids, so GGUF type fields map directly) and their block geometry.
 * A "row" of n elements of a block type occupies n / block * bytes bytes; n must be a multiple of block. */
#ifndef MX_DTYPE_H
#define MX_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    MX_F32 = 0,
    MX_F16 = 1,
    MX_Q4_0 = 2,
    MX_Q4_1 = 3,
    MX_Q5_0 = 6,
    MX_Q5_1 = 7,
    MX_Q8_0 = 8,
    MX_Q8_1 = 9,
    MX_Q4_K = 12,
    MX_Q5_K = 13,
    MX_Q6_K = 14,
    MX_Q8_K = 15,
    MX_BF16 = 30,
} mx_dtype;

typedef struct {
    const char *name; /* "Q4_K" */
    int block;        /* elements per block (1 for plain floats) */
    int bytes;        /* bytes per block */
} mx_dtype_info;

/* NULL for a type id mixatt does not know (so callers can report "unknown tensor type 17"). */
const mx_dtype_info *mx_dtype_get(uint32_t type);
const char *mx_dtype_name(uint32_t type); /* "type 17" style fallback for unknown ids (static buffer-free) */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size or the type is unknown. */
size_t mx_dtype_row_bytes(uint32_t type, int64_t n);

#endif
