/* registry.c: backends by name. The one table of global state mixatt has (read-only after start). A CUDA
 * build (MX_HAVE_CUDA, when nvcc was found) registers "cuda"; others say how to get it. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifdef MX_HAVE_CUDA
int mx_backend_cuda_create(int device, mx_backend **out, mx_err *err);
#endif

int mx_backend_create(const char *name, int device, int n_threads, mx_backend **out, mx_err *err) {
    *out = NULL;
    if (!name || !strcmp(name, "cpu")) {
        *out = mx_backend_cpu_create(n_threads);
        return *out ? MX_OK : mx_err_set(err, MX_ERR_NOMEM, "out of memory creating the CPU backend");
    }
    if (!strcmp(name, "cuda")) {
#ifdef MX_HAVE_CUDA
        return mx_backend_cuda_create(device, out, err);
#else
        return mx_err_set(
            err, MX_ERR_UNSUPPORTED,
            "this mixatt was built without CUDA (nvcc was not found at build time); use --device cpu");
#endif
    }
    return mx_err_set(err, MX_ERR_ARG, "unknown device '%s' (known: cpu, cuda)", name);
}

void mx_backend_destroy(mx_backend *be) {
    if (be) be->destroy(be);
}
