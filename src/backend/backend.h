/* backend.h: the op contract. The model code (src/model/forward.c) calls every numeric op through an
 * mx_backend and never knows which device runs it. The CPU backend (fp32 activations, weights in their file
 * type) is the reference; a CUDA backend implements the same table.
 *
 * Conventions: activations are row-major fp32 buffers allocated with be->alloc; a "row" is one token.
 * Shapes in comments: T tokens, C model width, H query heads, G KV heads, D head dim, S key slots. */
#ifndef MX_BACKEND_H
#define MX_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"

/* A weight tensor: its file type and shape, data where the loader placed it (mmap for the CPU). */
typedef struct {
    const char *name;
    uint32_t type; /* mx_dtype */
    int n_dims;
    int64_t ne[4]; /* ne[0] contiguous: a matrix of n_out rows is ne = {n_in, n_out} */
    const void *data;
    size_t nbytes;
    void *dev;  /* backend's own copy (NULL for the CPU backend) */
    bool exact; /* always multiply with fp32 activations (the output head: 8-bit rounding there flips
                   near-tied tokens), even where the backend would quantize activations */
} mx_tensor;

typedef enum { MX_ROPE_ADJACENT, MX_ROPE_HALF } mx_rope_mode;
/* ADJACENT rotates pairs (2i, 2i+1): GGUF's layout for Llama (its converter permuted Q/K rows for this).
 * HALF rotates pairs (i, i + D/2): Hugging Face's rotate_half on unpermuted weights. Both give the same
 * attention scores on the respective weight layouts. */

/* A block list for block-sparse attention (XAttention, attention/xattn.h). Positions are cut into blocks of
 * `block` (block b holds positions b*block .. (b+1)*block - 1). Query row t of head h sits in query block
 * i = (q_pos0 + t) / block and reads only the keys of the key blocks idx[off[h*n_qb + i - qb0] ..
 * off[h*n_qb + i - qb0 + 1]) (ascending), within the spec's usual key range. off (H*n_qb + 1 ints) and idx
 * are in the backend's memory (host memory on the CPU). */
typedef struct {
    int block; /* positions per block */
    int qb0;   /* the query block of row 0: q_pos0 / block */
    int n_qb;  /* query blocks the rows span */
    const int *off, *idx;
} mx_attn_blocks;

/* One attention call: queries of T tokens at absolute positions q_pos0 .. q_pos0+T-1 against a key/value
 * store of S slots where the key of absolute position p lives in slot p % S (full caches have S >= context,
 * so slot == position; window layers use a ring). */
typedef struct {
    int n_q;       /* T */
    int n_head;    /* H query heads */
    int n_kv_head; /* G KV heads; query head h reads KV head h / (H / G) (broadcast, never copied) */
    int head_dim;  /* D of q and k */
    int v_dim;     /* D of v and of the output per head */
    int q_pos0;    /* absolute position of query row 0 */
    int n_slots;   /* S */
    int window;    /* 0: all keys at positions <= the query's; W > 0: the last W positions, including own */
    bool causal;   /* false: every position in [kv_lo, kv_hi] regardless of the query (Star phase 2) */
    int kv_lo, kv_hi; /* the positions present in the store: keys outside are never read */
    float scale;      /* usually 1/sqrt(head_dim) */
    size_t q_stride, k_stride, v_stride, o_stride; /* elements between rows (tokens/slots) */
    /* Appended for XAttention (attention/xattn.h): NULL = dense; else only the listed key blocks are read
     * (zero-initialized specs stay dense). */
    const mx_attn_blocks *blocks;
} mx_attn_spec;

/* One draw of the next token on the backend (sample below): the rules of run/sampler.h without the repetition
 * penalty. temperature <= 0: argmax (ties: the lowest id). Else the top_k largest logits (1 <= top_k <=
 * MX_SAMPLE_TOPK_MAX; ties: lower ids first), p_i = exp((l_i - l_max) / temperature), the top-p prefix and
 * the min-p floor as in sampler.c, then the first candidate whose running mass exceeds u times the kept mass.
 */
enum { MX_SAMPLE_TOPK_MAX = 1024 };
enum { MX_MATMUL_GROUP_MAX = 4 }; /* weights of one input in a matmul_group call */
typedef struct {
    float temperature, top_p, min_p;
    int top_k;
    float u; /* the caller's uniform draw in [0, 1) (one per non-greedy token, as sampler.c draws it) */
} mx_sample_spec;

