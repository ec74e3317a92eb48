/* test_quant.c: block formats (dequantization by hand-built blocks), fp16/bf16 conversion, activation
 * quantization, and the dot products: SIMD (mx_quant_dot) vs the scalar code (mx_quant_dot_scalar), the
 * quantized dot vs the exact fp32 reference (mx_quant_dot_f32), and the multi-row / tile helpers vs per-row
 * dots, on random data for every type and several lengths; the fp32-activation paths (SIMD dequantization vs
 * its scalar twin, the exact GEMV vs the fp32 reference, the packed prefill GEMM vs its scalar twin). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/io/dtype.h"
#include "../../src/io/quant.h"

typedef struct {
    uint64_t s;
} rng_t;

static uint32_t rng_u32(rng_t *r) {
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (uint32_t)(r->s >> 11);
}
static float rng_unif(rng_t *r, float lo, float hi) {
    return lo + (hi - lo) * (float)(rng_u32(r) >> 8) / 16777216.0f;
}

static void put_f16(uint8_t *p, float f) {
    uint16_t h = mx_f32_to_f16(f);
    memcpy(p, &h, 2);
}

static const uint32_t k_weight_types[] = {MX_F32,  MX_F16,  MX_BF16, MX_Q4_0, MX_Q4_1, MX_Q5_0, MX_Q5_1,
                                          MX_Q8_0, MX_Q8_1, MX_Q4_K, MX_Q5_K, MX_Q6_K, MX_Q8_K};
#define N_TYPES (sizeof k_weight_types / sizeof k_weight_types[0])

/* A random but valid row of n elements of `type`: random quant bits, sane fp16 scales. */
static void *random_row(uint32_t type, int64_t n, rng_t *r) {
    const mx_dtype_info *info = mx_dtype_get(type);
    size_t bytes = mx_dtype_row_bytes(type, n);
    uint8_t *buf = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) buf[i] = (uint8_t)rng_u32(r);
    int64_t nb = n / info->block;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = buf + b * info->bytes;
        float d = rng_unif(r, 0.001f, 0.05f) * ((rng_u32(r) & 1) ? 1.0f : -1.0f);
        switch (type) {
        case MX_F32: {
            float f = rng_unif(r, -1.0f, 1.0f);
            memcpy(blk, &f, 4);
            break;
        }
        case MX_F16:
            put_f16(blk, rng_unif(r, -1.0f, 1.0f));
            break;
        case MX_BF16: {
            uint16_t h = mx_f32_to_bf16(rng_unif(r, -1.0f, 1.0f));
            memcpy(blk, &h, 2);
            break;
        }
        case MX_Q4_0:
        case MX_Q5_0:
        case MX_Q8_0:
            put_f16(blk, d);
            break;
        case MX_Q4_1:
        case MX_Q5_1:
        case MX_Q4_K:
        case MX_Q5_K:
            put_f16(blk, fabsf(d));
            put_f16(blk + 2, rng_unif(r, -0.2f, 0.2f));
            break;
        case MX_Q8_1:
            put_f16(blk, d);
            put_f16(blk + 2, 0.0f);
            break;
        case MX_Q6_K:
            put_f16(blk + 208, d);
            break;
        case MX_Q8_K:
            memcpy(blk, &d, 4);
            break;
        }
    }
    return buf;
}

static float *random_x(int64_t n, rng_t *r) {
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = rng_unif(r, -2.0f, 2.0f);
    return x;
}

static void *quant_x(uint32_t type, const float *x, int64_t n) {
    uint32_t at = mx_quant_act_type(type);
    void *q = malloc(mx_dtype_row_bytes(at, n));
    mx_quant_act_row(at, x, q, n);
    return q;
}

/* ---- dtype table ---- */

