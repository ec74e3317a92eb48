/* quant.c: the portable half of quant.h: fp16/bf16 conversion, dequantization of every block type (bit-exact
 * with ggml / the gguf Python package: the same float operations in the same order, no FMA contraction, which
 * -std=c11 guarantees under gcc), activation quantization, scalar dot products, and the dispatch that prefers
 * the SIMD kernels of quant_x86.c when they handle a type.
 *
 * Dot products: within a block the products are summed exactly in int32; each block then adds one float term
 * (scale_w * scale_x * isum, plus m_w * s_x for the types with a min). */
#include "quant.h"

#include <math.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "quant_impl.h"

/* ---- fp16 / bf16 ---- */

float mx_f16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        float f = (float)man * 0x1p-24f; /* zero or subnormal: exact */
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7F800000u | man << 13;
    else
        bits = sign | (exp + 112) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

uint16_t mx_f32_to_f16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    /* Round to nearest even via float arithmetic (the classic magic-number method). */
    uint32_t u, sign;
    memcpy(&u, &f, 4);
    sign = u & 0x80000000u;
    u ^= sign;
    uint16_t o;
    if (u >= 0x47800000u) { /* 65536 and up (incl. inf, NaN) */
        o = u > 0x7F800000u ? 0x7E00 : 0x7C00;
    } else if (u < 0x38800000u) {             /* below the smallest normal half: subnormal or zero */
        const uint32_t magic_u = 0x3F000000u; /* 0.5f: aligns the half's subnormal bits at the bottom */
        float v, magic;
        memcpy(&v, &u, 4);
        memcpy(&magic, &magic_u, 4);
        v += magic;
        memcpy(&u, &v, 4);
        o = (uint16_t)(u - magic_u);
    } else {
        uint32_t odd = (u >> 13) & 1;
        u += 0xC8000FFFu; /* rebias exponent (15 - 127) << 23, plus rounding bias */
        u += odd;
        o = (uint16_t)(u >> 13);
    }
    return (uint16_t)(o | sign >> 16);
#endif
}

float mx_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t mx_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((u + (0x7FFF + ((u >> 16) & 1))) >> 16);
}

#define F16(h) mx_f16_to_f32(h)

/* ---- dequantization (scalar) ---- */

static void deq_q4_0(const blk_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = F16(b[i].d);
        for (int l = 0; l < QK / 2; l++) {
            y[l] = d * (float)((b[i].qs[l] & 0xF) - 8);
            y[l + QK / 2] = d * (float)((b[i].qs[l] >> 4) - 8);
        }
    }
}

static void deq_q4_1(const blk_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = F16(b[i].d), m = F16(b[i].m);
        for (int l = 0; l < QK / 2; l++) {
            float lo = d * (float)(b[i].qs[l] & 0xF), hi = d * (float)(b[i].qs[l] >> 4);
            y[l] = lo + m;
            y[l + QK / 2] = hi + m;
        }
    }
}

/* 5-bit value of element l (0..31) of a Q5 block. */
static inline int q5_val(const uint8_t *qs, uint32_t qh, int l) {
    int lo = l < QK / 2 ? qs[l] & 0xF : qs[l - QK / 2] >> 4;
    return lo | (int)((qh >> l) & 1) << 4;
}

static void deq_q5_0(const blk_q5_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = F16(b[i].d);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int l = 0; l < QK; l++) y[l] = d * (float)(q5_val(b[i].qs, qh, l) - 16);
    }
}

static void deq_q5_1(const blk_q5_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = F16(b[i].d), m = F16(b[i].m);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int l = 0; l < QK; l++) {
            float v = d * (float)q5_val(b[i].qs, qh, l);
            y[l] = v + m;
        }
    }
}

static void deq_q8_0(const blk_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = F16(b[i].d);
        for (int l = 0; l < QK; l++) y[l] = (float)b[i].qs[l] * d;
    }
}

static void deq_q8_1(const blk_q8_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = F16(b[i].d);
        for (int l = 0; l < QK; l++) y[l] = (float)b[i].qs[l] * d;
    }
}

static void deq_q8_K(const blk_q8_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK_K)
        for (int l = 0; l < QK_K; l++) y[l] = b[i].d * (float)b[i].qs[l];
}

