/* cuda_backend.cu: the CUDA backend's op table, device selection, buffers and weight placement.
 *
 * Weights (upload): every tensor's bytes go to the GPU as stored in the file (quantized blocks stay quantized:
 * the decode GEMV and the embedding read them directly). Matrices also get a bf16 copy, dequantized once on the
 * GPU at upload, that the prefill GEMM (cuBLASLt, bf16 in, fp32 accumulate) reads: ~2 bytes per weight more
 * device memory, no per-call dequantization. mx_tensor.dev is the device address of the stored bytes; a table of
 * placed weights sorted by that address (mx_cuda_weight_of) finds a tensor's bf16 copy and shape, also for row
 * views (MoE experts, MLA head ranges) whose dev is their parent's plus a row offset. Activations are fp32 device buffers (the contract); K/V stores are
 * bf16 (kv_elem_bytes = 2). All work runs on one stream in order. */
#include <string.h>

#include "cuda_common.h"
#include "cuda_train.h"

extern "C" {
int mx_backend_cuda_create(int device, mx_backend **out, mx_err *err);
void mx_backend_cuda_destroy(mx_backend *be);
int mx_cuda_mem_info(mx_backend *be, size_t *free_bytes, size_t *total_bytes); /* cuda_meminfo.cu */
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

/* ---- placed weights: a table sorted by device address (mx_tensor.dev = q) ---- */

/* The index of the last entry whose q <= p, or -1. */
static int placed_find(const mx_cuda_ctx *c, const void *p) {
    int lo = 0, hi = c->n_placed;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if ((uintptr_t)c->placed[mid].w.q <= (uintptr_t)p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

static int64_t rows_of(const mx_tensor *t) {
    int64_t n = 1;
    for (int d = 1; d < t->n_dims; d++) n *= t->ne[d];
    return n;
}

mx_cuda_weight mx_cuda_weight_of(mx_cuda_ctx *c, const mx_tensor *t) {
    int i = t->dev ? placed_find(c, t->dev) : -1;
    const mx_cuda_placed *e = i >= 0 ? &c->placed[i] : NULL;
    size_t off = e ? (size_t)((uintptr_t)t->dev - (uintptr_t)e->w.q) : 0;
    int64_t n_out = rows_of(t);
    if (!e || off >= (e->bytes ? e->bytes : 1)) {
        char b[160];
        snprintf(b, sizeof b,
                 "tensor '%s' is not on the GPU (dev %p: upload it, or make a view's dev its "
                 "parent's dev + the row offset)",
                 t->name ? t->name : "?", t->dev);
        mx_cuda_fatal("mx_cuda_weight_of", b, __FILE__, __LINE__);
    }
    if (off == 0 && n_out == e->w.n_out && t->ne[0] == e->w.n_in) return e->w; /* the weight itself */
    int64_t r0 = (int64_t)(off / e->w.row_bytes);
    if (off % e->w.row_bytes || t->ne[0] != e->w.n_in || t->type != e->w.type || r0 + n_out > e->w.n_out) {
        char b[200];
        snprintf(b, sizeof b,
                 "tensor '%s' (ne0 %lld, %lld rows at byte %zu) is not a row range of the placed "
                 "weight it lies in (ne0 %lld, %lld rows of %zu bytes)",
                 t->name ? t->name : "?", (long long)t->ne[0], (long long)n_out, off, (long long)e->w.n_in,
                 (long long)e->w.n_out, e->w.row_bytes);
        mx_cuda_fatal("mx_cuda_weight_of", b, __FILE__, __LINE__);
    }
    mx_cuda_weight w = e->w;
    w.q = (void *)t->dev;
    w.n_out = n_out;
    if (w.bf) w.bf += (size_t)r0 * (size_t)w.n_in;
    return w;
}

static int placed_add(mx_cuda_ctx *c, const mx_cuda_weight *w, size_t bytes) {
    if (c->n_placed == c->placed_cap) {
        int cap = c->placed_cap ? 2 * c->placed_cap : 256;
        mx_cuda_placed *p = (mx_cuda_placed *)realloc(c->placed, sizeof *p * (size_t)cap);
        if (!p) return -1;
        c->placed = p, c->placed_cap = cap;
    }
    int i = placed_find(c, w->q) + 1;
    memmove(&c->placed[i + 1], &c->placed[i], sizeof *c->placed * (size_t)(c->n_placed - i));
    c->placed[i].w = *w;
    c->placed[i].bytes = bytes;
    c->n_placed++;
    return 0;
}

static void free_weight(mx_cuda_weight *w) {
    if (w->q) CU_CHECK(cudaFree(w->q));
    if (w->bf) CU_CHECK(cudaFree(w->bf));
    w->q = NULL, w->bf = NULL;
}

/* Frees what upload placed for t (t->dev is its q); a dev that is no placed weight's start (a view, a copy of an
 * already released tensor such as a tied output head) is only cleared. */
static void cu_release(mx_backend *be, mx_tensor *t) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!t->dev) return;
    int i = placed_find(c, t->dev);
    bool placed = i >= 0 && c->placed[i].w.q == t->dev;
    t->dev = NULL;
    if (!placed) return;
    mx_cuda_graph_flush(c);
    CU_CHECK(cudaStreamSynchronize(c->stream));
    free_weight(&c->placed[i].w);
    memmove(&c->placed[i], &c->placed[i + 1], sizeof *c->placed * (size_t)(c->n_placed - i - 1));
    c->n_placed--;
}

#define UP_CHECK(call, what)                                                                                 \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            cudaGetLastError();                                                                              \
            free_weight(&w);                                                                                 \
            return mx_err_set(err, MX_ERR_NOMEM, "placing tensor '%s' on the GPU: %s: %s (%s:%d)",           \
                              t->name ? t->name : "?", what, cudaGetErrorString(e_), __FILE__, __LINE__);    \
        }                                                                                                    \
    } while (0)

