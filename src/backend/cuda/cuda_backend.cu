/* cuda_backend.cu: the CUDA backend's op table, device selection, buffers and weight placement.
 *
 * Weights (upload): every tensor's bytes go to the GPU as stored in the file (quantized blocks stay quantized:
 * the decode GEMV and the embedding read them directly). Matrices also get a bf16 copy, dequantized once on the
 * GPU at upload, that the prefill GEMM (cuBLASLt, bf16 in, fp32 accumulate) reads: ~2 bytes per weight more
 * device memory, no per-call dequantization. Activations are fp32 device buffers (the contract); K/V stores are
 * bf16 (kv_elem_bytes = 2). All work runs on one stream in order. */
#include <string.h>

#include "cuda_common.h"

extern "C" {
int mx_backend_cuda_create(int device, mx_backend **out, mx_err *err);
void mx_backend_cuda_destroy(mx_backend *be);
}

void mx_cuda_fatal(const char *what, const char *msg, const char *file, int line) {
    fprintf(stderr, "mixatt: CUDA error: %s: %s (%s:%d)\n", what, msg, file, line);
    fflush(stderr);
    abort();
}

void *mx_cuda_scratch(mx_cuda_ctx *c, void **buf, size_t *cap, size_t n) {
    if (n <= *cap && *buf) return *buf;
    if (c->capturing) { /* cannot free/allocate inside a capture: the capture is discarded and run eagerly */
        c->capture_broken = 1;
        return *buf;
    }
    c->gen++;
    if (*buf) {
        CU_CHECK(cudaStreamSynchronize(c->stream));
        CU_CHECK(cudaFree(*buf));
        *buf = NULL;
    }
    size_t want = n < 4096 ? 4096 : n + n / 4;
    CU_CHECK(cudaMalloc(buf, want));
    *cap = want;
    return *buf;
}

