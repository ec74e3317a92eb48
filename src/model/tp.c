/* tp.c: tensor parallelism for inference: the per-rank slicing of a loaded model and the collectives the
 * forward pass calls (see tp.h for what is split how). */
#include "tp.h"

#include <stdlib.h>
#include <string.h>

#include "../io/dtype.h"
#include "../io/quant.h"

/* Range i of `parts` contiguous ranges covering [0, n), in whole units of `unit` elements (1 when n is not a
 * multiple of unit or there are fewer units than parts): [*lo, *lo + *count). */
static void split_range(int n, int parts, int i, int unit, int *lo, int *count) {
    if (unit < 1 || n % unit || n / unit < parts) unit = 1;
    long units = n / unit;
    int a = (int)(units * i / parts), b = (int)(units * (i + 1) / parts);
    *lo = a * unit;
    *count = (b - a) * unit;
}

/* This rank's query heads [*h0, *h0 + *nh) and the KV heads they read [*g0, *g0 + *ng) for H query heads
 * over G KV heads on N ranks: whole KV groups per rank when G >= N, else each KV head replicated on the N/G
 * ranks that split its group of query heads. */
static int split_heads(int H, int G, int N, int r, int *h0, int *nh, int *g0, int *ng, mx_err *err) {
    if (G <= 0 || H % G)
        return mx_err_set(err, MX_ERR_FORMAT, "%d query heads do not group over %d KV heads", H, G);
    int group = H / G;
    if (G >= N) {
        split_range(G, N, r, 1, g0, ng);
        *h0 = *g0 * group;
        *nh = *ng * group;
        return MX_OK;
    }
    if (N % G)
        return mx_err_set(err, MX_ERR_ARG,
                          "--tp %d: the model has %d KV heads; with fewer KV heads than ranks the ranks must "
                          "split them evenly (a number of ranks that divides %d or is a multiple of it)",
                          N, G, G);
    int per = N / G; /* ranks sharing one KV head */
    if (group < per)
        return mx_err_set(err, MX_ERR_ARG,
                          "--tp %d: each rank needs at least one query head; the model has %d (at most %d "
                          "ranks)",
                          N, H, H);
    int j, n;
    *g0 = r / per;
    *ng = 1;
    split_range(group, per, r % per, 1, &j, &n);
    *h0 = *g0 * group + j;
    *nh = n;
    return MX_OK;
}

/* Rows [r0, r0 + nr) of a matrix ne {n_in, n_out} (a view: rows are whole blocks). */
static void row_slice(mx_tensor *t, int64_t r0, int64_t nr) {
    if (!t->data) return;
    size_t row = mx_dtype_row_bytes(t->type, t->ne[0]);
    t->data = (const char *)t->data + row * (size_t)r0;
    t->ne[1] = nr;
    t->nbytes = row * (size_t)nr;
    t->dev = NULL;
}

/* Elements [i0, i0 + n) of an fp32 vector (biases; the binder converted every vector to fp32). */
static void vec_slice(mx_tensor *t, int64_t i0, int64_t n) {
    if (!t->data) return;
    t->data = (const float *)t->data + i0;
    t->ne[0] = n;
    t->nbytes = sizeof(float) * (size_t)n;
}

/* Columns [c0, c0 + nc) of every row of a matrix ne {n_in, n_out}, as a new matrix ne {nc, n_out} kept by the
 * model's dictionary: the raw blocks when c0 and nc fall on block boundaries, fp32 values otherwise. */
static int col_slice(mx_model *m, mx_tensor *t, int64_t c0, int64_t nc, int *f32_copies, mx_err *err) {
    if (!t->data) return MX_OK;
    const mx_dtype_info *di = mx_dtype_get(t->type);
    int64_t n_in = t->ne[0], rows = t->ne[1];
    bool blocks = c0 % di->block == 0 && nc % di->block == 0;
    size_t src_row = mx_dtype_row_bytes(t->type, n_in);
    size_t dst_row = blocks ? mx_dtype_row_bytes(t->type, nc) : sizeof(float) * (size_t)nc;
    size_t skip = blocks ? (size_t)(c0 / di->block) * (size_t)di->bytes : 0;
    char *buf = malloc(dst_row * (size_t)rows);
    float *tmp = blocks ? NULL : malloc(sizeof(float) * (size_t)n_in);
    if (!buf || (!blocks && !tmp)) {
        free(buf);
        free(tmp);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory slicing columns of '%s'", t->name);
    }
    const char *src = t->data;
    for (int64_t r = 0; r < rows; r++) {
        const char *row = src + src_row * (size_t)r;
        if (blocks) {
            memcpy(buf + dst_row * (size_t)r, row + skip, dst_row);
        } else {
            mx_dequant_row(t->type, row, tmp, n_in);
            memcpy(buf + dst_row * (size_t)r, tmp + c0, dst_row);
        }
    }
    free(tmp);
    if (mx_dict_own(&m->dict, buf, err)) return mx_err_wrap(err, "slicing '%s'", t->name);
    if (!blocks) {
        t->type = MX_F32;
        ++*f32_copies;
    }
    t->data = buf;
    t->ne[0] = nc;
    t->nbytes = dst_row * (size_t)rows;
    t->dev = NULL;
    return MX_OK;
}

