/* star.h: Star Attention's phase 2 (arXiv 2411.17116): the query and generated tokens attend exactly to a
 * context whose KV is spread over ranks (or over blocks of one rank). Each rank attends the query to its own
 * KV, giving (out_r, lse_r) per query row and head; the parts are merged exactly by log-sum-exp:
 *   lse = log Σ_r exp(lse_r),   out = Σ_r exp(lse_r − lse) · out_r    (fp32, sums in double).
 * star.c holds the host merge (pure, unit-tested against dense attention; the backends' lse_merge op computes
 * the same on their own memory) and the phase-2 buffers; star_attend.c the per-layer hook that
 * attention/mha.c calls when a session carries an mx_star (s->star). Phase 1 (encoding the context blocks
 * with the anchor) and the pipeline are in run/star.c.
 * Shapes: T query rows, H heads, Dv value dim; out (T, H*Dv) with row stride o_stride, lse (T, H). */
#ifndef MX_STAR_H
#define MX_STAR_H

#include <stdbool.h>
#include <stddef.h>

#include "../base/status.h"
#include "../backend/backend.h"
#include "../dist/comm.h"

/* Merges n partial attentions of the same T queries over disjoint key sets: outs[r] (T, H*Dv) with row stride
 * o_stride and lses[r] (T, H) in natural log, −inf where part r saw no key (its out is then ignored). Writes
 * out (T, H*Dv, stride o_stride) and, when lse is not NULL, the merged lse (T, H). A row and head that no
 * part saw gets out = 0, lse = −inf. out and lse must not alias the inputs. Host memory. */
void mx_star_merge(int n, const float *const *outs, const float *const *lses, int T, int H, int Dv,
                   size_t o_stride, float *out, float *lse);

/* Phase-2 state of one rank, owned by its session (s->star). Its keys live in every layer's store:
 *   slots [0, n_local)            this rank's context blocks (keys roped at their global positions),
 *   slots [n_local, s->pos + T)    the query and generated tokens; only the query host attends to them.
 * Buffers are the backend's (be->alloc: device memory on CUDA) and are merged by be->lse_merge. A message of
 * T rows is (T, H*Dv) outputs followed by (T, H) lse: msg(T) = T * (H*Dv + H) floats. */
typedef struct mx_star {
    mx_comm *comm;
    mx_backend *be;
    int n_local;     /* context tokens this rank holds */
    bool query_host; /* the last rank: also attends (causally) to the query and generated tokens */
    int rows;        /* query rows per call at most (the session's ubatch) */
    int n_head, v_dim;
    float *local; /* the query host's two local parts, context then query tokens: 2 messages */
    float *send;  /* this rank's message (its local merge) */
    float *recv;  /* every rank's message, in rank order: comm->size messages */
} mx_star;

/* Allocates the buffers of st on be for up to rows query rows of H heads of Dv; comm and be are borrowed. */
int mx_star_init(mx_star *st, mx_comm *comm, mx_backend *be, int n_local, bool query_host, int rows,
                 int n_head, int v_dim, mx_err *err);
void mx_star_free(mx_star *st);

#endif
