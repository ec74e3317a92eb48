/* cuda_graph.cu: the contract's op table, and CUDA graphs for repeated op sequences.
 *
 * forward.c calls ~17 ops per layer per token; launched one by one, a SmolLM2 decode step is ~520 kernel
 * launches and host launch overhead dominates. So by default (MX_CUDA_GRAPHS unset or not "0") every op call
 * is recorded, not launched: its arguments go into a record, and its position arguments (rope/kv_write pos0,
 * attention q_pos0/kv_lo/kv_hi) and embedding ids into a small host table (pinned). At a flush (to_host,
 * sync, free, upload, release, or a full record list) the records run:
 *   - the table is uploaded in one copy; kernels read their position arguments from it (the dyn pointers);
 *   - a sequence seen for the first time runs eagerly; seen a second time it is captured into a CUDA graph;
 *     from then on, the same sequence (same ops, pointers, shapes; positions may differ) replays the graph.
 * Decode attention sizes its KV split from n_slots (fixed) in this mode so that the launch shapes do not
 * depend on the position. Scratch buffers that move (mx_cuda_scratch bumps c->gen) make cached graphs stale.
 */
#include <string.h>
#include <time.h>

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
    int kind;
    int dyn_off; /* offset of this op's dynamic ints in the table */
    mx_cuda_weight w;
    const void *a, *b, *c, *d, *e;
    int i0, i1, i2, i3, i4, i5;
    size_t z0, z1, z2, z3;
    float f0;
    mx_attn_spec spec; /* with q_pos0, kv_lo, kv_hi zeroed (they are dynamic) */
} rec;

typedef struct {
    rec *recs;
    int n_recs, n_dyn;
    uint64_t hash; /* of recs, n_recs and n_dyn: the lookup's first test */
    unsigned gen;
    cudaGraphExec_t exec; /* NULL: seen once, not captured yet */
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
        mx_cuda_matmul_k(c, &r->w, (const float *)r->a, (float *)r->b, r->i0);
        break;
    case R_EMBED:
        mx_cuda_embed_k(c, &r->w, d, r->i0, (float *)r->b);
        break;
    case R_RMSNORM:
        mx_cuda_rmsnorm_k(c, (const float *)r->a, (const float *)r->c, (float *)r->b, r->i0, r->i1, r->f0);
        break;
    case R_LAYERNORM:
        mx_cuda_layernorm_k(c, (const float *)r->a, (const float *)r->c, (const float *)r->d, (float *)r->b,
                            r->i0, r->i1, r->f0);
        break;
    case R_ROPE:
        mx_cuda_rope_k(c, (float *)r->a, r->i0, r->i1, r->i2, r->i3, 0, r->f0, (mx_rope_mode)r->i4, d);
        break;
    case R_SWIGLU:
        mx_cuda_swiglu_k(c, (float *)r->a, (const float *)r->b, r->i0);
        break;
    case R_GELU:
        mx_cuda_gelu_k(c, (float *)r->a, r->i0);
        break;
    case R_ADD:
        mx_cuda_add_k(c, (float *)r->a, (const float *)r->b, r->i0);
        break;
    case R_ADD_BIAS:
        mx_cuda_add_bias_k(c, (float *)r->a, (const float *)r->c, r->i0, r->i1);
        break;
    case R_ATTN:
        mx_cuda_attention_k(c, &r->spec, (const float *)r->a, r->c, r->d, (float *)r->b, (float *)r->e, d,
                            true);
        break;
    case R_KV:
        mx_cuda_kv_write_k(c, (void *)r->b, (const float *)r->a, r->i0, r->i1, 0, r->i2, d);
        break;
    case R_FILL:
        mx_cuda_fill_k(c, (float *)r->a, r->z0, r->f0);
        break;
    case R_COPY3D:
        mx_cuda_copy3d_k(c, (float *)r->a, (const float *)r->b, r->i0, r->i1, r->i2, r->z0, r->z1, r->z2,
                         r->z3);
        break;
    case R_MATMUL_T:
        mx_cuda_matmul_t_k(c, &r->w, (const float *)r->a, (float *)r->b, r->i0);
        break;
    case R_KV_READ:
        mx_cuda_kv_read_k(c, r->a, (float *)r->b, r->i0, r->i1, 0, r->i2, d);
        break;
    case R_GATHER:
        mx_cuda_gather_rows_k(c, (float *)r->a, (const float *)r->b, d, r->i0, r->i1);
        break;
    case R_SCATTER:
        mx_cuda_scatter_add_rows_k(c, (float *)r->a, (const float *)r->b, d, (const float *)(d + r->i0),
                                   r->i0, r->i1, r->i2);
        break;
    case R_TANH:
        mx_cuda_tanh_k(c, (float *)r->a, r->i0);
        break;
    case R_SOFTMAX:
        mx_cuda_softmax_rows_k(c, (float *)r->a, r->i0, r->i1);
        break;
    case R_SCALE_ADD:
        mx_cuda_scale_add_rows_k(c, (float *)r->a, (const float *)r->b, r->z0, (const float *)r->c, r->z1,
                                 r->i0, r->i1);
        break;
    case R_PREFIX_MEAN:
        mx_cuda_prefix_mean_k(c, (const float *)r->a, r->i0, r->i1, (float *)r->c, 0, r->i2, (float *)r->b,
                              d);
        break;
    case R_LSE_MERGE:
        mx_cuda_lse_merge_k(c, (const float *)r->a, (const float *)r->c, r->z0, r->i0, r->i1, r->i2, r->i3,
                            (float *)r->b, (float *)r->d);
        break;
    case R_EMBED_DEV:
        mx_cuda_embed_k(c, &r->w, (const int *)r->a, r->i0, (float *)r->b);
        break;
    case R_SAMPLE: {
        mx_sample_spec sp = {r->f0, 0.0f, 0.0f, r->i1, 0.0f};
        memcpy(&sp.top_p, &r->z0,
               sizeof(float)); /* top_p and min_p ride in z0/z1 (f0 holds the temperature) */
        memcpy(&sp.min_p, &r->z1, sizeof(float));
        mx_cuda_sample_k(c, (const float *)r->a, r->i0, &sp, d, (int *)r->b);
        break;
    }
    }
}

