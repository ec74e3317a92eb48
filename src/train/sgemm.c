/* sgemm.c: the fp32 matrix product of CPU training (sgemm.h), blocked in the usual way (Goto, BLIS):
 *   for each slab of KC rows × NC columns of op(B), packed into panels of NR columns (k-major, kc × NR), and
 *   each block of MC rows of op(A), packed into panels of MR rows (k-major, kc × MR), the MR × NR register
 *   kernel runs over every (A panel, B panel) pair. Packing absorbs the transposes, so one kernel serves
 *   every case (NN, NT, TN). With AVX-512 the kernel keeps its 12 × 32 tile in 24 zmm accumulators: per k,
 *   two loads of B and 12 broadcasts of A feed 24 FMAs; a scalar twin serves builds without AVX-512.
 * Threads: C is cut into one band of rows (or of columns, when C is wider than tall) per thread; each thread
 * packs what its band reads into its own buffers and runs the loops alone, so the only synchronization is
 * the end of the parallel region. A tile of C is always summed in the same order (k ascending in KC slabs):
 * the result does not depend on the thread count. */
#include "sgemm.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

enum {
    MR = 12,          /* rows of the register tile */
    NR = 32,          /* columns of the register tile (two zmm) */
    KC = 256,         /* depth of a packed slab: a B panel (KC × NR, 32 KiB) stays in L1 */
    MC = 96,          /* rows of A packed at once: (MC × KC, 96 KiB) stays in L2 */
    NC = 4096,        /* columns of a packed B slab */
    PAR_MIN = 1 << 18 /* M·N·K below which one thread does it all */
};

typedef struct {
    bool ta, tb;
    int M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gemm_t;

/* A 64-byte aligned buffer per calling thread, grown on demand and kept (training repeats its shapes). */
typedef struct {
    float *p;
    size_t n;
} buf_t;
static _Thread_local buf_t tl_a, tl_b;

static float *grow(buf_t *b, size_t n) {
    if (b->n >= n) return b->p;
    free(b->p);
    b->p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!b->p) abort(); /* tens of MB at most: failing means the machine is out of memory */
    b->n = n;
    return b->p;
}

static int imin(int a, int b) {
    return a < b ? a : b;
}

/* dst (kc, MR) = rows [i0, i0 + MR) of op(A), columns [k0, k0 + kc); rows past M are zeros. */
static void pack_a(const gemm_t *g, int i0, int k0, int kc, float *dst) {
    int mr = imin(MR, g->M - i0);
    if (g->ta) { /* op(A)[i][k] = A[k][i]: MR contiguous values per k */
        for (int k = 0; k < kc; k++) {
            const float *s = g->A + (size_t)(k0 + k) * g->lda + i0;
            float *d = dst + (size_t)k * MR;
            for (int r = 0; r < mr; r++) d[r] = s[r];
            for (int r = mr; r < MR; r++) d[r] = 0.0f;
        }
        return;
    }
    for (int r = 0; r < MR; r++) {
        const float *s = g->A + (size_t)(i0 + r) * g->lda + k0;
        if (r < mr)
            for (int k = 0; k < kc; k++) dst[(size_t)k * MR + r] = s[k];
        else
            for (int k = 0; k < kc; k++) dst[(size_t)k * MR + r] = 0.0f;
    }
}

/* dst (kc, NR) = rows [k0, k0 + kc) of op(B), columns [j0, j0 + NR); columns past N are zeros. */
static void pack_b(const gemm_t *g, int j0, int k0, int kc, float *dst) {
    int nr = imin(NR, g->N - j0);
    if (!g->tb) { /* op(B)[k][j] = B[k][j]: NR contiguous values per k */
        for (int k = 0; k < kc; k++) {
            const float *s = g->B + (size_t)(k0 + k) * g->ldb + j0;
            float *d = dst + (size_t)k * NR;
            memcpy(d, s, sizeof(float) * (size_t)nr);
            for (int c = nr; c < NR; c++) d[c] = 0.0f;
        }
        return;
    }
    for (int c = 0; c < NR; c++) { /* op(B)[k][j] = B[j][k] */
        const float *s = g->B + (size_t)(j0 + c) * g->ldb + k0;
        if (c < nr)
            for (int k = 0; k < kc; k++) dst[(size_t)k * NR + c] = s[k];
        else
            for (int k = 0; k < kc; k++) dst[(size_t)k * NR + c] = 0.0f;
    }
}

#if defined(__AVX512F__)
/* c (MR, NR; row stride ldc) = alpha · a·b + beta · c, a (kc, MR) and b (kc, NR) packed; beta 0 reads no c. */
static void kernel(int kc, const float *a, const float *b, float *c, int ldc, float alpha, float beta) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++, a += MR, b += NR) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        for (int r = 0; r < MR; r++) {
            __m512 av = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int h = 0; h < 2; h++) {
            __m512 v = _mm512_mul_ps(acc[r][h], va);
            if (beta == 1.0f)
                v = _mm512_add_ps(v, _mm512_loadu_ps(cr + 16 * h));
            else if (beta != 0.0f)
                v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr + 16 * h), v);
            _mm512_storeu_ps(cr + 16 * h, v);
        }
    }
}
#else
static void kernel(int kc, const float *a, const float *b, float *c, int ldc, float alpha, float beta) {
    float acc[MR][NR] = {{0}};
    for (int k = 0; k < kc; k++, a += MR, b += NR)
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++) acc[r][j] += a[r] * b[j];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            float *cj = c + (size_t)r * ldc + j, v = acc[r][j] * alpha;
            *cj = beta == 0.0f ? v : beta == 1.0f ? *cj + v : beta * *cj + v;
        }
}
#endif

