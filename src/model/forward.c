/* forward.c: the transformer forward pass, written once against the op contract (backend.h).
 * Pre-norm residual blocks: x += attn(norm1(x)); x += mlp(norm2(x)); logits = head(norm(x)).
 * Embedding: token rows (+ learned position rows for GPT-2). Attention is the plan's kind for the layer
 * (attention/mha.c, mla.c, mka.c); the MLP is dense (mlp.c) or mixture-of-experts (moe.c). Under tensor
 * parallelism (tp.h) each block output is summed over ranks and the head's vocabulary slices gathered. */
#include "../attention/attention.h"
#include "session.h"
#include "tp.h"

void mx_norm(mx_session *s, const float *x, const mx_tensor *w, const mx_tensor *b, float *out, int T) {
    const mx_config *c = &s->m->cfg;
    if (c->norm == MX_NORM_LAYER)
        s->be->layernorm(s->be, x, w, b, out, T, c->d_model, c->norm_eps);
    else
        s->be->rmsnorm(s->be, x, w, out, T, c->d_model, c->norm_eps);
}

/* tokens NULL: the one token at s->tok in backend memory (mx_session_eval_keep) */
static void embed(mx_session *s, const int *tokens, int T) {
    const mx_model *m = s->m;
    mx_backend *be = s->be;
    if (tokens)
        be->embed(be, &m->w.tok_embd, tokens, T, s->x); /* x (T, C) */
    else
        be->embed_dev(be, &m->w.tok_embd, s->tok, T, s->x);
    if (m->cfg.use_rope) return;
    for (int t0 = 0; t0 < T; t0 += 512) { /* learned positions, in batches of ids */
        int pos[512], n = T - t0 < 512 ? T - t0 : 512;
        for (int t = 0; t < n; t++) pos[t] = s->pos + s->pos_offset + t0 + t;
        be->embed(be, &m->w.pos_embd, pos, n, s->h + (size_t)t0 * m->cfg.d_model);
    }
    be->add(be, s->x, s->h, T * m->cfg.d_model);
}

static void blocks(mx_session *s, const int *tokens, int T) {
    const mx_config *c = &s->m->cfg;
    mx_backend *be = s->be;
    int C = c->d_model;
    embed(s, tokens, T);
    for (int l = 0; l < c->n_layer; l++) {
        const mx_layer_weights *L = &s->m->w.layers[l];
        mx_norm(s, s->x, &L->attn_norm, &L->attn_norm_b, s->h, T);
        mx_attention(s, l, T);
        mx_tp_reduce(s, s->h, (size_t)T * C); /* tensor parallel: sum the ranks' head slices */
        be->add(be, s->x, s->h, T * C);
        mx_norm(s, s->x, &L->ffn_norm, &L->ffn_norm_b, s->h, T);
        if (mx_layer_is_moe(c, l))
            mx_mlp_moe(s, l, T);
        else
            mx_mlp_dense(s, l, T);
        mx_tp_reduce(s, s->h, (size_t)T * C);
        be->add(be, s->x, s->h, T * C);
    }
    s->pos += T;
}

void mx_forward_keep(mx_session *s, const int *tokens, int T) {
    const mx_config *c = &s->m->cfg;
    blocks(s, tokens, T);
    mx_norm(s, s->x + (size_t)(T - 1) * c->d_model, &s->m->w.out_norm, &s->m->w.out_norm_b, s->h, 1);
    s->be->matmul(s->be, &s->m->w.output, s->h, s->logits, 1); /* (1, vocab), stays in backend memory */
}

void mx_forward(mx_session *s, const int *tokens, int T, float *logits, bool all_logits) {
    const mx_config *c = &s->m->cfg;
    mx_backend *be = s->be;
    int C = c->d_model;
    blocks(s, tokens, T);
    if (!logits) return;
    int rows = all_logits ? T : 1;
    const float *xr = all_logits ? s->x : s->x + (size_t)(T - 1) * C;
    mx_norm(s, xr, &s->m->w.out_norm, &s->m->w.out_norm_b, s->h, rows);
    if (s->m->tp) { /* each rank's vocabulary rows, gathered */
        mx_tp_logits(s, s->h, rows, logits);
        return;
    }
    be->matmul(be, &s->m->w.output, s->h, s->logits, rows); /* (rows, vocab) */
    be->to_host(be, logits, s->logits, (size_t)rows * c->vocab);
}
