/* cuda_fusion.cu: decode fusions of recorded op calls, matched by data flow (which buffers feed which ops),
 * not by call position. cuda_graph.cu plans them over a flush's records and runs each group as one kernel of
 * cuda_matmul.cu (k_fused) that writes every output its records would have written:
 *   FUSE_QKV        rmsnorm(x -> h); matmul(wq, h -> q), rope(q); matmul(wk, h -> k), rope(k), kv_write(k);
 *                   matmul(wv, h -> v), kv_write(v)               (Llama attention input: 8 launches -> 1)
 *   FUSE_GATEUP     rmsnorm(x -> h); matmul(wg, h -> g), matmul(wu, h -> u); swiglu(g, u)        (4 -> 1)
 *   FUSE_NORM_GEMV  rmsnorm(x -> h); matmul(w, h -> y)                                  (2 -> 1; the head)
 *   FUSE_GEMV_ADD   matmul(w, a -> y); add(r += y)                (o/down projection + residual: 2 -> 1)
 * all at one token (T = 1). A group is anchored at its first record (an rmsnorm, or the matmul of
 * FUSE_GEMV_ADD) and gathered from the records that follow it by what they read: the matmuls that read h
 * (until a record writes h again), the rope and kv_write that read each one's output (the kv_write of k after
 * its rope), the swiglu that reads g and u, the add that reads y. The roles follow from the data flow (q: a
 * rope and no kv_write, k: both, v: a kv_write and no rope), so the calls may come in any order.
 * The fused kernel runs where the group's first record stood, so the group's later records move up past the
 * records in between. That is allowed only when each of those records is independent of the group: it reads
 * nothing the group writes (an intermediate such as q before its rope has no reader outside the group, the
 * use-count test of ggml's ggml_can_fuse) and writes nothing the group reads or writes. Buffers are compared
 * as byte ranges, so views into one allocation are seen to overlap; records whose accesses are not described
 * here (gathers, scatters, MoE, sampling, ...) count as touching everything. MX_CUDA_FUSE=0 turns fusion off. */
#include <string.h>

#include "cuda_records.h"

/* ---- what a record reads and writes ---- */

typedef struct {
    uintptr_t lo, hi; /* bytes [lo, hi) */
} span;

enum { ACC_MAX = 4 };
typedef struct {
    span rd[ACC_MAX], wr[ACC_MAX];
    int n_rd, n_wr;
    bool all; /* not described: conflicts with everything */
} access;

static span span_of(const void *p, size_t bytes) {
    span s = {(uintptr_t)p, (uintptr_t)p + bytes};
    return s;
}
static void rd(access *a, const void *p, size_t bytes) {
    if (p && bytes) a->rd[a->n_rd++] = span_of(p, bytes);
}
static void wr(access *a, const void *p, size_t bytes) {
    if (p && bytes) a->wr[a->n_wr++] = span_of(p, bytes);
}
static bool overlap(span a, span b) {
    return a.lo < b.hi && b.lo < a.hi;
}

