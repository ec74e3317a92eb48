/* sync_cost.cu: what one dependency between decode phases costs on this GPU, to choose between a kernel per
 * phase (CUDA graph + programmatic dependent launch, as the decode step runs now) and one persistent kernel with a
 * grid-wide barrier between phases. Prints the time per link of a chain of N:
 *   - kernel boundary: N dependent kernels in one CUDA graph, each B blocks that wait (griddepcontrol.wait) on the
 *     previous one and write one value, launched with and without the PDL attribute;
 *   - grid barrier: one kernel of B blocks (all resident) crossing N barriers (one atomic arrival per block, then
 *     polling the counter), with and without a dependent global read after each.
 * Build: nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o build/cuda/sync_cost bench/cuda/sync_cost.cu
 * Run:   build/cuda/sync_cost [N] */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                                \
    do {                                                                                                     \
        cudaError_t e_ = (x);                                                                                \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                      \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

__global__ void k_link(float *buf, int i) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    float v = buf[(i + 1) & 1023]; /* a dependent read of what the previous kernel wrote */
    if (threadIdx.x == 0) buf[(i * 131 + blockIdx.x) & 1023] = v + 1.0f;
}

/* a grid barrier: generation-counted, every block arrives once per phase */
__device__ void grid_barrier(unsigned *count, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(count, 1u);
        while (*(volatile unsigned *)count < target) __nanosleep(32);
        __threadfence();
    }
    __syncthreads();
}

__global__ void k_barriers(float *buf, unsigned *count, int n, int read) {
    for (int i = 0; i < n; i++) {
        if (read) {
            float v = ((volatile float *)buf)[(i + 1) & 1023];
            if (threadIdx.x == 0) buf[(i * 131 + blockIdx.x) & 1023] = v + 1.0f;
        }
        grid_barrier(count, (unsigned)(i + 1) * gridDim.x);
    }
}

static float time_graph(float *buf, int n, int blocks, int pdl, cudaStream_t st) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; i++) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(blocks);
        cfg.blockDim = dim3(256);
        cfg.stream = st;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = pdl;
        CK(cudaLaunchKernelEx(&cfg, k_link, buf, i));
    }
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(ge, st)); /* warm-up */
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (ms < best) best = ms;
    }
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return best * 1000.0f / n;
}

static float time_barriers(float *buf, unsigned *count, int n, int blocks, int read, cudaStream_t st) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float best = 1e30f;
    for (int r = 0; r < 6; r++) {
        CK(cudaMemsetAsync(count, 0, sizeof(unsigned), st));
        CK(cudaEventRecord(a, st));
        k_barriers<<<blocks, 256, 0, st>>>(buf, count, n, read);
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (r > 0 && ms < best) best = ms;
    }
    return best * 1000.0f / n;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 300;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int sms = prop.multiProcessorCount;
    float *buf;
    unsigned *count;
    CK(cudaMalloc(&buf, 1024 * sizeof(float)));
    CK(cudaMemset(buf, 0, 1024 * sizeof(float)));
    CK(cudaMalloc(&count, sizeof(unsigned)));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    printf("sync_cost on %s (%d SMs), chains of %d links, best of 5, us per link\n", prop.name, sms, n);
    const int grids[] = {3, 36, sms, 2 * sms};
    for (int gi = 0; gi < 4; gi++) {
        int B = grids[gi];
        printf("  %4d blocks: kernel boundary %.2f (PDL) %.2f (no PDL); grid barrier %.2f, with a dependent "
               "read %.2f\n",
               B, time_graph(buf, n, B, 1, st), time_graph(buf, n, B, 0, st),
               time_barriers(buf, count, n, B, 0, st), time_barriers(buf, count, n, B, 1, st));
    }
    return 0;
}
