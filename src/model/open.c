/* open.c: a model loaded, sharded, checked and placed on its backend by every rank of a job (see open.h). */
#include "open.h"

#include <stdlib.h>

#include "../dist/agree.h"
#include "tp.h"

/* --tp against the job before anything is loaded: N must be the number of ranks mpirun started. */
static int check_tp(const mx_open_opts *o, mx_err *err) {
    int world = o->comm ? o->comm->size : 1;
    if (o->tp == 0) return MX_OK;
    if (world == 1 && o->tp > 1)
        return mx_err_set(err, MX_ERR_ARG,
                          "--tp %d needs %d ranks, and this process is a single one: launch it with "
                          "`mpirun -np %d mixatt ... --tp %d`",
                          o->tp, o->tp, o->tp, o->tp);
    if (o->tp != world)
        return mx_err_set(err, MX_ERR_ARG,
                          "--tp %d, but this job has %d ranks (mpirun -np %d): they must be equal", o->tp,
                          world, world);
    return MX_OK;
}

/* The device of this rank: o->gpu when given; otherwise, in a job of several ranks, the rank's index among
 * the ranks of its host (set by mpirun; the world rank when it is missing), so that `mpirun -np N mixatt ...
 * --device cuda` puts one rank on each GPU of a host. */
static int rank_gpu(const mx_open_opts *o, mx_err *err) {
    if (o->gpu >= 0) return o->gpu;
    if (!o->comm || o->comm->size == 1) return 0;
    const char *s = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!s || !*s) return o->comm->rank;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 1023) {
        mx_err_set(err, MX_ERR_ARG, "OMPI_COMM_WORLD_LOCAL_RANK is '%s', not a rank; pass --gpu N", s);
        return -1;
    }
    return (int)v;
}

/* Loads and places the model on this rank; on failure err says why and nothing is left open. */
static int open_local(const mx_open_opts *o, mx_model **m, mx_backend **be, mx_err *err) {
    if (check_tp(o, err)) return err->code;
    if (mx_model_load(o->path, &o->load, m, err)) return mx_err_wrap(err, "cannot load model");
    if (o->tp > 1 && mx_tp_shard(*m, o->comm, err)) { /* this rank's slice of the weights (tp.h) */
        mx_model_free(*m);
        *m = NULL;
        return err->code;
    }
    int gpu = rank_gpu(o, err);
    if (gpu < 0) {
        mx_model_free(*m);
        *m = NULL;
        return err->code;
    }
    if (mx_backend_create(o->device, gpu, o->threads, be, err) || mx_model_check_backend(*m, *be, err) ||
        mx_model_place(*m, *be, err)) {
        mx_backend_destroy(*be);
        mx_model_free(*m);
        *m = NULL, *be = NULL;
        return err->code ? err->code : MX_ERR_ARG;
    }
    return MX_OK;
}

int mx_model_open(const mx_open_opts *o, mx_model **m, mx_backend **be, mx_err *err) {
    *m = NULL, *be = NULL;
    /* every rank of the job goes on, or every rank stops with the first failing rank's message */
    int rc = mx_dist_agree(o->comm, open_local(o, m, be, err), err);
    /* tensor parallel on the GPU: the collectives go to NCCL on the backend's stream (collective itself:
     * every rank attaches or every rank fails with the first failing rank's message) */
    if (!rc && o->tp > 1 && ((*be)->caps & MX_CAP_CUDA_STREAM) && o->comm->attach(o->comm, *be, err))
        rc = mx_err_wrap(err, "--tp %d: attaching the ranks' collectives to %s", o->tp, (*be)->name);
    if (rc) {
        mx_model_close(*m, *be);
        *m = NULL, *be = NULL;
        return rc;
    }
    (*be)->exact = o->exact;
    return MX_OK;
}

void mx_model_close(mx_model *m, mx_backend *be) {
    if (m && be) mx_model_unplace(m, be);
    mx_backend_destroy(be);
    mx_model_free(m);
}