static int cu_upload(mx_backend *be, mx_tensor *t, mx_err *err) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (t->dev) return MX_OK;
    mx_cuda_graph_flush(c);
    if (!mx_dtype_get(t->type))
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "tensor '%s' has type %s, which the CUDA backend cannot read",
                          t->name ? t->name : "?", mx_dtype_name(t->type));
    mx_cuda_weight w;
    memset(&w, 0, sizeof w);
    w.type = t->type;
    w.n_in = t->ne[0];
    w.n_out = rows_of(t);
    w.row_bytes = mx_dtype_row_bytes(t->type, w.n_in);
    size_t bytes = w.row_bytes * (size_t)w.n_out;
    if (t->nbytes && t->nbytes < bytes) bytes = t->nbytes;
    UP_CHECK(cudaMalloc(&w.q, bytes ? bytes : 64), "cudaMalloc");
    /* on the backend's stream, which does not wait for the legacy stream: a plain cudaMemcpy from pageable memory
     * may return before its DMA lands, and the dequantization below then read stale bytes (the bf16 copies of a
     * 1.5 B MoE model came out partly wrong, differently from run to run) */
    UP_CHECK(cudaMemcpyAsync(w.q, t->data, bytes, cudaMemcpyHostToDevice, c->stream), "cudaMemcpyAsync");
    if (t->n_dims >= 2 && w.n_out > 1) {
        UP_CHECK(cudaMalloc(&w.bf, sizeof(__nv_bfloat16) * (size_t)w.n_in * w.n_out),
                 "cudaMalloc (bf16 copy)");
        mx_cuda_dequant_bf16(c, &w, w.bf);
    }
    UP_CHECK(cudaStreamSynchronize(c->stream), "copying and dequantizing to bf16");
    if (placed_add(c, &w, bytes)) {
        free_weight(&w);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    t->dev = w.q;
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
        if (drv == 0) /* no libcuda at all: the runtime reports it as an old driver of version 0.0 */
            return mx_err_set(err, MX_ERR_UNSUPPORTED,
                              "no NVIDIA GPU or driver found on this machine (%s); use --device cpu",
                              cudaGetErrorString(e));
        if (e == cudaErrorInsufficientDriver)
            return mx_err_set(
                err, MX_ERR_UNSUPPORTED,
                "the NVIDIA driver is too old for this build (driver supports CUDA %d.%d, mixatt was "
                "built with %d.%d); update the driver or use --device cpu",
                drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "no CUDA GPU found (%s); use --device cpu",
                          e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    if (device < 0 || device >= n)
        return mx_err_set(err, MX_ERR_ARG,
                          "GPU %d does not exist (this machine has %d: 0..%d); use --gpu 0..%d or "
                          "--device cpu",
                          device, n, n - 1, n - 1);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
        (e = cudaSetDevice(device)) != cudaSuccess) {
        cudaGetLastError();
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "cannot use GPU %d: %s; use --device cpu", device,
                          cudaGetErrorString(e));
    }
    if (prop.major < 8)
        return mx_err_set(
            err, MX_ERR_UNSUPPORTED,
            "GPU %d (%s) has compute capability %d.%d; the CUDA backend needs 8.0 or newer (bf16 "
            "tensor cores); use --device cpu",
            device, prop.name, prop.major, prop.minor);
    mx_backend *be = (mx_backend *)calloc(1, sizeof *be);
    mx_cuda_ctx *c = (mx_cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    }
    c->device = device;
    c->n_sm = prop.multiProcessorCount;
    mx_cuda_tunables_read(&c->tune);
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "cannot create a CUDA stream on GPU %d: %s; use --device cpu", device,
                          cudaGetErrorString(e));
    }
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(be);
        free(c);
        return mx_err_set(err, MX_ERR_UNSUPPORTED, "cannot initialize cuBLASLt on GPU %d; use --device cpu",
                          device);
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
    be->caps = MX_CAP_CUDA_STREAM | MX_CAP_GRAPHS;
    be->destroy = mx_backend_cuda_destroy;
    be->mem_info = mx_cuda_mem_info;
    be->n_threads = 1;
    be->kv_elem_bytes = 2;
    be->row_views =
        true; /* mx_tensor.dev is the weight's device address: a view's dev is offset like its data */
    be->ubatch = 4096; /* prefill in chunks of 4096 tokens: 8x fewer launches than 512 (bigger GEMMs) */
    be->ctx = c;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->release = cu_release;
    be->sync = cu_sync;
    be->to_host = cu_to_host;
    mx_cuda_graph_init(be); /* the ops */
    be->train = &mx_cuda_train_ops;
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
        for (int i = 0; i < c->n_placed; i++) free_weight(&c->placed[i].w);
        free(c->placed);
        cudaFreeHost(c->ids_host);
        if (c->host_stage) cudaFreeHost(c->host_stage);
        mx_cuda_moe_free(c);
        mx_cuda_matmul_cache_free(c);
        mx_cuda_sample_free(c);
        mx_cuda_train_free(c);
        cublasLtDestroy(c->lt);
        cudaStreamDestroy(c->stream);
        free(c);
    }
    free(be);
}
