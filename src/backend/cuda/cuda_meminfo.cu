/* cuda_meminfo.cu: free and total memory of the current GPU (the backend's mem_info hook), so a session can
 * say what a context would need against what is free before allocating anything. */
#include <cuda_runtime.h>
#include <stddef.h>

extern "C" {
struct mx_backend;
int mx_cuda_mem_info(struct mx_backend *be, size_t *free_bytes, size_t *total_bytes) {
    (void)be;
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) return -1;
    *free_bytes = f;
    *total_bytes = t;
    return 0;
}
}