/* ---- decode fusions ----
 * At run time (eagerly or while capturing), runs of records of one token (T = 1) that match these patterns
 * run as one fused kernel (cuda_matmul.cu: k_fused) that writes every output the records would have written:
 *   QKV:    rmsnorm(x->h), matmul(wq,h->q), rope(q), matmul(wk,h->k), matmul(wv,h->v), rope(k), kv_write(k),
 *           kv_write(v)                                   (Llama attention input: 8 launches -> 1)
 *   GATEUP: rmsnorm(x->h), matmul(wg,h->g), matmul(wu,h->u), swiglu(g,u)              (4 -> 1)
 *   NORMMM: rmsnorm(x->h), matmul(w,h->y)                                              (2 -> 1; the head)
 *   MMADD:  matmul(w,a->y), add(r += y)                    (o/down projection + residual: 2 -> 1)
 * MX_CUDA_FUSE=0 turns them off (every op then runs as its own kernel). */
static bool fuse_enabled(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("MX_CUDA_FUSE");
        v = e && !strcmp(e, "0") ? 0 : 1;
    }
    return v == 1;
}

static bool is_mm1(const rec *r, const void *in, int n_in) {
    return r->kind == R_MATMUL && r->i0 == 1 && r->a == in && ((uintptr_t)in & 15) == 0 &&
           mx_cuda_fused_ok(&r->w, n_in);
}

