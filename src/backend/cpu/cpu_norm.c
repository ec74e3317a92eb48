/* cpu_norm.c: RMSNorm and LayerNorm over rows of C, accumulated in double for a reference-grade result. */
#include <math.h>

#include "cpu_ops.h"

void mx_cpu_rmsnorm(mx_backend *be, const float *x, const mx_tensor *wt, float *out, int T, int C,
                    float eps) {
    const float *w = wt->data;
#pragma omp parallel for if (T > 4)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *o = out + (size_t)t * C;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int i = 0; i < C; i++) o[i] = xr[i] * r * w[i];
    }
}

void mx_cpu_layernorm(mx_backend *be, const float *x, const mx_tensor *wt, const mx_tensor *bt, float *out,
                      int T, int C, float eps) {
    const float *w = wt->data, *b = bt ? bt->data : NULL;
#pragma omp parallel for if (T > 4)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *o = out + (size_t)t * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++) mean += xr[i];
        mean /= C;
        for (int i = 0; i < C; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= C;
        float r = (float)(1.0 / sqrt(var + eps));
        for (int i = 0; i < C; i++) o[i] = (float)(xr[i] - mean) * r * w[i] + (b ? b[i] : 0.0f);
    }
}