/* Drops a row-parallel output's bias on every rank but 0 (the allreduce adds rank 0's once). */
static void bias_on_rank0(const mx_tp *tp, mx_tensor *b) {
    if (tp->rank != 0) memset(b, 0, sizeof *b);
}

static int shard_attention(mx_model *m, mx_tp *tp, mx_layer_weights *L, mx_err *err) {
    const mx_config *c = &m->cfg;
    int64_t h0 = tp->head0, nh = c->n_head;
    if (c->arch == MX_ARCH_DEEPSEEK2) {
        int64_t qk = c->mla_nope_dim + c->mla_rope_dim, kvb = c->mla_nope_dim + c->mla_v_dim;
        row_slice(L->wq_b.data ? &L->wq_b : &L->wq, h0 * qk, nh * qk);
        row_slice(&L->wkv_b, h0 * kvb, nh * kvb);
        bias_on_rank0(tp, &L->bo);
        return col_slice(m, &L->wo, h0 * c->mla_v_dim, nh * c->mla_v_dim, &tp->f32_copies, err);
    }
    int64_t D = c->head_dim, g0 = tp->kv_head0, ng = c->n_kv_head;
    row_slice(&L->wq, h0 * D, nh * D);
    vec_slice(&L->bq, h0 * D, nh * D);
    row_slice(&L->wk, g0 * D, ng * D);
    row_slice(&L->wv, g0 * D, ng * D);
    vec_slice(&L->bk, g0 * D, ng * D);
    vec_slice(&L->bv, g0 * D, ng * D);
    bias_on_rank0(tp, &L->bo);
    return col_slice(m, &L->wo, h0 * D, nh * D, &tp->f32_copies, err);
}

/* A SwiGLU/GELU MLP's rows [f0, f0 + nf): gate/up rows (and b_up), down columns; b_down on rank 0. */
static int shard_mlp(mx_model *m, mx_tp *tp, mx_tensor *gate, mx_tensor *up, mx_tensor *b_up, mx_tensor *down,
                     mx_tensor *b_down, int f0, int nf, mx_err *err) {
    row_slice(gate, f0, nf);
    row_slice(up, f0, nf);
    if (b_up) vec_slice(b_up, f0, nf);
    if (b_down) bias_on_rank0(tp, b_down);
    return col_slice(m, down, f0, nf, &tp->f32_copies, err);
}

/* The widest block of the `down` matrices of the layers (dense: shared == false; shared experts otherwise),
 * so that MLP slices fall on block boundaries of every layer's type. */
static int down_block(const mx_model *m, bool shared) {
    int unit = 1;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const mx_layer_weights *L = &m->w.layers[l];
        const mx_tensor *d = shared ? &L->down_shexp : &L->w_down;
        const mx_dtype_info *di = d->data ? mx_dtype_get(d->type) : NULL;
        if (di && di->block > unit) unit = di->block;
    }
    return unit;
}

static int shard_layers(mx_model *m, mx_tp *tp, int fs0, int nfs, mx_err *err) {
    const mx_config *c = &m->cfg;
    for (int l = 0; l < c->n_layer; l++) {
        mx_layer_weights *L = &m->w.layers[l];
        int rc = shard_attention(m, tp, L, err);
        if (!rc && mx_layer_is_moe(c, l) && L->gate_shexp.data)
            rc = shard_mlp(m, tp, &L->gate_shexp, &L->up_shexp, NULL, &L->down_shexp, NULL, fs0, nfs, err);
        else if (!rc && !mx_layer_is_moe(c, l))
            rc = shard_mlp(m, tp, &L->w_gate, &L->w_up, &L->b_up, &L->w_down, &L->b_down, tp->ff0, c->d_ff,
                           err);
        if (rc) return mx_err_wrap(err, "layer %d", l);
    }
    return MX_OK;
}

/* The weight bytes one decoded token reads on this rank: the layer matrices as sharded, this rank's experts'
 * share of the routed experts, its vocabulary rows of the head. */
