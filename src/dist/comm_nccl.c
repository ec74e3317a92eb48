/* comm_nccl.c: NCCL under the MPI communicator (comm.h). mx_comm_nccl_attach, called by the MPI
 * communicator's attach with the CUDA backend, creates an NCCL communicator over the same ranks (rank 0's
 * unique id broadcast with MPI) and switches the data collectives (allreduce_sum, reduce_sum, allgather,
 * broadcast, send, recv) to NCCL on the backend's stream, on device buffers. Control (broadcast_host, agree,
 * barrier) stays on MPI.
 *
 * No collective blocks forever: the NCCL communicator is non-blocking (ncclConfig_t.blocking = 0) and each
 * collective returns once its work on the stream is done, the calling thread polling ncclCommGetAsyncError
 * and the stream meanwhile. An asynchronous NCCL error (a peer's connection broke) or MIXATT_COMM_TIMEOUT
 * seconds (default 60) without completion (a rank died, hangs or skipped the collective) ends in
 * ncclCommAbort and an error naming the collective; the caller then agrees or aborts the job like any other
 * failure. Built when the Makefile finds nccl.h (MX_HAVE_NCCL); otherwise attach explains what is missing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

#ifndef MX_HAVE_NCCL
#include "../backend/backend.h"

int mx_comm_nccl_attach(mx_comm *c, mx_backend *be, mx_err *err) {
    return mx_err_set(
        err, MX_ERR_UNSUPPORTED,
        "rank %d: collectives on the %s backend need NCCL, and this mixatt was built without it "
        "(NCCL's nccl.h was not found next to the CUDA toolkit, or Open MPI is missing)",
        c->rank, be ? be->name : "(none)");
}
#else
#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>

#include "../backend/cuda/cuda_stream.h"
#include "../base/clock.h"

typedef struct {
    ncclComm_t nc;
    cudaStream_t stream;
    mx_backend *be;
    double timeout_s;
    int aborted;   /* ncclCommAbort was called: nc is gone */
    void *mpi_ctx; /* what the MPI communicator kept in ctx */
    void (*mpi_destroy)(mx_comm *c);
    void (*mpi_abort)(mx_comm *c, const char *msg, int code);
} nccl_state;

static nccl_state *st_of(mx_comm *c) {
    return (nccl_state *)c->ctx;
}

static void abort_nccl(nccl_state *st) {
    if (!st->aborted) ncclCommAbort(st->nc);
    st->aborted = 1;
}

/* Waits until the communicator has no operation in progress and (stream) the stream is idle: an asynchronous
 * error or the timeout aborts the communicator. */
static int wait_done(mx_comm *c, const char *what, int stream, mx_err *err) {
    nccl_state *st = st_of(c);
    double t0 = mx_now();
    for (;;) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(st->nc, &async);
        if (r != ncclSuccess) async = r;
        if (async != ncclSuccess && async != ncclInProgress) {
            const char *last = ncclGetLastError(st->nc);
            int rc = mx_err_set(err, MX_ERR_IO, "rank %d: NCCL %s failed: %s%s%s", c->rank, what,
                                ncclGetErrorString(async), last && *last ? ": " : "", last ? last : "");
            abort_nccl(st);
            return rc;
        }
        if (async == ncclSuccess) {
            cudaError_t e = stream ? cudaStreamQuery(st->stream) : cudaSuccess;
            if (e == cudaSuccess) return MX_OK;
            if (e != cudaErrorNotReady) {
                abort_nccl(st);
                return mx_err_set(err, MX_ERR_IO, "rank %d: CUDA error during NCCL %s: %s", c->rank, what,
                                  cudaGetErrorString(e));
            }
        }
        if (mx_now() - t0 > st->timeout_s) {
            abort_nccl(st);
            return mx_err_set(
                err, MX_ERR_IO,
                "rank %d: NCCL %s did not complete within %g s (MIXATT_COMM_TIMEOUT): a rank died, "
                "hangs or skipped it; the NCCL communicator was aborted",
                c->rank, what, st->timeout_s);
        }
        sched_yield();
    }
}

