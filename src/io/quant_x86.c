/* quant_x86.c: AVX2/FMA/F16C kernels for quant.h (VNNI dot instructions when the build has AVX512-VNNI+VL or
 * AVX-VNNI; AVX512BW+VL for Q5 high bits). Compiled to stubs that return false without AVX2, so quant.c
 * falls back to its scalar code.
 *
 * Integer block sums are exact, as in the scalar code; only the order of the float accumulation across blocks
 * differs (several accumulators, 8 lanes).
 *
 * Unsigned x signed int8 products ("dpbusd"): 4 adjacent products summed into each int32 lane. Without VNNI
 * it is emulated with maddubs (int16 pair sums, which saturate above 32767: callers keep u*s pairs below
 * that, i.e. unsigned values <= 128) + madd. Signed weights (Q4_0 q-8, Q5_0 q-16, Q8_0) are handled by
 * starting the int32 accumulator at -offset * sum(x), computed once per activation block and reused across
 * rows.
 *
 * The exact fp32 paths: dequantization of Q4_0/Q4_1/Q8_0 (bit-identical to quant.c) and fp32-activation
 * GEMVs with weights dequantized in registers, in 8 lanes with AVX2 and 16 with AVX512. With AVX512 (F/BW/VL,
 * + VNNI) also single-token Q4_1/Q8_0 GEMVs with two blocks per 512-bit register and the packed fp32 GEMM
 * kernel of prefill (AVX2 builds run prefill's tiles through OpenBLAS). */
#include "quant_impl.h"

#include "quant.h"

#include <string.h>

#include "dtype.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define HAVE_VNNI         1
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define DPWSSD(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#elif defined(__AVXVNNI__)
#define HAVE_VNNI         1
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#define DPWSSD(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#else
#define HAVE_VNNI 0
#define DPBUSD(acc, u, s)                                                                                    \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define DPWSSD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif

/* Register blocking of the GEMM tile: rows x tokens (32 vector registers with AVX512VL, 16 without). */
#if defined(__AVX512VL__)
#define TILE_R 4
#else
#define TILE_R 2
#endif
#define TILE_T 2

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

INLINE int hsum8i(__m256i v) {
    __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    a = _mm_add_epi32(a, _mm_unpackhi_epi64(a, a));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 1));
    return _mm_cvtsi128_si32(a);
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15) then high nibbles (16..31). */
INLINE __m256i nib32(const uint8_t *qs) {
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits of qh -> 32 bytes, byte l = 0x10 when bit l is set. */
INLINE __m256i hbits32(const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_mov_epi8((__mmask32)h, _mm256_set1_epi8(0x10));
#else
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), shuf);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
#endif
}

/* Two fp16 at p -> [f0, f1, 0, 0]. */
INLINE __m128 h2f2(const void *p) {
    uint32_t u;
    memcpy(&u, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)u));
}
/* One fp16 at p -> [f0, 0, 0, 0]. */
INLINE __m128 h2f1(const void *p) {
    uint16_t u;
    memcpy(&u, p, 2);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(u));
}

/* ---- Q4_1 x Q8_1: y = Σ dw*dx*Σ(q*xq) + mw*s ---- */

