/* cuda_graph.cu: the contract's op table, and CUDA graphs for repeated op sequences.
 *
 * forward.c calls ~17 ops per layer per token; launched one by one, a SmolLM2 decode step is ~520 kernel
 * launches and host launch overhead dominates. So by default (MX_CUDA_GRAPHS unset or not "0") every op call
 * is recorded, not launched: its arguments go into a typed record (cuda_records.h), and its position
 * arguments (rope/kv_write pos0, attention q_pos0/kv_lo/kv_hi) and embedding ids into a small host table
 * (pinned). At a flush (to_host, sync, free, upload, release, or a full record list) the records run:
 *   - the table is uploaded in one copy; kernels read their position arguments from it (the dyn pointers);
 *   - groups of one-token records that cuda_fusion.cu matches by data flow run as one fused kernel each;
 *   - a sequence seen for the first time runs eagerly; seen a second time it is captured into a CUDA graph;
 *     from then on, the same sequence (same ops, pointers, shapes; positions may differ) replays the graph.
 * Decode attention sizes its KV split from n_slots (fixed) in this mode so that the launch shapes do not
 * depend on the position. Scratch buffers that move (mx_cuda_scratch bumps c->gen) make cached graphs stale.
 */
#include <string.h>
#include <time.h>

#include "cuda_records.h"

typedef struct {
    rec *recs;
    int n_recs, n_dyn;
    uint64_t hash; /* of recs, n_recs and n_dyn: the lookup's first test */
    unsigned gen;
    cudaGraphExec_t exec;     /* NULL: seen once, not captured yet */
    long n_fused[FUSE_KINDS]; /* the fused groups one run of the sequence launches (counted at replays) */
    unsigned long long last_use;
    /* MX_CUDA_TIMING=1: replays timed with events (gpu_s), host time in cudaGraphLaunch (launch_s), and the
     * host clock from one replay's flush to the next replay's (period_s, replays that follow one another
     * only) */
    long n_timed, n_period;
    double gpu_s, launch_s, period_s, last_flush;
} gentry;

/* N_GRAPHS: a dense model's decode step is 1-2 sequences; an MoE model's is one per layer and routed expert
 * set (the expert weights are part of a sequence), a few hundred for Mixtral's 8-choose-2 over its layers. */
enum { MAX_RECS = 4096, MAX_DYN = 16384, N_GRAPHS = 512 };
#define REC_BYTES_MAX ((size_t)64 << 20)

typedef struct {
    rec recs[MAX_RECS];
    int n_recs, n_dyn;
    int *dyn_h; /* pinned */
    int *dyn_d;
    cudaEvent_t dyn_done; /* the last upload of dyn_h has been read */
    bool dyn_pending;
    gentry g[N_GRAPHS];
    size_t rec_bytes; /* the entries' records together (at most REC_BYTES_MAX) */
    unsigned long long clock;
    bool enabled;
    int timing;
    cudaEvent_t t0, t1;
    gentry *timed; /* the replay whose events are pending */
    gentry *last_replay;
    int plan[MAX_RECS]; /* run_all's fusion plan (cuda_records.h: mx_cuda_fuse_plan) */
    fuse_group groups[MAX_RECS];
    long run_fused[FUSE_KINDS];   /* the groups of the last run_all */
    long total_fused[FUSE_KINDS]; /* every group launched or replayed since the backend was created */
} gstate;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* folds the pending replay's event timing into its entry */
static void timing_collect(gstate *g) {
    if (!g->timed) return;
    float ms = 0.0f;
    if (cudaEventSynchronize(g->t1) == cudaSuccess &&
        cudaEventElapsedTime(&ms, g->t0, g->t1) == cudaSuccess) {
        g->timed->gpu_s += 1e-3 * ms;
        g->timed->n_timed++;
    }
    cudaGetLastError();
    g->timed = NULL;
}

static void timing_print(const gentry *e) {
    if (e->n_timed)
        fprintf(stderr,
                "mixatt cuda timing: graph of %d ops: %ld replays, GPU %.1f us, cudaGraphLaunch %.1f us, "
                "flush-to-flush %.1f us (%ld)\n",
                e->n_recs, e->n_timed, 1e6 * e->gpu_s / e->n_timed, 1e6 * e->launch_s / e->n_timed,
                e->n_period ? 1e6 * e->period_s / e->n_period : 0.0, e->n_period);
}

static gstate *gs(mx_cuda_ctx *c) {
    return (gstate *)c->graph;
}

