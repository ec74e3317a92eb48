/* cpu_xattn.c: XAttention on the CPU (attention/xattn.h defines it; backend.h: xattn_select, and the
 * attention op's block list): anti-diagonal scoring of S×S tiles, a softmax per query tile, block masses,
 * the threshold selection, and exact softmax attention restricted to the kept key blocks.
 *
 * Shapes: q (T, H*D) rows at positions q_pos0 .. q_pos0+T-1; k a store of fp32 rows (k_stride floats), the
 * key of position p in slot p % n_slots; tiles of S positions, blocks of B positions (B % S == 0). Per head:
 * tile scores (n_qt, n_kt), block masses (n_qb, n_kb). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

static inline float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The anti-diagonal sum of tile (a, b) for head h: Σ_t q[aS+S-1-t] · k[bS+t] over the rows present (query
 * rows of this call, keys in [kv_lo, kv_hi]). */
static float antidiag(const mx_attn_spec *sp, const float *q, const float *k, int h, int S, int a, int b) {
    int D = sp->head_dim, g = h / (sp->n_head / sp->n_kv_head);
    float s = 0.0f;
    for (int t = 0; t < S; t++) {
        int qp = a * S + S - 1 - t, kp = b * S + t;
        if (qp < sp->q_pos0 || qp >= sp->q_pos0 + sp->n_q || kp < sp->kv_lo || kp > sp->kv_hi) continue;
        const float *qr = q + (size_t)(qp - sp->q_pos0) * sp->q_stride + (size_t)h * D;
        const float *kr = k + (size_t)(kp % sp->n_slots) * sp->k_stride + (size_t)g * D;
        s += dot(qr, kr, D);
    }
    return s;
}

/* The last key tile query tile a may see (causal at tile granularity). */
static int last_key_tile(const mx_attn_spec *sp, int S, int a) {
    int last = sp->kv_hi / S;
    return sp->causal && a < last ? a : last;
}

/* Block masses of head h into mass (n_qb, n_kb), zeroed first: for every query tile a of the call, the
 * softmax over its visible key tiles of antidiag · scale / S, summed into (block of a, block of b).
 * row: scratch of n_kt floats. */
static void head_masses(const mx_attn_spec *sp, const float *q, const float *k, int h, int S, int B, int n_kb,
                        float *row, float *mass) {
    int qt0 = sp->q_pos0 / S, qt1 = (sp->q_pos0 + sp->n_q - 1) / S, qb0 = sp->q_pos0 / B;
    int kt0 = sp->kv_lo / S;
    int n_qb = (sp->q_pos0 + sp->n_q - 1) / B - qb0 + 1;
    memset(mass, 0, sizeof(float) * (size_t)n_qb * n_kb);
    float sc = sp->scale / (float)S;
    for (int a = qt0; a <= qt1; a++) {
        int kt1 = last_key_tile(sp, S, a);
        if (kt1 < kt0) continue;
        float mx = -INFINITY;
        for (int b = kt0; b <= kt1; b++) {
            row[b] = antidiag(sp, q, k, h, S, a, b) * sc;
            if (row[b] > mx) mx = row[b];
        }
        double sum = 0;
        for (int b = kt0; b <= kt1; b++) sum += exp((double)row[b] - mx);
        float *m = mass + (size_t)((a * S) / B - qb0) * n_kb;
        for (int b = kt0; b <= kt1; b++) m[(b * S) / B] += (float)(exp((double)row[b] - mx) / sum);
    }
}

/* Selection for one (head, query block i) row of masses m[n_kb]: keep the sink (first key block) and the
 * diagonal, then the others by descending mass (ties: lower block first) while the kept mass is below
 * tau × the row total; tau >= 1 keeps every visible block. Writes the kept blocks ascending into idx and
 * returns their count. order: scratch of n_kb ints. */
static int select_row(const mx_attn_spec *sp, int B, int i, const float *m, float tau, int *order, int *idx) {
    int j0 = sp->kv_lo / B, j1 = sp->kv_hi / B;
    if (sp->causal && i < j1) j1 = i;
    if (j1 < j0) return 0;
    int n = 0;
    if (tau >= 1.0f) {
        for (int j = j0; j <= j1; j++) idx[n++] = j;
        return n;
    }
    double total = 0;
    for (int j = j0; j <= j1; j++) total += m[j];
    double kept = m[j0] + (j1 != j0 ? m[j1] : 0.0f);
    int n_rest = 0;
    for (int j = j0 + 1; j < j1; j++) { /* insertion sort by (mass desc, j asc) */
        int p = n_rest++;
        while (p > 0 && m[order[p - 1]] < m[j]) {
            order[p] = order[p - 1];
            p--;
        }
        order[p] = j;
    }
    int n_keep = 0;
    while (n_keep < n_rest && kept < (double)tau * total) kept += m[order[n_keep++]];
    for (int r = 1; r < n_keep; r++) /* the kept middle blocks in index order */
        for (int p = r; p > 0 && order[p - 1] > order[p]; p--) {
            int x = order[p];
            order[p] = order[p - 1], order[p - 1] = x;
        }
    idx[n++] = j0;
    for (int r = 0; r < n_keep; r++) idx[n++] = order[r];
    if (j1 != j0) idx[n++] = j1;
    return n;
}