/* R rows x T tokens over nb blocks; y[t*ys + r]. R, T are compile-time constants at each call. */
INLINE void tile_q4_1(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,
                      size_t ys, const int R, const int T) {
    __m256 acc[TILE_R][TILE_T];
    __m128 accm[TILE_R][TILE_T]; /* lane 1 accumulates mw*s */
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps(), accm[r][t] = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i xv[TILE_T];
        __m128 sx[TILE_T];
        for (int t = 0; t < T; t++) {
            const blk_q8_1 *xb = (const blk_q8_1 *)(x + t * xs) + i;
            xv[t] = _mm256_loadu_si256((const __m256i *)xb->qs);
            sx[t] = h2f2(&xb->d);
        }
        for (int r = 0; r < R; r++) {
            const blk_q4_1 *wb = (const blk_q4_1 *)(w + r * ws) + i;
            __m256i q = nib32(wb->qs);
            __m128 sw = h2f2(&wb->d);
            for (int t = 0; t < T; t++) {
                __m128 p = _mm_mul_ps(sw, sx[t]); /* [dw*dx, mw*s] */
                __m256i is = DPBUSD(_mm256_setzero_si256(), q, xv[t]);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_broadcastss_ps(p), acc[r][t]);
                accm[r][t] = _mm_add_ps(accm[r][t], p);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            y[t * ys + r] = hsum8(acc[r][t]) + _mm_cvtss_f32(_mm_movehdup_ps(accm[r][t]));
}

/* ---- Q8_0 x Q8_0 and Q4_0 x Q8_0: y = Σ dw*dx*Σ(q*xq) ---- */

/* Per activation block: the int32 accumulator start -off*Σx (for weights stored as unsigned = q + off). */
INLINE __m256i neg_offset_sum(__m256i xv, int off) {
    return _mm256_sub_epi32(_mm256_setzero_si256(),
                            DPBUSD(_mm256_setzero_si256(), _mm256_set1_epi8((char)off), xv));
}

/* kind 0: Q8_0 weights, kind 1: Q4_0 weights. */
INLINE void tile_q8_0(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,
                      size_t ys, const int R, const int T, const int kind) {
    __m256 acc[TILE_R][TILE_T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    const int use_offset = kind == 1 || HAVE_VNNI;
    for (int64_t i = 0; i < nb; i++) {
        __m256i xv[TILE_T], base[TILE_T];
        __m128 sx[TILE_T];
        for (int t = 0; t < T; t++) {
            const blk_q8_0 *xb = (const blk_q8_0 *)(x + t * xs) + i;
            xv[t] = _mm256_loadu_si256((const __m256i *)xb->qs);
            sx[t] = h2f1(&xb->d);
            base[t] = use_offset ? neg_offset_sum(xv[t], kind == 1 ? 8 : 128) : _mm256_setzero_si256();
        }
        for (int r = 0; r < R; r++) {
            __m256i q;
            __m128 sw;
            if (kind == 1) {
                const blk_q4_0 *wb = (const blk_q4_0 *)(w + r * ws) + i;
                q = nib32(wb->qs);
                sw = h2f1(&wb->d);
            } else {
                const blk_q8_0 *wb = (const blk_q8_0 *)(w + r * ws) + i;
                q = _mm256_loadu_si256((const __m256i *)wb->qs);
                sw = h2f1(&wb->d);
                if (use_offset) q = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)); /* q + 128, unsigned */
            }
            for (int t = 0; t < T; t++) {
                __m256i is;
                if (use_offset)
                    is = DPBUSD(base[t], q, xv[t]);
                else
                    is = DPBUSD(_mm256_setzero_si256(), _mm256_sign_epi8(q, q), _mm256_sign_epi8(xv[t], q));
                __m128 p = _mm_mul_ss(sw, sx[t]);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_broadcastss_ps(p), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ys + r] = hsum8(acc[r][t]);
}

/* Specializations: the kernels above with constant R x T (so the accumulators live in registers). */
#define DEF_TILES(NAME, CALL)                                                                                \
    static void NAME##_RT(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,    \
                          size_t ys) {                                                                       \
        CALL(TILE_R, TILE_T);                                                                                \
    }                                                                                                        \
    static void NAME##_R1(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,    \
                          size_t ys) {                                                                       \
        CALL(TILE_R, 1);                                                                                     \
    }                                                                                                        \
    static void NAME##_1T(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,    \
                          size_t ys) {                                                                       \
        CALL(1, TILE_T);                                                                                     \
    }                                                                                                        \
    static void NAME##_11(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,    \
                          size_t ys) {                                                                       \
        CALL(1, 1);                                                                                          \
    }                                                                                                        \
    static const tile_fn NAME##_fns[4] = {NAME##_11, NAME##_1T, NAME##_R1, NAME##_RT};

typedef void (*tile_fn)(const uint8_t *w, size_t ws, const uint8_t *x, size_t xs, int64_t nb, float *y,
                        size_t ys);

#define CALL_Q4_1(R, T) tile_q4_1(w, ws, x, xs, nb, y, ys, R, T)
#define CALL_Q8_0(R, T) tile_q8_0(w, ws, x, xs, nb, y, ys, R, T, 0)
#define CALL_Q4_0(R, T) tile_q8_0(w, ws, x, xs, nb, y, ys, R, T, 1)
DEF_TILES(q4_1, CALL_Q4_1)
DEF_TILES(q8_0, CALL_Q8_0)
DEF_TILES(q4_0, CALL_Q4_0)

/* fns[0]: 1x1, [1]: 1xT, [2]: Rx1, [3]: RxT. */
static const tile_fn *tile_fns(uint32_t type) {
    switch (type) {
    case MX_Q4_1:
        return q4_1_fns;
    case MX_Q8_0:
        return q8_0_fns;
    case MX_Q4_0:
        return q4_0_fns;
    default:
        return NULL;
    }
}

static void run_tiles(const tile_fn *fns, const uint8_t *w, size_t ws, int n_rows, const uint8_t *x,
                      size_t xs, int n_tok, int64_t nb, float *y, size_t ys) {
    int t = 0;
    for (; t + TILE_T <= n_tok; t += TILE_T) {
        int r = 0;
        for (; r + TILE_R <= n_rows; r += TILE_R)
            fns[3](w + r * ws, ws, x + t * xs, xs, nb, y + t * ys + r, ys);
        for (; r < n_rows; r++) fns[1](w + r * ws, ws, x + t * xs, xs, nb, y + t * ys + r, ys);
    }
    for (; t < n_tok; t++) {
        int r = 0;
        for (; r + TILE_R <= n_rows; r += TILE_R)
            fns[2](w + r * ws, ws, x + t * xs, xs, nb, y + t * ys + r, ys);
        for (; r < n_rows; r++) fns[0](w + r * ws, ws, x + t * xs, xs, nb, y + t * ys + r, ys);
    }
}

/* ---- Q5_0 x Q8_0, Q5_1 x Q8_1 (single row) ---- */

static float dot_q5_0(const blk_q5_0 *w, const blk_q8_0 *x, int64_t nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q = _mm256_or_si256(nib32(w[i].qs), hbits32(w[i].qh));
        __m256i xv = _mm256_loadu_si256((const __m256i *)x[i].qs);
        __m256i is = DPBUSD(neg_offset_sum(xv, 16), q, xv);
        __m128 p = _mm_mul_ss(h2f1(&w[i].d), h2f1(&x[i].d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_broadcastss_ps(p), acc);
    }
    return hsum8(acc);
}

