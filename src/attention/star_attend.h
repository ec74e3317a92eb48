/* star_attend.h: Star Attention's phase 2 (arXiv 2411.17116): the query and generated tokens attend exactly
 * to a context whose KV is spread over ranks (or over blocks of one rank). Each rank attends the query to its
 * own KV, giving (out_r, lse_r) per query row and head; the parts are merged exactly by log-sum-exp:
 *   lse = log Σ_r exp(lse_r),   out = Σ_r exp(lse_r − lse) · out_r    (fp32, sums in double).
 * The merge is the backend op lse_merge (backend.h; the CPU's in backend/cpu/cpu_lse_merge.c, the only host
 * copy). star_attend.c holds a rank's phase-2 buffers and the per-layer hook that attention/mha.c calls when
 * a session carries an mx_star (s->star). Phase 1 (encoding the context blocks with the anchor) and the
 * pipeline are in run/star_pipeline.c, the command-line flags in cli/star_cli.c.
 * Shapes: T query rows, H heads, Dv value dim; out (T, H*Dv), lse (T, H). */
#ifndef MX_STAR_ATTEND_H
#define MX_STAR_ATTEND_H

#include <stdbool.h>
#include <stddef.h>

#include "../base/status.h"
#include "../backend/backend.h"
#include "../dist/comm.h"

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
    float *local;             /* the query host's two local parts, context then query tokens: 2 messages */
    float *send;              /* this rank's message (its local merge) */
    float *recv;              /* every rank's message, in rank order: comm->size messages */
    long p1_kept, p1_visible; /* phase 1's XAttention block counts on this rank (run/star_pipeline.c) */
} mx_star;

/* Allocates the buffers of st on be for up to rows query rows of H heads of Dv; comm and be are borrowed. */
int mx_star_init(mx_star *st, mx_comm *comm, mx_backend *be, int n_local, bool query_host, int rows,
                 int n_head, int v_dim, mx_err *err);
void mx_star_free(mx_star *st);

#endif
