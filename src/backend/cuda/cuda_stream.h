/* cuda_stream.h: the little that code outside the CUDA backend may know of it (C linkage): the stream its ops
 * run on and its device, so that NCCL (src/dist/comm_nccl.c) enqueues collectives in order with them, and the
 * count of its decode fusions (for tests). */
#ifndef MX_CUDA_STREAM_H
#define MX_CUDA_STREAM_H

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* *stream = the backend's cudaStream_t, *device = its GPU; MX_ERR_ARG when be is not the CUDA backend. */
int mx_cuda_backend_stream(mx_backend *be, void **stream, int *device, mx_err *err);
/* Launches the work the backend has recorded but not launched yet (cuda_graph.cu), so that what is enqueued
 * on its stream next runs after every op called so far. */
void mx_cuda_backend_flush(mx_backend *be);
/* The decode fusions (cuda_fusion.cu) run since the backend was created, by kind: counts[0] q/k/v (norm, three
 * GEMVs, RoPE, KV writes), [1] gate/up (norm, two GEMVs, SwiGLU), [2] norm + GEMV, [3] GEMV + residual add;
 * a replayed CUDA graph counts the groups it was captured with. For tests (tests/cuda/test_cuda.c). */
void mx_cuda_backend_fusions(mx_backend *be, long counts[4]);

#ifdef __cplusplus
}
#endif

#endif