static void run_rec(mx_cuda_ctx *c, const rec *r, const int *dyn) {
    const int *d = dyn + r->dyn_off;
    switch (r->kind) {
    case R_MATMUL:
        mx_cuda_matmul_k(c, &r->u.mm.w, r->u.mm.x, r->u.mm.y, r->u.mm.T);
        break;
    case R_MATMUL_T:
        mx_cuda_matmul_t_k(c, &r->u.mm.w, r->u.mm.x, r->u.mm.y, r->u.mm.T);
        break;
    case R_EMBED:
        mx_cuda_embed_k(c, &r->u.embed.w, d, r->u.embed.T, r->u.embed.out);
        break;
    case R_EMBED_DEV:
        mx_cuda_embed_k(c, &r->u.embed.w, r->u.embed.ids, r->u.embed.T, r->u.embed.out);
        break;
    case R_RMSNORM:
        mx_cuda_rmsnorm_k(c, r->u.norm.x, r->u.norm.w, r->u.norm.out, r->u.norm.T, r->u.norm.C,
                          r->u.norm.eps);
        break;
    case R_LAYERNORM:
        mx_cuda_layernorm_k(c, r->u.norm.x, r->u.norm.w, r->u.norm.b, r->u.norm.out, r->u.norm.T, r->u.norm.C,
                            r->u.norm.eps);
        break;
    case R_ROPE:
        mx_cuda_rope_k(c, r->u.rope.x, r->u.rope.T, r->u.rope.n_head, r->u.rope.head_dim, r->u.rope.rope_dim,
                       0, r->u.rope.theta, r->u.rope.mode, d);
        break;
    case R_SWIGLU:
        mx_cuda_swiglu_k(c, r->u.swiglu.g, r->u.swiglu.u, r->u.swiglu.n);
        break;
    case R_GELU:
        mx_cuda_gelu_k(c, r->u.unary.x, r->u.unary.n);
        break;
    case R_TANH:
        mx_cuda_tanh_k(c, r->u.unary.x, r->u.unary.n);
        break;
    case R_ADD:
        mx_cuda_add_k(c, r->u.add.y, r->u.add.x, r->u.add.n);
        break;
    case R_ADD_BIAS:
        mx_cuda_add_bias_k(c, r->u.add_bias.y, r->u.add_bias.b, r->u.add_bias.T, r->u.add_bias.n);
        break;
    case R_ATTN:
        mx_cuda_attention_k(c, &r->u.attn.spec, r->u.attn.q, r->u.attn.k, r->u.attn.v, r->u.attn.out,
                            r->u.attn.lse, d, true);
        break;
    case R_KV:
        mx_cuda_kv_write_k(c, r->u.kv.store, r->u.kv.src, r->u.kv.T, r->u.kv.n, 0, r->u.kv.n_slots, d);
        break;
    case R_KV_READ:
        mx_cuda_kv_read_k(c, r->u.kv_read.store, r->u.kv_read.dst, r->u.kv_read.T, r->u.kv_read.n, 0,
                          r->u.kv_read.n_slots, d);
        break;
    case R_FILL:
        mx_cuda_fill_k(c, r->u.fill.x, r->u.fill.n, r->u.fill.value);
        break;
    case R_COPY3D:
        mx_cuda_copy3d_k(c, r->u.copy3d.dst, r->u.copy3d.src, r->u.copy3d.n0, r->u.copy3d.n1, r->u.copy3d.n2,
                         r->u.copy3d.ds1, r->u.copy3d.ss1, r->u.copy3d.ds2, r->u.copy3d.ss2);
        break;
    case R_GATHER:
        mx_cuda_gather_rows_k(c, r->u.gather.dst, r->u.gather.src, d, r->u.gather.rows, r->u.gather.n);
        break;
    case R_SCATTER:
        mx_cuda_scatter_add_rows_k(c, r->u.scatter.dst, r->u.scatter.src, d,
                                   (const float *)(d + r->u.scatter.rows), r->u.scatter.rows, r->u.scatter.n,
                                   r->u.scatter.distinct);
        break;
    case R_SOFTMAX:
        mx_cuda_softmax_rows_k(c, r->u.softmax.x, r->u.softmax.T, r->u.softmax.n);
        break;
    case R_SCALE_ADD:
        mx_cuda_scale_add_rows_k(c, r->u.scale_add.y, r->u.scale_add.x, r->u.scale_add.x_stride,
                                 r->u.scale_add.w, r->u.scale_add.w_stride, r->u.scale_add.T,
                                 r->u.scale_add.n);
        break;
    case R_PREFIX_MEAN:
        mx_cuda_prefix_mean_k(c, r->u.prefix_mean.x, r->u.prefix_mean.T, r->u.prefix_mean.C,
                              r->u.prefix_mean.sums, 0, r->u.prefix_mean.n_slots, r->u.prefix_mean.mean, d);
        break;
    case R_LSE_MERGE:
        mx_cuda_lse_merge_k(c, r->u.lse_merge.outs, r->u.lse_merge.lses, r->u.lse_merge.part_stride,
                            r->u.lse_merge.R, r->u.lse_merge.T, r->u.lse_merge.H, r->u.lse_merge.Dv,
                            r->u.lse_merge.out, r->u.lse_merge.lse);
        break;
    case R_SAMPLE: {
        mx_sample_spec sp;
        memset(&sp, 0, sizeof sp);
        sp.temperature = r->u.sample.temperature, sp.top_k = r->u.sample.top_k;
        sp.top_p = r->u.sample.top_p, sp.min_p = r->u.sample.min_p; /* u: dyn[0], read on the device */
        mx_cuda_sample_k(c, r->u.sample.logits, r->u.sample.vocab, &sp, d, r->u.sample.tok);
        break;
    }
    }
}