static int try_fuse(mx_cuda_ctx *c, const rec *r, int left, const int *dyn) {
    if (r[0].kind == R_RMSNORM && r[0].i0 == 1 && r[0].a != r[0].b) {
        const void *x = r[0].a, *h = r[0].b;
        int C = r[0].i1;
        if (left >= 8 && is_mm1(&r[1], h, C) && r[2].kind == R_ROPE && r[2].a == r[1].b &&
            is_mm1(&r[3], h, C) && is_mm1(&r[4], h, C) && r[5].kind == R_ROPE && r[5].a == r[3].b &&
            r[6].kind == R_KV && r[6].a == r[3].b && r[7].kind == R_KV && r[7].a == r[4].b) {
            int H = r[2].i1, G = r[5].i1, D = r[2].i2, rd = r[2].i3;
            const void *q = r[1].b, *k = r[3].b, *v = r[4].b;
            bool ok = r[2].i0 == 1 && r[5].i0 == 1 && r[5].i2 == D && r[5].i3 == rd && r[5].i4 == r[2].i4 &&
                      r[5].f0 == r[2].f0 && D % 2 == 0 && rd % 2 == 0 && rd <= D && rd > 0 &&
                      r[1].w.n_out == (int64_t)H * D && r[3].w.n_out == (int64_t)G * D &&
                      r[4].w.n_out == (int64_t)G * D && r[6].i0 == 1 && r[7].i0 == 1 && r[6].i1 == G * D &&
                      r[7].i1 == G * D && r[6].i2 == r[7].i2 && q != k && q != v && k != v && q != x &&
                      k != x && v != x && q != h && k != h && v != h && r[6].b != r[7].b;
            if (ok) {
                mx_cuda_fused_qkv(c, (const float *)x, (const float *)r[0].c, (float *)h, r[0].f0, &r[1].w,
                                  (float *)q, &r[3].w, (float *)k, &r[4].w, (float *)v, H, G, D, rd,
                                  r[2].i4 == MX_ROPE_ADJACENT, r[2].f0, 1, 1, dyn + r[2].dyn_off,
                                  dyn + r[5].dyn_off, (void *)r[6].b, (void *)r[7].b, r[6].i2,
                                  dyn + r[6].dyn_off, dyn + r[7].dyn_off);
                return 8;
            }
        }
        if (left >= 4 && is_mm1(&r[1], h, C) && is_mm1(&r[2], h, C) && r[3].kind == R_SWIGLU &&
            r[3].a == r[1].b && r[3].b == r[2].b && r[1].w.n_out == r[2].w.n_out && r[3].i0 == r[1].w.n_out &&
            r[1].b != r[2].b && r[1].b != x && r[2].b != x && r[1].b != h && r[2].b != h) {
            mx_cuda_fused_gateup(c, (const float *)x, (const float *)r[0].c, (float *)h, r[0].f0, &r[1].w,
                                 (float *)r[1].b, &r[2].w, (float *)r[2].b);
            return 4;
        }
        if (left >= 2 && is_mm1(&r[1], h, C) && r[1].b != x && r[1].b != h) {
            mx_cuda_fused_gemv(c, (const float *)x, (const float *)r[0].c, (float *)h, r[0].f0, &r[1].w,
                               (float *)r[1].b, NULL);
            return 2;
        }
        return 0;
    }
    if (r[0].kind == R_MATMUL && left >= 2 && r[1].kind == R_ADD && r[1].b == r[0].b && r[0].i0 == 1 &&
        r[1].i0 == r[0].w.n_out && r[1].a != r[0].a && r[1].a != r[0].b &&
        is_mm1(&r[0], r[0].a, (int)r[0].w.n_in)) {
        mx_cuda_fused_gemv(c, (const float *)r[0].a, NULL, NULL, 0.0f, &r[0].w, (float *)r[0].b,
                           (float *)r[1].a);
        return 2;
    }
    return 0;
}

static void run_all(mx_cuda_ctx *c, gstate *g) {
    bool fuse = fuse_enabled();
    for (int i = 0; i < g->n_recs;) {
        int n = fuse ? try_fuse(c, &g->recs[i], g->n_recs - i, g->dyn_d) : 0;
        if (n) {
            i += n;
            continue;
        }
        run_rec(c, &g->recs[i], g->dyn_d);
        i++;
    }
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
        } else {
            run_all(c, g); /* grows what it needs; the next sighting captures */
        }
        CU_CHECK(cudaGraphDestroy(graph));
    } else { /* first sighting: run eagerly, remember the sequence (least recently used out first) */
        run_all(c, g);
        size_t need = sizeof(rec) * (size_t)g->n_recs;
        for (gentry *o; g->rec_bytes + need > REC_BYTES_MAX && (o = lru(g, false));) forget(g, o);
        gentry *e = lru(g, true);
        if (e->recs) forget(g, e);
        e->recs = (rec *)malloc(need);
        if (e->recs) {
            memcpy(e->recs, g->recs, need);
            e->n_recs = g->n_recs, e->n_dyn = g->n_dyn, e->gen = c->gen, e->last_use = g->clock,
            e->hash = hash;
            g->rec_bytes += need;
        }
    }
    g->n_recs = 0;
    g->n_dyn = 0;
}

/* A new record (zeroed, so that padding compares equal) with room for n_dyn dynamic ints. */
static rec *new_rec(mx_cuda_ctx *c, int kind, int n_dyn, int **dyn) {
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
    r->w = wcopy(c, w), r->a = x, r->b = y, r->i0 = T;
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
    r->w = wcopy(c, w), r->b = out, r->i0 = T;
}

static void op_rmsnorm(mx_backend *be, const float *x, const mx_tensor *w, float *out, int T, int C,
                       float eps) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_rmsnorm_k(c, x, vec(w), out, T, C, eps);
    int *d;
    rec *r = new_rec(c, R_RMSNORM, 0, &d);
    r->a = x, r->b = out, r->c = vec(w), r->i0 = T, r->i1 = C, r->f0 = eps;
}

