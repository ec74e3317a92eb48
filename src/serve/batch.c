/* batch.c: the batched forward step (see batch.h). The rows of a step are laid out as
 *   [decode rows: one per sequence, n = 1 items in order] [prefill chunk 1] [prefill chunk 2] ...
 * Row-wise ops (embedding, norms, residual adds) run over all rows at once. The matmuls of the decode rows
 * run as one call through be_rows (matmul_rows: each row rounded as if alone), a prefill chunk's as one call
 * through be->matmul (the same call mixatt run makes for that chunk), so no sequence's numbers depend on
 * what else is in the batch. Attention of decode rows on MHA-family layers: q, k, v, o projections batched,
 * then be->attention_batch over every sequence's own cache; other attention kinds, and prefill chunks, run
 * the layer's own block (attention/mha.c, mla.c, mka.c) on a view of the scratch session pointed at that
 * sequence's cache and rows. */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "../attention/attention.h"

size_t mx_seq_bytes(const mx_model *m, const mx_backend *be, int n_ctx, int chunk) {
    return mx_kv_bytes_at(&m->cfg, n_ctx, chunk < n_ctx ? chunk : n_ctx, be->kv_elem_bytes);
}

int mx_seq_init(mx_seq *q, const mx_model *m, mx_backend *be, int n_ctx, int chunk, mx_err *err) {
    memset(q, 0, sizeof *q);
    q->n_ctx = n_ctx;
    int rc = mx_kvcache_init(&q->kv, &m->cfg, be, n_ctx, chunk < n_ctx ? chunk : n_ctx, err);
    q->kv.mla_form = (mx_mla_form)m->cfg.mla_form;
    return rc;
}

void mx_seq_free(mx_seq *q) {
    mx_kvcache_free(&q->kv);
}

int mx_batch_init(mx_batch *b, const mx_model *m, mx_backend *be, int max_decode, int chunk, bool gemm,
                  mx_err *err) {
    memset(b, 0, sizeof *b);
    b->m = m;
    b->be = be;
    b->be_rows = *be;
    if (be->matmul_rows && !gemm) {
        b->be_rows.matmul = be->matmul_rows;
        b->be_rows.matmul_group = NULL; /* mx_matmul_group then calls matmul_rows per weight, as alone */
    }
    b->chunk = chunk;
    b->max_rows = max_decode + chunk;
    if (b->max_rows > m->cfg.max_ctx)
        return mx_err_set(
            err, MX_ERR_ARG,
            "a batch of %d rows (%d slots + a prefill chunk of %d) exceeds the model's %d positions "
            "that size its scratch; lower --parallel or --chunk",
            b->max_rows, max_decode, chunk, m->cfg.max_ctx);
    /* the scratch session holds max_rows rows per forward: its ubatch follows be->ubatch, set for the call */
    int saved = be->ubatch;
    be->ubatch = b->max_rows;
    int rc = mx_session_create(m, be, b->max_rows, &b->s, err);
    be->ubatch = saved;
    if (rc) return mx_err_wrap(err, "the server's batch of %d rows", b->max_rows);
    size_t R = (size_t)b->max_rows;
    b->ids = malloc(R * sizeof(int));
    b->pos = malloc(R * sizeof(int));
    b->logit_rows = malloc(R * sizeof(int));
    b->specs = malloc(R * sizeof(mx_attn_spec));
    b->kp = malloc(R * sizeof(void *));
    b->vp = malloc(R * sizeof(void *));
    b->logits = malloc(R * (size_t)m->cfg.vocab * sizeof(float));
    if (!b->ids || !b->pos || !b->logit_rows || !b->specs || !b->kp || !b->vp || !b->logits) {
        mx_batch_free(b);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating a batch of %d rows", b->max_rows);
    }
    return MX_OK;
}

void mx_batch_free(mx_batch *b) {
    mx_session_free(b->s);
    free(b->ids);
    free(b->pos);
    free(b->logit_rows);
    free(b->specs);
    free(b->kp);
    free(b->vp);
    free(b->logits);
    memset(b, 0, sizeof *b);
}

/* The scratch session seen as sequence q's (its cache and position) over the rows from r0, computing on be.
 */
static mx_session view_of(const mx_batch *b, mx_backend *be, const mx_seq *q, int r0) {
    mx_session v = *b->s;
    size_t C = (size_t)b->m->cfg.d_model;
    v.be = be;
    v.kv = q->kv;
    v.pos = q->pos;
    v.n_ctx = q->n_ctx;
    v.x = b->s->x + (size_t)r0 * C;
    v.h = b->s->h + (size_t)r0 * C;
    return v;
}