static size_t rank_decode_bytes(const mx_model *m, const mx_tp *tp) {
    const mx_config *c = &m->cfg;
    size_t n = mx_model_decode_bytes(m) - m->w.output.nbytes;
    n += m->w.output.nbytes / (size_t)tp->vocab * (size_t)tp->n_vocab;
    if (c->n_expert == 0) return n;
    for (int l = 0; l < c->n_layer; l++) {
        const mx_layer_weights *L = &m->w.layers[l];
        if (!L->gate_exps.data) continue;
        size_t all = (L->gate_exps.nbytes + L->up_exps.nbytes + L->down_exps.nbytes) / (size_t)c->n_expert *
                     (size_t)c->n_expert_used;
        n -= all - all / (size_t)c->n_expert * (size_t)(tp->expert1 - tp->expert0);
    }
    return n;
}

/* This rank's local counts, before they replace the config's. */
typedef struct {
    int n_head, n_kv_head, d_ff;
    int shexp0, n_shexp; /* rows of the shared experts' (concatenated) MLP */
} local_sizes;

/* Computes every split of this rank into tp and *ls, checking the model divides for tp->size ranks. */
static int plan_split(const mx_model *m, mx_tp *tp, local_sizes *ls, mx_err *err) {
    const mx_config *c = &m->cfg;
    int N = tp->size, r = tp->rank, n;
    /* MLA heads are independent (no KV heads to share): split them like MHA */
    int G = c->arch == MX_ARCH_DEEPSEEK2 ? c->n_head : c->n_kv_head;
    if (split_heads(c->n_head, G, N, r, &tp->head0, &ls->n_head, &tp->kv_head0, &ls->n_kv_head, err))
        return err->code;
    if (N > c->vocab)
        return mx_err_set(err, MX_ERR_ARG, "--tp %d: more ranks than vocabulary rows (%d)", N, c->vocab);
    if (N > c->d_ff) return mx_err_set(err, MX_ERR_ARG, "--tp %d: more ranks than MLP rows (%d)", N, c->d_ff);
    split_range(c->d_ff, N, r, down_block(m, false), &tp->ff0, &ls->d_ff);
    if (c->n_shared_expert > 0) {
        int Fs = (c->d_ff_expert ? c->d_ff_expert : c->d_ff) * c->n_shared_expert;
        if (N > Fs)
            return mx_err_set(err, MX_ERR_ARG, "--tp %d: more ranks than shared-expert rows (%d)", N, Fs);
        split_range(Fs, N, r, down_block(m, true), &ls->shexp0, &ls->n_shexp);
    }
    split_range(c->vocab, N, r, 1, &tp->vocab0, &tp->n_vocab);
    tp->vocab_max = (c->vocab + N - 1) / N;
    split_range(c->n_expert, N, r, 1, &tp->expert0, &n);
    tp->expert1 = tp->expert0 + n;
    return MX_OK;
}

int mx_tp_shard(mx_model *m, mx_comm *comm, mx_err *err) {
    mx_config *c = &m->cfg;
    if (m->tp) return mx_err_set(err, MX_ERR_ARG, "%s: the model is already sharded", m->path);
    mx_tp *tp = calloc(1, sizeof *tp);
    if (!tp) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    *tp = (mx_tp){.comm = comm,
                  .rank = comm->rank,
                  .size = comm->size,
                  .n_head = c->n_head,
                  .n_kv_head = c->n_kv_head,
                  .d_ff = c->d_ff,
                  .vocab = c->vocab};
    tp->decode_bytes_one = mx_model_decode_bytes(m);
    local_sizes ls = {0};
    if (plan_split(m, tp, &ls, err)) {
        free(tp);
        return mx_err_wrap(err, "%s", m->path);
    }
    if (c->n_expert > 0 && c->d_ff_expert == 0) c->d_ff_expert = c->d_ff; /* experts are not split by rows */
    c->n_head = ls.n_head;
    c->n_kv_head = ls.n_kv_head;
    c->d_ff = ls.d_ff;
    if (shard_layers(m, tp, ls.shexp0, ls.n_shexp, err)) {
        free(tp);
        return mx_err_wrap(err, "%s: sharding for rank %d of %d", m->path, comm->rank, comm->size);
    }
    m->tp = tp;
    tp->decode_bytes = rank_decode_bytes(m, tp);
    return MX_OK;
}

void mx_tp_reduce(mx_session *s, float *x, size_t n) {
    const mx_tp *tp = s->m->tp;
    if (!tp) return;
    mx_err err = {0};
    /* enqueued only (NCCL): the head's allgather at the end of the pass waits for every sum before it */
    if (tp->comm->allreduce_sum_enqueue(tp->comm, x, n, &err)) tp->comm->abort(tp->comm, err.msg, 1);
}

/* Ends the job: a collective or an allocation of the head failed mid-pass. */
static void fail(const mx_tp *tp, const char *what) {
    char msg[1200];
    snprintf(msg, sizeof msg, "tensor-parallel output head: %s", what);
    tp->comm->abort(tp->comm, msg, 1);
}

