/* attn_train.c: causal attention of CPU training, forward and backward (train_ops.h), as small matrix
 * products per query tile. A tile is ATT_QT query rows [t0, t1) of one head h of batch b; it reads the span
 * of keys [lo, t1) that any of its rows sees (lo > 0 only under a window), so every product is
 * (rows × span × head dim) and runs in mx_tr_sgemm on the calling thread:
 *   forward:  S = scale · Q Kᵀ; P = softmax over each row's keys (zero elsewhere); out = P V; lse per row
 *   backward: P = exp(S - lse) recomputed; dP = dO Vᵀ; dS = P ∘ (dP - rowsum(P ∘ dP)) · scale;
 *             dQ = dS K (overwritten); dK += dSᵀ Q; dV += Pᵀ dO
 * Threads take forward tiles dynamically; in the backward one thread owns a (batch, KV head) pair, the only
 * writer of its dK, dV rows, summing its query heads and tiles in order: deterministic. */
#include <math.h>
#include <stdlib.h>

#include "sgemm.h"
#include "train_ops.h"
#include "vmath.h"

static float *scratch(size_t n) {
    float *p = malloc(sizeof(float) * n);
    if (!p) abort(); /* a few tiles of scores: failing means the machine is out of memory */
    return p;
}

/* The rows [t0, t1) of one query head h of batch b attend to keys [lo, t1) of KV head g (the tile's span). */
typedef struct {
    int b, h, g, t0, t1, lo;
} attn_tile;

/* Query tiles of ATT_QT rows: products of (ATT_QT × span) scores. */
enum { ATT_QT = 64 };

static attn_tile tile_at(const mx_tr_attn_shape *sh, int b, int h, int qt) {
    attn_tile a = {b, h, h / (sh->H / sh->G), qt * ATT_QT, qt * ATT_QT + ATT_QT, 0};
    if (a.t1 > sh->T) a.t1 = sh->T;
    if (sh->window > 0 && a.t0 - sh->window + 1 > 0) a.lo = a.t0 - sh->window + 1;
    return a;
}

/* The keys row t sees: [*s0, *s1) as columns of the tile's span. */
static void row_keys(const mx_tr_attn_shape *sh, const attn_tile *a, int t, int *s0, int *s1) {
    int first = sh->window > 0 && t - sh->window + 1 > 0 ? t - sh->window + 1 : 0;
    *s0 = first - a->lo;
    *s1 = t + 1 - a->lo;
}

/* S (rows, span) = scale · Q_tile · K_spanᵀ */
static void attn_scores(const mx_tr_attn_shape *sh, const attn_tile *a, float *S, const float *q,
                        const float *k) {
    int H = sh->H, G = sh->G, T = sh->T, Dk = sh->Dk, span = a->t1 - a->lo;
    mx_tr_sgemm(false, true, a->t1 - a->t0, span, Dk, sh->scale,
                q + (((size_t)a->b * T + a->t0) * H + a->h) * Dk, H * Dk,
                k + (((size_t)a->b * T + a->lo) * G + a->g) * Dk, G * Dk, 0.0f, S, span);
}

/* One tile: scores, the masked softmax in place (P, zero outside each row's keys), lse, out = P · V. */
static void attn_fwd_tile(const mx_tr_attn_shape *sh, const attn_tile *a, float *S, float *out, float *lse,
                          const float *q, const float *k, const float *v) {
    int H = sh->H, G = sh->G, T = sh->T, Dv = sh->Dv, span = a->t1 - a->lo;
    attn_scores(sh, a, S, q, k);
    for (int t = a->t0; t < a->t1; t++) {
        float *p = S + (size_t)(t - a->t0) * span;
        int s0, s1;
        row_keys(sh, a, t, &s0, &s1);
        float mx = mx_vmax(p + s0, s1 - s0);
        double sum = mx_vexp_sum(p + s0, p + s0, mx, s1 - s0);
        for (int s = 0; s < s0; s++) p[s] = 0.0f;
        for (int s = s1; s < span; s++) p[s] = 0.0f;
        mx_vscale(p + s0, (float)(1.0 / sum), s1 - s0);
        lse[((size_t)a->b * T + t) * H + a->h] = mx + (float)log(sum);
    }
    mx_tr_sgemm(false, false, a->t1 - a->t0, Dv, span, 1.0f, S, span,
                v + (((size_t)a->b * T + a->lo) * G + a->g) * Dv, G * Dv, 0.0f,
                out + (((size_t)a->b * T + a->t0) * H + a->h) * Dv, H * Dv);
}