/* Runs the flush's records in order, each fused group (cuda_fusion.cu) as one kernel at its first record's
 * place; the groups' counts by kind go to g->run_fused (the caller adds them to the totals once the sequence
 * has run). */
static void run_all(mx_cuda_ctx *c, gstate *g) {
    int n_groups = c->tune.fuse ? mx_cuda_fuse_plan(g->recs, g->n_recs, g->plan, g->groups) : 0;
    memset(g->run_fused, 0, sizeof g->run_fused);
    for (int i = 0; i < g->n_recs; i++) {
        int pl = n_groups ? g->plan[i] : -1;
        if (pl == -1) {
            run_rec(c, &g->recs[i], g->dyn_d);
        } else if (pl >= 0) {
            mx_cuda_fuse_run(c, g->recs, &g->groups[pl], g->dyn_d);
            g->run_fused[g->groups[pl].kind]++;
        }
    }
}

static void count_fused(gstate *g, const long *n) {
    for (int k = 0; k < FUSE_KINDS; k++) g->total_fused[k] += n[k];
}

static void drop(gentry *e) {
    timing_print(e);
    if (e->exec) cudaGraphExecDestroy(e->exec);
    free(e->recs);
    memset(e, 0, sizeof *e);
}

/* The least recently used entry holding a sequence (NULL: none), or with any = true an empty one first. */
static gentry *lru(gstate *g, bool any) {
    gentry *e = NULL;
    for (int i = 0; i < N_GRAPHS; i++) {
        gentry *f = &g->g[i];
        if (!f->recs) {
            if (any) return f;
        } else if (!e || f->last_use < e->last_use) {
            e = f;
        }
    }
    return e;
}
/* Drops an entry's records and graph. */
static void forget(gstate *g, gentry *e) {
    if (g->timed == e) timing_collect(g);
    if (g->last_replay == e) g->last_replay = NULL;
    if (e->recs) g->rec_bytes -= sizeof(rec) * (size_t)e->n_recs;
    drop(e);
}

/* A hash of a sequence's length, its first 16 records and its last (MoE sequences differ in the expert
 * weights of their first records); cheap enough for every decode step. Equal hashes are confirmed with
 * memcmp. */
static uint64_t recs_hash(const rec *r, int n_recs, int n_dyn) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n_recs << 32) ^ (uint64_t)n_dyn;
    int n_head = n_recs < 16 ? n_recs : 16;
    for (int k = 0; k <= n_head; k++) {
        const rec *x = k < n_head ? &r[k] : &r[n_recs - 1];
        uint64_t w[sizeof(rec) / 8];
        memcpy(w, x, sizeof w);
        for (size_t i = 0; i < sizeof w / 8; i++) h = (h ^ w[i]) * 0x100000001B3ull + (h >> 29);
    }
    return h;
}

