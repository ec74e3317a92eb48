/* cuda_records.h: internal to src/backend/cuda. The record of one op call as cuda_graph.cu keeps it between
 * the call and the flush that runs it (eagerly, into a CUDA graph capture, or as part of a fused kernel), and
 * the decode fusions of cuda_fusion.cu that read them.
 *
 * A record holds the call's arguments under its kind's own member of the union, with the names the op uses.
 * Position arguments (rope/kv_write/kv_read/prefix_mean pos0; attention q_pos0, kv_lo, kv_hi), embedding and
 * gather/scatter indices and the draw's uniform are not in the record but in the dynamic table at dyn_off, so
 * that one recorded sequence serves every decode step. Records are zeroed before they are filled (member by
 * member), so that two records compare and hash bytewise. */
#ifndef MX_CUDA_RECORDS_H
#define MX_CUDA_RECORDS_H

#include "cuda_common.h"

typedef enum {
    R_MATMUL,
    R_EMBED,
    R_RMSNORM,
    R_LAYERNORM,
    R_ROPE,
    R_SWIGLU,
    R_GELU,
    R_ADD,
    R_ADD_BIAS,
    R_ATTN,
    R_KV,
    R_FILL,
    R_COPY3D,
    R_MATMUL_T,
    R_KV_READ,
    R_GATHER,
    R_SCATTER,
    R_TANH,
    R_SOFTMAX,
    R_SCALE_ADD,
    R_PREFIX_MEAN,
    R_LSE_MERGE,
    R_EMBED_DEV,
    R_SAMPLE
} rkind;

typedef struct {
    rkind kind;
    int dyn_off; /* where this call's dynamic ints start in the table */
    union {
        struct { /* R_MATMUL y[T, n_out] = x[T, n_in] Wᵀ; R_MATMUL_T y[T, n_in] = x[T, n_out] W */
            mx_cuda_weight w;
            const float *x;
            float *y;
            int T;
        } mm;
        struct { /* R_EMBED (ids: dyn[0..T)), R_EMBED_DEV (ids: device array) -> out[T, n_in of w] */
            mx_cuda_weight w;
            const int *ids;
            float *out;
            int T;
        } embed;
        struct { /* R_RMSNORM, R_LAYERNORM (b may be NULL): out[T, C] */
            const float *x, *w, *b;
            float *out;
            int T, C;
            float eps;
        } norm;
        struct { /* x[T, n_head, head_dim] rotated in place; pos0: dyn[0] */
            float *x;
            int T, n_head, head_dim, rope_dim;
            mx_rope_mode mode;
            float theta;
        } rope;
        struct { /* g[n] = silu(g) * u */
            float *g;
            const float *u;
            int n;
        } swiglu;
        struct { /* R_GELU, R_TANH: x[n] in place */
            float *x;
            int n;
        } unary;
        struct { /* y[n] += x[n] */
            float *y;
            const float *x;
            int n;
        } add;
        struct { /* y[T, n] += b[n] */
            float *y;
            const float *b;
            int T, n;
        } add_bias;
        struct { /* spec with q_pos0, kv_lo, kv_hi zeroed (dyn[0..3)) */
            mx_attn_spec spec;
            const float *q;
            const void *k, *v;
            float *out, *lse;
        } attn;
        struct { /* store slot (pos0 + t) % n_slots = bf16(src[t, n]); pos0: dyn[0] */
            void *store;
            const float *src;
            int T, n, n_slots;
        } kv;
        struct { /* dst[t, n] = store slot (pos0 + t) % n_slots; pos0: dyn[0] */
            const void *store;
            float *dst;
            int T, n, n_slots;
        } kv_read;
        struct {
            float *x;
            size_t n;
            float value;
        } fill;
        struct {
            float *dst;
            const float *src;
            int n0, n1, n2;
            size_t ds1, ss1, ds2, ss2;
        } copy3d;
        struct { /* dst[i] = src[idx[i]], idx: dyn[0..rows) */
            float *dst;
            const float *src;
            int rows, n;
        } gather;
        struct { /* dst[idx[i]] += w[i] src[i]; idx: dyn[0..rows), w: dyn[rows..2 rows) as floats */
            float *dst;
            const float *src;
            int rows, n;
            bool distinct;
        } scatter;
        struct {
            float *x;
            int T, n;
        } softmax;
        struct {
            float *y;
            const float *x, *w;
            size_t x_stride, w_stride;
            int T, n;
        } scale_add;
        struct { /* pos0: dyn[0] */
            const float *x;
            float *sums, *mean;
            int T, C, n_slots;
        } prefix_mean;
        struct {
            const float *outs, *lses;
            size_t part_stride;
            int R, T, H, Dv;
            float *out, *lse;
        } lse_merge;
        struct { /* u: dyn[0] (float bits), the host ring's slot: dyn[1] */
            const float *logits;
            int *tok;
            int vocab, top_k;
            float temperature, top_p, min_p;
        } sample;
    } u;
} rec;

/* The decode fusions (cuda_fusion.cu), by kind. */
enum { FUSE_QKV, FUSE_GATEUP, FUSE_NORM_GEMV, FUSE_GEMV_ADD, FUSE_KINDS };
enum { FUSE_MAX_MEMBERS = 8 };

/* A group of records that runs as one fused kernel at the position of its first member (idx[0]). */
typedef struct {
    int kind, n;
    int idx[FUSE_MAX_MEMBERS];
} fuse_group;

/* Plans the fusions of recs[0..n): plan[i] = -1 (run record i as it is), -2 (record i runs inside a group
 * launched earlier) or g >= 0 (launch groups[g] here); returns the number of groups. */
int mx_cuda_fuse_plan(const rec *recs, int n, int *plan, fuse_group *groups);
/* Launches a planned group (dyn: the device copy of the dynamic table). */
void mx_cuda_fuse_run(mx_cuda_ctx *c, const rec *recs, const fuse_group *g, const int *dyn);

#endif