Test(dtype, table) {
    cr_assert_str_eq(mx_dtype_name(MX_Q4_K), "Q4_K");
    cr_assert_eq(mx_dtype_get(17), NULL);
    cr_assert_eq(mx_dtype_row_bytes(MX_Q4_1, 576), 576 / 32 * 20);
    cr_assert_eq(mx_dtype_row_bytes(MX_Q6_K, 512), 2 * 210);
    cr_assert_eq(mx_dtype_row_bytes(MX_Q4_0, 33), 0);
    cr_assert_eq(mx_dtype_row_bytes(MX_BF16, 3), 6);
    cr_assert_eq(mx_dtype_row_bytes(99, 32), 0);
}

/* ---- fp16 / bf16 ---- */

Test(quant, f16_round_trip_all_halves) {
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue; /* NaN payloads */
        float f = mx_f16_to_f32((uint16_t)h);
        cr_assert_eq(mx_f32_to_f16(f), h, "half 0x%04x -> %g -> 0x%04x", h, f, mx_f32_to_f16(f));
    }
}

Test(quant, f16_rounding) {
    cr_assert_eq(mx_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);     /* tie -> even */
    cr_assert_eq(mx_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02); /* tie -> even (up) */
    cr_assert_eq(mx_f32_to_f16(65519.0f), 0x7BFF);
    cr_assert_eq(mx_f32_to_f16(65520.0f), 0x7C00); /* rounds to inf */
    cr_assert_eq(mx_f32_to_f16(0x1p-24f), 0x0001);
    cr_assert_eq(mx_f32_to_f16(0x1p-25f), 0x0000); /* tie -> even (zero) */
    cr_assert_eq(mx_f32_to_f16(-2.0f), 0xC000);
    cr_assert_eq(mx_f16_to_f32(0x0001), 0x1p-24f);
    cr_assert(isinf(mx_f16_to_f32(0x7C00)));
    cr_assert(isnan(mx_f16_to_f32(0x7E00)));
}

Test(quant, bf16) {
    cr_assert_eq(mx_f32_to_bf16(1.0f), 0x3F80);
    cr_assert_eq(mx_bf16_to_f32(0x3F80), 1.0f);
    cr_assert_eq(mx_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);            /* tie -> even */
    cr_assert_eq(mx_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);        /* tie -> even (up) */
    cr_assert_eq(mx_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81); /* above the tie */
    cr_assert(isnan(mx_bf16_to_f32(mx_f32_to_bf16(NAN))));
}

/* ---- dequantization of hand-built blocks ---- */

Test(quant, dequant_q4_0_q4_1_q8_0) {
    uint8_t b0[18], b1[20], b8[34];
    float y[32];
    put_f16(b0, 0.5f);
    for (int l = 0; l < 16; l++) b0[2 + l] = (uint8_t)(l | (15 - l) << 4);
    mx_dequant_row(MX_Q4_0, b0, y, 32);
    for (int l = 0; l < 16; l++) {
        cr_assert_eq(y[l], 0.5f * (float)(l - 8));
        cr_assert_eq(y[l + 16], 0.5f * (float)(7 - l));
    }
    put_f16(b1, 0.25f);
    put_f16(b1 + 2, -1.0f);
    memcpy(b1 + 4, b0 + 2, 16);
    mx_dequant_row(MX_Q4_1, b1, y, 32);
    for (int l = 0; l < 16; l++) cr_assert_eq(y[l], 0.25f * (float)l - 1.0f);
    put_f16(b8, 2.0f);
    for (int l = 0; l < 32; l++) b8[2 + l] = (uint8_t)(int8_t)(l - 16);
    mx_dequant_row(MX_Q8_0, b8, y, 32);
    for (int l = 0; l < 32; l++) cr_assert_eq(y[l], 2.0f * (float)(l - 16));
}

Test(quant, dequant_q5_0_high_bits) {
    uint8_t b[22] = {0};
    float y[32];
    put_f16(b, 1.0f);
    uint32_t qh = 0x80000001u; /* elements 0 and 31 get bit 4 */
    memcpy(b + 2, &qh, 4);
    mx_dequant_row(MX_Q5_0, b, y, 32);
    cr_assert_eq(y[0], 0.0f);   /* 16 - 16 */
    cr_assert_eq(y[1], -16.0f); /* 0 - 16 */
    cr_assert_eq(y[31], 0.0f);
}

