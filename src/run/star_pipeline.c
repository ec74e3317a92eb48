/* star_pipeline.c: the Star Attention pipeline: phase 1 (blocks with the anchor, one scratch session per
 * rank), then the phase-2 session holding this rank's context KV (see star_pipeline.h). Backend-neutral: the
 * KV moves between sessions with be->kv_read/kv_write through a backend buffer, so it runs on the CPU and on
 * CUDA alike. */
#include "star_pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "../attention/star_attend.h"

int mx_star_check(const mx_model *m, const mx_backend *be, mx_err *err) {
    const mx_config *c = &m->cfg;
    if (!be->lse_merge)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--attn star needs the lse_merge op, which --device %s lacks", be->name);
    if (m->tp)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--attn star and --tp cannot be combined (each rank must hold the whole model)");
    for (int l = 0; l < c->n_layer; l++) {
        const mx_layer_plan *p = &c->plan[l];
        if (p->kind != MX_ATTN_MHA)
            return mx_err_set(err, MX_ERR_UNSUPPORTED,
                              "--attn star supports MHA/GQA/MQA layers only; layer %d of %s is %s", l,
                              m->path, mx_attn_kind_name(p->kind));
        if (p->window > 0)
            return mx_err_set(err, MX_ERR_UNSUPPORTED,
                              "--attn star needs full attention in every layer; layer %d of %s has a sliding "
                              "window of %d",
                              l, m->path, p->window);
        if (p->kv_from != l)
            return mx_err_set(err, MX_ERR_UNSUPPORTED,
                              "--attn star needs every layer to write its own KV cache; layer %d reads layer "
                              "%d's",
                              l, p->kv_from);
    }
    return MX_OK;
}

typedef struct {
    int n, B, A;                /* context tokens, block size, anchor size */
    int nb;                     /* blocks */
    int b0, b1;                 /* this rank's blocks [b0, b1) */
    int n_local;                /* context tokens in them */
    const mx_xattn_opts *xattn; /* phase 1 block-sparse when on */
} layout;

static int block_len(const layout *L, int b) {
    int start = b * L->B;
    return L->n - start < L->B ? L->n - start : L->B;
}

static int make_layout(const mx_star_opts *o, int n, int rank, int size, layout *L, mx_err *err) {
    L->n = n;
    L->xattn = &o->xattn;
    L->B = o->block > 0 ? o->block : (n + size - 1) / size;
    L->A = o->anchor < 0 ? L->B : o->anchor;
    if (L->A > L->B)
        return mx_err_set(err, MX_ERR_ARG, "--anchor %d is longer than the block (%d tokens); use 0..%d",
                          L->A, L->B, L->B);
    L->nb = (n + L->B - 1) / L->B;
    L->b0 = (int)((long)rank * L->nb / size);
    L->b1 = (int)((long)(rank + 1) * L->nb / size);
    L->n_local = 0;
    for (int b = L->b0; b < L->b1; b++) L->n_local += block_len(L, b);
    return MX_OK;
}

/* Copies n rows of every writing layer's K and V from src's slots [s0, s0+n) to dst's [d0, d0+n), through
 * src's first scratch buffer (ubatch rows of at least G*D floats). */
static void copy_kv(mx_session *dst, int d0, mx_session *src, int s0, int n) {
    mx_backend *be = src->be;
    float *buf = src->buf[0];
    for (int l = 0; l < src->kv.n_layer; l++) {
        const mx_kv_layer *from = &src->kv.layers[l], *to = &dst->kv.layers[l];
        if (from->writer != l) continue;
        for (int i = 0; i < n; i += src->ubatch) {
            int cnt = n - i < src->ubatch ? n - i : src->ubatch;
            be->kv_read(be, from->k, buf, cnt, (int)from->k_row, s0 + i, from->n_slots);
            be->kv_write(be, to->k, buf, cnt, (int)to->k_row, d0 + i, to->n_slots);
            be->kv_read(be, from->v, buf, cnt, (int)from->v_row, s0 + i, from->n_slots);
            be->kv_write(be, to->v, buf, cnt, (int)to->v_row, d0 + i, to->n_slots);
        }
    }
}

/* Evaluates block b in the scratch session sc (after the anchor when b > 0) and returns in *slot where its KV
 * starts. *anchor_ready says the anchor's KV already sits in sc's first A slots. */
static int encode_block(mx_session *sc, const layout *L, const int *ctx, int b, bool *anchor_ready, int *slot,
                        mx_err *err) {
    int start = b * L->B, len = block_len(L, b);
    int keep = b == 0 ? 0 : L->A; /* slots of the anchor before the block */
    if (keep > 0 && !*anchor_ready) {
        mx_session_truncate(sc, 0);
        sc->pos_offset = 0;
        if (mx_session_eval(sc, ctx, L->A, NULL, false, err))
            return mx_err_wrap(err, "Star phase 1, the anchor (%d tokens)", L->A);
    }
    mx_session_truncate(sc, keep);
    sc->pos_offset = start - keep; /* the block's slots keep..keep+len-1 sit at positions start.. */
    if (mx_session_eval(sc, ctx + start, len, NULL, false, err))
        return mx_err_wrap(err, "Star phase 1, block %d (tokens %d..%d)", b, start, start + len - 1);
    *anchor_ready = b > 0 || len >= L->A; /* block 0's first A tokens are the anchor; later blocks keep it */
    *slot = keep;
    return MX_OK;
}