static float dot_q5_1(const blk_q5_1 *w, const blk_q8_1 *x, int64_t nb) {
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q = _mm256_or_si256(nib32(w[i].qs), hbits32(w[i].qh));
        __m256i is = DPBUSD(_mm256_setzero_si256(), q, _mm256_loadu_si256((const __m256i *)x[i].qs));
        __m128 p = _mm_mul_ps(h2f2(&w[i].d), h2f2(&x[i].d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_broadcastss_ps(p), acc);
        accm = _mm_add_ps(accm, p);
    }
    return hsum8(acc) + _mm_cvtss_f32(_mm_movehdup_ps(accm));
}

/* ---- K types x Q8_K (single row) ---- */

static int kq_min_sum(const uint8_t *scales, const int16_t *bsums, uint8_t *sc) {
    int s = 0;
    for (int j = 0; j < 8; j++) {
        uint8_t m;
        kq_scale_min(j, scales, &sc[j], &m);
        s += m * (bsums[2 * j] + bsums[2 * j + 1]);
    }
    return s;
}

/* Q4_K/Q5_K: isum = Σ_j sc_j Σ q*xq over sub-blocks; q = nibble (| high bit << 4 for Q5_K). */
INLINE float dot_q45_K(const void *wv, const blk_q8_K *x, int64_t nb, const int five) {
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m1 = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *qs, *scales;
        uint16_t dh, dminh;
        __m256i qh = _mm256_setzero_si256();
        if (five) {
            const blk_q5_K *b = (const blk_q5_K *)wv + i;
            qs = b->qs, scales = b->scales, dh = b->d, dminh = b->dmin;
            qh = _mm256_loadu_si256((const __m256i *)b->qh);
        } else {
            const blk_q4_K *b = (const blk_q4_K *)wv + i;
            qs = b->qs, scales = b->scales, dh = b->d, dminh = b->dmin;
        }
        uint8_t sc[8];
        int msum = kq_min_sum(scales, x[i].bsums, sc);
        __m256i isum = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {
                lo = _mm256_or_si256(
                    lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), m1), 4));
                hi = _mm256_or_si256(
                    hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), m1), 4));
            }
            __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(x[i].qs + 64 * c)));
            __m256i p1 =
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x[i].qs + 64 * c + 32)));
            isum = DPWSSD(isum, p0, _mm256_set1_epi16(sc[2 * c]));
            isum = DPWSSD(isum, p1, _mm256_set1_epi16(sc[2 * c + 1]));
        }
        float d = x[i].d * _cvtsh_ss(dh);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
        accm += x[i].d * _cvtsh_ss(dminh) * (float)msum;
    }
    return hsum8(acc) - accm;
}

static float dot_q6_K(const blk_q6_K *w, const blk_q8_K *x, int64_t nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < nb; i++) {
        const blk_q6_K *b = &w[i];
        const int8_t *xq = x[i].qs;
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        /* the -32 offset: Σ_g sc_g * 32 * bsum_g */
        __m256i isum = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x[i].bsums), sc16), 5));
        for (int h = 0; h < 2; h++) {
            __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
            __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                int g = 8 * h + 2 * k;
                __m256i p =
                    _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(xq + 128 * h + 32 * k)));
                __m256i s = _mm256_set_m128i(_mm_set1_epi16(b->scales[g + 1]), _mm_set1_epi16(b->scales[g]));
                isum = DPWSSD(isum, p, s);
            }
        }
        float d = x[i].d * _cvtsh_ss(b->d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    return hsum8(acc);
}

static float dot_q8_K(const blk_q8_K *w, const blk_q8_K *x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        __m256i isum = _mm256_setzero_si256();
        for (int c = 0; c < QK_K / 32; c++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * c));
            __m256i b = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
            isum = DPBUSD(isum, _mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
        }
        sum += w[i].d * x[i].d * (float)hsum8i(isum);
    }
    return sum;
}

/* ---- float weights x F32 activations ---- */

INLINE __m256 load8(uint32_t type, const void *w, int64_t i) {
    if (type == MX_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (type == MX_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE float dot_float(uint32_t type, const void *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load8(type, w, i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load8(type, w, i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load8(type, w, i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load8(type, w, i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load8(type, w, i), _mm256_loadu_ps(x + i), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    const uint16_t *h = w;
    for (; i < n; i++) {
        float wv = type == MX_F32 ? ((const float *)w)[i] : type == MX_F16 ? _cvtsh_ss(h[i]) : 0.0f;
        if (type == MX_BF16) {
            uint32_t bits = (uint32_t)h[i] << 16;
            memcpy(&wv, &bits, 4);
        }
        s += wv * x[i];
    }
    return s;
}

/* ---- 512-bit single-token kernels (AVX512-VNNI): two blocks per register ----
 * Q4_1 x Q8_1 and Q8_0 x Q8_0 for decode GEMVs: each 512-bit dpbusd covers blocks i and i+1. The activation
 * side of a block pair (bytes in the weights' lane order, per-lane scales, Q8_0's offset base) is built once
 * and shared by PAIR_R rows. An odd last block is paired with zeros. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PAIR_R 4 /* rows per pass */

typedef struct {
    __m512i q;    /* activation bytes of the pair, in the weights' lane order */
    __m512 dx;    /* per-lane activation scale */
    __m512i base; /* Q8_0: -128 * (sum of the lane's 4 activation bytes); Q4_1: unused */
    __m128 s;     /* Q4_1: [0, s_i, 0, s_i+1] (the Q8_1 sums) */
} xpair;

INLINE __m256i load32_or_zero(const void *p, int valid) {
    return valid ? _mm256_loadu_si256((const __m256i *)p) : _mm256_setzero_si256();
}
INLINE __m128i load16_or_zero(const void *p, int valid) {
    return valid ? _mm_loadu_si128((const __m128i *)p) : _mm_setzero_si128();
}
INLINE uint32_t load_u32_or_zero(const void *p, int valid) {
    uint32_t u = 0;
    if (valid) memcpy(&u, p, 4);
    return u;
}
INLINE uint16_t load_u16_or_zero(const void *p, int valid) {
    uint16_t u = 0;
    if (valid) memcpy(&u, p, 2);
    return u;
}

/* Q4_1 lane order (128-bit lanes): [lo nibbles of i, lo of i+1, hi of i, hi of i+1]; int32 lanes 0-3 and
 * 8-11 belong to block i, 4-7 and 12-15 to block i+1. */
INLINE xpair xpair_q8_1(const blk_q8_1 *x, int two) {
    xpair p;
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x[0].qs)),
                                   load32_or_zero(x[1].qs, two), 1);
    p.q = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));
    __m128 ds = _mm_cvtph_ps(
        _mm_setr_epi32((int)load_u32_or_zero(&x[0].d, 1), (int)load_u32_or_zero(&x[1].d, two), 0, 0));
    /* ds = [d_i, s_i, d_i+1, s_i+1] */
    p.dx = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2),
                                 _mm512_castps128_ps512(ds));
    p.s = _mm_and_ps(ds, _mm_castsi128_ps(_mm_setr_epi32(0, -1, 0, -1)));
    p.base = _mm512_setzero_si512();
    return p;
}