void mx_cuda_graph_flush(mx_cuda_ctx *c) {
    gstate *g = gs(c);
    if (!g || !g->n_recs) return;
    CU_CHECK(cudaMemcpyAsync(g->dyn_d, g->dyn_h, sizeof(int) * (size_t)(g->n_dyn ? g->n_dyn : 1),
                             cudaMemcpyHostToDevice, c->stream));
    CU_CHECK(cudaEventRecord(g->dyn_done, c->stream));
    g->dyn_pending = true;
    g->clock++;
    gentry *hit = NULL;
    uint64_t hash = recs_hash(g->recs, g->n_recs, g->n_dyn);
    for (int i = 0; i < N_GRAPHS; i++) {
        gentry *e = &g->g[i];
        if (e->recs && e->hash == hash && e->n_recs == g->n_recs && e->n_dyn == g->n_dyn &&
            !memcmp(e->recs, g->recs, sizeof(rec) * (size_t)g->n_recs)) {
            hit = e;
            break;
        }
    }
    if (g->timing && hit != g->last_replay) g->last_replay = NULL;
    if (hit && hit->gen != c->gen) { /* a scratch buffer moved since: recapture */
        if (hit->exec) cudaGraphExecDestroy(hit->exec);
        hit->exec = NULL;
        hit->gen = c->gen;
    }
    if (hit && hit->exec) {
        hit->last_use = g->clock;
        if (g->timing) {
            timing_collect(g);
            double t = now_s();
            if (g->last_replay == hit && hit->last_flush > 0)
                hit->period_s += t - hit->last_flush, hit->n_period++;
            hit->last_flush = t;
            g->last_replay = hit;
            CU_CHECK(cudaEventRecord(g->t0, c->stream));
            CU_CHECK(cudaGraphLaunch(hit->exec, c->stream));
            hit->launch_s += now_s() - t;
            CU_CHECK(cudaEventRecord(g->t1, c->stream));
            g->timed = hit;
        } else {
            CU_CHECK(cudaGraphLaunch(hit->exec, c->stream));
        }
        count_fused(g, hit->n_fused);
    } else if (hit) { /* second sighting: capture */
        hit->last_use = g->clock;
        cudaGraph_t graph = NULL;
        unsigned gen0 = c->gen;
        c->capturing = 1;
        c->capture_broken = 0;
        CU_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
        run_all(c, g);
        CU_CHECK(cudaStreamEndCapture(c->stream, &graph));
        c->capturing = 0;
        if (!c->capture_broken && c->gen == gen0) {
            CU_CHECK(cudaGraphInstantiate(&hit->exec, graph, 0));
            CU_CHECK(cudaGraphLaunch(hit->exec, c->stream));
            memcpy(hit->n_fused, g->run_fused, sizeof hit->n_fused);
        } else {
            run_all(c, g); /* grows what it needs; the next sighting captures */
        }
        count_fused(g, g->run_fused);
        CU_CHECK(cudaGraphDestroy(graph));
    } else { /* first sighting: run eagerly, remember the sequence (least recently used out first) */
        run_all(c, g);
        count_fused(g, g->run_fused);
        size_t need = sizeof(rec) * (size_t)g->n_recs;
        for (gentry *o; g->rec_bytes + need > REC_BYTES_MAX && (o = lru(g, false));) forget(g, o);
        gentry *e = lru(g, true);
        if (e->recs) forget(g, e);
        e->recs = (rec *)malloc(need);
        if (e->recs) {
            memcpy(e->recs, g->recs, need);
            e->n_recs = g->n_recs, e->n_dyn = g->n_dyn, e->gen = c->gen, e->last_use = g->clock,
            e->hash = hash;
            memcpy(e->n_fused, g->run_fused, sizeof e->n_fused);
            g->rec_bytes += need;
        }
    }
    g->n_recs = 0;
    g->n_dyn = 0;
}

/* A new record (zeroed, so that padding compares equal) with room for n_dyn dynamic ints. */
static rec *new_rec(mx_cuda_ctx *c, rkind kind, int n_dyn, int **dyn) {
    gstate *g = gs(c);
    if (g->n_recs == MAX_RECS || g->n_dyn + n_dyn > MAX_DYN) mx_cuda_graph_flush(c);
    if (g->n_recs == 0 &&
        g->dyn_pending) { /* the previous upload must have read the table before we write it */
        CU_CHECK(cudaEventSynchronize(g->dyn_done));
        g->dyn_pending = false;
    }
    rec *r = &g->recs[g->n_recs++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->dyn_off = g->n_dyn;
    *dyn = g->dyn_h + g->n_dyn;
    g->n_dyn += n_dyn;
    return r;
}

static bool recording(mx_backend *be) {
    return gs(cu_ctx(be))->enabled;
}
/* The weight (or row view) t, by value: records compare with memcmp, so the padding is zeroed. */
static mx_cuda_weight wcopy(mx_cuda_ctx *c, const mx_tensor *t) {
    mx_cuda_weight v = mx_cuda_weight_of(c, t), w;
    memset(&w, 0, sizeof w); /* member by member, so that the padding stays zero */
    w.q = v.q, w.bf = v.bf, w.type = v.type, w.n_in = v.n_in, w.n_out = v.n_out, w.row_bytes = v.row_bytes;
    return w;
}
/* A vector weight (norm, bias): its fp32 values are at dev. */
static const float *vec(const mx_tensor *t) {
    return (const float *)t->dev;
}

/* ---- the contract's ops ---- */

static void op_matmul(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) {
        mx_cuda_weight mw = mx_cuda_weight_of(c, w);
        return mx_cuda_matmul_k(c, &mw, x, y, T);
    }
    int *d;
    rec *r = new_rec(c, R_MATMUL, 0, &d);
    r->u.mm.w = wcopy(c, w), r->u.mm.x = x, r->u.mm.y = y, r->u.mm.T = T;
}