static void op_layernorm(mx_backend *be, const float *x, const mx_tensor *w, const mx_tensor *b, float *out,
                         int T, int C, float eps) {
    mx_cuda_ctx *c = cu_ctx(be);
    const float *bp = b ? vec(b) : NULL;
    if (!recording(be)) return mx_cuda_layernorm_k(c, x, vec(w), bp, out, T, C, eps);
    int *d;
    rec *r = new_rec(c, R_LAYERNORM, 0, &d);
    r->a = x, r->b = out, r->c = vec(w), r->d = bp, r->i0 = T, r->i1 = C, r->f0 = eps;
}

static void op_rope(mx_backend *be, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                    float theta, mx_rope_mode mode) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_rope_k(c, x, T, n_head, head_dim, rope_dim, pos0, theta, mode, NULL);
    int *d;
    rec *r = new_rec(c, R_ROPE, 1, &d);
    d[0] = pos0;
    r->a = x, r->i0 = T, r->i1 = n_head, r->i2 = head_dim, r->i3 = rope_dim, r->i4 = (int)mode, r->f0 = theta;
}

static void op_swiglu(mx_backend *be, float *g, const float *u, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_swiglu_k(c, g, u, n);
    int *d;
    rec *r = new_rec(c, R_SWIGLU, 0, &d);
    r->a = g, r->b = u, r->i0 = n;
}

static void op_gelu(mx_backend *be, float *x, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_gelu_k(c, x, n);
    int *d;
    rec *r = new_rec(c, R_GELU, 0, &d);
    r->a = x, r->i0 = n;
}

static void op_add(mx_backend *be, float *y, const float *x, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_add_k(c, y, x, n);
    int *d;
    rec *r = new_rec(c, R_ADD, 0, &d);
    r->a = y, r->b = x, r->i0 = n;
}

static void op_add_bias(mx_backend *be, float *y, const mx_tensor *b, int T, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_add_bias_k(c, y, vec(b), T, n);
    int *d;
    rec *r = new_rec(c, R_ADD_BIAS, 0, &d);
    r->a = y, r->c = vec(b), r->i0 = T, r->i1 = n;
}

static void op_attention(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k,
                         const void *v, float *out, float *lse) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_attention_k(c, spec, q, k, v, out, lse, NULL, false);
    int *d;
    rec *r = new_rec(c, R_ATTN, 3, &d);
    d[0] = spec->q_pos0, d[1] = spec->kv_lo, d[2] = spec->kv_hi;
    r->spec = *spec;
    r->spec.q_pos0 = r->spec.kv_lo = r->spec.kv_hi = 0;
    r->a = q, r->c = k, r->d = v, r->b = out, r->e = lse;
}

static void op_kv_write(mx_backend *be, void *store, const float *src, int T, int n, int pos0, int n_slots) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_kv_write_k(c, store, src, T, n, pos0, n_slots, NULL);
    int *d;
    rec *r = new_rec(c, R_KV, 1, &d);
    d[0] = pos0;
    r->a = src, r->b = store, r->i0 = T, r->i1 = n, r->i2 = n_slots;
}

/* ---- the MoE / MLA / MKA ops ---- */

static void op_fill(mx_backend *be, float *x, size_t n, float value) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_fill_k(c, x, n, value);
    int *d;
    rec *r = new_rec(c, R_FILL, 0, &d);
    r->a = x, r->z0 = n, r->f0 = value;
}

static void op_copy3d(mx_backend *be, float *dst, const float *src, int n0, int n1, int n2, size_t ds1,
                      size_t ss1, size_t ds2, size_t ss2) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_copy3d_k(c, dst, src, n0, n1, n2, ds1, ss1, ds2, ss2);
    int *d;
    rec *r = new_rec(c, R_COPY3D, 0, &d);
    r->a = dst, r->b = src, r->i0 = n0, r->i1 = n1, r->i2 = n2, r->z0 = ds1, r->z1 = ss1, r->z2 = ds2,
    r->z3 = ss2;
}

static void op_matmul_t(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) {
        mx_cuda_weight mw = mx_cuda_weight_of(c, w);
        return mx_cuda_matmul_t_k(c, &mw, x, y, T);
    }
    int *d;
    rec *r = new_rec(c, R_MATMUL_T, 0, &d);
    r->w = wcopy(c, w), r->a = x, r->b = y, r->i0 = T;
}

