/* cpu_attention.c: exact softmax attention on the CPU, the reference for every attention kernel.
 * For each query row t and head h: the key positions it may see are [lo, hi] where
 *   hi = min(kv_hi, qpos) when causal (else kv_hi),  lo = max(kv_lo, qpos - window + 1) when windowed;
 * key position p lives in slot p % n_slots. GQA: head h reads KV head h / (n_head / n_kv_head).
 * Two passes per row (scores, then max-subtracted exponentials), accumulated in fp32 with the sum in double;
 * lse = max + log(sum). */
#include <math.h>
#include <stdlib.h>

#include "cpu_ops.h"

static inline float dot_f32(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The slot after `slot` in a ring of n slots (no division per key: a decode step visits every cached key). */
static inline int next_slot(int slot, int n) {
    return slot + 1 == n ? 0 : slot + 1;
}

static void key_range(const mx_attn_spec *sp, int t, int *lo, int *hi) {
    int qpos = sp->q_pos0 + t;
    *hi = sp->causal && qpos < sp->kv_hi ? qpos : sp->kv_hi;
    *lo = sp->kv_lo;
    if (sp->window > 0 && qpos - sp->window + 1 > *lo) *lo = qpos - sp->window + 1;
}

void mx_cpu_attention(mx_backend *be, const mx_attn_spec *sp, const float *q, const void *kv_k,
                      const void *kv_v, float *out, float *lse) {
    if (sp->blocks) { /* XAttention's block-sparse form (cpu_xattn.c) */
        mx_cpu_attention_blocks(be, sp, q, kv_k, kv_v, out, lse);
        return;
    }
    const float *k = kv_k, *v = kv_v; /* the CPU stores fp32 */
    int H = sp->n_head, group = sp->n_head / sp->n_kv_head, D = sp->head_dim, Dv = sp->v_dim;
    int span = sp->kv_hi - sp->kv_lo + 1;
    if (span < 1) span = 1;
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (size_t)span);
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int t = 0; t < sp->n_q; t++) {
            for (int h = 0; h < H; h++) {
                int lo, hi;
                key_range(sp, t, &lo, &hi);
                const float *qr = q + (size_t)t * sp->q_stride + (size_t)h * D;
                float *o = out + (size_t)t * sp->o_stride + (size_t)h * Dv;
                int kvh = h / group;
                for (int i = 0; i < Dv; i++) o[i] = 0.0f;
                if (hi < lo || !scores) {
                    if (lse) lse[(size_t)t * H + h] = -INFINITY;
                    continue;
                }
                int slot0 = lo % sp->n_slots;
                float mx = -INFINITY;
                for (int p = lo, slot = slot0; p <= hi; p++, slot = next_slot(slot, sp->n_slots)) {
                    const float *kr = k + (size_t)slot * sp->k_stride + (size_t)kvh * D;
                    float s = dot_f32(qr, kr, D) * sp->scale;
                    scores[p - lo] = s;
                    if (s > mx) mx = s;
                }
                double sum = 0;
                for (int p = lo; p <= hi; p++) {
                    float e = expf(scores[p - lo] - mx);
                    scores[p - lo] = e;
                    sum += e;
                }
                float inv = (float)(1.0 / sum);
                for (int p = lo, slot = slot0; p <= hi; p++, slot = next_slot(slot, sp->n_slots)) {
                    const float *vr = v + (size_t)slot * sp->v_stride + (size_t)kvh * Dv;
                    float w = scores[p - lo] * inv;
#pragma omp simd
                    for (int i = 0; i < Dv; i++) o[i] += w * vr[i];
                }
                if (lse) lse[(size_t)t * H + h] = mx + (float)log(sum);
            }
        }
        free(scores);
    }
}
