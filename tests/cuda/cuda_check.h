/* cuda_check.h: CK(call), which exits with the failing CUDA call, file and line; shared by the GPU test and
 * the GPU benchmark driver (both standalone programs). */
#ifndef MX_CUDA_CHECK_H
#define MX_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #call, __FILE__, __LINE__,                       \
                    cudaGetErrorString(e_));                                                                 \
            exit(2);                                                                                         \
        }                                                                                                    \
    } while (0)

#endif
