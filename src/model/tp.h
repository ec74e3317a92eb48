/* tp.h: tensor parallelism for inference (`--tp N`, one rank per process under mpirun; CPU backend with Open
 * MPI on host buffers, or CUDA backend with NCCL on device buffers, one GPU per rank).
 *
 * mx_tp_shard turns a loaded model into this rank's slice of it, after which the unchanged forward code runs
 * on local sizes (the config's n_head, n_kv_head and d_ff become this rank's counts):
 *   attention    query heads split across ranks: Wq rows (and bq) by head; Wk/Wv rows (and bk/bv) by the KV
 *                heads those query heads read: with GQA the KV heads are divided (G >= N: G/N each, uneven
 *                when N does not divide G), or, when there are fewer KV heads than ranks (N a multiple of G),
 *                each KV head is replicated on the N/G ranks that share its query heads. Wo keeps the input
 *                columns of the local heads (row-parallel); the block output is summed by one allreduce.
 *   MLA          (DeepSeek-V2/V3) heads split: Wq (or Wq_b) and Wkv_b rows, Wo columns; the latent
 *                projections (Wq_a, Wkv_a) and the latent cache are replicated (every rank needs the latent).
 *   MKA/FastMKA  heads split like MHA; the router and the prefix sums are replicated (computed per rank).
 *   dense MLP    gate/up rows (and b_up) split, down columns; one allreduce.
 *   MoE          experts split across ranks (expert parallelism): every rank routes every token (replicated
 *                router), runs only its experts, and the allreduce after the block sums the contributions;
 *                shared experts are split like the dense MLP.
 *   output       the head's vocabulary rows split (with tied embeddings the embedding stays whole and the
 *                head is a row view of it); the logits are allgathered.
 * Biases of row-parallel outputs (bo, b_down) stay on rank 0 only, so the allreduce adds them once.
 * Column slices of quantized matrices are copied block by block when they fall on block boundaries; where
 * they do not (e.g. K-quants, 256-wide blocks, against 64-wide heads) the rank keeps an fp32 copy of its
 * slice. The KV cache then holds only local heads (MHA family), so per-rank memory falls.
 *
 * Ranks agree on everything without talking: the split is a function of (model, rank, size), and after each
 * allreduce every rank holds the same residual stream, so the replicated parts (norms, router) compute the
 * same values everywhere. */
#ifndef MX_TP_H
#define MX_TP_H

#include <stdio.h>

#include "../dist/comm.h"
#include "session.h"

struct mx_tp {
    mx_comm *comm; /* not owned */
    int rank, size;
    /* the model's own sizes, before sharding */
    int n_head, n_kv_head, d_ff, vocab;
    /* this rank's slices: first global index (the counts are in the sharded config, except vocab/experts) */
    int head0, kv_head0, ff0;
    int expert0, expert1;                  /* experts [expert0, expert1) run here */
    int vocab0, n_vocab;                   /* output rows [vocab0, vocab0 + n_vocab) */
    int vocab_max;                         /* the largest n_vocab of any rank (allgather stride) */
    int f32_copies;                        /* matrices whose column slice had to be kept as fp32 */
    size_t decode_bytes, decode_bytes_one; /* weight bytes read per decoded token: this rank, one rank */
};

/* Shards m for `size` ranks of comm (size == comm->size, size > 1) in place and sets m->tp. Fails with a
 * message naming the count that does not split (heads, KV heads) and what would. */
int mx_tp_shard(mx_model *m, mx_comm *comm, mx_err *err);

/* Hooks for the forward code (no-ops when m->tp is NULL). A failed collective ends the job through
 * comm->abort with the collective's message: the forward pass has no error path and the ranks cannot go on
 * apart. */
/* Allocates the session's buffers for the head's allgather (s->tp_send, s->tp_recv) in backend memory; does
 * nothing without tensor parallelism. Called by mx_session_create. */
int mx_tp_session_init(mx_session *s, mx_err *err);
/* x[0..n) (backend memory: the communicator is attached to the backend) = Σ over ranks: after each
 * row-parallel block output. */
void mx_tp_reduce(mx_session *s, float *x, size_t n);
/* logits (host, rows × vocab) = the output head applied to hn (rows, C, backend memory), each rank computing
 * its vocabulary rows into s->logits, padding them to vocab_max columns and allgathering them in backend
 * memory; the blocks are put back in vocabulary order on the backend and copied to the host once. */
void mx_tp_logits(mx_session *s, const float *hn, int rows, float *logits);
/* Whether expert e runs on this rank (always true without tensor parallelism). */
bool mx_tp_has_expert(const mx_session *s, int e);

/* One line per rank's share ("rank 0 of 2: query heads 0..1 of 4, ..."), for mixatt info. */
void mx_tp_describe(const mx_model *m, FILE *f);

#endif