INLINE void pair_q4_1(const blk_q4_1 *w, int two, const xpair *p, __m512 *acc, __m128 *accm) {
    __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)w[0].qs)),
                                        load16_or_zero(w[1].qs, two), 1);
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
    q = _mm512_and_si512(q, _mm512_set1_epi8(0x0F));
    __m128 dm = _mm_cvtph_ps(
        _mm_setr_epi32((int)load_u32_or_zero(&w[0].d, 1), (int)load_u32_or_zero(&w[1].d, two), 0, 0));
    /* dm = [d_i, m_i, d_i+1, m_i+1] */
    __m512 dw = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2),
                                      _mm512_castps128_ps512(dm));
    __m512i is = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, p->q);
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, p->dx), *acc);
    *accm = _mm_fmadd_ps(dm, p->s, *accm);
}

/* Q8_0: natural lane order, int32 lanes 0-7 block i, 8-15 block i+1; weights made unsigned (q + 128). */
INLINE xpair xpair_q8_0(const blk_q8_0 *x, int two) {
    xpair p;
    p.q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x[0].qs)),
                             load32_or_zero(x[1].qs, two), 1);
    __m128 d =
        _mm_cvtph_ps(_mm_setr_epi16((short)x[0].d, (short)load_u16_or_zero(&x[1].d, two), 0, 0, 0, 0, 0, 0));
    p.dx = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_castps128_ps512(d));
    p.base = _mm512_sub_epi32(_mm512_setzero_si512(),
                              _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), p.q));
    p.s = _mm_setzero_ps();
    return p;
}

INLINE void pair_q8_0(const blk_q8_0 *w, int two, const xpair *p, __m512 *acc) {
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)w[0].qs)),
                                   load32_or_zero(w[1].qs, two), 1);
    q = _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80));
    __m128 d =
        _mm_cvtph_ps(_mm_setr_epi16((short)w[0].d, (short)load_u16_or_zero(&w[1].d, two), 0, 0, 0, 0, 0, 0));
    __m512 dw = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                      _mm512_castps128_ps512(d));
    __m512i is = _mm512_dpbusd_epi32(p->base, q, p->q);
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, p->dx), *acc);
}

