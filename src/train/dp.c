/* dp.c: data-parallel training over the job's ranks, with optional ZeRO-1 sharding of the AdamW moments
 * (dp.h). */
#include "dp.h"

#include <stdlib.h>
#include <string.h>

#include "../backend/backend.h"
#include "../dist/agree.h"
#include "op_profile.h"
#include "optim.h"

int mx_dp_init(mx_dp *dp, mx_comm *comm, const mx_train_config *cfg, bool zero1, mx_err *err) {
    memset(dp, 0, sizeof *dp);
    dp->comm = comm, dp->rank = comm->rank, dp->size = comm->size, dp->zero1 = zero1;
    if (cfg->batch % dp->size)
        return mx_err_set(
            err, MX_ERR_ARG,
            "--dp over %d ranks: the global batch (batch = %d sequences per micro-batch) must be "
            "divisible by the number of ranks; use a multiple of %d (--set batch=N) or another "
            "-np",
            dp->size, cfg->batch, dp->size);
    dp->batch_local = cfg->batch / dp->size;
    return MX_OK;
}

void mx_dp_free(mx_dp *dp) {
    if (!dp) return;
    if (dp->model) /* moments in the model's backend memory */
        mx_tmodel_release(dp->model, dp->m), mx_tmodel_release(dp->model, dp->v);
    else
        free(dp->m), free(dp->v);
    dp->m = dp->v = NULL;
}

int mx_dp_create_model(const mx_dp *dp, const mx_train_config *cfg, mx_tmodel **m, mx_err *err) {
    mx_train_config local = *cfg;
    if (dp) local.batch = dp->batch_local;
    if (mx_tmodel_create(&local, m, err)) return err->code;
    (*m)->cfg.batch = cfg->batch; /* the global batch: what the checkpoint's config says */
    return MX_OK;
}

const int *mx_dp_rows(const mx_dp *dp, const int *tokens, int seq) {
    return dp ? tokens + (size_t)dp->rank * dp->batch_local * seq : tokens;
}

int mx_dp_agree(const mx_dp *dp, int rc, mx_err *err) {
    return mx_dist_agree(dp ? dp->comm : NULL, rc, err);
}

/* Points every parameter's moments into whole-vector buffers (NULL: none). */
static void bind_moments(mx_tmodel *m, float *mom, float *var) {
    m->m = mom, m->v = var;
    m->host[2] = mom, m->host[3] = var; /* host buffers (a placed model's device moments are freed first) */
    for (int i = 0; i < m->n_params; i++) {
        mx_param *p = &m->params[i];
        p->m = mom ? mom + p->off : NULL;
        p->v = var ? var + p->off : NULL;
    }
}

/* zero1: keeps the moments of this rank's slice and of the tail, frees the whole-vector buffers. */
static int shard_moments(mx_dp *dp, mx_tmodel *m, mx_err *err) {
    size_t n = m->n_floats, keep = dp->shard + (n - dp->tail);
    dp->m = mx_tmodel_alloc(m, keep ? keep : 1);
    dp->v = mx_tmodel_alloc(m, keep ? keep : 1);
    if (m->on_device) dp->model = m;
    if (!dp->m || !dp->v)
        return mx_err_set(err, MX_ERR_NOMEM, "out of %s memory for the optimizer state (%zu floats)",
                          mx_tmodel_where(m), 2 * keep);
    mx_tmodel_copy(m, dp->m, m->m + dp->lo, dp->shard);
    mx_tmodel_copy(m, dp->v, m->v + dp->lo, dp->shard);
    mx_tmodel_copy(m, dp->m + dp->shard, m->m + dp->tail, n - dp->tail);
    mx_tmodel_copy(m, dp->v + dp->shard, m->v + dp->tail, n - dp->tail);
    if (m->on_device) { /* the whole device moments, and their host copies */
        for (int i = 2; i < 4; i++) {
            m->be->free(m->be, m->dev[i]);
            m->dev[i] = NULL;
        }
        free(m->host[2]), free(m->host[3]);
    } else {
        free(m->m), free(m->v);
    }
    bind_moments(m, NULL, NULL);
    return MX_OK;
}

int mx_dp_start(mx_dp *dp, mx_tmodel *m, mx_err *err) {
    if (!dp) return MX_OK;
    dp->n = m->n_floats;
    dp->shard = dp->n / (size_t)dp->size;
    dp->lo = (size_t)dp->rank * dp->shard;
    dp->tail = (size_t)dp->size * dp->shard;
    /* equal parameters everywhere whatever each rank read or drew */
    if (dp->size > 1 && dp->comm->broadcast(dp->comm, m->w, dp->n, 0, err))
        return mx_err_wrap(err, "broadcasting the parameters");
    int rc = dp->zero1 ? shard_moments(dp, m, err) : MX_OK;
    return mx_dp_agree(dp, rc, err);
}

int mx_dp_mean(const mx_dp *dp, double *x, mx_err *err) {
    if (!dp || dp->size == 1) return MX_OK;
    /* x as a pair of floats (hi + lo carries ~48 bits), gathered and summed in double in rank order */
    float pair[2], *all = malloc(sizeof(float) * 2 * (size_t)dp->size);
    if (!all) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    pair[0] = (float)*x;
    pair[1] = (float)(*x - (double)pair[0]);
    if (dp->comm->allgather(dp->comm, pair, all, 2, err)) return free(all), err->code;
    double sum = 0;
    for (int r = 0; r < dp->size; r++) sum += (double)all[2 * r] + (double)all[2 * r + 1];
    free(all);
    *x = sum / dp->size;
    return MX_OK;
}

