/* cpu_lse_merge.c: the CPU's lse_merge (backend.h), Star Attention's exact merge of partial attentions.
 * Per query row t and head h over the R parts: m = max_r lse_r, lse = m + log Σ_r exp(lse_r − m) (in double),
 * out = Σ_r w_r · out_r with w_r = exp(lse_r − lse) rounded to fp32 and the sum in fp32, parts in rank order.
 * Shapes: part r's out (T, H, Dv) at outs + r * part_stride, its lse (T, H) at lses + r * part_stride. */
#include <math.h>

#include "cpu_ops.h"

/* One row and head: writes out[0..Dv) and returns the merged lse. */
static float merge_row_head(const float *outs, const float *lses, size_t part_stride, int R, size_t o_off,
                            size_t l_off, int Dv, float *out) {
    float mx = -INFINITY;
    for (int r = 0; r < R; r++) {
        float l = lses[(size_t)r * part_stride + l_off];
        if (l > mx) mx = l;
    }
    for (int i = 0; i < Dv; i++) out[i] = 0.0f;
    if (mx == -INFINITY) return -INFINITY;
    double sum = 0;
    for (int r = 0; r < R; r++) sum += exp((double)lses[(size_t)r * part_stride + l_off] - mx);
    double lse = mx + log(sum);
    for (int r = 0; r < R; r++) {
        float l = lses[(size_t)r * part_stride + l_off];
        if (l == -INFINITY) continue;
        float w = (float)exp((double)l - lse);
        const float *o = outs + (size_t)r * part_stride + o_off;
        for (int i = 0; i < Dv; i++) out[i] += w * o[i];
    }
    return (float)lse;
}

void mx_cpu_lse_merge(mx_backend *be, const float *outs, const float *lses, size_t part_stride, int R, int T,
                      int H, int Dv, float *out, float *lse) {
    (void)be;
#pragma omp parallel for if ((long)T * H * Dv > 65536)
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            size_t l_off = (size_t)t * H + h, o_off = l_off * Dv;
            float l = merge_row_head(outs, lses, part_stride, R, o_off, l_off, Dv, out + o_off);
            if (lse) lse[l_off] = l;
        }
}