static void op_embed(mx_backend *be, const mx_tensor *w, const int *ids, int T, float *out) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (T <= 0) return;
    if (!recording(be) || T > MAX_DYN / 2) {
        mx_cuda_graph_flush(c);
        int *d_ids = (int *)mx_cuda_scratch(c, (void **)&c->ids, &c->ids_cap, sizeof(int) * (size_t)T);
        /* pageable source: returns once the ids are staged, so the caller may reuse its array at once */
        CU_CHECK(cudaMemcpyAsync(d_ids, ids, sizeof(int) * (size_t)T, cudaMemcpyHostToDevice, c->stream));
        mx_cuda_weight mw = mx_cuda_weight_of(c, w);
        return mx_cuda_embed_k(c, &mw, d_ids, T, out);
    }
    int *d;
    rec *r = new_rec(c, R_EMBED, T, &d);
    memcpy(d, ids, sizeof(int) * (size_t)T);
    r->u.embed.w = wcopy(c, w), r->u.embed.out = out, r->u.embed.T = T;
}

static void op_rmsnorm(mx_backend *be, const float *x, const mx_tensor *w, float *out, int T, int C,
                       float eps) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_rmsnorm_k(c, x, vec(w), out, T, C, eps);
    int *d;
    rec *r = new_rec(c, R_RMSNORM, 0, &d);
    r->u.norm.x = x, r->u.norm.out = out, r->u.norm.w = vec(w), r->u.norm.T = T, r->u.norm.C = C;
    r->u.norm.eps = eps;
}

static void op_layernorm(mx_backend *be, const float *x, const mx_tensor *w, const mx_tensor *b, float *out,
                         int T, int C, float eps) {
    mx_cuda_ctx *c = cu_ctx(be);
    const float *bp = b ? vec(b) : NULL;
    if (!recording(be)) return mx_cuda_layernorm_k(c, x, vec(w), bp, out, T, C, eps);
    int *d;
    rec *r = new_rec(c, R_LAYERNORM, 0, &d);
    r->u.norm.x = x, r->u.norm.out = out, r->u.norm.w = vec(w), r->u.norm.b = bp, r->u.norm.T = T;
    r->u.norm.C = C, r->u.norm.eps = eps;
}

static void op_rope(mx_backend *be, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                    float theta, mx_rope_mode mode) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_rope_k(c, x, T, n_head, head_dim, rope_dim, pos0, theta, mode, NULL);
    int *d;
    rec *r = new_rec(c, R_ROPE, 1, &d);
    d[0] = pos0;
    r->u.rope.x = x, r->u.rope.T = T, r->u.rope.n_head = n_head, r->u.rope.head_dim = head_dim;
    r->u.rope.rope_dim = rope_dim, r->u.rope.mode = mode, r->u.rope.theta = theta;
}

static void op_swiglu(mx_backend *be, float *g, const float *u, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_swiglu_k(c, g, u, n);
    int *d;
    rec *r = new_rec(c, R_SWIGLU, 0, &d);
    r->u.swiglu.g = g, r->u.swiglu.u = u, r->u.swiglu.n = n;
}

static void op_gelu(mx_backend *be, float *x, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_gelu_k(c, x, n);
    int *d;
    rec *r = new_rec(c, R_GELU, 0, &d);
    r->u.unary.x = x, r->u.unary.n = n;
}

static void op_add(mx_backend *be, float *y, const float *x, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_add_k(c, y, x, n);
    int *d;
    rec *r = new_rec(c, R_ADD, 0, &d);
    r->u.add.y = y, r->u.add.x = x, r->u.add.n = n;
}

static void op_add_bias(mx_backend *be, float *y, const mx_tensor *b, int T, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_add_bias_k(c, y, vec(b), T, n);
    int *d;
    rec *r = new_rec(c, R_ADD_BIAS, 0, &d);
    r->u.add_bias.y = y, r->u.add_bias.b = vec(b), r->u.add_bias.T = T, r->u.add_bias.n = n;
}

static void op_attention(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k,
                         const void *v, float *out, float *lse) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_attention_k(c, spec, q, k, v, out, lse, NULL, false);
    int *d;
    rec *r = new_rec(c, R_ATTN, 3, &d);
    d[0] = spec->q_pos0, d[1] = spec->kv_lo, d[2] = spec->kv_hi;
    r->u.attn.spec = *spec;
    r->u.attn.spec.q_pos0 = r->u.attn.spec.kv_lo = r->u.attn.spec.kv_hi = 0;
    r->u.attn.q = q, r->u.attn.k = k, r->u.attn.v = v, r->u.attn.out = out, r->u.attn.lse = lse;
}

