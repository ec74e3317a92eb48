/* vmath.h: vectorized fp32 row helpers of CPU training (vmath.c): exp, max, scale, and the GELU pair,
 * AVX-512 where the build has it, plain loops otherwise. exp is a degree-7 polynomial after the reduction
 * x = n ln2 + r (|r| <= ln2 / 2), scaled by 2^n: within ~2 ulp of expf; arguments below -87.3 give 0. */
#ifndef MX_VMATH_H
#define MX_VMATH_H

/* max of x[0 .. n) (-INFINITY when n == 0). */
float mx_vmax(const float *x, int n);
/* p[i] = exp(x[i] - shift) for i < n (p may alias x); returns Σ p[i], summed in fp32 lanes then in double. */
double mx_vexp_sum(float *p, const float *x, float shift, int n);
/* x[i] *= s for i < n. */
void mx_vscale(float *x, float s, int n);
/* out = gelu(x), tanh approximation written as x · sigmoid(2 sqrt(2/pi) (x + 0.044715 x³)), n elements. */
void mx_vgelu_fwd(float *out, const float *x, long n);
/* dx = gelu'(x) · dout, n elements. */
void mx_vgelu_bwd(float *dx, const float *dout, const float *x, long n);

#endif
