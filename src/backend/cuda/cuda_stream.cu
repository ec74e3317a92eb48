/* cuda_stream.cu: the CUDA backend's stream and device for code outside the backend (cuda_stream.h). */
#include "cuda_common.h"
#include "cuda_stream.h"

extern "C" int mx_cuda_backend_stream(mx_backend *be, void **stream, int *device, mx_err *err) {
    if (!be || !(be->caps & MX_CAP_CUDA_STREAM))
        return mx_err_set(err, MX_ERR_ARG, "the %s backend has no CUDA stream", be ? be->name : "(none)");
    *stream = (void *)cu_ctx(be)->stream;
    *device = cu_ctx(be)->device;
    return MX_OK;
}

extern "C" void mx_cuda_backend_flush(mx_backend *be) {
    mx_cuda_graph_flush(cu_ctx(be));
}