/* Q4_K/Q5_K: sub-block j (32 elements) = (d * sc_j) * q - (dmin * m_j), each product rounded to fp32. */
static void deq_q4_K(const blk_q4_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = F16(b[i].d), dmin = F16(b[i].dmin);
        for (int j = 0; j < 8; j++, y += 32) {
            uint8_t sc, m;
            kq_scale_min(j, b[i].scales, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *q = b[i].qs + (j / 2) * 32;
            int shift = (j & 1) * 4;
            for (int l = 0; l < 32; l++) {
                float v = dl * (float)((q[l] >> shift) & 0xF);
                y[l] = v - ml;
            }
        }
    }
}

static void deq_q5_K(const blk_q5_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = F16(b[i].d), dmin = F16(b[i].dmin);
        for (int j = 0; j < 8; j++, y += 32) {
            uint8_t sc, m;
            kq_scale_min(j, b[i].scales, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *q = b[i].qs + (j / 2) * 32;
            int shift = (j & 1) * 4;
            for (int l = 0; l < 32; l++) {
                int qv = ((q[l] >> shift) & 0xF) | ((b[i].qh[l] >> j) & 1) << 4;
                float v = dl * (float)qv;
                y[l] = v - ml;
            }
        }
    }
}

/* 6-bit value (0..63) of element e (0..255) of a Q6_K super-block. */
static inline int q6_val(const blk_q6_K *b, int e) {
    int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
    uint8_t ql = b->ql[h * 64 + (k & 1) * 32 + l];
    int lo = k < 2 ? ql & 0xF : ql >> 4;
    return lo | ((b->qh[h * 32 + l] >> (2 * k)) & 3) << 4;
}

static void deq_q6_K(const blk_q6_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK_K) {
        float d = F16(b[i].d);
        for (int e = 0; e < QK_K; e++) {
            float ds = d * (float)b[i].scales[e / 16];
            y[e] = ds * (float)(q6_val(&b[i], e) - 32);
        }
    }
}

static void deq_scalar(uint32_t type, const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    switch (type) {
    case MX_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case MX_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = F16(h[i]);
        break;
    case MX_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = mx_bf16_to_f32(h[i]);
        break;
    case MX_Q4_0:
        deq_q4_0(src, dst, n / QK);
        break;
    case MX_Q4_1:
        deq_q4_1(src, dst, n / QK);
        break;
    case MX_Q5_0:
        deq_q5_0(src, dst, n / QK);
        break;
    case MX_Q5_1:
        deq_q5_1(src, dst, n / QK);
        break;
    case MX_Q8_0:
        deq_q8_0(src, dst, n / QK);
        break;
    case MX_Q8_1:
        deq_q8_1(src, dst, n / QK);
        break;
    case MX_Q4_K:
        deq_q4_K(src, dst, n / QK_K);
        break;
    case MX_Q5_K:
        deq_q5_K(src, dst, n / QK_K);
        break;
    case MX_Q6_K:
        deq_q6_K(src, dst, n / QK_K);
        break;
    case MX_Q8_K:
        deq_q8_K(src, dst, n / QK_K);
        break;
    default:
        memset(dst, 0, (size_t)n * sizeof(float));
        break;
    }
}

void mx_dequant_row(uint32_t type, const void *src, float *dst, int64_t n) {
    if (mx_x86_dequant(type, src, dst, n)) return;
    deq_scalar(type, src, dst, n);
}

void mx_dequant_row_scalar(uint32_t type, const void *src, float *dst, int64_t n) {
    deq_scalar(type, src, dst, n);
}

/* ---- activation quantization ---- */

uint32_t mx_quant_act_type(uint32_t type) {
    switch (type) {
    case MX_Q4_0:
    case MX_Q5_0:
    case MX_Q8_0:
        return MX_Q8_0;
    case MX_Q4_1:
    case MX_Q5_1:
    case MX_Q8_1:
        return MX_Q8_1;
    case MX_Q4_K:
    case MX_Q5_K:
    case MX_Q6_K:
    case MX_Q8_K:
        return MX_Q8_K;
    default:
        return MX_F32;
    }
}

static float amax_of(const float *x, int n) {
    float a = 0.0f;
    for (int l = 0; l < n; l++) a = fmaxf(a, fabsf(x[l]));
    return a;
}