static void mlp_block(mx_session *s, int l, int T) {
    if (mx_layer_is_moe(&s->m->cfg, l))
        mx_mlp_moe(s, l, T);
    else
        mx_mlp_dense(s, l, T);
}

/* Layer l's attention for the nd decode rows (rows 0..nd-1, item i's sequence at row i), MHA family:
 * projections over all rows through be_rows, rope and cache writes per row at its own position, then one
 * attention_batch over the sequences' caches. s->h (nd, C) in, block output (nd, C) out. */
static void decode_attention_mha(mx_batch *b, const mx_batch_item *items, int nd, int l) {
    const mx_config *c = &b->m->cfg;
    const mx_layer_weights *L = &b->m->w.layers[l];
    mx_backend *be = b->be, *br = &b->be_rows;
    mx_session *s = b->s;
    int H = c->n_head, G = c->n_kv_head, D = c->head_dim;
    size_t qw = (size_t)H * D, kw = (size_t)G * D;
    float *q = s->buf[0], *k = s->buf[1], *v = s->buf[2], *att = s->buf[3];
    br->matmul(br, &L->wq, s->h, q, nd);
    if (L->bq.data) be->add_bias(be, q, &L->bq, nd, H * D);
    bool writer = c->plan[l].kv_from == l;
    if (writer) {
        br->matmul(br, &L->wk, s->h, k, nd);
        br->matmul(br, &L->wv, s->h, v, nd);
        if (L->bk.data) be->add_bias(be, k, &L->bk, nd, G * D);
        if (L->bv.data) be->add_bias(be, v, &L->bv, nd, G * D);
    }
    for (int i = 0; i < nd; i++) {
        mx_seq *sq = items[i].seq;
        mx_kv_layer *kv = &sq->kv.layers[l];
        if (c->use_rope) be->rope(be, q + i * qw, 1, H, D, c->rope_dim, sq->pos, c->rope_theta, c->rope_mode);
        if (writer) {
            if (c->use_rope)
                be->rope(be, k + i * kw, 1, G, D, c->rope_dim, sq->pos, c->rope_theta, c->rope_mode);
            be->kv_write(be, kv->k, k + i * kw, 1, G * D, sq->pos, kv->n_slots);
            be->kv_write(be, kv->v, v + i * kw, 1, G * D, sq->pos, kv->n_slots);
        }
        mx_session one = view_of(b, be, sq, i);
        b->specs[i] = mx_attn_spec_for(&one, l, 1, D, D, G);
        b->kp[i] = kv->k;
        b->vp[i] = kv->v;
    }
    if (be->attention_batch)
        be->attention_batch(be, nd, b->specs, q, b->kp, b->vp, att);
    else
        for (int i = 0; i < nd; i++)
            be->attention(be, &b->specs[i], q + i * qw, b->kp[i], b->vp[i], att + i * qw, NULL);
    br->matmul(br, &L->wo, att, s->h, nd);
    if (L->bo.data) be->add_bias(be, s->h, &L->bo, nd, c->d_model);
}

/* Layer l's attention over every group of rows. */
static void attention_all(mx_batch *b, const mx_batch_item *items, int n_items, int nd, const int *r0,
                          int l) {
    const mx_config *c = &b->m->cfg;
    if (nd > 0 && c->plan[l].kind == MX_ATTN_MHA) {
        decode_attention_mha(b, items, nd, l);
    } else {
        for (int i = 0; i < nd; i++) { /* one token each, as mx_generate runs it */
            mx_session v = view_of(b, b->be, items[i].seq, i);
            mx_attention(&v, l, 1);
        }
    }
    for (int i = nd; i < n_items; i++) {
        mx_session v = view_of(b, b->be, items[i].seq, r0[i]);
        mx_attention(&v, l, items[i].n);
    }
}

/* Layer l's MLP: the decode rows in one call through be_rows, each chunk in one call. */
static void mlp_all(mx_batch *b, const mx_batch_item *items, int n_items, int nd, const int *r0, int l) {
    if (nd > 0) {
        mx_session v = view_of(b, &b->be_rows, items[0].seq, 0);
        mlp_block(&v, l, nd);
    }
    for (int i = nd; i < n_items; i++) {
        mx_session v = view_of(b, b->be, items[i].seq, r0[i]);
        mlp_block(&v, l, items[i].n);
    }
}