/* R rows (compile-time) x one token; q4_1 selects the type. */
INLINE void rows_pairs(int q4_1, const uint8_t *w, size_t ws, const void *x, int64_t nb, float *out,
                       const int R) {
    __m512 acc[PAIR_R];
    __m128 accm[PAIR_R];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps(), accm[r] = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i += 2) {
        int two = i + 1 < nb;
        xpair p = q4_1 ? xpair_q8_1((const blk_q8_1 *)x + i, two) : xpair_q8_0((const blk_q8_0 *)x + i, two);
        for (int r = 0; r < R; r++) {
            if (q4_1)
                pair_q4_1((const blk_q4_1 *)(w + r * ws) + i, two, &p, &acc[r], &accm[r]);
            else
                pair_q8_0((const blk_q8_0 *)(w + r * ws) + i, two, &p, &acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        __m128 m = _mm_add_ps(accm[r], _mm_movehl_ps(accm[r], accm[r])); /* lane 1: m_i s_i + m_i+1 s_i+1 */
        out[r] = _mm512_reduce_add_ps(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(m));
    }
}

#define DEF_PAIRS(NAME, Q41)                                                                                 \
    static void NAME(const uint8_t *w, size_t ws, int n_rows, const void *x, int64_t nb, float *out) {       \
        int r = 0;                                                                                           \
        for (; r + PAIR_R <= n_rows; r += PAIR_R) rows_pairs(Q41, w + r * ws, ws, x, nb, out + r, PAIR_R);   \
        for (; r < n_rows; r++) rows_pairs(Q41, w + r * ws, ws, x, nb, out + r, 1);                          \
    }
DEF_PAIRS(pairs_q4_1, 1)
DEF_PAIRS(pairs_q8_0, 0)

/* The pair kernel for a type, or NULL. */
typedef void (*pairs_fn)(const uint8_t *w, size_t ws, int n_rows, const void *x, int64_t nb, float *out);
static pairs_fn pairs_for(uint32_t type) {
    return type == MX_Q4_1 ? pairs_q4_1 : type == MX_Q8_0 ? pairs_q8_0 : NULL;
}
#else
typedef void (*pairs_fn)(const uint8_t *w, size_t ws, int n_rows, const void *x, int64_t nb, float *out);
static pairs_fn pairs_for(uint32_t type) {
    return NULL;
}
#endif

/* ---- entry points ---- */

bool mx_x86_dot(uint32_t type, const void *w, const void *x, int64_t n, float *out) {
    switch (type) {
    case MX_F32:
        *out = dot_float(MX_F32, w, x, n);
        return true;
    case MX_F16:
        *out = dot_float(MX_F16, w, x, n);
        return true;
    case MX_BF16:
        *out = dot_float(MX_BF16, w, x, n);
        return true;
    case MX_Q4_0:
    case MX_Q4_1:
    case MX_Q8_0:
        if (pairs_for(type))
            pairs_for(type)(w, 0, 1, x, n / QK, out);
        else
            tile_fns(type)[0](w, 0, x, 0, n / QK, out, 0);
        return true;
    case MX_Q5_0:
        *out = dot_q5_0(w, x, n / QK);
        return true;
    case MX_Q5_1:
        *out = dot_q5_1(w, x, n / QK);
        return true;
    case MX_Q4_K:
        *out = dot_q45_K(w, x, n / QK_K, 0);
        return true;
    case MX_Q5_K:
        *out = dot_q45_K(w, x, n / QK_K, 1);
        return true;
    case MX_Q6_K:
        *out = dot_q6_K(w, x, n / QK_K);
        return true;
    case MX_Q8_K:
        *out = dot_q8_K(w, x, n / QK_K);
        return true;
    default:
        return false;
    }
}

bool mx_x86_dot_rows(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x, int64_t n,
                     float *out) {
    if (pairs_for(type)) {
        pairs_for(type)(w, w_stride, n_rows, x, n / QK, out);
        return true;
    }
    const tile_fn *fns = tile_fns(type);
    if (fns) {
        run_tiles(fns, w, w_stride, n_rows, x, 0, 1, n / QK, out, 0);
        return true;
    }
    float r0;
    if (!mx_x86_dot(type, w, x, n, &r0)) return false;
    out[0] = r0;
    for (int r = 1; r < n_rows; r++)
        mx_x86_dot(type, (const uint8_t *)w + (size_t)r * w_stride, x, n, &out[r]);
    return true;
}

bool mx_x86_gemm_tile(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x,
                      size_t x_stride, int n_tok, int64_t n, float *y, size_t y_stride) {
    const tile_fn *fns = tile_fns(type);
    if (!fns) return false;
    run_tiles(fns, w, w_stride, n_rows, x, x_stride, n_tok, n / QK, y, y_stride);
    return true;
}

/* ---- activation quantization (bit-identical to quant.c's scalar code: same divisions, RNE rounding) ---- */

INLINE __m256 absmax4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, a), _mm256_andnot_ps(sign, b));
    return _mm256_max_ps(m, _mm256_max_ps(_mm256_andnot_ps(sign, c), _mm256_andnot_ps(sign, d)));
}

INLINE float hmax8(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* 32 floats * id -> 32 int8 (round to nearest even), in order. */
INLINE __m256i quant32(const float *x, float id) {
    __m256 s = _mm256_set1_ps(id);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), s));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), s));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), s));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), s));
    __m256i a = _mm256_packs_epi32(i0, i1), b = _mm256_packs_epi32(i2, i3);
    __m256i v = _mm256_packs_epi16(a, b);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

INLINE float amax32(const float *x) {
    return hmax8(absmax4(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16),
                         _mm256_loadu_ps(x + 24)));
}

/* Sum of 32 int8 (exact). */
INLINE int sum_i8(__m256i v) {
    __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), v);
    return hsum8i(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
}

bool mx_x86_quant_act(uint32_t act_type, const float *x, void *dst, int64_t n) {
    if (act_type == MX_Q8_0 || act_type == MX_Q8_1) {
        for (int64_t i = 0; i < n / QK; i++, x += QK) {
            float d = amax32(x) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            __m256i q = quant32(x, id);
            if (act_type == MX_Q8_0) {
                blk_q8_0 *y = (blk_q8_0 *)dst + i;
                y->d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
                _mm256_storeu_si256((__m256i *)y->qs, q);
            } else {
                blk_q8_1 *y = (blk_q8_1 *)dst + i;
                y->d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
                y->s = _cvtss_sh((float)sum_i8(q) * d, _MM_FROUND_TO_NEAREST_INT);
                _mm256_storeu_si256((__m256i *)y->qs, q);
            }
        }
        return true;
    }
    if (act_type == MX_Q8_K) {
        for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
            blk_q8_K *y = (blk_q8_K *)dst + i;
            float amax = 0.0f;
            for (int c = 0; c < QK_K / 32; c++) {
                float a = amax32(x + 32 * c);
                amax = a > amax ? a : amax;
            }
            if (amax == 0.0f) {
                memset(y, 0, sizeof *y);
                continue;
            }
            float iscale = 127.0f / amax;
            for (int c = 0; c < QK_K / 32; c++) {
                __m256i q = quant32(x + 32 * c, iscale); /* |x*iscale| <= 127.00002: no clamping needed */
                _mm256_storeu_si256((__m256i *)(y->qs + 32 * c), q);
                __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q); /* pairs */
                __m256i s = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));   /* quads: 8 int32 */
                /* groups of 16 = lanes 0..3 and 4..7 */
                __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
                lo = _mm_hadd_epi32(lo, hi);
                lo = _mm_hadd_epi32(lo, lo);
                y->bsums[2 * c] = (int16_t)_mm_cvtsi128_si32(lo);
                y->bsums[2 * c + 1] = (int16_t)_mm_extract_epi32(lo, 1);
            }
            y->d = 1.0f / iscale;
        }
        return true;
    }
    return false;
}

