/* cuda_stream.h: the little that code outside the CUDA backend may know of it (C linkage): the stream its ops
 * run on and its device, so that NCCL (src/dist/comm_nccl.c) enqueues collectives in order with them. */
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

#ifdef __cplusplus
}
#endif

#endif