static void op_kv_write(mx_backend *be, void *store, const float *src, int T, int n, int pos0, int n_slots) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_kv_write_k(c, store, src, T, n, pos0, n_slots, NULL);
    int *d;
    rec *r = new_rec(c, R_KV, 1, &d);
    d[0] = pos0;
    r->u.kv.store = store, r->u.kv.src = src, r->u.kv.T = T, r->u.kv.n = n, r->u.kv.n_slots = n_slots;
}

/* ---- the MoE / MLA / MKA ops ---- */

static void op_fill(mx_backend *be, float *x, size_t n, float value) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_fill_k(c, x, n, value);
    int *d;
    rec *r = new_rec(c, R_FILL, 0, &d);
    r->u.fill.x = x, r->u.fill.n = n, r->u.fill.value = value;
}

static void op_copy3d(mx_backend *be, float *dst, const float *src, int n0, int n1, int n2, size_t ds1,
                      size_t ss1, size_t ds2, size_t ss2) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_copy3d_k(c, dst, src, n0, n1, n2, ds1, ss1, ds2, ss2);
    int *d;
    rec *r = new_rec(c, R_COPY3D, 0, &d);
    r->u.copy3d.dst = dst, r->u.copy3d.src = src, r->u.copy3d.n0 = n0, r->u.copy3d.n1 = n1,
    r->u.copy3d.n2 = n2;
    r->u.copy3d.ds1 = ds1, r->u.copy3d.ss1 = ss1, r->u.copy3d.ds2 = ds2, r->u.copy3d.ss2 = ss2;
}

static void op_matmul_t(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) {
        mx_cuda_weight mw = mx_cuda_weight_of(c, w);
        return mx_cuda_matmul_t_k(c, &mw, x, y, T);
    }
    int *d;
    rec *r = new_rec(c, R_MATMUL_T, 0, &d);
    r->u.mm.w = wcopy(c, w), r->u.mm.x = x, r->u.mm.y = y, r->u.mm.T = T;
}

static void op_kv_read(mx_backend *be, const void *store, float *dst, int T, int n, int pos0, int n_slots) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_kv_read_k(c, store, dst, T, n, pos0, n_slots, NULL);
    int *d;
    rec *r = new_rec(c, R_KV_READ, 1, &d);
    d[0] = pos0;
    r->u.kv_read.store = store, r->u.kv_read.dst = dst, r->u.kv_read.T = T, r->u.kv_read.n = n;
    r->u.kv_read.n_slots = n_slots;
}

static void op_moe_route(mx_backend *be, const float *logits, int T, int E, int k, bool norm, float scale,
                         int *ids, float *w) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (T <= 0) return;
    mx_cuda_graph_flush(c);
    mx_cuda_moe_route(c, logits, T, E, k, norm, scale, ids, w); /* on the device; waits for ids and w */
}

/* Eager (it waits for the experts' token counts): flushes what was recorded first (cuda_moe.cu). */
static bool op_moe_ffn(mx_backend *be, const float *x, const float *logits, int T, int E, int k, bool norm,
                       float scale, const mx_tensor *gate, const mx_tensor *up, const mx_tensor *down,
                       const bool *local, float *out, int *counts) {
    return mx_cuda_moe_ffn(cu_ctx(be), x, logits, T, E, k, norm, scale, gate, up, down, local, out, counts);
}

/* Host index (and weight) arrays: into the dynamic table when recording, else staged in a device scratch. */
static const int *stage_host(mx_cuda_ctx *c, const int *idx, const float *w, int rows) {
    size_t n = (size_t)rows * (w ? 2 : 1);
    int *dd = (int *)mx_cuda_scratch(c, (void **)&c->hidx, &c->hidx_cap, sizeof(int) * n);
    CU_CHECK(cudaMemcpyAsync(dd, idx, sizeof(int) * (size_t)rows, cudaMemcpyHostToDevice, c->stream));
    if (w)
        CU_CHECK(
            cudaMemcpyAsync(dd + rows, w, sizeof(float) * (size_t)rows, cudaMemcpyHostToDevice, c->stream));
    return dd;
}

static void op_gather_rows(mx_backend *be, float *dst, const float *src, const int *idx, int rows, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (rows <= 0) return;
    if (!recording(be) || rows > MAX_DYN / 4) {
        mx_cuda_graph_flush(c);
        return mx_cuda_gather_rows_k(c, dst, src, stage_host(c, idx, NULL, rows), rows, n);
    }
    int *d;
    rec *r = new_rec(c, R_GATHER, rows, &d);
    memcpy(d, idx, sizeof(int) * (size_t)rows);
    r->u.gather.dst = dst, r->u.gather.src = src, r->u.gather.rows = rows, r->u.gather.n = n;
}

