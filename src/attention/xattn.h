/* xattn.h: XAttention block-sparse prefill (arXiv 2503.16428; docs/attention.md, "XAttention") for the MHA
 * family's full-attention layers. A session carrying an mx_xattn (s->xattn) runs every prefill call (T > 1
 * query rows) of a full-attention layer in three steps; decode (T = 1) and window layers stay dense.
 *
 * 1. Scoring, stride S, blocks of B positions (B % S == 0; B = 128). Positions are cut into tiles of S. For
 *    query tile a and key tile b the anti-diagonal sum
 *        A(a, b) = Σ_{t<S} q[aS+S-1-t] · k[bS+t]      (rows outside the call's queries or keys count 0)
 *    is scaled by scale / S (scale = 1/sqrt(D)); each query tile takes a softmax over the key tiles it may
 *    see (causal at tile granularity: b <= a), in fp32 with the sum in double; the probabilities are summed
 *    into block masses M(i, j) over the tiles of query block i and key block j. Per query head (GQA: head h
 *    reads KV head h / (H/G)).
 * 2. Selection, per head and query block i, over the visible key blocks j0 = kv_lo/B .. j1 = min(i, kv_hi/B):
 *    keep j0 (the attention sink) and j1 (the diagonal); then the others by descending mass (ties: the
 *    lower block first), each while the kept mass so far is below τ · Σ_j M(i, j). τ = 1 keeps every block.
 * 3. Exact softmax attention of each query row over the keys of its kept blocks (within its causal range):
 *    the backend's attention op with a block list (backend.h: mx_attn_blocks).
 * The kept fraction of visible (head, query block, key block) triples is the density, counted per session.
 * scripts/fixtures_xattn.py is the independent numpy reference of steps 1 and 2. */
#ifndef MX_XATTN_H
#define MX_XATTN_H

#include <stdbool.h>

#include "../backend/backend.h"
#include "../base/status.h"
#include "attention.h"

enum { MX_XATTN_BLOCK = 128 };

typedef struct {
    bool on;         /* --attn xattn (or star+xattn: Star's phase 1 encodes with it) */
    int stride;      /* S: --xattn-stride, 8 or 16 by the paper; any divisor of the block */
    float threshold; /* τ in (0, 1]: --xattn-threshold */
    int block;       /* B: 128 */
} mx_xattn_opts;

/* off: S = 8, τ = 0.9, B = 128. */
mx_xattn_opts mx_xattn_defaults(void);
/* Refuses τ outside (0, 1], a stride < 1 or not dividing the block, a block < 1. */
int mx_xattn_check_opts(const mx_xattn_opts *o, mx_err *err);

/* A session's XAttention state (s->xattn): the options, block-list buffers in backend memory, and the
 * counts behind the density. */
typedef struct mx_xattn {
    mx_xattn_opts o;
    int *off, *idx; /* backend memory: H*n_qb_max + 1 and H*n_qb_max*n_kb_max ints */
    int n_qb_max, n_kb_max;
    long kept, visible;          /* triples kept / visible, over every sparse call so far */
    long calls, dense_fallbacks; /* sparse prefill calls; calls run dense because scratch ran out */
} mx_xattn;

/* Gives session s XAttention with options o (checked; the backend must have xattn_select). */
int mx_xattn_attach(mx_session *s, const mx_xattn_opts *o, mx_err *err);
/* Frees s->xattn (NULL-safe; s may be NULL). */
void mx_xattn_detach(mx_session *s);
/* The density so far (kept / visible triples); 1 when no sparse call ran. */
double mx_xattn_density(const mx_xattn *x);

/* The attention of one MHA-family layer l for q (T, H*D) into att (T, H*D): XAttention when the layer has
 * full attention and T > 1, else the dense op (attention/mha.c calls it when s->xattn is set). */
void mx_attention_xattn(mx_session *s, int l, int T, const float *q, float *att);

/* Visible (key block) count for query block i: how many key blocks j0..j1 selection ranges over. */
int mx_xattn_visible_blocks(const mx_attn_spec *sp, int block, int i);

#endif
