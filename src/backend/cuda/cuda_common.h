/* cuda_common.h: internal to src/backend/cuda. The backend's context, the weight record that upload places in
 * mx_tensor.dev, error checking with file/line context, and the launchers each .cu file exports.
 *
 * Error policy: alloc/upload/create report through their return value (NULL or an mx_err); the op functions
 * of the contract return void, so a failing CUDA call inside an op prints the call, file and line and aborts
 * (a CUDA error there means the device context is unusable anyway). */
#ifndef MX_CUDA_COMMON_H
#define MX_CUDA_COMMON_H

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "../../io/dtype.h"
#include "../backend.h"
}

void mx_cuda_fatal(const char *what, const char *msg, const char *file, int line);

#define CU_CHECK(call)                                                                                       \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) mx_cuda_fatal(#call, cudaGetErrorString(e_), __FILE__, __LINE__);             \
    } while (0)
#define LT_CHECK(call)                                                                                       \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            char b_[64];                                                                                     \
            snprintf(b_, sizeof b_, "cublas status %d", (int)s_);                                            \
            mx_cuda_fatal(#call, b_, __FILE__, __LINE__);                                                    \
        }                                                                                                    \
    } while (0)
/* After every kernel launch: launch-configuration errors surface here, with the launch's location. */
#define CU_LAUNCHED() CU_CHECK(cudaGetLastError())

/* Programmatic dependent launch (sm_90): launch_dependents lets the next kernel of the stream (launched with
 * the PDL attribute) start while this one runs; wait blocks until the previous kernel has completed and its
 * writes are visible. Everything before wait may only read data no earlier kernel of this forward writes (the
 * weights). */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* The backend's tunables: read once from the environment when the backend is created (cuda_tunables.cu, the
 * one place that reads it), every name MX_CUDA_*; documented in one table in docs/PERFORMANCE.md. Each
 * changes speed or reports only, never results (beyond the rounding of a different kernel). */
typedef struct {
    bool graphs;  /* MX_CUDA_GRAPHS (1): record op calls, replay repeated sequences as CUDA graphs */
    bool timing;  /* MX_CUDA_TIMING (0): time graph replays, report when the backend is destroyed */
    bool fuse;    /* MX_CUDA_FUSE (1): decode fusions of recorded calls (cuda_graph.cu) */
    bool pdl;     /* MX_CUDA_PDL (1): decode kernels launched with programmatic dependent launch */
    bool wstage;  /* MX_CUDA_WSTAGE (1): k_fused stages its weight rows in shared memory before the wait */
    int fused_ks; /* MX_CUDA_FUSED_KS (0: adaptive; 1, 2, 4, 8): warps per row pair in k_fused */
    int fused_ks_units; /* MX_CUDA_FUSED_KS_UNITS (48, >= 8): 8-element units per warp that earn another warp */
    int dec_pf;         /* MX_CUDA_DEC_PF (0, 0..8): k_decode2's in-loop L2 prefetch distance in iterations */
    int dec_rm;         /* MX_CUDA_DEC_RM (0: the smallest instance that fits; 4 or 8): k_decode2's rows */
    bool decode_v1;     /* MX_CUDA_DECODE_V1 (0): k_decode + k_merge for every decode shape (for A/B) */
    bool prefill_fa2;   /* MX_CUDA_PREFILL (auto; fa2): k_fa2 even where k_fa_wgmma would run */
    bool lt_bucket;     /* MX_CUDA_LT_BUCKET (1): cuBLASLt algorithms chosen per bucket of token counts */
    bool lt_stats;      /* MX_CUDA_LT_STATS (0): cuBLASLt plan and heuristic counts at destroy */
    bool scatter_serial; /* MX_CUDA_SCATTER (parallel; serial): scatter_add_rows always in row order */
    bool moe;            /* MX_CUDA_MOE (1): the fused moe_ffn op (0: moe.c's generic composition) */
    int moe_streams;     /* MX_CUDA_MOE_STREAMS (4, 1..8): streams the MoE experts' GEMMs run on */
    bool moe_timing;     /* MX_CUDA_MOE_TIMING (0): per-phase GPU times of moe_ffn at destroy */
    bool
        train_gemm_fast16bf; /* MX_CUDA_TRAIN_GEMM (bf16; fast16bf): bf16 training GEMMs on fp32 operands handed
                                 to COMPUTE_32F_FAST_16BF instead of operands rounded to bf16 copies first (slower;
                                 see docs/training.md) */
    bool train_attn_gemm; /* MX_CUDA_TRAIN_ATTN (flash; gemm): bf16 training attention through per-head cuBLAS
                             products over T x T scores instead of the fused tensor-core kernels */
} mx_cuda_tunables;