/* What a backend is, as the code outside it needs to know (never tell backends apart by name). */
enum {
    MX_CAP_HOST_MEMORY = 1u << 0, /* buffers from alloc are host memory: the host, memcpy and MPI read them */
    MX_CAP_CUDA_STREAM = 1u << 1, /* ops run in order on one CUDA stream (cuda_stream.h), which NCCL joins */
    MX_CAP_GRAPHS = 1u << 2,      /* a repeated op sequence is captured when seen again: warm up twice */
};

typedef struct mx_backend mx_backend;
struct mx_backend {
    const char *name; /* for messages only */
    unsigned caps;    /* MX_CAP_* */
    int n_threads;
    bool exact; /* matmuls in fp32 on dequantized weights everywhere (no 8-bit activations in decode) */
    bool act8;  /* decode matmuls quantize activations to 8 bits (llama.cpp's scheme; ignored when exact) */
    size_t kv_elem_bytes; /* bytes per KV cache element: 4 (fp32) on the CPU, 2 (bf16) on CUDA */
    int ubatch;           /* preferred tokens per forward chunk (prefill); 0 = 512 */
    bool row_views;       /* a weight's rows can be used as a tensor of their own (MoE experts, MLA's per-head
                             W_uk/W_uv slices): the view's data and dev are its parent's plus the same byte
                             offset (dev, where set, is a device address the backend resolves to its parent) */
    void *ctx;

    void (*destroy)(mx_backend *be);              /* frees the backend, its context and what it allocated */
    void *(*alloc)(mx_backend *be, size_t bytes); /* uninitialized, 64-byte aligned; NULL on failure */
    void (*free)(mx_backend *be, void *p);
    /* Places a weight where the backend reads it (sets t->dev; the CPU reads t->data and does nothing). */
    int (*upload)(mx_backend *be, mx_tensor *t, mx_err *err);
    /* Releases what upload placed. */
    void (*release)(mx_backend *be, mx_tensor *t);
    /* Blocks until queued work is done (timing); the CPU returns at once. */
    void (*sync)(mx_backend *be);
    /* Free and total bytes of the memory this backend allocates from (RAM, or the GPU's); 0 on success. */
    int (*mem_info)(mx_backend *be, size_t *free_bytes, size_t *total_bytes);
    size_t placed_bytes; /* memory the weights took when placed (mx_model_place), 0 on the CPU */

    /* y[T, n_out] = x[T, n_in] · Wᵀ, W of any supported type, shape ne = {n_in, n_out}. */
    void (*matmul)(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T);
    /* Optional (NULL: mx_matmul_group calls matmul per weight). y[i] = x · w[i]ᵀ for n <= MX_MATMUL_GROUP_MAX
     * weights of one input (Q, K and V; gate and up), each bitwise what matmul(w[i], x, y[i], T) gives; a
     * backend may share the input's preparation and one parallel pass among them. A view of a backend that
     * replaces matmul (serve/batch.c's row-wise one) must replace or clear this too. */
    void (*matmul_group)(mx_backend *be, int n, const mx_tensor *const *w, const float *x, float *const *y,
                         int T);
    /* out[T, C] = embedding rows of ids (W ne = {C, vocab}); ids in host memory. */
    void (*embed)(mx_backend *be, const mx_tensor *w, const int *ids, int T, float *out);
    /* out = x / rms(x) * w, per row of C (w an F32 vector of C). */
    void (*rmsnorm)(mx_backend *be, const float *x, const mx_tensor *w, float *out, int T, int C, float eps);
    /* out = (x - mean) / std * w + b, per row of C (b may be NULL). */
    void (*layernorm)(mx_backend *be, const float *x, const mx_tensor *w, const mx_tensor *b, float *out,
                      int T, int C, float eps);
    /* Rotates the first rope_dim dims of each head of x[T, n_head, head_dim] in place, positions pos0+t. */
    void (*rope)(mx_backend *be, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                 float theta, mx_rope_mode mode);
    /* g[T, F] = silu(g) * u */
    void (*swiglu)(mx_backend *be, float *g, const float *u, int n);
    /* x = gelu(x), tanh approximation (GPT-2) */
    void (*gelu)(mx_backend *be, float *x, int n);
    /* y += x */
    void (*add)(mx_backend *be, float *y, const float *x, int n);
    /* y[T, n] += b[n] (b an F32 vector) */
    void (*add_bias)(mx_backend *be, float *y, const mx_tensor *b, int T, int n);
    /* out[T, H, Dv] = softmax(q kᵀ · scale, masked by spec) v; lse[T, H] (natural log, may be NULL).
     * k and v are KV stores of kv_elem_bytes elements (strides in elements). */
    void (*attention)(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k, const void *v,
                      float *out, float *lse);
    /* Writes T rows of n floats into a KV store of n_slots rows at slots (pos0 + t) % n_slots (converting to
     * the store's element type). */
    void (*kv_write)(mx_backend *be, void *store, const float *src, int T, int n, int pos0, int n_slots);
    /* Copies n floats device → host (the CPU backend: memcpy). */
    void (*to_host)(mx_backend *be, float *dst, const float *src, size_t n);

