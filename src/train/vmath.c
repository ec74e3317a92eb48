/* vmath.c: the vectorized row helpers of vmath.h. Each AVX-512 loop handles 16 floats at a time and its tail
 * with a mask, so no scalar epilogue; the scalar twins serve builds without AVX-512. */
#include "vmath.h"

#include <math.h>

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp(x) for 16 lanes: n = round(x log2 e), r = x - n ln2 (ln2 in two parts), e^r by Horner, times 2^n. */
static inline __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
    __mmask16 zero = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~zero, p, n);
}

static inline __mmask16 tail(long left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

float mx_vmax(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, tail(n - i), x + i));
    return _mm512_reduce_max_ps(m);
}

double mx_vexp_sum(float *p, const float *x, float shift, int n) {
    __m512 s = _mm512_setzero_ps(), sh = _mm512_set1_ps(shift);
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), sh));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(p + i, k, e);
        s = _mm512_add_ps(s, e);
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, s);
    double sum = 0;
    for (int i = 0; i < 16; i++) sum += lanes[i];
    return sum;
}

void mx_vscale(float *x, float s, int n) {
    __m512 v = _mm512_set1_ps(s);
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), v));
    }
}

/* sigmoid(2 z(u)), z = sqrt(2/pi) (u + 0.044715 u³) */
static inline __m512 gelu_sig(__m512 u) {
    __m512 u3 = _mm512_mul_ps(_mm512_mul_ps(u, u), u);
    __m512 z2 = _mm512_mul_ps(_mm512_set1_ps(-2.0f * 0.7978845608028654f),
                              _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), u3, u));
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(z2)));
}

void mx_vgelu_fwd(float *out, const float *x, long n) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);
        __m512 u = _mm512_maskz_loadu_ps(k, x + i);
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(u, gelu_sig(u)));
    }
}

void mx_vgelu_bwd(float *dx, const float *dout, const float *x, long n) {
    const __m512 one = _mm512_set1_ps(1.0f), kk = _mm512_set1_ps(2.0f * 0.7978845608028654f),
                 c3 = _mm512_set1_ps(3.0f * 0.044715f);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i += 16) {
        __mmask16 k = tail(n - i);
        __m512 u = _mm512_maskz_loadu_ps(k, x + i), s = gelu_sig(u);
        /* d/du [u σ(2z)] = σ + u · 2σ(1-σ) · sqrt(2/pi) (1 + 3 · 0.044715 u²) */
        __m512 dz = _mm512_mul_ps(kk, _mm512_fmadd_ps(c3, _mm512_mul_ps(u, u), one));
        __m512 g = _mm512_fmadd_ps(_mm512_mul_ps(u, _mm512_mul_ps(s, _mm512_sub_ps(one, s))), dz, s);
        _mm512_mask_storeu_ps(dx + i, k, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(k, dout + i)));
    }
}

#else

float mx_vmax(const float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

double mx_vexp_sum(float *p, const float *x, float shift, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (p[i] = expf(x[i] - shift));
    return s;
}

void mx_vscale(float *x, float s, int n) {
    for (int i = 0; i < n; i++) x[i] *= s;
}

void mx_vgelu_fwd(float *out, const float *x, long n) {
    const float k = 0.7978845608028654f;
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        float u = x[i];
        out[i] = 0.5f * u * (1.0f + tanhf(k * (u + 0.044715f * u * u * u)));
    }
}

void mx_vgelu_bwd(float *dx, const float *dout, const float *x, long n) {
    const float k = 0.7978845608028654f;
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        float u = x[i], th = tanhf(k * (u + 0.044715f * u * u * u));
        float dudx = k * (1.0f + 3.0f * 0.044715f * u * u);
        dx[i] = dout[i] * (0.5f * (1.0f + th) + 0.5f * u * (1.0f - th * th) * dudx);
    }
}

#endif
