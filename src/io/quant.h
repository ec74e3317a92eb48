/* quant.h: dequantization and dot products for every supported tensor type (GGUF block formats).
 *
 * Weights stay in their file type. A matrix-vector product W·x (W: [n_out rows][n_in], x: [n_in]) is done
 * either with 8-bit activations (llama.cpp's scheme: integer dot products inside a block, one float multiply
 * per block):
 *   1. quantize x once into the weight type's "activation type" (mx_quant_act_type: Q8_0, Q8_1 or Q8_K for
 *      the block types; F32 for float types), with mx_quant_act_row;
 *   2. for each row r, y[r] = mx_quant_dot(type, row r, xq, n_in);
 * which differs from an fp32 dot of the dequantized row by the rounding of x to 8 bits (relative ~1e-3), or
 * exactly in fp32 (mx_quant_dot_rows_f32, mx_gemm_packed for prefill). mx_quant_dot_f32 is the fp32 reference
 * (dequantize + dot) for tests. */
#ifndef MX_QUANT_H
#define MX_QUANT_H

#include <stdbool.h>

#include "dtype.h"

/* dst[0..n) = dequantized src row. n a multiple of the type's block. Supports F32, F16, BF16, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0, Q8_1 (as activation format), Q4_K, Q5_K, Q6_K, Q8_K. */
void mx_dequant_row(uint32_t type, const void *src, float *dst, int64_t n);
/* The portable twin of mx_dequant_row (SIMD for Q4_0, Q4_1, Q8_0 with AVX512); both are bit-identical. */
void mx_dequant_row_scalar(uint32_t type, const void *src, float *dst, int64_t n);

/* The type activations are quantized to before mx_quant_dot against weights of `type`. */
uint32_t mx_quant_act_type(uint32_t type);
/* Quantizes n floats into act_type (one of MX_F32, MX_Q8_0, MX_Q8_1, MX_Q8_K); writes
 * mx_dtype_row_bytes(act_type, n) bytes to dst. */
void mx_quant_act_row(uint32_t act_type, const float *x, void *dst, int64_t n);
/* Dot product of one weight row (type `type`, n elements) with an activation row quantized by
 * mx_quant_act_row(mx_quant_act_type(type), ...). */
float mx_quant_dot(uint32_t type, const void *w_row, const void *x_act, int64_t n);
/* Exact reference: dequantize the row to fp32 (scratch of n floats) and dot with fp32 x. */
float mx_quant_dot_f32(uint32_t type, const void *w_row, const float *x, int64_t n, float *scratch);

/* The portable (no SIMD) implementation of mx_quant_dot, same integer block sums; for tests and non-x86
 * builds. SIMD results differ from it only by the order of the float accumulation across blocks. */
float mx_quant_dot_scalar(uint32_t type, const void *w_row, const void *x_act, int64_t n);

/* GEMV helper: out[r] = mx_quant_dot(type, w + r * w_row_stride, x_act, n) for r < n_rows (w_row_stride in
 * bytes). Kernels reuse each activation block across several rows. No threading inside. */
void mx_quant_dot_rows(uint32_t type, const void *w, size_t w_row_stride, int n_rows, const void *x_act,
                       int64_t n, float *out);
/* GEMM tile: y[t * y_stride + r] = dot(row r of w, activation row t of x_act) for r < n_rows, t < n_tok.
 * w: n_rows rows of `type`, w_stride bytes apart; x_act: n_tok rows quantized with mx_quant_act_row
 * (mx_quant_act_type(type)), x_stride bytes apart; y_stride in floats. Register-blocked over rows and tokens
 * (Q4_1, Q8_0 and Q4_0 on x86); other types loop over mx_quant_dot_rows. No threading inside. */
void mx_quant_gemm_tile(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x_act,
                        size_t x_stride, int n_tok, int64_t n, float *y, size_t y_stride);

/* Exact fp32 GEMV (fp32 activations, no 8-bit rounding): out[r] = Σ_k dequant(row r)[k] · x[k] for r < n_rows
 * (w_row_stride in bytes). SIMD for Q4_0, Q4_1 and Q8_0 with AVX512 (weights dequantized in registers); other
 * types and builds dequantize block-wise and accumulate in fp32. Equal to mx_quant_dot_f32 up to the fp32
 * summation order. No threading inside. */
void mx_quant_dot_rows_f32(uint32_t type, const void *w, size_t w_row_stride, int n_rows, const float *x,
                           int64_t n, float *out);

/* fp32 GEMM for prefill: y[t * y_stride + r] = Σ_k w[r * n + k] · x[t * n + k] for r < n_rows, t < n_tok,
 * on fp32 rows w (dequantized weights) and tokens packed once per matmul by mx_gemm_pack:
 * groups of MX_GEMM_TOK tokens, each stored k-major (xp[g][k][MX_GEMM_TOK], zero-padded past n_tok).
 * AVX512 register-blocked kernel (rows x MX_GEMM_TOK tokens); mx_gemm_packed_scalar is its portable twin. */
enum { MX_GEMM_TOK = 64 };
size_t mx_gemm_packed_floats(int n_tok, int64_t n); /* floats of the packed buffer (64-byte aligned) */
void mx_gemm_pack(const float *x, int n_tok, int64_t n, float *xp, int g0, int g1); /* groups [g0, g1) */
void mx_gemm_packed(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                    size_t y_stride);
/* Whether mx_gemm_packed has its SIMD kernel on this build (else callers may prefer a BLAS sgemm). */
bool mx_gemm_packed_is_simd(void);
void mx_gemm_packed_scalar(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                           size_t y_stride);

/* fp16/bf16 scalar conversion (IEEE half, round-to-nearest-even on the way down). */
float mx_f16_to_f32(uint16_t h);
uint16_t mx_f32_to_f16(float f);
float mx_bf16_to_f32(uint16_t h);
uint16_t mx_f32_to_bf16(float f);

#endif