/* ---- The exact fp32 paths' shared pieces: Q4_0, Q4_1 and Q8_0 ---- */

static bool f32_type(uint32_t type) {
    return type == MX_Q4_0 || type == MX_Q4_1 || type == MX_Q8_0;
}

static size_t blk_bytes(uint32_t type) {
    return type == MX_Q4_1 ? sizeof(blk_q4_1) : type == MX_Q4_0 ? sizeof(blk_q4_0) : sizeof(blk_q8_0);
}

/* fp16 at p (the block scale d at offset 0 of all three types; Q4_1's min m at offset 2) -> float. */
INLINE float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---- AVX512: the exact fp32 paths (dequantization, fp32-activation GEMV, the prefill GEMM kernel) ---- */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

/* One block of Q4_0/Q4_1/Q8_0 -> its unscaled values as floats: elements 0..15 in *lo, 16..31 in *hi
 * (q for Q4_1 and Q8_0, q - 8 for Q4_0). */
INLINE void blk_vals(uint32_t type, const uint8_t *blk, __m512 *lo, __m512 *hi) {
    if (type == MX_Q8_0) {
        const int8_t *qs = ((const blk_q8_0 *)blk)->qs;
        *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
        *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
        return;
    }
    const uint8_t *qs = type == MX_Q4_1 ? ((const blk_q4_1 *)blk)->qs : ((const blk_q4_0 *)blk)->qs;
    __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i l = _mm512_and_si512(b, _mm512_set1_epi32(0xF)), h = _mm512_srli_epi32(b, 4);
    if (type == MX_Q4_0) {
        l = _mm512_sub_epi32(l, _mm512_set1_epi32(8));
        h = _mm512_sub_epi32(h, _mm512_set1_epi32(8));
    }
    *lo = _mm512_cvtepi32_ps(l);
    *hi = _mm512_cvtepi32_ps(h);
}

/* Bit-identical to quant.c's scalar dequantization: d * q (+ m), a multiply then an add, no FMA. */
INLINE void dequant_f32(uint32_t type, const uint8_t *src, float *dst, int64_t nb) {
    const size_t bb = blk_bytes(type);
    for (int64_t i = 0; i < nb; i++, src += bb, dst += QK) {
        __m512 lo, hi, d = _mm512_set1_ps(half_at(src));
        blk_vals(type, src, &lo, &hi);
        lo = _mm512_mul_ps(d, lo);
        hi = _mm512_mul_ps(d, hi);
        if (type == MX_Q4_1) {
            __m512 m = _mm512_set1_ps(half_at(src + 2));
            lo = _mm512_add_ps(lo, m);
            hi = _mm512_add_ps(hi, m);
        }
        _mm512_storeu_ps(dst, lo);
        _mm512_storeu_ps(dst + 16, hi);
    }
}

/* R rows (a compile-time constant at each call) x fp32 x: out[r] = Σ_blocks d (Σ q x) + m Σ x. */
#define GEMV_R 4
INLINE void gemv_f32(uint32_t type, const uint8_t *w, size_t ws, const float *x, int64_t nb, float *out,
                     const int R) {
    const size_t bb = blk_bytes(type);
    __m512 acc[GEMV_R], accm[GEMV_R];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps(), accm[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m512 x0 = _mm512_loadu_ps(x + QK * i), x1 = _mm512_loadu_ps(x + QK * i + 16);
        __m512 xs = _mm512_add_ps(x0, x1);
        for (int r = 0; r < R; r++) {
            const uint8_t *b = w + r * ws + (size_t)i * bb;
            __m512 lo, hi;
            blk_vals(type, b, &lo, &hi);
            __m512 t = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(half_at(b)), t, acc[r]);
            if (type == MX_Q4_1) accm[r] = _mm512_fmadd_ps(_mm512_set1_ps(half_at(b + 2)), xs, accm[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], accm[r]));
}

#define DEF_GEMV(NAME, TYPE)                                                                                 \
    static void NAME(const uint8_t *w, size_t ws, int n_rows, const float *x, int64_t nb, float *out) {      \
        int r = 0;                                                                                           \
        for (; r + GEMV_R <= n_rows; r += GEMV_R) gemv_f32(TYPE, w + r * ws, ws, x, nb, out + r, GEMV_R);    \
        for (; r < n_rows; r++) gemv_f32(TYPE, w + r * ws, ws, x, nb, out + r, 1);                           \
    }
DEF_GEMV(gemv_q4_0, MX_Q4_0)
DEF_GEMV(gemv_q4_1, MX_Q4_1)
DEF_GEMV(gemv_q8_0, MX_Q8_0)