/* Checks the enqueue's result and waits for completion. */
static int finish(mx_comm *c, ncclResult_t r, const char *what, mx_err *err) {
    if (r != ncclSuccess && r != ncclInProgress) {
        const char *last = ncclGetLastError(st_of(c)->nc);
        return mx_err_set(err, MX_ERR_IO, "rank %d: NCCL %s: %s%s%s", c->rank, what, ncclGetErrorString(r),
                          last && *last ? ": " : "", last ? last : "");
    }
    return wait_done(c, what, 1, err);
}

/* The backend's recorded work first; a communicator aborted earlier fails every later collective. */
static int start(mx_comm *c, const char *what, mx_err *err) {
    nccl_state *st = st_of(c);
    if (st->aborted)
        return mx_err_set(err, MX_ERR_IO,
                          "rank %d: NCCL %s on a communicator aborted after an earlier failure", c->rank,
                          what);
    mx_cuda_backend_flush(st->be);
    return MX_OK;
}

static int nccl_allreduce(mx_comm *c, float *x, size_t n, mx_err *err) {
    if (start(c, "allreduce", err)) return err->code;
    nccl_state *st = st_of(c);
    return finish(c, ncclAllReduce(x, x, n, ncclFloat, ncclSum, st->nc, st->stream), "allreduce", err);
}

/* Enqueued, not waited for: the communicator is non-blocking, so only the enqueue itself is waited for (NCCL
 * accepts no further call while it is in progress); the stream is not. The next waiting collective (the
 * output head's allgather, once per forward pass) covers this one's completion, errors and timeout. */
static int nccl_allreduce_enqueue(mx_comm *c, float *x, size_t n, mx_err *err) {
    if (start(c, "allreduce", err)) return err->code;
    nccl_state *st = st_of(c);
    ncclResult_t r = ncclAllReduce(x, x, n, ncclFloat, ncclSum, st->nc, st->stream);
    if (r != ncclSuccess && r != ncclInProgress) {
        const char *last = ncclGetLastError(st->nc);
        return mx_err_set(err, MX_ERR_IO, "rank %d: NCCL allreduce: %s%s%s", c->rank, ncclGetErrorString(r),
                          last && *last ? ": " : "", last ? last : "");
    }
    return r == ncclInProgress ? wait_done(c, "allreduce (enqueue)", 0, err) : MX_OK;
}

static int nccl_reduce(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    if (start(c, "reduce", err)) return err->code;
    nccl_state *st = st_of(c);
    return finish(c, ncclReduce(x, x, n, ncclFloat, ncclSum, root, st->nc, st->stream), "reduce", err);
}

static int nccl_allgather(mx_comm *c, const float *send, float *recv, size_t n, mx_err *err) {
    if (start(c, "allgather", err)) return err->code;
    nccl_state *st = st_of(c);
    return finish(c, ncclAllGather(send, recv, n, ncclFloat, st->nc, st->stream), "allgather", err);
}

static int nccl_broadcast(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    if (start(c, "broadcast", err)) return err->code;
    nccl_state *st = st_of(c);
    return finish(c, ncclBroadcast(x, x, n, ncclFloat, root, st->nc, st->stream), "broadcast", err);
}

static int nccl_send(mx_comm *c, const float *x, size_t n, int peer, mx_err *err) {
    if (start(c, "send", err)) return err->code;
    nccl_state *st = st_of(c);
    return finish(c, ncclSend(x, n, ncclFloat, peer, st->nc, st->stream), "send", err);
}

static int nccl_recv(mx_comm *c, float *x, size_t n, int peer, mx_err *err) {
    if (start(c, "recv", err)) return err->code;
    nccl_state *st = st_of(c);
    return finish(c, ncclRecv(x, n, ncclFloat, peer, st->nc, st->stream), "recv", err);
}

