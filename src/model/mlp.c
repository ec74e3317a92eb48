/* mlp.c: the dense MLP of one layer. SwiGLU (Llama): h = Wd·(silu(Wg·h) ⊙ Wu·h). GELU (GPT-2):
 * h = Wd·gelu(Wu·h + bu) + bd. Shapes: h (T, C) → (T, F) → h (T, C). */
#include "session.h"

void mx_mlp_dense(mx_session *s, int l, int T) {
    const mx_config *c = &s->m->cfg;
    const mx_layer_weights *L = &s->m->w.layers[l];
    mx_backend *be = s->be;
    float *g = s->buf[0], *u = s->buf[1];
    if (c->mlp == MX_MLP_SWIGLU) {
        const mx_tensor *w[2] = {&L->w_gate, &L->w_up};
        float *y[2] = {g, u};
        mx_matmul_group(be, 2, w, s->h, y, T);
        be->swiglu(be, g, u, T * c->d_ff);
    } else {
        be->matmul(be, &L->w_up, s->h, g, T);
        if (L->b_up.data) be->add_bias(be, g, &L->b_up, T, c->d_ff);
        be->gelu(be, g, T * c->d_ff);
    }
    be->matmul(be, &L->w_down, g, s->h, T);
    if (L->b_down.data) be->add_bias(be, s->h, &L->b_down, T, c->d_model);
}