/* Q8_0/Q8_1: d = amax / 127, q = round-half-even(x / d) (the SIMD path rounds identically). */
static void act_q8_0(const float *x, blk_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float d = amax_of(x, QK) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = mx_f32_to_f16(d);
        for (int l = 0; l < QK; l++) y[i].qs[l] = (int8_t)lrintf(x[l] * id);
    }
}

static void act_q8_1(const float *x, blk_q8_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float d = amax_of(x, QK) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int l = 0; l < QK; l++) {
            y[i].qs[l] = (int8_t)lrintf(x[l] * id);
            sum += y[i].qs[l];
        }
        y[i].d = mx_f32_to_f16(d);
        y[i].s = mx_f32_to_f16((float)sum * d);
    }
}

/* Q8_K: scale 127 / amax, d = its inverse (fp32), plus the sums of each 16 values. */
static void act_q8_K(const float *x, blk_q8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float amax = amax_of(x, QK_K);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float iscale = 127.0f / amax;
        for (int l = 0; l < QK_K; l++) {
            long v = lrintf(x[l] * iscale);
            y[i].qs[l] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += y[i].qs[g * 16 + l];
            y[i].bsums[g] = (int16_t)s;
        }
        y[i].d = 1.0f / iscale;
    }
}

void mx_quant_act_row(uint32_t act_type, const float *x, void *dst, int64_t n) {
    if (mx_x86_quant_act(act_type, x, dst, n)) return;
    switch (act_type) {
    case MX_Q8_0:
        act_q8_0(x, dst, n / QK);
        break;
    case MX_Q8_1:
        act_q8_1(x, dst, n / QK);
        break;
    case MX_Q8_K:
        act_q8_K(x, dst, n / QK_K);
        break;
    default:
        memcpy(dst, x, (size_t)n * sizeof(float));
        break;
    }
}

/* ---- scalar dot products (weight row · quantized activations) ---- */

static float dot_q4_0(const blk_q4_0 *w, const blk_q8_0 *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int l = 0; l < QK / 2; l++)
            isum += ((w[i].qs[l] & 0xF) - 8) * x[i].qs[l] + ((w[i].qs[l] >> 4) - 8) * x[i].qs[l + QK / 2];
        sum += (float)isum * (F16(w[i].d) * F16(x[i].d));
    }
    return sum;
}

static float dot_q4_1(const blk_q4_1 *w, const blk_q8_1 *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int l = 0; l < QK / 2; l++)
            isum += (w[i].qs[l] & 0xF) * x[i].qs[l] + (w[i].qs[l] >> 4) * x[i].qs[l + QK / 2];
        sum += (float)isum * (F16(w[i].d) * F16(x[i].d)) + F16(w[i].m) * F16(x[i].s);
    }
    return sum;
}

static float dot_q5_0(const blk_q5_0 *w, const blk_q8_0 *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, 4);
        int isum = 0;
        for (int l = 0; l < QK; l++) isum += (q5_val(w[i].qs, qh, l) - 16) * x[i].qs[l];
        sum += (float)isum * (F16(w[i].d) * F16(x[i].d));
    }
    return sum;
}

static float dot_q5_1(const blk_q5_1 *w, const blk_q8_1 *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, 4);
        int isum = 0;
        for (int l = 0; l < QK; l++) isum += q5_val(w[i].qs, qh, l) * x[i].qs[l];
        sum += (float)isum * (F16(w[i].d) * F16(x[i].d)) + F16(w[i].m) * F16(x[i].s);
    }
    return sum;
}

static float dot_q8_0(const blk_q8_0 *w, const blk_q8_0 *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int l = 0; l < QK; l++) isum += w[i].qs[l] * x[i].qs[l];
        sum += (float)isum * (F16(w[i].d) * F16(x[i].d));
    }
    return sum;
}

static float dot_q8_1(const blk_q8_1 *w, const blk_q8_1 *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int l = 0; l < QK; l++) isum += w[i].qs[l] * x[i].qs[l];
        sum += (float)isum * (F16(w[i].d) * F16(x[i].d));
    }
    return sum;
}