/* The activation buffers record r reads and writes (weights and norm vectors are never written by ops). */
static access access_of(const rec *r) {
    access a;
    memset(&a, 0, sizeof a);
    const size_t F = sizeof(float);
    switch (r->kind) {
    case R_MATMUL:
        rd(&a, r->u.mm.x, F * r->u.mm.T * r->u.mm.w.n_in);
        wr(&a, r->u.mm.y, F * r->u.mm.T * r->u.mm.w.n_out);
        break;
    case R_MATMUL_T:
        rd(&a, r->u.mm.x, F * r->u.mm.T * r->u.mm.w.n_out);
        wr(&a, r->u.mm.y, F * r->u.mm.T * r->u.mm.w.n_in);
        break;
    case R_RMSNORM:
    case R_LAYERNORM:
        rd(&a, r->u.norm.x, F * r->u.norm.T * r->u.norm.C);
        wr(&a, r->u.norm.out, F * r->u.norm.T * r->u.norm.C);
        break;
    case R_ROPE: {
        size_t n = F * r->u.rope.T * r->u.rope.n_head * r->u.rope.head_dim;
        rd(&a, r->u.rope.x, n), wr(&a, r->u.rope.x, n);
        break;
    }
    case R_SWIGLU:
        rd(&a, r->u.swiglu.g, F * r->u.swiglu.n), rd(&a, r->u.swiglu.u, F * r->u.swiglu.n);
        wr(&a, r->u.swiglu.g, F * r->u.swiglu.n);
        break;
    case R_GELU:
    case R_TANH:
        rd(&a, r->u.unary.x, F * r->u.unary.n), wr(&a, r->u.unary.x, F * r->u.unary.n);
        break;
    case R_ADD:
        rd(&a, r->u.add.y, F * r->u.add.n), rd(&a, r->u.add.x, F * r->u.add.n);
        wr(&a, r->u.add.y, F * r->u.add.n);
        break;
    case R_ADD_BIAS: {
        size_t n = F * r->u.add_bias.T * r->u.add_bias.n;
        rd(&a, r->u.add_bias.y, n), wr(&a, r->u.add_bias.y, n);
        break;
    }
    case R_KV: /* any slot of the store may be written (the position is dynamic) */
        rd(&a, r->u.kv.src, F * r->u.kv.T * r->u.kv.n);
        wr(&a, r->u.kv.store, (size_t)2 * r->u.kv.n_slots * r->u.kv.n);
        break;
    case R_ATTN: {
        const mx_attn_spec *s = &r->u.attn.spec;
        size_t nq = s->n_q > 0 ? (size_t)(s->n_q - 1) : 0;
        rd(&a, r->u.attn.q, F * (nq * s->q_stride + (size_t)s->n_head * s->head_dim));
        rd(&a, r->u.attn.k, (size_t)2 * s->n_slots * s->k_stride);
        rd(&a, r->u.attn.v, (size_t)2 * s->n_slots * s->v_stride);
        wr(&a, r->u.attn.out, F * (nq * s->o_stride + (size_t)s->n_head * s->v_dim));
        wr(&a, r->u.attn.lse, F * s->n_q * s->n_head);
        break;
    }
    case R_FILL:
        wr(&a, r->u.fill.x, F * r->u.fill.n);
        break;
    case R_EMBED:
        wr(&a, r->u.embed.out, F * r->u.embed.T * r->u.embed.w.n_in);
        break;
    default:
        a.all = true;
    }
    return a;
}

static bool any_overlap(const span *a, int na, const span *b, int nb) {
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            if (overlap(a[i], b[j])) return true;
    return false;
}

/* Whether a record writes any byte of s. */
static bool writes(const rec *r, span s) {
    access a = access_of(r);
    return a.all || any_overlap(a.wr, a.n_wr, &s, 1);
}

/* ---- the groups ---- */

enum { WINDOW = 32 }; /* records after the anchor searched for its group's members */

static bool in_group(const fuse_group *g, int i) {
    for (int m = 0; m < g->n; m++)
        if (g->idx[m] == i) return true;
    return false;
}

/* Whether the group may run at its first record: every record between its first and last member that is
 * not a member reads nothing the group writes and writes nothing it reads or writes. */
static bool hoistable(const rec *recs, const fuse_group *g) {
    enum { SP = FUSE_MAX_MEMBERS * ACC_MAX };
    span grd[SP], gwr[SP];
    int nr = 0, nw = 0, last = g->idx[0];
    for (int m = 0; m < g->n; m++) {
        access a = access_of(&recs[g->idx[m]]);
        if (a.all) return false;
        for (int i = 0; i < a.n_rd; i++) grd[nr++] = a.rd[i];
        for (int i = 0; i < a.n_wr; i++) gwr[nw++] = a.wr[i];
        if (g->idx[m] > last) last = g->idx[m];
    }
    for (int j = g->idx[0] + 1; j < last; j++) {
        if (in_group(g, j)) continue;
        access a = access_of(&recs[j]);
        if (a.all || any_overlap(a.rd, a.n_rd, gwr, nw) || any_overlap(a.wr, a.n_wr, gwr, nw) ||
            any_overlap(a.wr, a.n_wr, grd, nr))
            return false;
    }
    return true;
}