static void embed_rows(mx_batch *b, int R) {
    const mx_model *m = b->m;
    mx_backend *be = b->be;
    mx_session *s = b->s;
    be->embed(be, &m->w.tok_embd, b->ids, R, s->x); /* x (R, C) */
    if (m->cfg.use_rope) return;
    be->embed(be, &m->w.pos_embd, b->pos, R, s->h); /* learned positions, each row its own */
    be->add(be, s->x, s->h, R * m->cfg.d_model);
}

/* Checks the items and lays out their rows: decode items first; r0[i] = item i's first row, *rows in all. */
static int layout(const mx_batch *b, const mx_batch_item *items, int n_items, int *r0, int *nd, int *n_rows,
                  mx_err *err) {
    int rows = 0;
    *nd = 0;
    for (int i = 0; i < n_items; i++) {
        const mx_batch_item *it = &items[i];
        if (it->n < 1 || it->seq->pos + it->n > it->seq->n_ctx)
            return mx_err_set(err, MX_ERR_ARG, "item %d: %d tokens at position %d exceed the context of %d",
                              i, it->n, it->seq->pos, it->seq->n_ctx);
        if (it->n == 1 && i != *nd)
            return mx_err_set(err, MX_ERR_ARG, "item %d: one-token items must come first", i);
        if (it->n == 1) ++*nd;
        if (it->n > b->chunk)
            return mx_err_set(err, MX_ERR_ARG, "item %d: a chunk of %d tokens exceeds %d", i, it->n,
                              b->chunk);
        for (int t = 0; t < it->n; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= b->m->cfg.vocab)
                return mx_err_set(err, MX_ERR_ARG, "item %d: token id %d is outside the vocabulary", i,
                                  it->tokens[t]);
        r0[i] = rows;
        rows += it->n;
    }
    if (rows > b->max_rows)
        return mx_err_set(err, MX_ERR_ARG, "a step of %d rows exceeds the batch of %d", rows, b->max_rows);
    *n_rows = rows;
    return MX_OK;
}

/* Final norm and output head of the rows that asked for logits, in one matmul_rows call. */
static int head_rows(mx_batch *b, const mx_batch_item *items, int n_items, const int *r0) {
    const mx_model *m = b->m;
    mx_backend *be = b->be;
    mx_session *s = b->s;
    int C = m->cfg.d_model, n = 0;
    for (int i = 0; i < n_items; i++)
        if (items[i].logits) b->logit_rows[n++] = r0[i] + items[i].n - 1;
    if (n == 0) return 0;
    for (int j = 0; j < n; j++) /* gather into h: rows stay in order, so row j <= logit_rows[j] */
        be->copy3d(be, s->h + (size_t)j * C, s->x + (size_t)b->logit_rows[j] * C, C, 1, 1, 0, 0, 0, 0);
    mx_session v = view_of(b, be, items[0].seq, 0);
    mx_norm(&v, s->h, &m->w.out_norm, &m->w.out_norm_b, s->buf[0], n);
    b->be_rows.matmul(&b->be_rows, &m->w.output, s->buf[0], s->logits, n); /* (n, vocab) */
    be->to_host(be, b->logits, s->logits, (size_t)n * m->cfg.vocab);
    return n;
}

int mx_batch_step(mx_batch *b, const mx_batch_item *items, int n_items, float **logits, mx_err *err) {
    *logits = b->logits;
    if (n_items == 0) return MX_OK;
    const mx_config *c = &b->m->cfg;
    int *r0 = malloc(sizeof(int) * (size_t)n_items), nd = 0, R = 0;
    if (!r0) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    int rc = layout(b, items, n_items, r0, &nd, &R, err);
    if (rc) {
        free(r0);
        return rc;
    }
    for (int i = 0; i < n_items; i++)
        for (int t = 0; t < items[i].n; t++) {
            b->ids[r0[i] + t] = items[i].tokens[t];
            b->pos[r0[i] + t] = items[i].seq->pos + t;
        }
    mx_backend *be = b->be;
    mx_session *s = b->s;
    int C = c->d_model;
    embed_rows(b, R);
    for (int l = 0; l < c->n_layer; l++) {
        const mx_layer_weights *L = &b->m->w.layers[l];
        mx_norm(s, s->x, &L->attn_norm, &L->attn_norm_b, s->h, R);
        attention_all(b, items, n_items, nd, r0, l);
        be->add(be, s->x, s->h, R * C);
        mx_norm(s, s->x, &L->ffn_norm, &L->ffn_norm_b, s->h, R);
        mlp_all(b, items, n_items, nd, r0, l);
        be->add(be, s->x, s->h, R * C);
    }
    for (int i = 0; i < n_items; i++) items[i].seq->pos += items[i].n;
    head_rows(b, items, n_items, r0);
    free(r0);
    return MX_OK;
}