    /* ---- ops for the MoE, MLA and MKA blocks (CPU: cpu_blocks.c) ---- */
    /* x[0..n) = value */
    void (*fill)(mx_backend *be, float *x, size_t n, float value);
    /* Strided 3-D copy: dst[i2*ds2 + i1*ds1 + i0] = src[i2*ss2 + i1*ss1 + i0], i0 < n0, i1 < n1, i2 < n2
     * (strides in floats; a source stride may be 0 to broadcast). dst and src do not overlap. */
    void (*copy3d)(mx_backend *be, float *dst, const float *src, int n0, int n1, int n2, size_t ds1,
                   size_t ss1, size_t ds2, size_t ss2);
    /* The transposed product: y[T, n_in] = x[T, n_out] · W, W ne = {n_in, n_out} of any supported type. */
    void (*matmul_t)(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T);
    /* Reads T rows of n elements from a KV store at slots (pos0 + t) % n_slots into fp32 dst[T, n]
     * (the inverse of kv_write). */
    void (*kv_read)(mx_backend *be, const void *store, float *dst, int T, int n, int pos0, int n_slots);
    /* MoE routing of T tokens over E experts: p = softmax(logits[t, :E]); the k largest p (ties: lower
     * index first) give ids[t*k + j] (descending p) and w[t*k + j] = p (divided by their sum when norm) times
     * scale. ids and w are HOST memory. */
    void (*moe_route)(mx_backend *be, const float *logits, int T, int E, int k, bool norm, float scale,
                      int *ids, float *w);
    /* dst[i, :n] = src[idx[i], :n] for i < rows (rows of n floats; idx in HOST memory). */
    void (*gather_rows)(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n);
    /* dst[idx[i], :n] += w[i] · src[i, :n] for i < rows, in order (idx, w in HOST memory). */
    void (*scatter_add_rows)(mx_backend *be, float *dst, const float *src, const int *idx, const float *w,
                             int rows, int n);
    /* x = tanh(x) */
    void (*tanh_)(mx_backend *be, float *x, int n);
    /* In place softmax over each row of x[T, n] (fp32 max-subtracted, sum in double). */
    void (*softmax_rows)(mx_backend *be, float *x, int T, int n);
    /* y[t, :n] += w[t * w_stride] · x[t, :n] for t < T (w a device buffer, e.g. a column of router weights;
     * x_stride 0 broadcasts one row of x to every t). */
    void (*scale_add_rows)(mx_backend *be, float *y, const float *x, size_t x_stride, const float *w,
                           size_t w_stride, int T, int n);
    /* Causal running mean with carried prefix sums: P(p) = P(p-1) + x[t] (P(-1) = 0) for p = pos0 + t, stored
     * as fp32 rows of C in sums at slot p % n_slots (P(pos0-1) is read from there when pos0 > 0), and
     * mean[t] = P(p) / (p + 1). sums is a float buffer from be->alloc of n_slots * C. */
    void (*prefix_mean)(mx_backend *be, const float *x, int T, int C, float *sums, int pos0, int n_slots,
                        float *mean);
    /* Star Attention's exact merge of R partial attentions of the same T queries over disjoint key sets: part
     * r has outputs outs + r * part_stride (T, H, Dv) and lse lses + r * part_stride (T, H) (natural log,
     * −inf: part r saw no key, its output is ignored). lse = log Σ_r exp(lse_r) and out[T, H*Dv] = Σ_r
     * exp(lse_r − lse) · out_r; lse (T, H) is written when not NULL. A row and head no part saw gets out = 0
     * and lse = −inf. fp32 (the CPU sums the exponentials in double); out and lse do not alias the parts. */
    void (*lse_merge)(mx_backend *be, const float *outs, const float *lses, size_t part_stride, int R, int T,
                      int H, int Dv, float *out, float *lse);
    /* Optional (NULL: moe.c composes moe_route, gather_rows, matmul, swiglu and scatter_add_rows, as the CPU
     * does). One MoE layer's routed experts on T tokens x[T, C]: ids, w = moe_route(logits[T, E], k, norm,
     * scale); out[t] = Σ_j w[t, j] · expert_{ids[t, j]}(x[t]) over the choices whose expert is local (local:
     * E flags in host memory, NULL = every expert), with expert_e(v) = down_e · (silu(gate_e · v) ⊙ up_e · v)
     * and the 3-D expert tensors gate, up ne {C, F, E}, down ne {F, C, E}. out[T, C] is written entirely
     * (zeros where no local expert was chosen) and aliases neither x nor logits. counts (HOST, E ints, may be
     * NULL) receives the tokens routed to each expert. Returns false, having done nothing, where the backend
     * prefers the generic composition for this call (a few tokens: CUDA's fused decode kernels). */
    bool (*moe_ffn)(mx_backend *be, const float *x, const float *logits, int T, int E, int k, bool norm,
                    float scale, const mx_tensor *gate, const mx_tensor *up, const mx_tensor *down,
                    const bool *local, float *out, int *counts);