/* A one-token matmul that k_fused can run on input `in` of n_in floats. */
static bool gemv_on(const rec *r, const void *in, int n_in) {
    return r->kind == R_MATMUL && r->u.mm.T == 1 && r->u.mm.x == in && ((uintptr_t)in & 15) == 0 &&
           mx_cuda_fused_ok(&r->u.mm.w, n_in);
}

/* The first record in (from, end) that reads buffer p as `kind`'s input at one token (-1: none), or -1 as soon
 * as a record writes p first (p then holds another value). */
static int first_reader(const rec *recs, int from, int end, rkind kind, const float *p, size_t bytes) {
    span s = span_of(p, bytes);
    for (int j = from + 1; j < end; j++) {
        const rec *r = &recs[j];
        if (r->kind == kind) {
            if (kind == R_ROPE && r->u.rope.x == p && r->u.rope.T == 1) return j;
            if (kind == R_KV && r->u.kv.src == p && r->u.kv.T == 1) return j;
            if (kind == R_ADD && r->u.add.x == p) return j;
        }
        if (writes(r, s)) return -1;
    }
    return -1;
}

typedef struct {
    int mm, rope, kv; /* record indices; -1: none */
} gemv_use;

/* An rmsnorm anchor at i: the one-token matmuls reading its output h, up to 4, each with the rope and kv_write
 * that read its output; returns how many. */
static int gemvs_of_norm(const rec *recs, int n, int i, gemv_use *use) {
    const rec *a = &recs[i];
    const float *h = a->u.norm.out;
    const int C = a->u.norm.C, end = i + 1 + WINDOW < n ? i + 1 + WINDOW : n;
    span hs = span_of(h, sizeof(float) * C);
    int k = 0;
    for (int j = i + 1; j < end && k < 4; j++) {
        const rec *r = &recs[j];
        if (gemv_on(r, h, C)) {
            size_t yb = sizeof(float) * r->u.mm.w.n_out;
            use[k].mm = j;
            use[k].rope = first_reader(recs, j, end, R_ROPE, r->u.mm.y, yb);
            int kv_from = use[k].rope >= 0 ? use[k].rope : j;
            use[k].kv = first_reader(recs, kv_from, end, R_KV, r->u.mm.y, yb);
            k++;
        }
        if (writes(r, hs)) break; /* h redefined: later readers read another h */
    }
    return k;
}

static bool distinct_ptrs(const void *const *p, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (p[i] == p[j]) return false;
    return true;
}

/* FUSE_QKV at rmsnorm i: q (rope, no kv_write), k (rope, then kv_write), v (kv_write, no rope). */
static bool match_qkv(const rec *recs, const gemv_use *use, int n_use, int i, fuse_group *g) {
    if (n_use != 3) return false;
    int q = -1, k = -1, v = -1;
    for (int u = 0; u < 3; u++) {
        if (use[u].rope >= 0 && use[u].kv < 0) q = u;
        if (use[u].rope >= 0 && use[u].kv >= 0) k = u;
        if (use[u].rope < 0 && use[u].kv >= 0) v = u;
    }
    if (q < 0 || k < 0 || v < 0) return false;
    const rec *mq = &recs[use[q].mm], *mk = &recs[use[k].mm], *mv = &recs[use[v].mm];
    const rec *rq = &recs[use[q].rope], *rk = &recs[use[k].rope];
    const rec *kk = &recs[use[k].kv], *kv = &recs[use[v].kv];
    const int H = rq->u.rope.n_head, G = rk->u.rope.n_head, D = rq->u.rope.head_dim, rd = rq->u.rope.rope_dim;
    const void *bufs[] = {mq->u.mm.y, mk->u.mm.y, mv->u.mm.y, recs[i].u.norm.x, recs[i].u.norm.out};
    bool ok = rk->u.rope.head_dim == D && rk->u.rope.rope_dim == rd && rk->u.rope.mode == rq->u.rope.mode &&
              rk->u.rope.theta == rq->u.rope.theta && D % 2 == 0 && rd % 2 == 0 && rd > 0 && rd <= D &&
              mq->u.mm.w.n_out == (int64_t)H * D && mk->u.mm.w.n_out == (int64_t)G * D &&
              mv->u.mm.w.n_out == (int64_t)G * D && kk->u.kv.n == G * D && kv->u.kv.n == G * D &&
              kk->u.kv.n_slots == kv->u.kv.n_slots && kk->u.kv.store != kv->u.kv.store &&
              distinct_ptrs(bufs, 5);
    if (!ok) return false;
    g->kind = FUSE_QKV, g->n = 8;
    int idx[8] = {i, use[q].mm, use[q].rope, use[k].mm, use[k].rope, use[k].kv, use[v].mm, use[v].kv};
    memcpy(g->idx, idx, sizeof idx);
    return true;
}