/* Σ_j m_j * (sum of the 32 activations of sub-block j), for the min term of Q4_K/Q5_K. */
static int kq_min_sum(const uint8_t *scales, const int16_t *bsums) {
    int s = 0;
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        kq_scale_min(j, scales, &sc, &m);
        s += m * (bsums[2 * j] + bsums[2 * j + 1]);
    }
    return s;
}

static float dot_q4_K(const blk_q4_K *w, const blk_q8_K *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            kq_scale_min(j, w[i].scales, &sc, &m);
            const uint8_t *q = w[i].qs + (j / 2) * 32;
            const int8_t *xq = x[i].qs + j * 32;
            int shift = (j & 1) * 4, s = 0;
            for (int l = 0; l < 32; l++) s += ((q[l] >> shift) & 0xF) * xq[l];
            isum += sc * s;
        }
        int msum = kq_min_sum(w[i].scales, x[i].bsums);
        sum += x[i].d * F16(w[i].d) * (float)isum - x[i].d * F16(w[i].dmin) * (float)msum;
    }
    return sum;
}

static float dot_q5_K(const blk_q5_K *w, const blk_q8_K *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            kq_scale_min(j, w[i].scales, &sc, &m);
            const uint8_t *q = w[i].qs + (j / 2) * 32;
            const int8_t *xq = x[i].qs + j * 32;
            int shift = (j & 1) * 4, s = 0;
            for (int l = 0; l < 32; l++)
                s += (((q[l] >> shift) & 0xF) | ((w[i].qh[l] >> j) & 1) << 4) * xq[l];
            isum += sc * s;
        }
        int msum = kq_min_sum(w[i].scales, x[i].bsums);
        sum += x[i].d * F16(w[i].d) * (float)isum - x[i].d * F16(w[i].dmin) * (float)msum;
    }
    return sum;
}

static float dot_q6_K(const blk_q6_K *w, const blk_q8_K *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += (q6_val(&w[i], g * 16 + l) - 32) * x[i].qs[g * 16 + l];
            isum += w[i].scales[g] * s;
        }
        sum += x[i].d * F16(w[i].d) * (float)isum;
    }
    return sum;
}

static float dot_q8_K(const blk_q8_K *w, const blk_q8_K *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int l = 0; l < QK_K; l++) isum += w[i].qs[l] * x[i].qs[l];
        sum += w[i].d * x[i].d * (float)isum;
    }
    return sum;
}

static float dot_float(uint32_t type, const void *w, const float *x, int64_t n) {
    float sum = 0.0f;
    const uint16_t *h = w;
    for (int64_t i = 0; i < n; i++) {
        float wv = type == MX_F32 ? ((const float *)w)[i] : type == MX_F16 ? F16(h[i]) : mx_bf16_to_f32(h[i]);
        sum += wv * x[i];
    }
    return sum;
}

float mx_quant_dot_scalar(uint32_t type, const void *w, const void *x, int64_t n) {
    switch (type) {
    case MX_F32:
    case MX_F16:
    case MX_BF16:
        return dot_float(type, w, x, n);
    case MX_Q4_0:
        return dot_q4_0(w, x, n / QK);
    case MX_Q4_1:
        return dot_q4_1(w, x, n / QK);
    case MX_Q5_0:
        return dot_q5_0(w, x, n / QK);
    case MX_Q5_1:
        return dot_q5_1(w, x, n / QK);
    case MX_Q8_0:
        return dot_q8_0(w, x, n / QK);
    case MX_Q8_1:
        return dot_q8_1(w, x, n / QK);
    case MX_Q4_K:
        return dot_q4_K(w, x, n / QK_K);
    case MX_Q5_K:
        return dot_q5_K(w, x, n / QK_K);
    case MX_Q6_K:
        return dot_q6_K(w, x, n / QK_K);
    case MX_Q8_K:
        return dot_q8_K(w, x, n / QK_K);
    default:
        return 0.0f;
    }
}

float mx_quant_dot(uint32_t type, const void *w, const void *x, int64_t n) {
    float r;
    if (mx_x86_dot(type, w, x, n, &r)) return r;
    return mx_quant_dot_scalar(type, w, x, n);
}