Test(quant, dequant_q6_K_layout) {
    uint8_t b[210] = {0};
    float y[256];
    for (int g = 0; g < 16; g++) b[192 + g] = 1;
    put_f16(b + 208, 1.0f);
    b[0] = 0x21;   /* ql[0]: low nibble 1 -> element 0; high nibble 2 -> element 64 */
    b[128] = 0x0C; /* qh[0]: bits 2-3 = 3 -> element 32 gets 3 << 4 */
    mx_dequant_row(MX_Q6_K, b, y, 256);
    cr_assert_eq(y[0], 1.0f - 32.0f);
    cr_assert_eq(y[64], 2.0f - 32.0f);
    cr_assert_eq(y[32], 48.0f - 32.0f);
    cr_assert_eq(y[1], -32.0f);
}

Test(quant, dequant_q4_K_scales) {
    uint8_t b[144] = {0};
    float y[256];
    put_f16(b, 1.0f);
    put_f16(b + 2, 0.5f);
    b[4 + 0] = 3;              /* sc0 = 3 */
    b[4 + 4] = 2;              /* m0 = 2 */
    b[4 + 8] = 0x5 | 0x7 << 4; /* sc4 low bits 5, m4 low bits 7 */
    b[4 + 0] |= 1 << 6;        /* sc4 high bits = 1 -> sc4 = 21 */
    b[16] = 0xF4;              /* element 0: 4, element 32: 15 */
    mx_dequant_row(MX_Q4_K, b, y, 256);
    cr_assert_eq(y[0], 3.0f * 4.0f - 1.0f);
    cr_assert_eq(y[32], 0.0f * 15.0f - 0.0f);
    cr_assert_eq(y[128], 21.0f * 0.0f - 0.5f * 7.0f);
}

/* ---- activation quantization ---- */

Test(quant, act_rows_are_close_to_x) {
    rng_t r = {42};
    const uint32_t acts[] = {MX_Q8_0, MX_Q8_1, MX_Q8_K, MX_F32};
    int64_t n = 1024;
    float *x = random_x(n, &r), *y = malloc(n * sizeof *y);
    for (size_t a = 0; a < 4; a++) {
        void *q = malloc(mx_dtype_row_bytes(acts[a], n));
        mx_quant_act_row(acts[a], x, q, n);
        mx_dequant_row(acts[a], q, y, n);
        int blk = mx_dtype_get(acts[a])->block == 1 ? 32 : mx_dtype_get(acts[a])->block;
        for (int64_t b = 0; b < n / blk; b++) {
            float amax = 0;
            for (int l = 0; l < blk; l++) amax = fmaxf(amax, fabsf(x[b * blk + l]));
            /* half a step, plus the fp16 rounding of d (2^-11 relative) times 127 steps */
            float tol = amax / 254.0f * 1.01f + amax * 0x1p-10f;
            for (int l = 0; l < blk; l++) cr_assert_leq(fabsf(y[b * blk + l] - x[b * blk + l]), tol);
        }
        if (acts[a] == MX_Q8_1) { /* s = d * Σq */
            const uint8_t *blk8 = q;
            for (int64_t b = 0; b < n / 32; b++, blk8 += 36) {
                int sum = 0;
                for (int l = 0; l < 32; l++) sum += (int8_t)blk8[4 + l];
                uint16_t d, s;
                memcpy(&d, blk8, 2);
                memcpy(&s, blk8 + 2, 2);
                float expect = (float)sum * mx_f16_to_f32(d);
                cr_assert_leq(fabsf(mx_f16_to_f32(s) - expect), fabsf(expect) * 0x1p-10f + 1e-6f);
            }
        }
        if (acts[a] == MX_Q8_K) { /* bsums */
            const uint8_t *blk8 = q;
            for (int64_t b = 0; b < n / 256; b++, blk8 += 292)
                for (int g = 0; g < 16; g++) {
                    int sum = 0;
                    for (int l = 0; l < 16; l++) sum += (int8_t)blk8[4 + g * 16 + l];
                    int16_t bs;
                    memcpy(&bs, blk8 + 260 + 2 * g, 2);
                    cr_assert_eq(bs, sum);
                }
        }
        free(q);
    }
    free(x);
    free(y);
}