void mx_tr_attn_fwd(const mx_tr_attn_shape *sh, float *out, float *lse, const float *q, const float *k,
                    const float *v) {
    int n_qt = (sh->T + ATT_QT - 1) / ATT_QT;
#pragma omp parallel
    {
        float *S = scratch((size_t)ATT_QT * sh->T);
#pragma omp for collapse(3) schedule(dynamic)
        for (int b = 0; b < sh->B; b++)
            for (int h = 0; h < sh->H; h++)
                for (int qt = 0; qt < n_qt; qt++) {
                    attn_tile a = tile_at(sh, b, h, qt);
                    attn_fwd_tile(sh, &a, S, out, lse, q, k, v);
                }
        free(S);
    }
}

void mx_tr_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                         int H, int G, int D, int window) {
    mx_tr_attn_shape sh = {B, T, H, G, D, D, window, 1.0f / sqrtf((float)D)};
    mx_tr_attn_fwd(&sh, out, lse, q, k, v);
}

/* The gradients of one tile; S, dP (rows, span) scratch. */
static void attn_bwd_tile(const mx_tr_attn_shape *sh, const attn_tile *a, float *S, float *dP, float *dq,
                          float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *lse) {
    int H = sh->H, G = sh->G, T = sh->T, Dk = sh->Dk, Dv = sh->Dv, rows = a->t1 - a->t0, span = a->t1 - a->lo;
    size_t qrow = ((size_t)a->b * T + a->t0) * H + a->h, krow = ((size_t)a->b * T + a->lo) * G + a->g;
    attn_scores(sh, a, S, q, k);
    mx_tr_sgemm(false, true, rows, span, Dv, 1.0f, dout + qrow * Dv, H * Dv, v + krow * Dv, G * Dv, 0.0f, dP,
                span);
    for (int t = a->t0; t < a->t1; t++) {
        size_t row = ((size_t)a->b * T + t) * H + a->h;
        float *p = S + (size_t)(t - a->t0) * span, *ds = dP + (size_t)(t - a->t0) * span;
        int s0, s1;
        row_keys(sh, a, t, &s0, &s1);
        mx_vexp_sum(p + s0, p + s0, lse[row], s1 - s0);
        /* di = Σ_s P dP, which equals dO · O; formed from the same dP, so that a row of one key gets exactly 0 */
        double di = 0.0;
        for (int s = s0; s < s1; s++) di += (double)p[s] * ds[s];
        for (int s = 0; s < s0; s++) p[s] = ds[s] = 0.0f;
        for (int s = s1; s < span; s++) p[s] = ds[s] = 0.0f;
        for (int s = s0; s < s1; s++) ds[s] = p[s] * (ds[s] - (float)di) * sh->scale;
    }
    mx_tr_sgemm(false, false, rows, Dk, span, 1.0f, dP, span, k + krow * Dk, G * Dk, 0.0f, dq + qrow * Dk,
                H * Dk);
    mx_tr_sgemm(true, false, span, Dk, rows, 1.0f, dP, span, q + qrow * Dk, H * Dk, 1.0f, dk + krow * Dk,
                G * Dk);
    mx_tr_sgemm(true, false, span, Dv, rows, 1.0f, S, span, dout + qrow * Dv, H * Dv, 1.0f, dv + krow * Dv,
                G * Dv);
}

/* out is not read: rowsum(dO ∘ O) is formed as rowsum(P ∘ dP) (equal; see attn_bwd_tile). */
void mx_tr_attn_bwd(const mx_tr_attn_shape *sh, float *dq, float *dk, float *dv, const float *dout,
                    const float *q, const float *k, const float *v, const float *out, const float *lse) {
    int group = sh->H / sh->G, n_qt = (sh->T + ATT_QT - 1) / ATT_QT;
#pragma omp parallel
    {
        float *S = scratch((size_t)ATT_QT * sh->T), *dP = scratch((size_t)ATT_QT * sh->T);
#pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < sh->B; b++)
            for (int g = 0; g < sh->G; g++)
                for (int h = g * group; h < (g + 1) * group; h++)
                    for (int qt = 0; qt < n_qt; qt++) {
                        attn_tile a = tile_at(sh, b, h, qt);
                        attn_bwd_tile(sh, &a, S, dP, dq, dk, dv, dout, q, k, v, lse);
                    }
        free(S);
        free(dP);
    }
}

void mx_tr_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                         const float *v, const float *out, const float *lse, int B, int T, int H, int G,
                         int D, int window) {
    mx_tr_attn_shape sh = {B, T, H, G, D, D, window, 1.0f / sqrtf((float)D)};
    mx_tr_attn_bwd(&sh, dq, dk, dv, dout, q, k, v, out, lse);
}