    /* ---- decode with the host out of the loop (optional: NULL where a backend has none; run/generate.c then
     * copies the logits and samples on the host). The token stays in backend memory, where the next step's
     * embed_dev reads it, so the host can queue step t+1 before it has seen token t. ---- */
    /* Draws a token from logits[vocab] (backend memory) by sp into *tok (backend memory, one int) and queues
     * its copy to the host; returns a ticket (>= 0) for sample_wait. */
    int (*sample)(mx_backend *be, const float *logits, int vocab, const mx_sample_spec *sp, int *tok);
    /* The token drawn for a ticket, once it is known (blocks until then); -1 for a ticket no longer held (the
     * backend keeps the last 64). */
    int (*sample_wait)(mx_backend *be, int ticket);
    /* embed with the T ids in backend memory (e.g. the token sample wrote). */
    void (*embed_dev)(mx_backend *be, const mx_tensor *w, const int *ids, int T, float *out);

    /* ---- training (backend_train.h; NULL: this backend cannot train) ---- */
    const struct mx_train_ops *train;

    /* ---- batched decode for the server (serve/batch.c; optional: NULL where a backend has none, and the
     * server then calls matmul and attention instead, which may round a row differently in a batch) ---- */
    /* matmul with decode numerics at any T: row t of y[T, n_out] is bitwise what matmul gives for x's row t
     * alone (T = 1), so putting sequences in one batch changes none of their tokens. */
    void (*matmul_rows)(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T);
    /* Decode attention of n sequences, one query each, over their own KV stores: row i of q[n, H*D] (rows
     * specs[0].q_stride apart) attends by specs[i] (n_q = 1) to k[i], v[i] into row i of out[n, H*Dv] (rows
     * specs[0].o_stride apart); each row bitwise what attention(&specs[i], ...) gives alone. k, v: n store
     * pointers in HOST memory; specs in HOST memory. */
    void (*attention_batch)(mx_backend *be, int n, const mx_attn_spec *specs, const float *q,
                            const void *const *k, const void *const *v, float *out);

    /* ---- appended for XAttention (attention/xattn.h; CPU: cpu_xattn.c). Optional: NULL where a backend has
     * none (--attn xattn then refuses it). ---- */
    /* Anti-diagonal block scoring and selection for one prefill call described by spec (full causal
     * attention, no window; spec->blocks ignored): fills bl (bl->block = block set by the caller; off and idx
     * written, in backend memory of at least H*n_qb + 1 and H*n_qb*n_kb ints) with the key blocks each
     * (head, query block) keeps at threshold tau with stride `stride`, as attention/xattn.h defines them.
     * mass (HOST, may be NULL) receives (H, n_qb, n_kb) block masses (n_kb = kv_hi / block + 1). Returns
     * the number of (head, query block, key block) triples kept, or -1 (out of scratch memory: bl unset). */
    long (*xattn_select)(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k, int stride,
                         float tau, mx_attn_blocks *bl, int *off, int *idx, float *mass);
};

/* The CPU backend (fp32, OpenMP with n_threads; 0 = all cores). */
mx_backend *mx_backend_cpu_create(int n_threads);

/* The registry: creates a backend by name ("cpu", "cuda"); device = GPU index for cuda. A name this build
 * does not have, or a device that is not there, gives a message that says what to use instead. */
int mx_backend_create(const char *name, int device, int n_threads, mx_backend **out, mx_err *err);
/* be->destroy(be); NULL is a no-op. */
void mx_backend_destroy(mx_backend *be);

/* y[i] = x · w[i]ᵀ for the n weights of one input: one matmul_group call where the backend has it, else n
 * matmul calls (the same results either way). */
static inline void mx_matmul_group(mx_backend *be, int n, const mx_tensor *const *w, const float *x,
                                   float *const *y, int T) {
    if (be->matmul_group && n <= MX_MATMUL_GROUP_MAX) {
        be->matmul_group(be, n, w, x, y, T);
        return;
    }
    for (int i = 0; i < n; i++) be->matmul(be, w[i], x, y[i], T);
}

#endif