/* Adds a phase-1 scratch session's XAttention counts to the phase-2 session's. */
static void dst_density_add(mx_session *dst, const mx_xattn *x) {
    dst->star->p1_kept += x->kept;
    dst->star->p1_visible += x->visible;
}

/* Phase 1 of this rank: its blocks into dst's slots 0..n_local-1. */
static int encode_blocks(const mx_model *m, mx_backend *be, const layout *L, const int *ctx, mx_session *dst,
                         mx_err *err) {
    if (L->b0 == L->b1) return MX_OK;
    int first_len = block_len(L, L->b0);
    int slots = (L->b1 > 1 ? L->A : 0) + (L->b1 - L->b0 > 1 ? L->B : first_len);
    mx_session *sc = NULL;
    if (mx_session_create(m, be, slots, &sc, err))
        return mx_err_wrap(err, "Star phase 1, a scratch session for [anchor | block] (%d tokens)", slots);
    if (L->xattn->on && mx_xattn_attach(sc, L->xattn, err)) {
        mx_session_free(sc);
        return mx_err_wrap(err, "Star phase 1 with XAttention");
    }
    bool anchor_ready = false;
    int rc = MX_OK, off = 0;
    for (int b = L->b0; b < L->b1 && !rc; b++) {
        int slot = 0;
        rc = encode_block(sc, L, ctx, b, &anchor_ready, &slot, err);
        if (rc) break;
        copy_kv(dst, off, sc, slot, block_len(L, b));
        off += block_len(L, b);
    }
    if (sc->xattn) { /* phase 1's density, kept for bench and eval */
        dst_density_add(dst, sc->xattn);
        mx_xattn_detach(sc);
    }
    mx_session_free(sc);
    return rc;
}

/* The phase-2 session of this rank, its phase 1 done; NULL with err set on failure. */
static mx_session *open_local(const mx_model *m, mx_backend *be, mx_comm *comm, const layout *L,
                              const int *ctx, int n_after, mx_err *err) {
    mx_session *s = NULL;
    if (mx_session_create(m, be, L->n_local + n_after, &s, err)) {
        mx_err_wrap(err, "Star phase 2 session (%d context + %d query tokens)", L->n_local, n_after);
        return NULL;
    }
    mx_star *st = calloc(1, sizeof *st);
    int rc = st ? MX_OK : mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    if (!rc)
        rc = mx_star_init(st, comm, be, L->n_local, comm->rank == comm->size - 1, s->ubatch, m->cfg.n_head,
                          m->cfg.head_dim, err);
    if (rc) free(st);
    s->star = rc ? NULL : st;
    if (!rc) rc = encode_blocks(m, be, L, ctx, s, err);
    if (rc) {
        mx_star_session_free(s);
        return NULL;
    }
    s->pos = L->n_local;
    s->pos_offset = L->n - L->n_local; /* slot n_local is position n */
    return s;
}

int mx_star_open(const mx_model *m, mx_backend *be, mx_comm *comm, const mx_star_opts *o, const int *ctx,
                 int n, int n_after, mx_session **out, mx_err *err) {
    *out = NULL;
    if (n <= 0 || n_after <= 0)
        return mx_err_set(err, MX_ERR_ARG,
                          "Star Attention needs a context and a query (got %d and %d tokens)", n, n_after);
    if (n + n_after > m->cfg.max_ctx)
        return mx_err_set(err, MX_ERR_ARG,
                          "%d context + %d query/generated tokens exceed the model's context of %d", n,
                          n_after, m->cfg.max_ctx);
    layout L = {0};
    if (mx_star_check(m, be, err) || make_layout(o, n, comm->rank, comm->size, &L, err)) return err->code;
    /* phase 2 gathers (out, lse) in the backend's memory: on a GPU through NCCL (collective; idempotent, and
     * a no-op for one rank or the CPU) */
    if (comm->attach(comm, be, err))
        return mx_err_wrap(err, "--attn star: attaching the ranks to %s", be->name);
    mx_err mine = {0};
    mx_session *s = open_local(m, be, comm, &L, ctx, n_after, &mine);
    if (comm->agree(comm, s != NULL, &mine, err)) {
        mx_star_session_free(s);
        return err->code ? err->code : MX_ERR_ARG;
    }
    *out = s;
    return MX_OK;
}

double mx_star_phase1_density(const mx_session *s) {
    const mx_star *st = s ? s->star : NULL;
    return st && st->p1_visible > 0 ? (double)st->p1_kept / (double)st->p1_visible : 1.0;
}

void mx_star_session_free(mx_session *s) {
    if (!s) return;
    mx_xattn_detach(s);
    if (s->star) {
        mx_star_free(s->star);
        free(s->star);
        s->star = NULL;
    }
    mx_session_free(s);
}