/* FUSE_GATEUP at rmsnorm i: two matmuls whose outputs feed one swiglu (g first, u second). */
static bool match_gateup(const rec *recs, int n, const gemv_use *use, int n_use, int i, fuse_group *g) {
    if (n_use != 2) return false;
    const int last = use[0].mm > use[1].mm ? use[0].mm : use[1].mm;
    const int end = i + 1 + WINDOW < n ? i + 1 + WINDOW : n;
    for (int j = last + 1; j < end; j++) {
        const rec *s = &recs[j];
        if (s->kind != R_SWIGLU) continue;
        int gi = -1, ui = -1;
        for (int u = 0; u < 2; u++) {
            if (recs[use[u].mm].u.mm.y == s->u.swiglu.g) gi = u;
            if (recs[use[u].mm].u.mm.y == s->u.swiglu.u) ui = u;
        }
        if (gi < 0 || ui < 0 || gi == ui) return false;
        const rec *mg = &recs[use[gi].mm], *mu = &recs[use[ui].mm];
        const void *bufs[] = {mg->u.mm.y, mu->u.mm.y, recs[i].u.norm.x, recs[i].u.norm.out};
        if (mg->u.mm.w.n_out != mu->u.mm.w.n_out || s->u.swiglu.n != mg->u.mm.w.n_out ||
            !distinct_ptrs(bufs, 4))
            return false;
        g->kind = FUSE_GATEUP, g->n = 4;
        g->idx[0] = i, g->idx[1] = use[gi].mm, g->idx[2] = use[ui].mm, g->idx[3] = j;
        return true;
    }
    return false;
}

/* FUSE_GEMV_ADD at matmul i: the add that reads its output y into a residual r (r not x, not y). */
static bool match_gemv_add(const rec *recs, int n, int i, fuse_group *g) {
    const rec *m = &recs[i];
    if (!gemv_on(m, m->u.mm.x, (int)m->u.mm.w.n_in)) return false;
    const int end = i + 1 + WINDOW < n ? i + 1 + WINDOW : n;
    int j = first_reader(recs, i, end, R_ADD, m->u.mm.y, sizeof(float) * m->u.mm.w.n_out);
    if (j < 0) return false;
    const rec *a = &recs[j];
    if (a->u.add.n != m->u.mm.w.n_out || a->u.add.y == m->u.mm.x || a->u.add.y == m->u.mm.y) return false;
    g->kind = FUSE_GEMV_ADD, g->n = 2, g->idx[0] = i, g->idx[1] = j;
    return true;
}