/* Whether no index repeats (then scatter_add_rows runs every row at once). */
static bool all_distinct(const int *idx, int rows) {
    int mx = 0;
    for (int i = 0; i < rows; i++) {
        if (idx[i] < 0) return false;
        if (idx[i] > mx) mx = idx[i];
    }
    if (rows > 1 && mx >= (1 << 26)) return false;
    unsigned char *seen = (unsigned char *)calloc((size_t)mx + 1, 1);
    if (!seen) return false;
    bool ok = true;
    for (int i = 0; i < rows && ok; i++) ok = !seen[idx[i]]++;
    free(seen);
    return ok;
}

static void op_scatter_add_rows(mx_backend *be, float *dst, const float *src, const int *idx, const float *w,
                                int rows, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (rows <= 0) return;
    /* MX_CUDA_SCATTER=serial: always the in-order kernel (A/B checks) */
    bool distinct = !c->tune.scatter_serial && all_distinct(idx, rows);
    if (!recording(be) || rows > MAX_DYN / 8) {
        mx_cuda_graph_flush(c);
        const int *dd = stage_host(c, idx, w, rows);
        return mx_cuda_scatter_add_rows_k(c, dst, src, dd, (const float *)(dd + rows), rows, n, distinct);
    }
    int *d;
    rec *r = new_rec(c, R_SCATTER, 2 * rows, &d);
    memcpy(d, idx, sizeof(int) * (size_t)rows);
    memcpy(d + rows, w, sizeof(float) * (size_t)rows);
    r->u.scatter.dst = dst, r->u.scatter.src = src, r->u.scatter.rows = rows, r->u.scatter.n = n;
    r->u.scatter.distinct = distinct;
}

static void op_tanh(mx_backend *be, float *x, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_tanh_k(c, x, n);
    int *d;
    rec *r = new_rec(c, R_TANH, 0, &d);
    r->u.unary.x = x, r->u.unary.n = n;
}

static void op_softmax_rows(mx_backend *be, float *x, int T, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_softmax_rows_k(c, x, T, n);
    int *d;
    rec *r = new_rec(c, R_SOFTMAX, 0, &d);
    r->u.softmax.x = x, r->u.softmax.T = T, r->u.softmax.n = n;
}

static void op_scale_add_rows(mx_backend *be, float *y, const float *x, size_t x_stride, const float *w,
                              size_t w_stride, int T, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_scale_add_rows_k(c, y, x, x_stride, w, w_stride, T, n);
    int *d;
    rec *r = new_rec(c, R_SCALE_ADD, 0, &d);
    r->u.scale_add.y = y, r->u.scale_add.x = x, r->u.scale_add.w = w, r->u.scale_add.x_stride = x_stride;
    r->u.scale_add.w_stride = w_stride, r->u.scale_add.T = T, r->u.scale_add.n = n;
}

static void op_prefix_mean(mx_backend *be, const float *x, int T, int C, float *sums, int pos0, int n_slots,
                           float *mean) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_prefix_mean_k(c, x, T, C, sums, pos0, n_slots, mean, NULL);
    int *d;
    rec *r = new_rec(c, R_PREFIX_MEAN, 1, &d);
    d[0] = pos0;
    r->u.prefix_mean.x = x, r->u.prefix_mean.mean = mean, r->u.prefix_mean.sums = sums;
    r->u.prefix_mean.T = T, r->u.prefix_mean.C = C, r->u.prefix_mean.n_slots = n_slots;
}

static void op_lse_merge(mx_backend *be, const float *outs, const float *lses, size_t part_stride, int R,
                         int T, int H, int Dv, float *out, float *lse) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_lse_merge_k(c, outs, lses, part_stride, R, T, H, Dv, out, lse);
    int *d;
    rec *r = new_rec(c, R_LSE_MERGE, 0, &d);
    r->u.lse_merge.outs = outs, r->u.lse_merge.lses = lses, r->u.lse_merge.out = out,
    r->u.lse_merge.lse = lse;
    r->u.lse_merge.part_stride = part_stride, r->u.lse_merge.R = R, r->u.lse_merge.T = T,
    r->u.lse_merge.H = H;
    r->u.lse_merge.Dv = Dv;
}

