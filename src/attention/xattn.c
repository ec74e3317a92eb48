/* xattn.c: XAttention for the MHA family (see xattn.h): the options and their checks, a session's state,
 * and the per-layer attention that scores, selects and attends block-sparsely through the backend's
 * xattn_select and attention ops. Backend-neutral: the block lists live in backend memory. */
#include "xattn.h"

#include <stdlib.h>
#include <string.h>

#include "../model/session_state.h"

mx_xattn_opts mx_xattn_defaults(void) {
    return (mx_xattn_opts){.on = false, .stride = 8, .threshold = 0.9f, .block = MX_XATTN_BLOCK};
}

int mx_xattn_check_opts(const mx_xattn_opts *o, mx_err *err) {
    if (!(o->threshold > 0.0f && o->threshold <= 1.0f))
        return mx_err_set(err, MX_ERR_ARG, "--xattn-threshold %g is outside (0, 1]", (double)o->threshold);
    if (o->block < 1)
        return mx_err_set(err, MX_ERR_ARG, "XAttention block of %d positions: it must be at least 1",
                          o->block);
    if (o->stride < 1 || o->block % o->stride)
        return mx_err_set(err, MX_ERR_ARG, "--xattn-stride %d does not divide the block of %d positions",
                          o->stride, o->block);
    return MX_OK;
}

int mx_xattn_attach(mx_session *s, const mx_xattn_opts *o, mx_err *err) {
    if (mx_xattn_check_opts(o, err)) return err->code;
    mx_backend *be = s->be;
    if (!be->xattn_select)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--attn xattn needs the xattn_select op, which --device %s "
                          "lacks",
                          be->name);
    mx_xattn *x = calloc(1, sizeof *x);
    if (!x) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    x->o = *o;
    x->n_qb_max = s->ubatch / o->block + 2;
    x->n_kb_max = s->n_ctx / o->block + 1;
    int H = s->m->cfg.n_head;
    size_t n_off = (size_t)H * x->n_qb_max + 1, n_idx = (size_t)H * x->n_qb_max * x->n_kb_max;
    x->off = be->alloc(be, n_off * sizeof(int));
    x->idx = be->alloc(be, n_idx * sizeof(int));
    if (!x->off || !x->idx) {
        if (x->off) be->free(be, x->off);
        if (x->idx) be->free(be, x->idx);
        free(x);
        return mx_err_set(err, MX_ERR_NOMEM, "out of %s memory for XAttention's block lists (%zu ints)",
                          be->name, n_off + n_idx);
    }
    mx_xattn_detach(s);
    s->xattn = x;
    return MX_OK;
}

void mx_xattn_detach(mx_session *s) {
    if (!s || !s->xattn) return;
    mx_xattn *x = s->xattn;
    s->be->free(s->be, x->off);
    s->be->free(s->be, x->idx);
    free(x);
    s->xattn = NULL;
}

double mx_xattn_density(const mx_xattn *x) {
    return x && x->visible > 0 ? (double)x->kept / (double)x->visible : 1.0;
}

int mx_xattn_visible_blocks(const mx_attn_spec *sp, int block, int i) {
    int j0 = sp->kv_lo / block, j1 = sp->kv_hi / block;
    if (sp->causal && i < j1) j1 = i;
    return j1 >= j0 ? j1 - j0 + 1 : 0;
}

void mx_attention_xattn(mx_session *s, int l, int T, const float *q, float *att) {
    const mx_config *c = &s->m->cfg;
    mx_backend *be = s->be;
    mx_xattn *x = s->xattn;
    const mx_kv_layer *kv = &s->kv.layers[l];
    mx_attn_spec spec = mx_attn_spec_for(s, l, T, c->head_dim, c->head_dim, c->n_kv_head);
    /* decode, window layers and a ring that no longer holds position 0 stay dense */
    bool sparse = T > 1 && spec.window == 0 && spec.causal && spec.kv_lo == 0 && spec.kv_hi < kv->n_slots;
    mx_attn_blocks bl = {.block = x->o.block};
    if (sparse) {
        long kept =
            be->xattn_select(be, &spec, q, kv->k, x->o.stride, x->o.threshold, &bl, x->off, x->idx, NULL);
        x->calls++;
        if (kept < 0) {
            x->dense_fallbacks++;
        } else {
            for (int i = bl.qb0; i < bl.qb0 + bl.n_qb; i++)
                x->visible += (long)c->n_head * mx_xattn_visible_blocks(&spec, bl.block, i);
            x->kept += kept;
            spec.blocks = &bl;
        }
    }
    be->attention(be, &spec, q, kv->k, kv->v, att, NULL);
}
