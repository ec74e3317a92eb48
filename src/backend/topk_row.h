/* topk_row.h: MoE's top-k choice of one row, shared by the CPU's and the CUDA backend's training ops (one
 * definition compiled for the host and, under nvcc, for the device, so both choose the same experts).
 * r (E) the row; id, w (k <= E): the j-th choice is the first untaken e with the largest value (strict >: ties
 * keep the lower index), w its value, divided by the sum of the k values (summed in j order) when norm. */
#ifndef MX_TOPK_ROW_H
#define MX_TOPK_ROW_H

#include <stdbool.h>

#ifdef __CUDACC__
#define MX_HOST_DEVICE __host__ __device__
#else
#define MX_HOST_DEVICE
#endif

static inline MX_HOST_DEVICE void mx_topk_row(const float *r, int E, int k, bool norm, int *id, float *w) {
    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++) taken |= id[i] == e;
            if (!taken && (best < 0 || r[e] > r[best])) best = e;
        }
        id[j] = best;
        w[j] = r[best];
        sum += r[best];
    }
    if (norm)
        for (int j = 0; j < k; j++) w[j] /= sum;
}

#endif