static void *cu_alloc(mx_backend *be, size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 64); /* 256-byte aligned */
    if (e != cudaSuccess) {
        fprintf(stderr, "mixatt: cudaMalloc of %zu bytes failed: %s (%s:%d)\n", bytes, cudaGetErrorString(e),
                __FILE__, __LINE__);
        cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cu_free(mx_backend *be, void *p) {
    if (!p) return;
    mx_cuda_graph_flush(cu_ctx(be));
    CU_CHECK(cudaStreamSynchronize(cu_ctx(be)->stream));
    CU_CHECK(cudaFree(p));
}

static void cu_sync(mx_backend *be) {
    mx_cuda_graph_flush(cu_ctx(be));
    CU_CHECK(cudaStreamSynchronize(cu_ctx(be)->stream));
}

/* Up to HOST_STAGE_MAX bytes (a decode step's logits) go through a pinned buffer: a DMA straight into it, then one
 * memcpy, instead of the driver's pageable path. Larger copies (all-logits prefill) go direct. */
enum { HOST_STAGE_MAX = 4 << 20 };
static void cu_to_host(mx_backend *be, float *dst, const float *src, size_t n) {
    mx_cuda_ctx *c = cu_ctx(be);
    mx_cuda_graph_flush(c);
    size_t bytes = n * sizeof(float);
    if (bytes <= HOST_STAGE_MAX && bytes > c->host_stage_cap) {
        if (c->host_stage) CU_CHECK(cudaFreeHost(c->host_stage));
        c->host_stage = NULL, c->host_stage_cap = 0;
        size_t want = bytes < (256u << 10) ? (256u << 10) : bytes;
        if (cudaMallocHost((void **)&c->host_stage, want) == cudaSuccess)
            c->host_stage_cap = want;
        else
            c->host_stage = NULL, cudaGetLastError();
    }
    if (bytes <= c->host_stage_cap) {
        CU_CHECK(cudaMemcpyAsync(c->host_stage, src, bytes, cudaMemcpyDeviceToHost, c->stream));
        CU_CHECK(cudaStreamSynchronize(c->stream));
        memcpy(dst, c->host_stage, bytes);
        return;
    }
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
}

#define UP_CHECK(call, what)                                                                               \
    do {                                                                                                   \
        cudaError_t e_ = (call);                                                                           \
        if (e_ != cudaSuccess) {                                                                           \
            cudaGetLastError();                                                                            \
            cu_release(be, t);                                                                             \
            return mx_err_set(err, MX_ERR_NOMEM, "placing tensor '%s' on the GPU: %s: %s (%s:%d)",        \
                              t->name ? t->name : "?", what, cudaGetErrorString(e_), __FILE__, __LINE__); \
        }                                                                                                  \
    } while (0)

static void cu_release(mx_backend *be, mx_tensor *t) {
    mx_cuda_weight *w = (mx_cuda_weight *)t->dev;
    if (!w) return;
    mx_cuda_graph_flush(cu_ctx(be));
    CU_CHECK(cudaStreamSynchronize(cu_ctx(be)->stream));
    if (w->q) CU_CHECK(cudaFree(w->q));
    if (w->bf) CU_CHECK(cudaFree(w->bf));
    free(w);
    t->dev = NULL;
}

static int cu_upload(mx_backend *be, mx_tensor *t, mx_err *err) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (t->dev) return MX_OK;
    mx_cuda_graph_flush(c);
    if (!mx_dtype_get(t->type))
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "tensor '%s' has type %s, which the CUDA backend cannot read",
                          t->name ? t->name : "?", mx_dtype_name(t->type));
    mx_cuda_weight *w = (mx_cuda_weight *)calloc(1, sizeof *w);
    if (!w) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    t->dev = w;
    w->type = t->type;
    w->n_in = t->ne[0];
    w->n_out = 1;
    for (int d = 1; d < t->n_dims; d++) w->n_out *= t->ne[d];
    w->row_bytes = mx_dtype_row_bytes(t->type, w->n_in);
    size_t bytes = w->row_bytes * (size_t)w->n_out;
    if (t->nbytes && t->nbytes < bytes) bytes = t->nbytes;
    UP_CHECK(cudaMalloc(&w->q, bytes ? bytes : 64), "cudaMalloc");
    UP_CHECK(cudaMemcpy(w->q, t->data, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    if (t->n_dims >= 2 && w->n_out > 1) {
        UP_CHECK(cudaMalloc(&w->bf, sizeof(__nv_bfloat16) * (size_t)w->n_in * w->n_out), "cudaMalloc (bf16 copy)");
        mx_cuda_dequant_bf16(c, w, w->bf);
        UP_CHECK(cudaStreamSynchronize(c->stream), "dequantizing to bf16");
    }
    return MX_OK;
}

int mx_backend_cuda_create(int device, mx_backend **out, mx_err *err) {
    *out = NULL;
    int n = 0, drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        if (e == cudaErrorInsufficientDriver)
            return mx_err_set(err, MX_ERR_UNSUPPORTED,
                              "the NVIDIA driver is too old for this build (driver supports CUDA %d.%d, mixatt was "
                              "built with %d.%d); update the driver or use --device cpu",
                              drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "no CUDA GPU found (%s); use --device cpu",
                          e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    if (device < 0 || device >= n)
        return mx_err_set(err, MX_ERR_ARG, "GPU %d does not exist (this machine has %d: 0..%d); use --gpu 0..%d or "
                          "--device cpu", device, n, n - 1, n - 1);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess || (e = cudaSetDevice(device)) != cudaSuccess) {
        cudaGetLastError();
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "cannot use GPU %d: %s; use --device cpu", device,
                          cudaGetErrorString(e));
    }
    if (prop.major < 8)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "GPU %d (%s) has compute capability %d.%d; the CUDA backend needs 8.0 or newer (bf16 "
                          "tensor cores); use --device cpu", device, prop.name, prop.major, prop.minor);
    mx_backend *be = (mx_backend *)calloc(1, sizeof *be);
    mx_cuda_ctx *c = (mx_cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    c->device = device;
    c->n_sm = prop.multiProcessorCount;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "cannot create a CUDA stream on GPU %d: %s; use --device cpu",
                          device, cudaGetErrorString(e));
    }
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "cannot initialize cuBLASLt on GPU %d; use --device cpu", device);
    }
    c->lt_ws_bytes = 32u << 20;
    if ((e = cudaMalloc(&c->lt_ws, c->lt_ws_bytes)) != cudaSuccess ||
        (e = cudaMallocHost((void **)&c->ids_host, 1 << 20)) != cudaSuccess ||
        (e = cudaMalloc((void **)&c->dec_cnt, sizeof(int) * MX_CUDA_DEC_CNT)) != cudaSuccess ||
        (e = cudaMemset(c->dec_cnt, 0, sizeof(int) * MX_CUDA_DEC_CNT)) != cudaSuccess) {
        cudaGetLastError();
        cublasLtDestroy(c->lt);
        cudaStreamDestroy(c->stream);
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_NOMEM, "cannot allocate CUDA workspaces on GPU %d: %s", device,
                          cudaGetErrorString(e));
    }
    be->name = "cuda";
    be->n_threads = 1;
    be->kv_elem_bytes = 2;
    be->ubatch = 4096; /* prefill in chunks of 4096 tokens: 8x fewer launches than 512 (bigger GEMMs) */
    be->ctx = c;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->release = cu_release;
    be->sync = cu_sync;
    be->to_host = cu_to_host;
    mx_cuda_graph_init(be); /* the ops */
    *out = be;
    return MX_OK;
}

void mx_backend_cuda_destroy(mx_backend *be) {
    if (!be) return;
    mx_cuda_ctx *c = cu_ctx(be);
    if (c) {
        mx_cuda_graph_flush(c);
        cudaStreamSynchronize(c->stream);
        mx_cuda_graph_free(c);
        cudaFree(c->lt_ws);
        cudaFree(c->xbf);
        cudaFree(c->ids);
        cudaFree(c->part);
        cudaFree(c->dec_cnt);
        cudaFree(c->wf);
        cudaFree(c->hidx);
        cudaFreeHost(c->ids_host);
        if (c->host_stage) cudaFreeHost(c->host_stage);
        mx_cuda_matmul_cache_free(c);
        cublasLtDestroy(c->lt);
        cudaStreamDestroy(c->stream);
        free(c);
    }
    free(be);
}