static void nccl_abort(mx_comm *c, const char *msg, int code) {
    nccl_state *st = st_of(c);
    abort_nccl(st);
    st->mpi_abort(c, msg, code);
}

static void nccl_destroy(mx_comm *c) {
    nccl_state *st = st_of(c);
    if (!st->aborted) {
        mx_err err = {0};
        /* flushes what is in flight; a peer that never comes ends in the timeout and an abort */
        ncclResult_t r = ncclCommFinalize(st->nc);
        if ((r == ncclSuccess || r == ncclInProgress) && wait_done(c, "finalize", 0, &err))
            fprintf(stderr, "mixatt: %s\n", err.msg);
        if (!st->aborted) ncclCommDestroy(st->nc);
    }
    void (*mpi_destroy)(mx_comm *) = st->mpi_destroy;
    c->ctx = st->mpi_ctx;
    free(st);
    mpi_destroy(c);
}

static int parse_timeout(const mx_comm *c, double *out, mx_err *err) {
    const char *s = getenv("MIXATT_COMM_TIMEOUT");
    *out = 60;
    if (!s || !*s) return MX_OK;
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v > 0))
        return mx_err_set(err, MX_ERR_ARG,
                          "MIXATT_COMM_TIMEOUT must be a positive number of seconds, got '%s'", s);
    *out = v;
    return MX_OK;
}

/* Rank 0's unique id to every rank, then the non-blocking communicator (its creation is waited for too).
 * Messages name no rank: the caller agrees on them (agree prefixes the failing rank). */
static int init_comm(mx_comm *c, nccl_state *st, int device, mx_err *err) {
    ncclUniqueId id;
    int rc = MX_OK;
    if (c->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) rc = mx_err_set(err, MX_ERR_IO, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    }
    /* every rank learns whether rank 0 has an id before waiting for it */
    if (c->agree(c, rc == MX_OK, err, err)) return err->code;
    if (c->broadcast_host(c, &id, sizeof id, 0, err)) return err->code;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return mx_err_set(err, MX_ERR_IO, "cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&st->nc, c->size, id, c->rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress)
        return mx_err_set(err, MX_ERR_IO, "ncclCommInitRankConfig on GPU %d: %s", device,
                          ncclGetErrorString(r));
    return wait_done(c, "communicator creation", 0, err);
}

int mx_comm_nccl_attach(mx_comm *c, mx_backend *be, mx_err *err) {
    if (c->allreduce_sum == nccl_allreduce) return MX_OK; /* attached already */
    void *stream = NULL;
    int device = 0;
    nccl_state *st = calloc(1, sizeof *st);
    int rc = st ? MX_OK : mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    if (!rc) rc = mx_cuda_backend_stream(be, &stream, &device, err) || parse_timeout(c, &st->timeout_s, err);
    /* all ranks attach, or none: a rank without a GPU backend fails every rank's attach */
    if (c->agree(c, rc == MX_OK, err, err)) return free(st), err->code;
    st->stream = (cudaStream_t)stream;
    st->be = be;
    st->mpi_ctx = c->ctx;
    c->ctx = st; /* wait_done reads the state from here */
    rc = init_comm(c, st, device, err);
    if (c->agree(c, rc == MX_OK, err, err)) {
        if (st->nc && !st->aborted) ncclCommAbort(st->nc);
        c->ctx = st->mpi_ctx;
        free(st);
        return err->code;
    }
    st->mpi_destroy = c->destroy;
    st->mpi_abort = c->abort;
    c->name = "nccl";
    c->allreduce_sum = nccl_allreduce;
    c->allreduce_sum_enqueue = nccl_allreduce_enqueue;
    c->reduce_sum = nccl_reduce;
    c->allgather = nccl_allgather;
    c->broadcast = nccl_broadcast;
    c->send = nccl_send;
    c->recv = nccl_recv;
    c->abort = nccl_abort;
    c->destroy = nccl_destroy;
    return MX_OK;
}
#endif
