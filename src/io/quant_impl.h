/* quant_impl.h: internal to src/io/quant*.c. ggml's block layouts (little-endian, fp16 = IEEE half) and the
 * entry points of the SIMD kernels in quant_x86.c, which return false for a type they do not handle so that
 * quant.c falls back to its scalar code. */
#ifndef MX_QUANT_IMPL_H
#define MX_QUANT_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QK   32  /* elements per block of the 32-element types */
#define QK_K 256 /* elements per super-block of the K types */

typedef struct {
    uint16_t d;
    uint8_t qs[QK / 2];
} blk_q4_0; /* 18 bytes */
typedef struct {
    uint16_t d, m;
    uint8_t qs[QK / 2];
} blk_q4_1; /* 20 bytes */
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
} blk_q5_0; /* 22 bytes */
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
} blk_q5_1; /* 24 bytes */
typedef struct {
    uint16_t d;
    int8_t qs[QK];
} blk_q8_0; /* 34 bytes */
typedef struct {
    uint16_t d, s;
    int8_t qs[QK];
} blk_q8_1;      /* 36 bytes; s = d * sum(qs) */
typedef struct { /* 144 bytes */
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 6-bit scales and 8 6-bit mins, packed */
    uint8_t qs[QK_K / 2];
} blk_q4_K;
typedef struct { /* 176 bytes */
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} blk_q5_K;
typedef struct { /* 210 bytes */
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
} blk_q6_K;
typedef struct { /* 292 bytes */
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sums of each 16 qs */
} blk_q8_K;

_Static_assert(sizeof(blk_q4_0) == 18 && sizeof(blk_q4_1) == 20 && sizeof(blk_q5_0) == 22, "block layout");
_Static_assert(sizeof(blk_q5_1) == 24 && sizeof(blk_q8_0) == 34 && sizeof(blk_q8_1) == 36, "block layout");
_Static_assert(sizeof(blk_q4_K) == 144 && sizeof(blk_q5_K) == 176 && sizeof(blk_q6_K) == 210, "block layout");
_Static_assert(sizeof(blk_q8_K) == 292, "block layout");

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block. */
static inline void kq_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* SIMD kernels (quant_x86.c). Each returns false when it has no path for the type on this build. */
bool mx_x86_dot(uint32_t type, const void *w, const void *x, int64_t n, float *out);
bool mx_x86_dot_rows(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x, int64_t n,
                     float *out);
bool mx_x86_gemm_tile(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x,
                      size_t x_stride, int n_tok, int64_t n, float *y, size_t y_stride);
bool mx_x86_dot_rows_f32(uint32_t type, const void *w, size_t w_stride, int n_rows, const float *x, int64_t n,
                         float *out);
bool mx_x86_has_gemm_packed(void);
bool mx_x86_gemm_packed(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                        size_t y_stride);
bool mx_x86_quant_act(uint32_t act_type, const float *x, void *dst, int64_t n);
bool mx_x86_dequant(uint32_t type, const void *src, float *dst, int64_t n);

#endif
