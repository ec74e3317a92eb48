/* moe.c: the mixture-of-experts MLP of one layer (Mixtral, DeepSeek-V2/V3), through the op contract.
 *   logits = router · h                                   (T, E)
 *   ids, w = top-k of softmax(logits) (renormalized over the k when cfg.expert_norm_topk) · expert_scale
 *   out[t] = Σ_j w[t, j] · expert_{ids[t, j]}(h[t])  +  shared(h[t])   (DeepSeek's shared experts, dense)
 * with expert_e(x) = Wd_e · (silu(Wg_e · x) ⊙ Wu_e · x). Each expert runs only on the tokens routed to it:
 * tokens are grouped by expert (host-side index lists), their rows gathered, the expert's slices of the 3-D
 * tensors (ne {n_in, n_out, E}) used as 2-D views, and the weighted results scatter-added in expert order.
 * A backend with a moe_ffn op (CUDA: routing, grouping and the expert GEMMs on the device) runs the routed
 * experts in that one call instead; it may decline a call (a few tokens), which then takes the generic path.
 * s->moe_counts[l * E + e] counts the tokens routed to each expert.
 * Shapes: h (T, C); gathered x (n_e, C); gate/up (n_e, Fe); down (n_e, C); accumulator (T, C). */
#include <stdlib.h>

#include "../io/dtype.h"
#include "session.h"
#include "tp.h"

/* The 2-D view of expert e of a 3-D expert tensor ne {n_in, n_out, E}. */
static mx_tensor expert_view(const mx_tensor *t, int e) {
    mx_tensor v = *t;
    size_t bytes = mx_dtype_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
    v.n_dims = 2;
    v.ne[2] = v.ne[3] = 1;
    v.data = (const char *)t->data + bytes * (size_t)e;
    v.nbytes = bytes;
    v.dev = t->dev ? (char *)t->dev + bytes * (size_t)e : NULL; /* backend.h: row_views */
    return v;
}

/* SwiGLU of n rows of x through (gate, up, down) into out (n, C); g and u scratch of (n, F). */
static void swiglu_mlp(mx_backend *be, const mx_tensor *gate, const mx_tensor *up, const mx_tensor *down,
                       const float *x, float *g, float *u, float *out, int n) {
    be->matmul(be, gate, x, g, n);
    be->matmul(be, up, x, u, n);
    be->swiglu(be, g, u, n * (int)gate->ne[1]);
    be->matmul(be, down, g, out, n);
}

typedef struct {
    int *ids;     /* (T, k) expert of each choice */
    float *w;     /* (T, k) its weight */
    int *tok;     /* tokens of the current expert */
    float *tok_w; /* their weights */
} routing;

static bool routing_alloc(routing *r, int T, int k) {
    size_t n = (size_t)T * k;
    r->ids = malloc(sizeof(int) * n);
    r->w = malloc(sizeof(float) * n);
    r->tok = malloc(sizeof(int) * (size_t)T);
    r->tok_w = malloc(sizeof(float) * (size_t)T);
    return r->ids && r->w && r->tok && r->tok_w;
}

static void routing_free(routing *r) {
    free(r->ids);
    free(r->w);
    free(r->tok);
    free(r->tok_w);
}

/* The tokens routed to expert e and their weights (in token order); returns how many. */
static int tokens_of(const routing *r, int T, int k, int e, int *tok, float *tok_w) {
    int n = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++)
            if (r->ids[(size_t)t * k + j] == e) {
                tok[n] = t;
                tok_w[n++] = r->w[(size_t)t * k + j];
            }
    return n;
}

/* The routed experts through the backend's moe_ffn, when it has one and takes this call: acc (T, C). */
static bool moe_ffn(mx_session *s, int l, int T, float *acc) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    int E = c->n_expert;
    if (!be->moe_ffn) return false;
    int *counts = malloc(sizeof(int) * (size_t)E);
    bool *local = s->m->tp ? malloc(sizeof(bool) * (size_t)E) : NULL;
    if (!counts || (s->m->tp && !local)) abort(); /* E entries */

    /* tensor parallel: this rank's experts */
    for (int e = 0; local && e < E; e++) local[e] = mx_tp_has_expert(s, e);
    bool done = be->moe_ffn(be, s->h, s->buf[5], T, E, c->n_expert_used, c->expert_norm_topk, c->expert_scale,
                            &L->gate_exps, &L->up_exps, &L->down_exps, local, acc, counts);
    for (int e = 0; done && s->moe_counts && e < E; e++) s->moe_counts[(size_t)l * E + e] += counts[e];
    free(counts);
    free(local);
    return done;
}

void mx_mlp_moe(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    int C = c->d_model, E = c->n_expert, k = c->n_expert_used;
    float *x = s->buf[0], *g = s->buf[1], *u = s->buf[2], *y = s->buf[3], *acc = s->buf[4];

    be->matmul(be, &L->router, s->h, s->buf[5], T); /* logits (T, E) */
    if (!moe_ffn(s, l, T, acc)) {
        routing r;
        if (!routing_alloc(&r, T, k)) abort(); /* a few KB */
        be->moe_route(be, s->buf[5], T, E, k, c->expert_norm_topk, c->expert_scale, r.ids, r.w);
        be->fill(be, acc, (size_t)T * C, 0.0f);
        for (int e = 0; e < E; e++) {
            int n = tokens_of(&r, T, k, e, r.tok, r.tok_w);
            if (s->moe_counts) s->moe_counts[(size_t)l * E + e] += n;
            if (n == 0 || !mx_tp_has_expert(s, e)) continue; /* tensor parallel: another rank's expert */
            mx_tensor wg = expert_view(&L->gate_exps, e), wu = expert_view(&L->up_exps, e),
                      wd = expert_view(&L->down_exps, e);
            be->gather_rows(be, x, s->h, r.tok, n, C);
            swiglu_mlp(be, &wg, &wu, &wd, x, g, u, y, n);
            be->scatter_add_rows(be, acc, y, r.tok, r.tok_w, n, C);
        }
        routing_free(&r);
    }
    if (c->n_shared_expert > 0) { /* the shared experts see every token; h is not needed afterwards */
        swiglu_mlp(be, &L->gate_shexp, &L->up_shexp, &L->down_shexp, s->h, g, u, y, T);
        be->add(be, acc, y, T * C);
    }
    be->copy3d(be, s->h, acc, T * C, 1, 1, 0, 0, 0, 0);
}