/* The prefill kernel: R rows (<= GEMM_R) x MX_GEMM_TOK tokens of one packed group, accumulators in registers
 * (GEMM_R x 4 zmm); per k, 4 loads of packed tokens and R broadcasts of weights feed 4R FMAs. The sum over k
 * runs in chunks of GEMM_KC added into a partial-sum tile (short fp32 chains: the same accuracy as the decode
 * GEMV's lane sums, so prefill and decode agree to ~1e-6). Results are scattered to y[t * ys + r] for the
 * group's nt valid tokens. */
#define GEMM_R  6
#define GEMM_V  (MX_GEMM_TOK / 16)
#define GEMM_KC 64
INLINE void gemm_group(const float *w, int64_t n, const float *xp, int nt, float *y, size_t ys, const int R) {
    __m512 part[GEMM_R][GEMM_V];
    const float *wr[GEMM_R];
    for (int r = 0; r < R; r++) {
        wr[r] = w + (size_t)r * (size_t)n;
        for (int j = 0; j < GEMM_V; j++) part[r][j] = _mm512_setzero_ps();
    }
    for (int64_t k0 = 0; k0 < n; k0 += GEMM_KC) {
        int64_t k1 = n - k0 < GEMM_KC ? n : k0 + GEMM_KC;
        __m512 acc[GEMM_R][GEMM_V];
        for (int r = 0; r < R; r++)
            for (int j = 0; j < GEMM_V; j++) acc[r][j] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; k++) {
            const float *xk = xp + k * MX_GEMM_TOK;
            __m512 xv[GEMM_V];
            for (int j = 0; j < GEMM_V; j++) xv[j] = _mm512_load_ps(xk + 16 * j);
            for (int r = 0; r < R; r++) {
                __m512 b = _mm512_set1_ps(wr[r][k]);
                for (int j = 0; j < GEMM_V; j++) acc[r][j] = _mm512_fmadd_ps(b, xv[j], acc[r][j]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int j = 0; j < GEMM_V; j++) part[r][j] = _mm512_add_ps(part[r][j], acc[r][j]);
    }
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)ys));
    for (int j = 0; j < GEMM_V && 16 * j < nt; j++) {
        int left = nt - 16 * j;
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int r = 0; r < R; r++)
            _mm512_mask_i32scatter_ps(y + (size_t)16 * j * ys + r, m, idx, part[r][j], 4);
    }
}

typedef void (*gemm_fn)(const float *w, int64_t n, const float *xp, int nt, float *y, size_t ys);
#define DEF_GEMM(R)                                                                                          \
    static void gemm_r##R(const float *w, int64_t n, const float *xp, int nt, float *y, size_t ys) {         \
        gemm_group(w, n, xp, nt, y, ys, R);                                                                  \
    }
DEF_GEMM(1)
DEF_GEMM(2)
DEF_GEMM(3)
DEF_GEMM(4)
DEF_GEMM(5)
DEF_GEMM(6)
static const gemm_fn gemm_fns[GEMM_R + 1] = {NULL, gemm_r1, gemm_r2, gemm_r3, gemm_r4, gemm_r5, gemm_r6};

bool mx_x86_has_gemm_packed(void) {
    return true;
}

bool mx_x86_gemm_packed(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                        size_t y_stride) {
    if ((uintptr_t)xp % 64) return false;
    for (int g = 0; g * MX_GEMM_TOK < n_tok; g++) {
        const float *xg = xp + (size_t)g * (size_t)n * MX_GEMM_TOK;
        int nt = n_tok - g * MX_GEMM_TOK < MX_GEMM_TOK ? n_tok - g * MX_GEMM_TOK : MX_GEMM_TOK;
        float *yg = y + (size_t)g * MX_GEMM_TOK * y_stride;
        for (int r = 0; r < n_rows; r += GEMM_R) {
            int nr = n_rows - r < GEMM_R ? n_rows - r : GEMM_R;
            gemm_fns[nr](w + (size_t)r * (size_t)n, n, xg, nt, yg + r, y_stride);
        }
    }
    return true;
}

bool mx_x86_dequant(uint32_t type, const void *src, float *dst, int64_t n) {
    if (!f32_type(type)) return false;
    dequant_f32(type, src, dst, n / QK);
    return true;
}

#else /* AVX2 without AVX512: the exact GEMV and dequantization in 8 lanes; prefill uses OpenBLAS */

/* One block of Q4_0/Q4_1/Q8_0 -> its 32 unscaled values as floats, elements 8j..8j+7 in v[j] (q for Q4_1
 * and Q8_0, q - 8 for Q4_0). */
INLINE void blk_vals8(uint32_t type, const uint8_t *blk, __m256 v[4]) {
    if (type == MX_Q8_0) {
        const int8_t *qs = ((const blk_q8_0 *)blk)->qs;
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * j))));
        return;
    }
    const uint8_t *qs = type == MX_Q4_1 ? ((const blk_q4_1 *)blk)->qs : ((const blk_q4_0 *)blk)->qs;
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    if (type == MX_Q4_0) {
        lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
        hi = _mm_sub_epi8(hi, _mm_set1_epi8(8)); /* signed now: sign-extend below */
    }
    __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int j = 0; j < 4; j++)
        v[j] = _mm256_cvtepi32_ps(type == MX_Q4_0 ? _mm256_cvtepi8_epi32(part[j])
                                                  : _mm256_cvtepu8_epi32(part[j]));
}