/* Fills *t from the environment (defaults where unset); warns on stderr about values out of range (then the
 * default) and about MX_CUDA_* names that are no tunable (a typo, or a switch that moved to bench/cuda). */
void mx_cuda_tunables_read(mx_cuda_tunables *t);

/* A placed weight. q: the tensor's bytes as stored in the file (the decode GEMV and embedding read these);
 * upload sets mx_tensor.dev = q, a plain device address, so that a row view (backend.h: row_views) is
 * dev + the row offset in bytes, like its data. bf: a bf16 copy of a matrix (n_out x n_in, row-major) made once
 * at upload for the cuBLASLt prefill GEMM (NULL for vectors). Placed weights are kept in a table sorted by q
 * (cuda_backend.cu); mx_cuda_weight_of finds the one a tensor's dev lies in and narrows it to the tensor's rows. */
typedef struct {
    void *q;
    __nv_bfloat16 *bf;
    uint32_t type;
    int64_t n_in, n_out;
    size_t row_bytes;
} mx_cuda_weight;

typedef struct {
    mx_cuda_weight w;
    size_t bytes; /* of q */
} mx_cuda_placed;

typedef struct {
    int device, n_sm;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws;
    size_t lt_ws_bytes;
    __nv_bfloat16 *xbf; /* activations converted to bf16 for the GEMM */
    size_t xbf_cap;     /* elements */
    int *ids;           /* embedding ids copied from the host */
    int *ids_host;      /* pinned staging */
    size_t ids_cap;
    void *lt_cache;     /* cuda_matmul.cu: cuBLASLt descriptors and algorithms by shape */
    void *graph;        /* cuda_graph.cu state */
    int capturing;      /* a graph capture is under way: scratch buffers must not grow */
    int capture_broken; /* one wanted to */
    unsigned gen;       /* bumped when a scratch buffer moves: cached graphs are stale */
    float *part;        /* decode-attention split partials */
    size_t part_cap;    /* floats */
    float *wf;          /* matmul_t on a weight without a bf16 copy: its fp32 rows */
    size_t wf_cap;
    int *hidx; /* gather/scatter: host index and weight arrays staged on the device (eager path) */
    size_t hidx_cap;
    float *host_stage;     /* to_host: pinned staging for small copies (decode logits) */
    size_t host_stage_cap; /* bytes */
    int *dec_cnt; /* decode attention: per-KV-head tickets of the last-block merge (zeroed, self-resetting) */
    void *moe;    /* cuda_moe.cu: side streams, workspaces and scratch of the grouped MoE experts */
    void *sample_ring; /* cuda_sample.cu: the pinned ring the sampled tokens come back through */
    void *train;       /* cuda_train.cu: cuBLAS handle and scratch of the training ops (NULL until used) */
    mx_cuda_placed *placed; /* every placed weight, sorted by q */
    int n_placed, placed_cap;
    mx_cuda_tunables tune; /* read at create */
} mx_cuda_ctx;

static inline mx_cuda_ctx *cu_ctx(mx_backend *be) {
    return (mx_cuda_ctx *)be->ctx;
}

/* A launch of grid x block (smem dynamic bytes) on c's stream, with the PDL attribute (kept in *attr) when it is
 * enabled: for cudaLaunchKernelEx of a kernel that calls pdl_wait before it reads what earlier kernels wrote. */
static inline cudaLaunchConfig_t mx_cuda_pdl_config(const mx_cuda_ctx *c, dim3 grid, dim3 block, size_t smem,
                                                    cudaLaunchAttribute *attr) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = c->stream;
    attr->id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr->val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = c->tune.pdl ? 1 : 0;
    return cfg;
}
/* The placed weight that t is, or rows [r0, r0 + n) of (a row view: t->dev = parent's q + r0 * row_bytes, t->ne
 * {n_in, n, ...}): q and bf moved to row r0, n_out = n. Aborts with t's name when t->dev is in no placed weight
 * or is not a whole-row range of one. */