/* A tile cut by the edge of C (mr < MR or nr < NR): the kernel into a local tile, then the valid part. */
static void kernel_edge(int kc, const float *a, const float *b, float *c, int ldc, int mr, int nr,
                        float alpha, float beta) {
    float t[MR * NR] __attribute__((aligned(64)));
    kernel(kc, a, b, t, NR, alpha, 0.0f);
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) {
            float *cj = c + (size_t)r * ldc + j;
            *cj = beta == 0.0f   ? t[r * NR + j]
                  : beta == 1.0f ? *cj + t[r * NR + j]
                                 : beta * *cj + t[r * NR + j];
        }
}

/* C (M, N) over the whole K, on the calling thread: slabs of KC × NC of op(B), panels of A packed per MC
 * rows; a, b are the thread's buffers. */
static void gemm_serial(const gemm_t *g, float *a, float *b) {
    for (int jc = 0; jc < g->N; jc += NC) {
        int nc = imin(NC, g->N - jc), nq = (nc + NR - 1) / NR;
        for (int k0 = 0; k0 < g->K; k0 += KC) {
            int kc = imin(KC, g->K - k0);
            float beta = k0 == 0 ? g->beta : 1.0f; /* later slabs add to what the first wrote */
            for (int q = 0; q < nq; q++) pack_b(g, jc + q * NR, k0, kc, b + (size_t)q * kc * NR);
            for (int i0 = 0; i0 < g->M; i0 += MC) {
                int mc = imin(MC, g->M - i0), np = (mc + MR - 1) / MR;
                for (int p = 0; p < np; p++) pack_a(g, i0 + p * MR, k0, kc, a + (size_t)p * kc * MR);
                for (int q = 0; q < nq; q++) {
                    int j = jc + q * NR, nr = imin(NR, g->N - j);
                    for (int p = 0; p < np; p++) {
                        int i = i0 + p * MR, mr = imin(MR, g->M - i);
                        float *c = g->C + (size_t)i * g->ldc + j;
                        const float *ap = a + (size_t)p * kc * MR, *bp = b + (size_t)q * kc * NR;
                        if (mr == MR && nr == NR)
                            kernel(kc, ap, bp, c, g->ldc, g->alpha, beta);
                        else
                            kernel_edge(kc, ap, bp, c, g->ldc, mr, nr, g->alpha, beta);
                    }
                }
            }
        }
    }
}

/* Part `part` of `parts` of the product: a band of rows of C (or of columns when C is wider than tall),
 * cut at multiples of the register tile. */
static gemm_t band(const gemm_t *g, int part, int parts) {
    gemm_t s = *g;
    bool rows = g->M >= g->N;
    int n = rows ? g->M : g->N, unit = rows ? MR : NR, units = (n + unit - 1) / unit;
    int u0 = (int)((long)units * part / parts), u1 = (int)((long)units * (part + 1) / parts);
    int lo = imin(n, u0 * unit), hi = imin(n, u1 * unit);
    if (rows) {
        s.M = hi - lo;
        s.A = g->ta ? g->A + lo : g->A + (size_t)lo * g->lda;
        s.C = g->C + (size_t)lo * g->ldc;
    } else {
        s.N = hi - lo;
        s.B = g->tb ? g->B + (size_t)lo * g->ldb : g->B + lo;
        s.C = g->C + lo;
    }
    return s;
}

/* C = beta · C (K == 0: no product to add). */
static void scale_c(const gemm_t *g) {
    for (int i = 0; i < g->M; i++) {
        float *c = g->C + (size_t)i * g->ldc;
        for (int j = 0; j < g->N; j++) c[j] = g->beta == 0.0f ? 0.0f : g->beta * c[j];
    }
}

/* The calling thread's run on product g: its buffers sized for it. */
static void gemm_thread(const gemm_t *g) {
    if (g->M <= 0 || g->N <= 0) return;
    int kc = imin(KC, g->K), nq = (imin(NC, g->N) + NR - 1) / NR;
    float *a = grow(&tl_a, (size_t)(MC / MR) * MR * kc), *b = grow(&tl_b, (size_t)nq * NR * kc);
    gemm_serial(g, a, b);
}

void mx_tr_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
    gemm_t g = {ta, tb, M, N, K, lda, ldb, ldc, alpha, beta, A, B, C};
    if (M <= 0 || N <= 0) return;
    if (K <= 0) return scale_c(&g);
    if (omp_in_parallel() || omp_get_max_threads() == 1 || (double)M * N * K < PAR_MIN)
        return gemm_thread(&g);
        /* one band per thread, no barrier but the region's end: each thread packs what its band reads */
#pragma omp parallel
    {
        gemm_t s = band(&g, omp_get_thread_num(), omp_get_num_threads());
        gemm_thread(&s);
    }
}