/* Bit-identical to quant.c's scalar dequantization: d * q (+ m), a multiply then an add, no FMA. */
INLINE void dequant_f32(uint32_t type, const uint8_t *src, float *dst, int64_t nb) {
    const size_t bb = blk_bytes(type);
    for (int64_t i = 0; i < nb; i++, src += bb, dst += QK) {
        __m256 v[4], d = _mm256_set1_ps(half_at(src));
        blk_vals8(type, src, v);
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_mul_ps(d, v[j]);
            if (type == MX_Q4_1) v[j] = _mm256_add_ps(v[j], _mm256_set1_ps(half_at(src + 2)));
            _mm256_storeu_ps(dst + 8 * j, v[j]);
        }
    }
}

/* R rows (a compile-time constant at each call) x fp32 x: out[r] = Σ_blocks d (Σ q x) + m Σ x. The block's
 * x is loaded once for the R rows; 16 ymm registers hold x (4), Σx, R accumulators (and R for Q4_1's m). */
#define GEMV8_R 4
INLINE void gemv8_f32(uint32_t type, const uint8_t *w, size_t ws, const float *x, int64_t nb, float *out,
                      const int R) {
    const size_t bb = blk_bytes(type);
    __m256 acc[GEMV8_R], accm[GEMV8_R];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps(), accm[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + QK * i;
        __m256 xv[4] = {_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8), _mm256_loadu_ps(xb + 16),
                        _mm256_loadu_ps(xb + 24)};
        __m256 xs = _mm256_add_ps(_mm256_add_ps(xv[0], xv[1]), _mm256_add_ps(xv[2], xv[3]));
        for (int r = 0; r < R; r++) {
            const uint8_t *b = w + r * ws + (size_t)i * bb;
            __m256 v[4];
            blk_vals8(type, b, v);
            __m256 t = _mm256_fmadd_ps(v[1], xv[1], _mm256_mul_ps(v[0], xv[0]));
            t = _mm256_fmadd_ps(v[2], xv[2], t);
            t = _mm256_fmadd_ps(v[3], xv[3], t);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(half_at(b)), t, acc[r]);
            if (type == MX_Q4_1) accm[r] = _mm256_fmadd_ps(_mm256_set1_ps(half_at(b + 2)), xs, accm[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(acc[r], accm[r]));
}

#define DEF_GEMV8(NAME, TYPE, R)                                                                             \
    static void NAME(const uint8_t *w, size_t ws, int n_rows, const float *x, int64_t nb, float *out) {      \
        int r = 0;                                                                                           \
        for (; r + (R) <= n_rows; r += (R)) gemv8_f32(TYPE, w + r * ws, ws, x, nb, out + r, (R));            \
        for (; r < n_rows; r++) gemv8_f32(TYPE, w + r * ws, ws, x, nb, out + r, 1);                          \
    }
DEF_GEMV8(gemv_q4_0, MX_Q4_0, GEMV8_R)
DEF_GEMV8(gemv_q4_1, MX_Q4_1, 2) /* its m accumulators: 2 rows fit the 16 registers */
DEF_GEMV8(gemv_q8_0, MX_Q8_0, GEMV8_R)

bool mx_x86_has_gemm_packed(void) {
    return false;
}
bool mx_x86_gemm_packed(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                        size_t y_stride) {
    return false;
}
bool mx_x86_dequant(uint32_t type, const void *src, float *dst, int64_t n) {
    if (!f32_type(type)) return false;
    dequant_f32(type, src, dst, n / QK);
    return true;
}

#endif

/* Both sections above define gemv_q4_0, gemv_q4_1 and gemv_q8_0 (rows x fp32 x). */
bool mx_x86_dot_rows_f32(uint32_t type, const void *w, size_t w_stride, int n_rows, const float *x, int64_t n,
                         float *out) {
    switch (type) {
    case MX_Q4_0:
        gemv_q4_0(w, w_stride, n_rows, x, n / QK, out);
        return true;
    case MX_Q4_1:
        gemv_q4_1(w, w_stride, n_rows, x, n / QK, out);
        return true;
    case MX_Q8_0:
        gemv_q8_0(w, w_stride, n_rows, x, n / QK, out);
        return true;
    default:
        return false;
    }
}

#else /* no AVX2: the scalar code in quant.c does everything */

bool mx_x86_dot_rows_f32(uint32_t type, const void *w, size_t w_stride, int n_rows, const float *x, int64_t n,
                         float *out) {
    return false;
}
bool mx_x86_has_gemm_packed(void) {
    return false;
}
bool mx_x86_gemm_packed(const float *w, int n_rows, int64_t n, const float *xp, int n_tok, float *y,
                        size_t y_stride) {
    return false;
}

bool mx_x86_dot(uint32_t type, const void *w, const void *x, int64_t n, float *out) {
    return false;
}
bool mx_x86_dot_rows(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x, int64_t n,
                     float *out) {
    return false;
}
bool mx_x86_gemm_tile(uint32_t type, const void *w, size_t w_stride, int n_rows, const void *x,
                      size_t x_stride, int n_tok, int64_t n, float *y, size_t y_stride) {
    return false;
}
bool mx_x86_quant_act(uint32_t act_type, const float *x, void *dst, int64_t n) {
    return false;
}
bool mx_x86_dequant(uint32_t type, const void *src, float *dst, int64_t n) {
    return false;
}

#endif