int mx_tp_session_init(mx_session *s, mx_err *err) {
    const mx_tp *tp = s->m->tp;
    mx_backend *be = s->be;
    if (!tp) return MX_OK;
    if (s->m->w.output.dev && !be->row_views)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--tp: the %s backend cannot multiply by a row range of the output head", be->name);
    size_t per = (size_t)s->ubatch * (size_t)tp->vocab_max;
    s->tp_send = be->alloc(be, sizeof(float) * per);
    s->tp_recv = be->alloc(be, sizeof(float) * per * (size_t)tp->size);
    if (!s->tp_send || !s->tp_recv)
        return mx_err_set(
            err, MX_ERR_NOMEM,
            "out of memory on %s for the tensor-parallel head's buffers (%d ranks x %d tokens x "
            "%d vocabulary rows)",
            be->name, tp->size, s->ubatch, tp->vocab_max);
    be->fill(be, s->tp_send, per, 0.0f); /* the padding columns of a narrower rank travel as zeros */
    return MX_OK;
}

/* This rank's vocabulary rows of the placed output head: a view (tied: of the embedding), its device copy
 * offset like its data (backend.h: row_views). */
static mx_tensor head_rows(const mx_session *s) {
    const mx_tp *tp = s->m->tp;
    mx_tensor head = s->m->w.output;
    size_t off = mx_dtype_row_bytes(head.type, head.ne[0]) * (size_t)tp->vocab0;
    head.data = (const char *)head.data + off;
    head.dev = head.dev ? (char *)head.dev + off : NULL;
    head.ne[1] = tp->n_vocab;
    head.nbytes = mx_dtype_row_bytes(head.type, head.ne[0]) * (size_t)tp->n_vocab;
    return head;
}

void mx_tp_logits(mx_session *s, const float *hn, int rows, float *logits) {
    const mx_tp *tp = s->m->tp;
    mx_backend *be = s->be;
    mx_tensor head = head_rows(s);
    size_t V = (size_t)tp->vocab, W = (size_t)tp->vocab_max, per = (size_t)rows * W;
    if (!s->tp_send || rows > s->ubatch) fail(tp, "the session has no gather buffers for this many rows");
    be->matmul(be, &head, hn, s->logits, rows); /* (rows, n_vocab) */
    /* (rows, W): the local rows padded to the widest rank's */
    be->copy3d(be, s->tp_send, s->logits, tp->n_vocab, rows, 1, W, (size_t)tp->n_vocab, 0, 0);
    mx_err err = {0};
    if (tp->comm->allgather(tp->comm, s->tp_send, s->tp_recv, per, &err)) fail(tp, err.msg);
    for (int r = 0; r < tp->size; r++) { /* rank r's block (rows, W) → columns [v0, v0 + nv) of (rows, V) */
        int v0, nv;
        split_range(tp->vocab, tp->size, r, 1, &v0, &nv);
        be->copy3d(be, s->logits + v0, s->tp_recv + per * (size_t)r, nv, rows, 1, V, W, 0, 0);
    }
    be->to_host(be, logits, s->logits, (size_t)rows * V);
}

bool mx_tp_has_expert(const mx_session *s, int e) {
    const mx_tp *tp = s->m->tp;
    return !tp || (e >= tp->expert0 && e < tp->expert1);
}

void mx_tp_describe(const mx_model *m, FILE *f) {
    const mx_tp *tp = m->tp;
    const mx_config *c = &m->cfg;
    if (!tp) return;
    fprintf(f, "tensor parallel: rank %d of %d holds query heads %d..%d of %d, KV heads %d..%d of %d",
            tp->rank, tp->size, tp->head0, tp->head0 + c->n_head - 1, tp->n_head, tp->kv_head0,
            tp->kv_head0 + c->n_kv_head - 1, tp->n_kv_head);
    if (c->arch != MX_ARCH_DEEPSEEK2) fprintf(f, "%s", tp->n_kv_head < tp->size ? " (replicated)" : "");
    fprintf(f, ", MLP rows %d..%d of %d", tp->ff0, tp->ff0 + c->d_ff - 1, tp->d_ff);
    if (c->n_expert > 0) fprintf(f, ", experts %d..%d of %d", tp->expert0, tp->expert1 - 1, c->n_expert);
    fprintf(f, ", vocabulary rows %d..%d of %d\n", tp->vocab0, tp->vocab0 + tp->n_vocab - 1, tp->vocab);
    fprintf(f,
            "                 weights read per decoded token on this rank: %.2f MiB (one rank: %.2f MiB); %d "
            "column slices kept as fp32 (not on block boundaries); the KV figures below are this rank's\n",
            tp->decode_bytes / 1048576.0, tp->decode_bytes_one / 1048576.0, tp->f32_copies);
}
