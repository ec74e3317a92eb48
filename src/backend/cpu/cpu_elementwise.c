/* cpu_elementwise.c: SwiGLU, GELU, residual adds, biases, embedding lookup and KV-store writes. */
#include <math.h>
#include <string.h>

#include "../../io/quant.h"
#include "cpu_ops.h"

void mx_cpu_swiglu(mx_backend *be, float *g, const float *u, int n) {
#pragma omp parallel for simd if (n > 65536)
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void mx_cpu_gelu(mx_backend *be, float *x, int n) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for simd if (n > 65536)
    for (int i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void mx_cpu_add(mx_backend *be, float *y, const float *x, int n) {
#pragma omp parallel for simd if (n > 65536)
    for (int i = 0; i < n; i++) y[i] += x[i];
}

void mx_cpu_add_bias(mx_backend *be, float *y, const mx_tensor *bt, int T, int n) {
    const float *b = bt->data;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

void mx_cpu_embed(mx_backend *be, const mx_tensor *w, const int *ids, int T, float *out) {
    int64_t C = w->ne[0];
    size_t row_bytes = mx_dtype_row_bytes(w->type, C);
    for (int t = 0; t < T; t++)
        mx_dequant_row(w->type, (const char *)w->data + (size_t)ids[t] * row_bytes, out + (size_t)t * C, C);
}

void mx_cpu_kv_write(mx_backend *be, void *kv_store, const float *src, int T, int n, int pos0, int n_slots) {
    float *store = kv_store;
    for (int t = 0; t < T; t++)
        memcpy(store + (size_t)((pos0 + t) % n_slots) * n, src + (size_t)t * n, (size_t)n * sizeof(float));
}