mx_cuda_weight mx_cuda_weight_of(mx_cuda_ctx *c, const mx_tensor *t);

enum { MX_CUDA_DEC_CNT = 4096 };

/* Grows a device scratch buffer to at least n bytes (synchronizes the stream before freeing the old one). */
void *mx_cuda_scratch(mx_cuda_ctx *c, void **buf, size_t *cap, size_t n);

/* The ops, on device pointers. dyn (may be NULL): a device array the kernel reads its position arguments from
 * instead of the by-value ones (rope/kv_write: pos0; attention: q_pos0, kv_lo, kv_hi), so that a captured
 * CUDA graph can be replayed for the next token after one small upload (cuda_graph.cu). */
/* cuda_matmul.cu */
void mx_cuda_dequant_bf16(mx_cuda_ctx *c, const mx_cuda_weight *w, __nv_bfloat16 *dst);
void mx_cuda_matmul_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T);
void mx_cuda_embed_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const int *d_ids, int T, float *out);
void mx_cuda_matmul_cache_free(mx_cuda_ctx *c);
/* y[T, n_out] = x[T, n_in] · Wᵀ with x bf16 as it is (row stride n_in), W bf16 (n_out rows of n_in), y bf16 (y_bf16)
 * or fp32, on stream st with a cuBLASLt workspace ws of c->lt_ws_bytes (the MoE experts: cuda_moe.cu) */
void mx_cuda_gemm_bf16(mx_cuda_ctx *c, cudaStream_t st, void *ws, const __nv_bfloat16 *w, int n_in, int n_out,
                       const __nv_bfloat16 *x, void *y, bool y_bf16, int T);
/* cuda_sample.cu: the token drawn from logits[vocab] by sp into tok (device; dyn: sp->u's bits at dyn[0] when
 * not NULL, and the host ring's slot at dyn[1]); fetch records the draw's event and returns the ticket that wait
 * redeems (-1: unknown ticket). */
void mx_cuda_sample_k(mx_cuda_ctx *c, const float *logits, int vocab, const mx_sample_spec *sp,
                      const int *dyn, int *tok);
int mx_cuda_sample_fetch(mx_cuda_ctx *c, const int *tok);
int mx_cuda_sample_slot(mx_cuda_ctx *c); /* the host ring's slot of the next draw (dyn[1] when recorded) */
int mx_cuda_sample_wait(mx_cuda_ctx *c, int ticket);
void mx_cuda_sample_free(mx_cuda_ctx *c);
/* fused decode GEMVs (one token), used by cuda_graph.cu's fusion of recorded sequences */
bool mx_cuda_fused_ok(const mx_cuda_weight *w, int n_in);
void mx_cuda_fused_gemv(mx_cuda_ctx *c, const float *x, const float *nw, float *h, float eps,
                        const mx_cuda_weight *w, float *y, float *res);
void mx_cuda_fused_gateup(mx_cuda_ctx *c, const float *x, const float *nw, float *h, float eps,
                          const mx_cuda_weight *wg, float *g, const mx_cuda_weight *wu, float *u);
void mx_cuda_fused_qkv(mx_cuda_ctx *c, const float *x, const float *nw, float *h, float eps,
                       const mx_cuda_weight *wq, float *q, const mx_cuda_weight *wk, float *k,
                       const mx_cuda_weight *wv, float *v, int H, int G, int D, int rope_dim, int adjacent,
                       float theta, int rope_q, int rope_k, const int *pos_q, const int *pos_k, void *kst,
                       void *vst, int n_slots, const int *pos_kw, const int *pos_vw);
void mx_cuda_matmul_t_k(mx_cuda_ctx *c, const mx_cuda_weight *w, const float *x, float *y, int T);
/* cuda_blocks.cu */
void mx_cuda_fill_k(mx_cuda_ctx *c, float *x, size_t n, float v);
void mx_cuda_copy3d_k(mx_cuda_ctx *c, float *dst, const float *src, int n0, int n1, int n2, size_t ds1,
                      size_t ss1, size_t ds2, size_t ss2);