Test(quant, act_zero_block) {
    float x[256] = {0};
    uint8_t q[292];
    mx_quant_act_row(MX_Q8_K, x, q, 256);
    float y[256];
    mx_dequant_row(MX_Q8_K, q, y, 256);
    for (int i = 0; i < 256; i++) cr_assert_eq(y[i], 0.0f);
    mx_quant_act_row(MX_Q8_0, x, q, 32);
    mx_dequant_row(MX_Q8_0, q, y, 32);
    for (int i = 0; i < 32; i++) cr_assert_eq(y[i], 0.0f);
}

/* ---- dot products ---- */

/* Σ|w_i * x_i| with w dequantized: the scale of float rounding errors in a dot product. */
static double abs_dot(const float *w, const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += fabs((double)w[i] * x[i]);
    return s;
}

Test(quant, simd_dot_equals_scalar_dot) {
    rng_t r = {7};
    const int64_t ns[] = {256, 512, 1536, 4096};
    for (size_t ti = 0; ti < N_TYPES; ti++)
        for (size_t k = 0; k < 4; k++) {
            uint32_t type = k_weight_types[ti];
            int64_t n = ns[k];
            void *w = random_row(type, n, &r);
            float *x = random_x(n, &r), *wd = malloc(n * sizeof *wd);
            void *xq = quant_x(type, x, n);
            mx_dequant_row(type, w, wd, n);
            float simd = mx_quant_dot(type, w, xq, n), scalar = mx_quant_dot_scalar(type, w, xq, n);
            /* Same exact int32 block sums; only the float summation order across blocks (or 8-lane partial
             * sums for float types) differs: each of the <= n terms is off by at most a few ulps of the
             * running sum, bounded by n * 2^-24 * Σ|w x|; 1e-5 * Σ|w x| covers n <= 4096 with margin in
             * practice. */
            double tol = 1e-5 * abs_dot(wd, x, n) + 1e-6;
            cr_assert_leq(fabs((double)simd - scalar), tol, "%s n=%lld: simd %.9g scalar %.9g",
                          mx_dtype_name(type), (long long)n, simd, scalar);
            free(w), free(x), free(wd), free(xq);
        }
}

Test(quant, float_types_odd_lengths) {
    rng_t r = {11};
    const uint32_t types[] = {MX_F32, MX_F16, MX_BF16};
    for (int ti = 0; ti < 3; ti++)
        for (int64_t n = 1; n < 80; n += 7) {
            void *w = random_row(types[ti], n, &r);
            float *x = random_x(n, &r), *wd = malloc(n * sizeof *wd);
            mx_dequant_row(types[ti], w, wd, n);
            float got = mx_quant_dot(types[ti], w, x, n), want = mx_quant_dot_scalar(types[ti], w, x, n);
            cr_assert_leq(fabs((double)got - want), 1e-5 * abs_dot(wd, x, n) + 1e-6);
            free(w), free(x), free(wd);
        }
}

/* Bound on |quantized dot - exact dot| from rounding x to 8 bits per block (|x_i - x̂_i| <= amax_b / 254,
 * times Σ_b |w_i|), the fp16 rounding of the activation scale d (2^-11 relative on every term, and the same
 * again on s = d Σq for the types with a min, bounded by Σ|m| |x| ~ Σ|w x| + half a step), and float sums. */