static void op_kv_read(mx_backend *be, const void *store, float *dst, int T, int n, int pos0, int n_slots) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_kv_read_k(c, store, dst, T, n, pos0, n_slots, NULL);
    int *d;
    rec *r = new_rec(c, R_KV_READ, 1, &d);
    d[0] = pos0;
    r->a = store, r->b = dst, r->i0 = T, r->i1 = n, r->i2 = n_slots;
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
    r->a = dst, r->b = src, r->i0 = rows, r->i1 = n;
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
    static int serial = -1; /* MX_CUDA_SCATTER=serial: always the in-order kernel (A/B checks) */
    if (serial < 0) serial = getenv("MX_CUDA_SCATTER") && !strcmp(getenv("MX_CUDA_SCATTER"), "serial");
    bool distinct = !serial && all_distinct(idx, rows);
    if (!recording(be) || rows > MAX_DYN / 8) {
        mx_cuda_graph_flush(c);
        const int *dd = stage_host(c, idx, w, rows);
        return mx_cuda_scatter_add_rows_k(c, dst, src, dd, (const float *)(dd + rows), rows, n, distinct);
    }
    int *d;
    rec *r = new_rec(c, R_SCATTER, 2 * rows, &d);
    memcpy(d, idx, sizeof(int) * (size_t)rows);
    memcpy(d + rows, w, sizeof(float) * (size_t)rows);
    r->a = dst, r->b = src, r->i0 = rows, r->i1 = n, r->i2 = distinct;
}

static void op_tanh(mx_backend *be, float *x, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_tanh_k(c, x, n);
    int *d;
    rec *r = new_rec(c, R_TANH, 0, &d);
    r->a = x, r->i0 = n;
}

static void op_softmax_rows(mx_backend *be, float *x, int T, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_softmax_rows_k(c, x, T, n);
    int *d;
    rec *r = new_rec(c, R_SOFTMAX, 0, &d);
    r->a = x, r->i0 = T, r->i1 = n;
}

static void op_scale_add_rows(mx_backend *be, float *y, const float *x, size_t x_stride, const float *w,
                              size_t w_stride, int T, int n) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_scale_add_rows_k(c, y, x, x_stride, w, w_stride, T, n);
    int *d;
    rec *r = new_rec(c, R_SCALE_ADD, 0, &d);
    r->a = y, r->b = x, r->c = w, r->z0 = x_stride, r->z1 = w_stride, r->i0 = T, r->i1 = n;
}

static void op_prefix_mean(mx_backend *be, const float *x, int T, int C, float *sums, int pos0, int n_slots,
                           float *mean) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_prefix_mean_k(c, x, T, C, sums, pos0, n_slots, mean, NULL);
    int *d;
    rec *r = new_rec(c, R_PREFIX_MEAN, 1, &d);
    d[0] = pos0;
    r->a = x, r->b = mean, r->c = sums, r->i0 = T, r->i1 = C, r->i2 = n_slots;
}

static void op_lse_merge(mx_backend *be, const float *outs, const float *lses, size_t part_stride, int R,
                         int T, int H, int Dv, float *out, float *lse) {
    mx_cuda_ctx *c = cu_ctx(be);
    if (!recording(be)) return mx_cuda_lse_merge_k(c, outs, lses, part_stride, R, T, H, Dv, out, lse);
    int *d;
    rec *r = new_rec(c, R_LSE_MERGE, 0, &d);
    r->a = outs, r->c = lses, r->b = out, r->d = lse, r->z0 = part_stride, r->i0 = R, r->i1 = T, r->i2 = H,
    r->i3 = Dv;
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
    r->w = wcopy(c, w), r->a = ids, r->b = out, r->i0 = T;
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
        r->a = logits, r->b = tok, r->i0 = vocab, r->i1 = sp->temperature > 0.0f ? sp->top_k : 0;
        r->f0 = sp->temperature > 0.0f ? sp->temperature : 0.0f;
        if (sp->temperature > 0.0f) { /* greedy steps stay one sequence whatever the other fields hold */
            memcpy(&r->z0, &sp->top_p, sizeof(float));
            memcpy(&r->z1, &sp->min_p, sizeof(float));
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
    const char *env = getenv("MX_CUDA_GRAPHS");
    if (g && !(env && !strcmp(env, "0")) &&
        cudaMallocHost((void **)&g->dyn_h, sizeof(int) * MAX_DYN) == cudaSuccess &&
        cudaMalloc((void **)&g->dyn_d, sizeof(int) * MAX_DYN) == cudaSuccess &&
        cudaEventCreateWithFlags(&g->dyn_done, cudaEventDisableTiming) == cudaSuccess)
        g->enabled = true;
    const char *tenv = getenv("MX_CUDA_TIMING");
    if (g && g->enabled && tenv && strcmp(tenv, "0") && cudaEventCreate(&g->t0) == cudaSuccess &&
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
