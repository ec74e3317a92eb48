/* cpu_rope.c: rotary position embedding, in place on x[T, n_head, head_dim] (first rope_dim dims of each
 * head). Frequencies theta^(-2i/rope_dim) computed in double, as Hugging Face does in fp32 from inv_freq. */
#include <math.h>

#include "cpu_ops.h"

void mx_cpu_rope(mx_backend *be, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                 float theta, mx_rope_mode mode) {
    int half = rope_dim / 2;
#pragma omp parallel for if (T > 4)
    for (int t = 0; t < T; t++) {
        float cs[512], sn[512]; /* rope_dim <= 1024 */
        int pos = pos0 + t;
        for (int i = 0; i < half && i < 512; i++) {
            /* inv_freq is computed in fp32 by HF: 1 / theta^(2i/d) */
            float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / rope_dim));
            float ang = (float)pos * inv_freq;
            cs[i] = cosf(ang);
            sn[i] = sinf(ang);
        }
        for (int h = 0; h < n_head; h++) {
            float *v = x + ((size_t)t * n_head + h) * head_dim;
            for (int i = 0; i < half; i++) {
                int a = mode == MX_ROPE_ADJACENT ? 2 * i : i;
                int b = mode == MX_ROPE_ADJACENT ? 2 * i + 1 : i + half;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * cs[i] - x1 * sn[i];
                v[b] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}