void mx_cuda_kv_read_k(mx_cuda_ctx *c, const void *store, float *dst, int T, int n, int pos0, int n_slots,
                       const int *dyn);
void mx_cuda_gather_rows_k(mx_cuda_ctx *c, float *dst, const float *src, const int *d_idx, int rows, int n);
/* distinct: no index repeats in d_idx (the rows then run in parallel; else in order) */
void mx_cuda_scatter_add_rows_k(mx_cuda_ctx *c, float *dst, const float *src, const int *d_idx,
                                const float *d_w, int rows, int n, bool distinct);
void mx_cuda_tanh_k(mx_cuda_ctx *c, float *x, int n);
void mx_cuda_softmax_rows_k(mx_cuda_ctx *c, float *x, int T, int n);
void mx_cuda_scale_add_rows_k(mx_cuda_ctx *c, float *y, const float *x, size_t x_stride, const float *w,
                              size_t w_stride, int T, int n);
void mx_cuda_prefix_mean_k(mx_cuda_ctx *c, const float *x, int T, int C, float *sums, int pos0, int n_slots,
                           float *mean, const int *dyn);
void mx_cuda_lse_merge_k(mx_cuda_ctx *c, const float *outs, const float *lses, size_t part_stride, int R,
                         int T, int H, int Dv, float *out, float *lse);
void mx_cuda_matmul_t_f32_k(mx_cuda_ctx *c, const float *Wf, const float *x, float *y, int n_in, int n_out,
                            int T);
/* cuda_moe.cu: moe_route (ids, w in host memory; routed on the device for T > 8) and moe_ffn (backend.h) */
void mx_cuda_moe_route(mx_cuda_ctx *c, const float *logits, int T, int E, int k, bool norm, float scale,
                       int *ids, float *w);
bool mx_cuda_moe_ffn(mx_cuda_ctx *c, const float *x, const float *logits, int T, int E, int k, bool norm,
                     float scale, const mx_tensor *gate, const mx_tensor *up, const mx_tensor *down,
                     const bool *local, float *out, int *counts);
void mx_cuda_moe_free(mx_cuda_ctx *c);
/* cuda_elementwise.cu */
void mx_cuda_rmsnorm_k(mx_cuda_ctx *c, const float *x, const float *w, float *out, int T, int C, float eps);
void mx_cuda_layernorm_k(mx_cuda_ctx *c, const float *x, const float *w, const float *b, float *out, int T,
                         int C, float eps);
void mx_cuda_rope_k(mx_cuda_ctx *c, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                    float theta, mx_rope_mode mode, const int *dyn);
void mx_cuda_swiglu_k(mx_cuda_ctx *c, float *g, const float *u, int n);
void mx_cuda_gelu_k(mx_cuda_ctx *c, float *x, int n);
void mx_cuda_add_k(mx_cuda_ctx *c, float *y, const float *x, int n);
void mx_cuda_add_bias_k(mx_cuda_ctx *c, float *y, const float *b, int T, int n);
void mx_cuda_kv_write_k(mx_cuda_ctx *c, void *store, const float *src, int T, int n, int pos0, int n_slots,
                        const int *dyn);
/* cuda_attention.cu; static_split: size the KV split from n_slots (fixed across tokens) instead of the span
 */
void mx_cuda_attention_k(mx_cuda_ctx *c, const mx_attn_spec *spec, const float *q, const void *k,
                         const void *v, float *out, float *lse, const int *dyn, bool static_split);
/* cuda_fa_wgmma.cu: prefill attention on Hopper (wgmma + TMA) for D = Dv = 64 or 128. Returns false, launching
 * nothing, for a case it does not take (another device than compute capability 9.0, another shape, misaligned
 * operands, scale <= 0). */
bool mx_cuda_attention_wgmma(mx_cuda_ctx *c, const mx_attn_spec *spec, const float *q, const void *k,
                             const void *v, float *out, float *lse, const int *dyn);
/* cuda_graph.cu: the contract's op table (eager, or recorded and replayed as CUDA graphs) */
void mx_cuda_graph_init(mx_backend *be);
void mx_cuda_graph_flush(mx_cuda_ctx *c);
void mx_cuda_graph_free(mx_cuda_ctx *c);

#endif
