/* dp.h: data-parallel training (`mixatt train --dp` under `mpirun -np N`). Every rank holds the whole model
 * and takes its share of every global batch: the loader reads the global micro-batch (batch, seq) on every
 * rank (the same cursor everywhere, so checkpoints and --resume need nothing per rank) and rank r trains on
 * rows [r B/N, (r+1) B/N). After the micro-batches the gradients are summed over ranks and divided by N
 * (fp32), so that clipping and AdamW see the global batch's gradient on every rank and the parameters stay
 * equal everywhere. Rank 0 writes the log and the checkpoints.
 *
 * ZeRO-1 (zero1): the AdamW moments are sharded. The flat parameter vector of n floats is cut into N slices
 * of s = n / N; rank r keeps the moments of [r s, (r+1) s) and of the tail [N s, n) (fewer than N elements,
 * which every rank updates alike), updates those elements only and the parameters are allgathered after each
 * step. For a checkpoint rank 0 gathers the slices (send/recv) into whole moment buffers held for the write
 * only. On a GPU the slices live in device memory and the collectives are NCCL's (comm->attach); rank 0 brings
 * each received slice to the host for the write.
 *
 * Every function takes dp == NULL as "one process without --dp" and then does what single-rank training does.
 * Collectives are agreed: a rank that fails (data, memory, a write) makes every rank return the lowest
 * failing rank's message (dist/agree.h). */
#ifndef MX_DP_H
#define MX_DP_H

#include <stdbool.h>

#include "../dist/comm.h"
#include "ckpt.h"
#include "model_train.h"

typedef struct {
    mx_comm *comm;
    int rank, size;
    bool zero1;
    size_t n;         /* floats of the flat parameter vector */
    int batch_local;  /* sequences of each micro-batch this rank trains on (batch / size) */
    size_t lo, shard; /* zero1: this rank's slice [lo, lo + shard) */
    size_t tail;      /* zero1: N * shard; [tail, n) is updated by every rank */
    float *m, *v;     /* zero1: the moments of the slice, then of the tail (shard + n - tail floats), where
                         the model runs */
    struct mx_tmodel *model; /* zero1 on a device: the model whose backend holds m, v (NULL: host memory) */
} mx_dp;

/* Checks that the global batch (cfg->batch sequences) splits over comm's ranks. */
int mx_dp_init(mx_dp *dp, mx_comm *comm, const mx_train_config *cfg, bool zero1, mx_err *err);
void mx_dp_free(mx_dp *dp);
/* Builds the model with activations for this rank's rows (batch / N); m->cfg keeps the global batch (the
 * checkpoint's config). */
int mx_dp_create_model(const mx_dp *dp, const mx_train_config *cfg, mx_tmodel **m, mx_err *err);
/* This rank's rows of a global batch of tokens (batch, seq). */
const int *mx_dp_rows(const mx_dp *dp, const int *tokens, int seq);
/* mx_dist_agree over the ranks (rc: this rank's status). */
int mx_dp_agree(const mx_dp *dp, int rc, mx_err *err);
/* Once the model is built (and a checkpoint loaded): rank 0's parameters to every rank; zero1 keeps this
 * rank's moments and frees the whole-vector ones (m->m, m->v and every p->m, p->v become NULL). */
int mx_dp_start(mx_dp *dp, mx_tmodel *m, mx_err *err);
/* After this rank's micro-batches (rc: their status, loss: their mean loss): agrees, then the mean gradient
 * over ranks in m->g and the mean loss in *loss (summed in double) on every rank. */
int mx_dp_reduce(mx_dp *dp, mx_tmodel *m, int rc, double *loss, mx_err *err);
/* The mean of x over ranks, summed in double in rank order (the same value on every rank). */
int mx_dp_mean(const mx_dp *dp, double *x, mx_err *err);
/* AdamW at lr, step t (1-based): every element, or (zero1) this rank's then an allgather of the parameters.
 */
int mx_dp_adamw_step(mx_dp *dp, mx_tmodel *m, float lr, int t, mx_err *err);
/* Writes the checkpoint on rank 0 (zero1: after gathering the moments there); every rank returns its status.
 */
int mx_dp_save(mx_dp *dp, mx_tmodel *m, const char *path, const mx_ckpt_state *st, mx_err *err);

#endif