/* ---- decode with the host out of the loop (backend.h: sample, sample_wait, embed_dev) ---- */
static void op_embed_dev(mx_backend *be, const mx_tensor *w, const int *ids, int T, float *out) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (T <= 0) return;
    if (!recording(be)) {
        mx_cuda_weight mw = mx_cuda_weight_of(c, w);
        return mx_cuda_embed_k(c, &mw, ids, T, out);
    }
    int *d;
    rec *r = new_rec(c, R_EMBED_DEV, 0, &d);
    r->u.embed.w = wcopy(c, w), r->u.embed.ids = ids, r->u.embed.out = out, r->u.embed.T = T;
}

/* The draw ends a decode step: it is recorded (u in the dynamic table, so that every step replays one graph),
 * the step is flushed, and the token's copy to the host queued behind it. */
static int op_sample(mx_backend *be, const float *logits, int vocab, const mx_sample_spec *sp, int *tok) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) {
        mx_cuda_sample_k(c, logits, vocab, sp, NULL, tok);
    } else {
        int *d;
        rec *r = new_rec(c, R_SAMPLE, 2, &d);
        memcpy(d, &sp->u, sizeof(float));
        d[1] = mx_cuda_sample_slot(c);
        r->u.sample.logits = logits, r->u.sample.tok = tok, r->u.sample.vocab = vocab;
        if (sp->temperature > 0.0f) { /* greedy steps stay one sequence whatever the other fields hold */
            r->u.sample.temperature = sp->temperature, r->u.sample.top_k = sp->top_k;
            r->u.sample.top_p = sp->top_p, r->u.sample.min_p = sp->min_p;
        }
        mx_cuda_graph_flush(c);
    }
    return mx_cuda_sample_fetch(c, tok);
}

static int op_sample_wait(mx_backend *be, int ticket) {
    return mx_cuda_sample_wait(cu_ctx(be), ticket);
}

void mx_cuda_graph_init(mx_backend *be) {
    mx_cuda_ctx *c = cu_ctx(be);
    gstate *g = (gstate *)calloc(1, sizeof *g);
    if (g && c->tune.graphs && cudaMallocHost((void **)&g->dyn_h, sizeof(int) * MAX_DYN) == cudaSuccess &&
        cudaMalloc((void **)&g->dyn_d, sizeof(int) * MAX_DYN) == cudaSuccess &&
        cudaEventCreateWithFlags(&g->dyn_done, cudaEventDisableTiming) == cudaSuccess)
        g->enabled = true;
    if (g && g->enabled && c->tune.timing && cudaEventCreate(&g->t0) == cudaSuccess &&
        cudaEventCreate(&g->t1) == cudaSuccess)
        g->timing = 1;
    cudaGetLastError();
    c->graph = g;
    if (!g) mx_cuda_fatal("calloc", "out of memory", __FILE__, __LINE__);
    be->matmul = op_matmul;
    be->embed = op_embed;
    be->rmsnorm = op_rmsnorm;
    be->layernorm = op_layernorm;
    be->rope = op_rope;
    be->swiglu = op_swiglu;
    be->gelu = op_gelu;
    be->add = op_add;
    be->add_bias = op_add_bias;
    be->attention = op_attention;
    be->kv_write = op_kv_write;
    be->fill = op_fill;
    be->copy3d = op_copy3d;
    be->matmul_t = op_matmul_t;
    be->kv_read = op_kv_read;
    be->moe_route = op_moe_route;
    be->moe_ffn = op_moe_ffn;
    be->gather_rows = op_gather_rows;
    be->scatter_add_rows = op_scatter_add_rows;
    be->tanh_ = op_tanh;
    be->softmax_rows = op_softmax_rows;
    be->scale_add_rows = op_scale_add_rows;
    be->prefix_mean = op_prefix_mean;
    be->lse_merge = op_lse_merge;
    be->sample = op_sample;
    be->sample_wait = op_sample_wait;
    be->embed_dev = op_embed_dev;
}

void mx_cuda_graph_free(mx_cuda_ctx *c) {
    gstate *g = gs(c);
    if (!g) return;
    if (g->timing) timing_collect(g);
    for (int i = 0; i < N_GRAPHS; i++) drop(&g->g[i]);
    if (g->timing) cudaEventDestroy(g->t0), cudaEventDestroy(g->t1);
    if (g->dyn_h) cudaFreeHost(g->dyn_h);
    if (g->dyn_d) cudaFree(g->dyn_d);
    if (g->dyn_done) cudaEventDestroy(g->dyn_done);
    free(g);
    c->graph = NULL;
}

extern "C" void mx_cuda_backend_fusions(mx_backend *be, long counts[4]) {
    gstate *g = gs(cu_ctx(be));
    for (int k = 0; k < FUSE_KINDS; k++) counts[k] = g ? g->total_fused[k] : 0;
}