long mx_cpu_xattn_select(mx_backend *be, const mx_attn_spec *sp, const float *q, const void *kv_k, int S,
                         float tau, mx_attn_blocks *bl, int *off, int *idx, float *mass) {
    (void)be;
    const float *k = kv_k;
    int B = bl->block, H = sp->n_head;
    int qb0 = sp->q_pos0 / B, n_qb = (sp->q_pos0 + sp->n_q - 1) / B - qb0 + 1;
    int n_kb = sp->kv_hi / B + 1, n_kt = sp->kv_hi / S + 1;
    int *counts = malloc(sizeof(int) * (size_t)H * n_qb);
    if (!counts) return -1;
    long kept = 0;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : kept, failed)
    for (int h = 0; h < H; h++) {
        float *row = malloc(sizeof(float) * (size_t)n_kt);
        float *hm = malloc(sizeof(float) * (size_t)n_qb * n_kb);
        int *order = malloc(sizeof(int) * (size_t)n_kb);
        if (row && hm && order) {
            head_masses(sp, q, k, h, S, B, n_kb, row, hm);
            for (int i = 0; i < n_qb; i++) {
                int *dst = idx + ((size_t)h * n_qb + i) * n_kb;
                counts[h * n_qb + i] = select_row(sp, B, qb0 + i, hm + (size_t)i * n_kb, tau, order, dst);
                kept += counts[h * n_qb + i];
            }
            if (mass) memcpy(mass + (size_t)h * n_qb * n_kb, hm, sizeof(float) * (size_t)n_qb * n_kb);
        } else {
            failed++;
        }
        free(row), free(hm), free(order);
    }
    if (failed) {
        free(counts);
        return -1;
    }
    /* compact: the rows of n_kb become consecutive lists; off[r] = start of row r */
    off[0] = 0;
    for (int r = 0; r < H * n_qb; r++) {
        memmove(idx + off[r], idx + (size_t)r * n_kb, sizeof(int) * (size_t)counts[r]);
        off[r + 1] = off[r] + counts[r];
    }
    free(counts);
    bl->qb0 = qb0;
    bl->n_qb = n_qb;
    bl->off = off;
    bl->idx = idx;
    return kept;
}

/* Exact attention restricted to the kept blocks (backend.h: mx_attn_spec.blocks). Two passes per row, as
 * cpu_attention.c: scores then max-subtracted exponentials, fp32 with the sum in double. */
void mx_cpu_attention_blocks(mx_backend *be, const mx_attn_spec *sp, const float *q, const void *kv_k,
                             const void *kv_v, float *out, float *lse) {
    (void)be;
    const float *k = kv_k, *v = kv_v;
    const mx_attn_blocks *bl = sp->blocks;
    int H = sp->n_head, group = sp->n_head / sp->n_kv_head, D = sp->head_dim, Dv = sp->v_dim, B = bl->block;
    int span = sp->kv_hi - sp->kv_lo + 1;
    if (span < 1) span = 1;
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (size_t)span);
        int *pos = malloc(sizeof(int) * (size_t)span);
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int t = 0; t < sp->n_q; t++) {
            for (int h = 0; h < H; h++) {
                int qpos = sp->q_pos0 + t;
                int hi = sp->causal && qpos < sp->kv_hi ? qpos : sp->kv_hi, lo = sp->kv_lo;
                if (sp->window > 0 && qpos - sp->window + 1 > lo) lo = qpos - sp->window + 1;
                const float *qr = q + (size_t)t * sp->q_stride + (size_t)h * D;
                float *o = out + (size_t)t * sp->o_stride + (size_t)h * Dv;
                int kvh = h / group, r = h * bl->n_qb + qpos / B - bl->qb0, n = 0;
                for (int i = 0; i < Dv; i++) o[i] = 0.0f;
                float mx = -INFINITY;
                for (int e = bl->off[r]; scores && pos && e < bl->off[r + 1]; e++) {
                    int a = bl->idx[e] * B, z = a + B - 1;
                    for (int p = a > lo ? a : lo; p <= (z < hi ? z : hi); p++) {
                        const float *kr = k + (size_t)(p % sp->n_slots) * sp->k_stride + (size_t)kvh * D;
                        float s = dot(qr, kr, D) * sp->scale;
                        scores[n] = s, pos[n++] = p;
                        if (s > mx) mx = s;
                    }
                }
                if (n == 0) {
                    if (lse) lse[(size_t)t * H + h] = -INFINITY;
                    continue;
                }
                double sum = 0;
                for (int i = 0; i < n; i++) {
                    float e = expf(scores[i] - mx);
                    scores[i] = e;
                    sum += e;
                }
                float inv = (float)(1.0 / sum);
                for (int i = 0; i < n; i++) {
                    const float *vr = v + (size_t)(pos[i] % sp->n_slots) * sp->v_stride + (size_t)kvh * Dv;
                    float w = scores[i] * inv;
#pragma omp simd
                    for (int c = 0; c < Dv; c++) o[c] += w * vr[c];
                }
                if (lse) lse[(size_t)t * H + h] = mx + (float)log(sum);
            }
        }
        free(scores);
        free(pos);
    }
}