float mx_quant_dot_f32(uint32_t type, const void *w, const float *x, int64_t n, float *scratch) {
    mx_dequant_row(type, w, scratch, n);
    double sum = 0.0; /* the reference: accumulate in double, round once */
    for (int64_t i = 0; i < n; i++) sum += (double)scratch[i] * (double)x[i];
    return (float)sum;
}

void mx_quant_dot_rows(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x, int64_t n,
                       float *out) {
    if (mx_x86_dot_rows(type, w, w_stride, n_rows, x, n, out)) return;
    for (int r = 0; r < n_rows; r++)
        out[r] = mx_quant_dot(type, (const char *)w + (size_t)r * w_stride, x, n);
}

void mx_quant_gemm_tile(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x,
                        size_t x_stride, int n_tok, int64_t n, float *y, size_t y_stride) {
    if (mx_x86_gemm_tile(type, w, w_stride, n_rows, x, x_stride, n_tok, n, y, y_stride)) return;
    for (int t = 0; t < n_tok; t++)
        mx_quant_dot_rows(type, w, w_stride, n_rows, (const char *)x + (size_t)t * x_stride, n,
                          y + t * y_stride);
}

/* ---- fp32 activations: exact GEMV and the prefill GEMM ---- */

void mx_quant_dot_rows_f32(uint32_t type, const void *w, size_t w_stride, int n_rows, const float *x,
                           int64_t n, float *out) {
    if (mx_x86_dot_rows_f32(type, w, w_stride, n_rows, x, n, out)) return;
    const int64_t chunk = QK_K; /* a multiple of every block size */
    float buf[QK_K];
    size_t chunk_bytes = mx_dtype_row_bytes(type, chunk);
    for (int r = 0; r < n_rows; r++) {
        const char *row = (const char *)w + (size_t)r * w_stride;
        float s = 0.0f;
        for (int64_t i = 0; i < n; i += chunk) {
            int64_t len = n - i < chunk ? n - i : chunk;
            deq_scalar(type, row + chunk_bytes * (size_t)(i / chunk), buf, len);
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < len; k++) s += buf[k] * x[i + k];
        }
        out[r] = s;
    }
}

size_t mx_gemm_packed_floats(int n_tok, int64_t n) {
    size_t groups = (size_t)(n_tok + MX_GEMM_TOK - 1) / MX_GEMM_TOK;
    return groups * (size_t)n * MX_GEMM_TOK;
}

void mx_gemm_pack(const float *x, int n_tok, int64_t n, float *xp, int g0, int g1) {
    for (int g = g0; g < g1; g++) {
        float *dst = xp + (size_t)g * (size_t)n * MX_GEMM_TOK;
        const float *src[MX_GEMM_TOK];
        int nt = n_tok - g * MX_GEMM_TOK < MX_GEMM_TOK ? n_tok - g * MX_GEMM_TOK : MX_GEMM_TOK;
        for (int j = 0; j < nt; j++) src[j] = x + (size_t)(g * MX_GEMM_TOK + j) * (size_t)n;
        /* k-major: contiguous writes; the nt source rows are read in step, each cache line reused over k */
        for (int64_t k = 0; k < n; k++, dst += MX_GEMM_TOK) {
            for (int j = 0; j < nt; j++) dst[j] = src[j][k];
            for (int j = nt; j < MX_GEMM_TOK; j++) dst[j] = 0.0f;
        }
    }
}

void mx_gemm_packed_scalar(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                           size_t y_stride) {
    for (int t = 0; t < n_tok; t++) {
        const float *xg = xp + (size_t)(t / MX_GEMM_TOK) * (size_t)n * MX_GEMM_TOK + t % MX_GEMM_TOK;
        for (int r = 0; r < n_rows; r++) {
            float s = 0.0f;
            for (int64_t k = 0; k < n; k++) s += w[(size_t)r * (size_t)n + k] * xg[k * MX_GEMM_TOK];
            y[(size_t)t * y_stride + r] = s;
        }
    }
}

bool mx_gemm_packed_is_simd(void) {
    return mx_x86_has_gemm_packed();
}

void mx_gemm_packed(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                    size_t y_stride) {
    if (mx_x86_gemm_packed(w, n_rows, n, xp, n_tok, y, y_stride)) return;
    mx_gemm_packed_scalar(w, n_rows, n, xp, n_tok, y, y_stride);
}
