/* star_pipeline.h: the Star Attention pipeline (arXiv 2411.17116; docs/attention.md, "Star Attention") over
 * the ranks of a communicator, or over several blocks on one process.
 *
 * Phase 1, context encoding, no communication: the context of n tokens is split into blocks of B (the last
 * may be shorter); rank r of R owns the consecutive blocks [r*nb/R, (r+1)*nb/R). Each block b > 0 is
 * prefixed with the anchor, the first A tokens of block 0 at positions 0..A-1, while the block keeps its
 * global positions; [anchor | block] runs causal attention through every layer; the anchor's KV is then
 * dropped and the block's KV kept. The rank's blocks go through one scratch session of A + B slots, one after
 * another (the anchor is evaluated once and kept in the scratch's first A slots), so the attention work and
 * scratch memory of phase 1 are those of one block.
 *
 * Phase 2, query and generation, exact: the returned session holds the rank's context KV compactly in slots
 * 0..n_local-1 and takes the query and generated tokens at positions n, n+1, ...; its MHA layers attend
 * through attention/star_attend.c (every rank's partial attention, merged exactly by log-sum-exp), so every
 * rank computes the same logits. The last rank (the query host) keeps the query and generated tokens' KV.
 *
 * Supported: models whose every layer is full MHA/GQA/MQA attention writing its own cache (Llama, GPT-2,
 * Mixtral ...), on the CPU and CUDA backends (with --device cuda under mpirun, phase 2's gathers go through
 * NCCL on device buffers: mx_star_open attaches the communicator). */
#ifndef MX_STAR_PIPELINE_H
#define MX_STAR_PIPELINE_H

#include <stdbool.h>

#include "../attention/xattn.h"
#include "../dist/comm.h"
#include "../model/session.h"

typedef struct {
    bool on;    /* --attn star */
    int block;  /* B: tokens per block; 0 = ceil(context / ranks), one block per rank */
    int anchor; /* A: anchor tokens, 0..B; -1 = B */
    int query;  /* the last `query` prompt tokens form the query (phase 2); 0 = 1 */
    /* XAttention: with on, phase 1 encodes each [anchor | block] block-sparsely (--attn star+xattn);
     * phase 2 stays exact. Without Star (--attn xattn) the command attaches it to its own session. */
    mx_xattn_opts xattn;
    bool xattn_given; /* --xattn-stride or --xattn-threshold was given (the CLI's check) */
} mx_star_opts;

/* Refuses, with the reason, a model or backend Star Attention does not support. */
int mx_star_check(const mx_model *m, const mx_backend *be, mx_err *err);

/* Runs phase 1 over ctx[0..n) on this rank and returns the phase-2 session with room for n_after more tokens
 * (query + generated) at positions n .. n + n_after - 1. Collective: every rank of comm calls it with the
 * same arguments; a failure on any rank fails it on every rank with that rank's message. */
int mx_star_open(const mx_model *m, mx_backend *be, mx_comm *comm, const mx_star_opts *o, const int *ctx,
                 int n, int n_after, mx_session **out, mx_err *err);

/* This rank's phase-1 XAttention density (kept / visible blocks); 1 without XAttention. */
double mx_star_phase1_density(const mx_session *s);

/* Frees a session from mx_star_open (or any session, XAttention state included). */
void mx_star_session_free(mx_session *s);

#endif