int mx_dp_reduce(mx_dp *dp, mx_tmodel *m, int rc, double *loss, mx_err *err) {
    if (!dp) return rc;
    if (mx_dp_agree(dp, rc, err)) return err->code;
    if (dp->size == 1) return MX_OK;
    if (dp->comm->allreduce_sum(dp->comm, m->g, m->n_floats, err))
        return mx_err_wrap(err, "summing the gradients");
    float n = (float)dp->size;
    if (m->on_device) /* (the collective ran on the device through NCCL: comm->attach) */
        MX_OP(m, scale, m->g, m->g, 1.0f / n, (long)m->n_floats);
    else
        for (size_t i = 0; i < m->n_floats; i++) m->g[i] /= n;
    return mx_dp_mean(dp, loss, err);
}

int mx_dp_adamw_step(mx_dp *dp, mx_tmodel *m, float lr, int t, mx_err *err) {
    if (!dp || !dp->zero1) {
        mx_adamw_step(m, lr, t);
        return MX_OK;
    }
    mx_adamw_step_range(m, lr, t, dp->lo, dp->lo + dp->shard, dp->m, dp->v);
    mx_adamw_step_range(m, lr, t, dp->tail, dp->n, dp->m + dp->shard, dp->v + dp->shard);
    if (dp->size == 1 || dp->shard == 0) return MX_OK;
    /* the gradient is spent: it holds this rank's updated slice while the slices are gathered into w */
    mx_tmodel_copy(m, m->g, m->w + dp->lo, dp->shard);
    if (dp->comm->allgather(dp->comm, m->g, m->w, dp->shard, err))
        return mx_err_wrap(err, "gathering the parameters");
    return MX_OK;
}

/* n floats of this rank's moment slice (src, where m runs) into host dst. */
static void slice_to_host(const mx_tmodel *m, float *dst, const float *src, size_t n) {
    if (m->on_device)
        m->be->to_host(m->be, dst, src, n);
    else
        memcpy(dst, src, sizeof(float) * n);
}

/* rank 0: the slice of rank r into host dst, through stage (where m runs; NULL on the host: dst itself). */
static int recv_slice(mx_dp *dp, const mx_tmodel *m, float *dst, float *stage, int r, mx_err *err) {
    if (dp->comm->recv(dp->comm, stage ? stage : dst, dp->shard, r, err)) return err->code;
    if (stage) m->be->to_host(m->be, dst, stage, dp->shard);
    return MX_OK;
}

/* zero1: the whole moments on rank 0 in host memory (bound to m for the write), every rank sending its slice
 * there (from the device where the model runs on one). */
static int gather_moments(mx_dp *dp, mx_tmodel *m, mx_err *err) {
    int rc = MX_OK;
    float *mom = NULL, *var = NULL, *stage = NULL;
    if (dp->rank == 0) {
        mom = malloc(sizeof(float) * (dp->n ? dp->n : 1));
        var = malloc(sizeof(float) * (dp->n ? dp->n : 1));
        if (m->on_device && dp->size > 1) stage = mx_tmodel_alloc(m, dp->shard ? dp->shard : 1);
        if (!mom || !var || (m->on_device && dp->size > 1 && !stage))
            rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory for the checkpoint's optimizer state");
    }
    if (mx_dp_agree(dp, rc, err)) {
        mx_tmodel_release(m, stage);
        return free(mom), free(var), err->code;
    }
    if (dp->rank != 0) {
        if (dp->comm->send(dp->comm, dp->m, dp->shard, 0, err) ||
            dp->comm->send(dp->comm, dp->v, dp->shard, 0, err))
            return mx_err_wrap(err, "sending the optimizer state to rank 0");
        return MX_OK;
    }
    slice_to_host(m, mom, dp->m, dp->shard);
    slice_to_host(m, var, dp->v, dp->shard);
    slice_to_host(m, mom + dp->tail, dp->m + dp->shard, dp->n - dp->tail);
    slice_to_host(m, var + dp->tail, dp->v + dp->shard, dp->n - dp->tail);
    for (int r = 1; r < dp->size; r++)
        if (recv_slice(dp, m, mom + (size_t)r * dp->shard, stage, r, err) ||
            recv_slice(dp, m, var + (size_t)r * dp->shard, stage, r, err)) {
            free(mom), free(var), mx_tmodel_release(m, stage);
            return mx_err_wrap(err, "receiving the optimizer state of rank %d", r);
        }
    mx_tmodel_release(m, stage);
    bind_moments(m, mom, var);
    return MX_OK;
}

int mx_dp_save(mx_dp *dp, mx_tmodel *m, const char *path, const mx_ckpt_state *st, mx_err *err) {
    if (!dp) return mx_ckpt_save(m, path, st, err);
    int rc = dp->zero1 ? gather_moments(dp, m, err) : MX_OK;
    if (!rc && dp->rank == 0) rc = mx_ckpt_save(m, path, st, err);
    if (dp->zero1 && m->m) {
        free(m->m), free(m->v);
        bind_moments(m, NULL, NULL);
    }
    return mx_dp_agree(dp, rc, err);
}