/* The group anchored at record i, if any (tried in order: QKV, GATEUP, NORM_GEMV; GEMV_ADD). */
static bool match_at(const rec *recs, int n, int i, const int *plan, fuse_group *g) {
    const rec *a = &recs[i];
    if (a->kind == R_RMSNORM && a->u.norm.T == 1 && a->u.norm.x != a->u.norm.out) {
        gemv_use use[4];
        int n_use = gemvs_of_norm(recs, n, i, use);
        for (int u = 0; u < n_use; u++) /* members planned into an earlier group are not free */
            if (plan[use[u].mm] != -1) return false;
        if (match_qkv(recs, use, n_use, i, g) && hoistable(recs, g)) return true;
        if (match_gateup(recs, n, use, n_use, i, g) && hoistable(recs, g)) return true;
        if (n_use >= 1) {
            const rec *m = &recs[use[0].mm];
            if (m->u.mm.y != a->u.norm.x && m->u.mm.y != a->u.norm.out) {
                g->kind = FUSE_NORM_GEMV, g->n = 2, g->idx[0] = i, g->idx[1] = use[0].mm;
                if (hoistable(recs, g)) return true;
            }
        }
        return false;
    }
    if (a->kind == R_MATMUL) return match_gemv_add(recs, n, i, g) && hoistable(recs, g);
    return false;
}

int mx_cuda_fuse_plan(const rec *recs, int n, int *plan, fuse_group *groups) {
    int n_groups = 0;
    for (int i = 0; i < n; i++) plan[i] = -1;
    for (int i = 0; i < n; i++) {
        if (plan[i] != -1) continue;
        fuse_group g;
        if (!match_at(recs, n, i, plan, &g)) continue;
        bool free_members = true;
        for (int m = 1; m < g.n; m++) free_members = free_members && plan[g.idx[m]] == -1;
        if (!free_members) continue;
        for (int m = 1; m < g.n; m++) plan[g.idx[m]] = -2;
        plan[i] = n_groups;
        groups[n_groups++] = g;
    }
    return n_groups;
}

void mx_cuda_fuse_run(mx_cuda_ctx *c, const rec *recs, const fuse_group *g, const int *dyn) {
    const rec *r0 = &recs[g->idx[0]];
    switch (g->kind) {
    case FUSE_QKV: {
        const rec *mq = &recs[g->idx[1]], *rq = &recs[g->idx[2]], *mk = &recs[g->idx[3]],
                  *rk = &recs[g->idx[4]], *kk = &recs[g->idx[5]], *mv = &recs[g->idx[6]],
                  *kv = &recs[g->idx[7]];
        mx_cuda_fused_qkv(c, r0->u.norm.x, r0->u.norm.w, r0->u.norm.out, r0->u.norm.eps, &mq->u.mm.w,
                          mq->u.mm.y, &mk->u.mm.w, mk->u.mm.y, &mv->u.mm.w, mv->u.mm.y, rq->u.rope.n_head,
                          rk->u.rope.n_head, rq->u.rope.head_dim, rq->u.rope.rope_dim,
                          rq->u.rope.mode == MX_ROPE_ADJACENT, rq->u.rope.theta, 1, 1, dyn + rq->dyn_off,
                          dyn + rk->dyn_off, kk->u.kv.store, kv->u.kv.store, kk->u.kv.n_slots,
                          dyn + kk->dyn_off, dyn + kv->dyn_off);
        break;
    }
    case FUSE_GATEUP: {
        const rec *mg = &recs[g->idx[1]], *mu = &recs[g->idx[2]];
        mx_cuda_fused_gateup(c, r0->u.norm.x, r0->u.norm.w, r0->u.norm.out, r0->u.norm.eps, &mg->u.mm.w,
                             mg->u.mm.y, &mu->u.mm.w, mu->u.mm.y);
        break;
    }
    case FUSE_NORM_GEMV: {
        const rec *m = &recs[g->idx[1]];
        mx_cuda_fused_gemv(c, r0->u.norm.x, r0->u.norm.w, r0->u.norm.out, r0->u.norm.eps, &m->u.mm.w,
                           m->u.mm.y, NULL);
        break;
    }
    case FUSE_GEMV_ADD: {
        const rec *a = &recs[g->idx[1]];
        mx_cuda_fused_gemv(c, r0->u.mm.x, NULL, NULL, 0.0f, &r0->u.mm.w, r0->u.mm.y, a->u.add.y);
        break;
    }
    }
}