static double act_error_bound(uint32_t type, const float *wd, const float *x, int64_t n) {
    uint32_t at = mx_quant_act_type(type);
    if (at == MX_F32) return 1e-5 * abs_dot(wd, x, n) + 1e-6;
    int blk = mx_dtype_get(at)->block;
    double bound = 0;
    for (int64_t b = 0; b < n / blk; b++) {
        double amax = 0, sw = 0;
        for (int l = 0; l < blk; l++) {
            amax = fmax(amax, fabs(x[b * blk + l]));
            sw += fabs(wd[b * blk + l]);
        }
        bound += sw * amax / 254.0;
    }
    double fp16 = at == MX_Q8_K ? 0x1p-22 : 0x1p-10; /* Q8_K keeps d in fp32 */
    return bound * 1.01 + fp16 * abs_dot(wd, x, n) * 2 + 1e-5;
}

Test(quant, quantized_dot_close_to_f32_reference) {
    rng_t r = {3};
    const int64_t ns[] = {256, 1536};
    for (size_t ti = 0; ti < N_TYPES; ti++)
        for (size_t k = 0; k < 2; k++) {
            uint32_t type = k_weight_types[ti];
            int64_t n = ns[k];
            void *w = random_row(type, n, &r);
            float *x = random_x(n, &r), *wd = malloc(n * sizeof *wd), *scratch = malloc(n * sizeof *scratch);
            void *xq = quant_x(type, x, n);
            mx_dequant_row(type, w, wd, n);
            double ref = mx_quant_dot_f32(type, w, x, n, scratch), tol = act_error_bound(type, wd, x, n);
            float got = mx_quant_dot(type, w, xq, n), sc = mx_quant_dot_scalar(type, w, xq, n);
            cr_assert_leq(fabs(got - ref), tol, "%s n=%lld: quant %.9g ref %.9g tol %.3g",
                          mx_dtype_name(type), (long long)n, got, ref, tol);
            cr_assert_leq(fabs(sc - ref), tol, "%s scalar", mx_dtype_name(type));
            free(w), free(x), free(wd), free(scratch), free(xq);
        }
}

Test(quant, dot_rows_and_gemm_tile_match_per_row_dots) {
    rng_t r = {5};
    const int64_t n = 512;
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = k_weight_types[ti], at = mx_quant_act_type(type);
        size_t ws = mx_dtype_row_bytes(type, n), xs = mx_dtype_row_bytes(at, n);
        const int max_rows = 9, max_tok = 5;
        uint8_t *w = random_row(type, n * max_rows, &r); /* max_rows consecutive rows */
        uint8_t *xq = malloc(xs * max_tok);
        for (int t = 0; t < max_tok; t++) {
            float *x = random_x(n, &r);
            mx_quant_act_row(at, x, xq + t * xs, n);
            free(x);
        }
        float ref[5][9], wd[512], xd[512];
        double tol_scale[5][9]; /* Σ|w x| over the dequantized row and activations */
        for (int t = 0; t < max_tok; t++) {
            mx_dequant_row(at, xq + t * xs, xd, n);
            for (int row = 0; row < max_rows; row++) {
                ref[t][row] = mx_quant_dot(type, w + row * ws, xq + t * xs, n);
                mx_dequant_row(type, w + row * ws, wd, n);
                tol_scale[t][row] = abs_dot(wd, xd, n);
            }
        }
        for (int rows = 1; rows <= max_rows; rows++) {
            float out[9];
            mx_quant_dot_rows(type, w, ws, rows, xq + xs, n, out);
            for (int row = 0; row < rows; row++)
                cr_assert_eq(out[row], ref[1][row], "%s dot_rows rows=%d row %d", mx_dtype_name(type), rows,
                             row);
            for (int tok = 1; tok <= max_tok; tok++) {
                float y[5 * 11];
                const size_t ys = 11;
                mx_quant_gemm_tile(type, w, ws, rows, xq, xs, tok, n, y, ys);
                /* The tile kernels may sum blocks in another order than the single-token ones (512-bit
                 * kernels pair blocks): equal up to float rounding, as SIMD vs scalar above. */
                for (int t = 0; t < tok; t++)
                    for (int row = 0; row < rows; row++)
                        cr_assert_leq(fabs(y[t * ys + row] - ref[t][row]), 1e-5 * tol_scale[t][row] + 1e-6,
                                      "%s tile %dx%d t=%d r=%d", mx_dtype_name(type), rows, tok, t, row);
            }
        }
        free(w), free(xq);
    }
}

