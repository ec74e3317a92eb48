/* sgemm.h: the fp32 matrix product of CPU training, row-major, in place of a BLAS sgemm:
 *     C (M, N) = alpha · op(A) (M, K) · op(B) (K, N) + beta · C
 * op(A) = A (M, K) with row stride lda, or Aᵀ when ta (A stored (K, M)); op(B) = B (K, N) with stride ldb, or
 * Bᵀ when tb (B stored (N, K)). beta == 0 never reads C (it may hold anything, NaN included).
 *
 * Own kernel rather than OpenBLAS: Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not recognize recent Xeons and
 * runs its SSE3 kernels on them, and its pthread pool competes with OpenMP's threads. Every element of C is
 * summed by one thread in a fixed order, so results are deterministic and independent of the thread count. */
#ifndef MX_SGEMM_H
#define MX_SGEMM_H

#include <stdbool.h>

/* Uses the OpenMP threads when called outside a parallel region and the product is large enough; inside a
 * parallel region (e.g. attention's per-head products) it runs on the calling thread alone. */
void mx_tr_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);

#endif