/* ---- fp32-activation paths: SIMD dequantization, exact GEMV, the prefill GEMM ---- */

Test(quant, simd_dequant_bit_identical_to_scalar) {
    rng_t r = {13};
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = k_weight_types[ti];
        const int64_t n = 1536;
        void *w = random_row(type, n, &r);
        float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        mx_dequant_row(type, w, a, n);
        mx_dequant_row_scalar(type, w, b, n);
        cr_assert_eq(memcmp(a, b, n * sizeof *a), 0, "%s", mx_dtype_name(type));
        free(w), free(a), free(b);
    }
}

Test(quant, dot_rows_f32_equals_f32_reference) {
    rng_t r = {17};
    const int64_t ns[] = {256, 576, 1536};
    for (size_t ti = 0; ti < N_TYPES; ti++)
        for (size_t k = 0; k < 3; k++) {
            uint32_t type = k_weight_types[ti];
            int64_t n = ns[k];
            if (n % mx_dtype_get(type)->block) continue;
            const int max_rows = 9;
            size_t ws = mx_dtype_row_bytes(type, n);
            uint8_t *w = random_row(type, n * max_rows, &r);
            float *x = random_x(n, &r), *wd = malloc(n * sizeof *wd), *scratch = malloc(n * sizeof *scratch);
            for (int rows = 1; rows <= max_rows; rows += 4) {
                float out[9];
                mx_quant_dot_rows_f32(type, w, ws, rows, x, n, out);
                for (int row = 0; row < rows; row++) {
                    double ref = mx_quant_dot_f32(type, w + row * ws, x, n, scratch);
                    mx_dequant_row(type, w + row * ws, wd, n);
                    double tol = 1e-5 * abs_dot(wd, x, n) + 1e-6;
                    cr_assert_leq(fabs(out[row] - ref), tol, "%s n=%lld rows=%d row %d: %.9g vs %.9g",
                                  mx_dtype_name(type), (long long)n, rows, row, out[row], ref);
                }
            }
            free(w), free(x), free(wd), free(scratch);
        }
}

Test(quant, gemm_packed_equals_scalar_twin) {
    rng_t r = {19};
    const int64_t n = 96;
    const int toks[] = {1, 7, 64, 70, 130};
    const int max_rows = 13;
    const size_t ys = 17; /* > max_rows: the columns past n_rows must stay untouched */
    float *w = random_x(n * max_rows, &r);
    for (int ki = 0; ki < 5; ki++) {
        int T = toks[ki];
        float *x = random_x(n * T, &r);
        float *xp = aligned_alloc(64, mx_gemm_packed_floats(T, n) * sizeof(float));
        mx_gemm_pack(x, T, n, xp, 0, (T + MX_GEMM_TOK - 1) / MX_GEMM_TOK);
        for (int rows = 1; rows <= max_rows; rows++) {
            float *y = malloc(T * ys * sizeof *y), *ref = malloc(T * ys * sizeof *ref);
            for (size_t i = 0; i < T * ys; i++) y[i] = ref[i] = -7.0f;
            mx_gemm_packed(w, rows, n, xp, T, y, ys);
            mx_gemm_packed_scalar(w, rows, n, xp, T, ref, ys);
            for (int t = 0; t < T; t++)
                for (size_t c = 0; c < ys; c++) {
                    float got = y[t * ys + c], want = ref[t * ys + c];
                    if (c >= (size_t)rows) {
                        cr_assert_eq(got, -7.0f, "T=%d rows=%d: column %zu written", T, rows, c);
                        continue;
                    }
                    double tol = 1e-5 * abs_dot(w + c * n, x + t * n, n) + 1e-6;
                    cr_assert_leq(fabs(got - want), tol, "T=%d rows=%d t=%d r=%zu: %.9g vs %.9g", T, rows, t,
                                  c, got, want);
                }
            free(y), free(ref);
        }
        free(x), free(xp);
    }
    free(w);
}
