/* comm_mpi.c: the communicator over Open MPI (MPI_COMM_WORLD), buffers in host memory. Errors are returned
 * (MPI_ERRORS_RETURN) and turned into mx_err messages that name the collective and the rank. Built when the
 * Makefile finds Open MPI (MX_HAVE_MPI); without it mx_comm_mpi_create explains how to get it. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

#ifndef MX_HAVE_MPI
int mx_comm_mpi_create(int *argc, char ***argv, mx_comm **out, mx_err *err) {
    *out = NULL;
    return mx_err_set(err, MX_ERR_UNSUPPORTED,
                      "started by an MPI launcher, but this mixatt was built without Open MPI "
                      "(install libopenmpi-dev and rebuild: make deps && make)");
}
#else
#include <mpi.h>

enum { CHUNK = 1 << 28 }; /* elements per MPI call: counts are int */

static int mpi_check(mx_comm *c, int rc, const char *what, mx_err *err) {
    if (rc == MPI_SUCCESS) return 0;
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, s, &len);
    return mx_err_set(err, MX_ERR_IO, "rank %d: MPI %s failed: %.*s", c->rank, what, len, s);
}

static int mpi_allreduce(mx_comm *c, float *x, size_t n, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, x + i, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (mpi_check(c, rc, "allreduce", err)) return err->code;
    }
    return 0;
}

static int mpi_reduce(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK), rc;
        if (c->rank == root)
            rc = MPI_Reduce(MPI_IN_PLACE, x + i, k, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD);
        else
            rc = MPI_Reduce(x + i, NULL, k, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD);
        if (mpi_check(c, rc, "reduce", err)) return err->code;
    }
    return 0;
}

static int mpi_allgather(mx_comm *c, const float *send, float *recv, size_t n, mx_err *err) {
    if (n > INT_MAX)
        return mx_err_set(err, MX_ERR_ARG, "allgather of %zu floats per rank (at most %d)", n, INT_MAX);
    int rc = MPI_Allgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, MPI_COMM_WORLD);
    return mpi_check(c, rc, "allgather", err);
}

static int mpi_bcast_bytes(mx_comm *c, void *buf, size_t bytes, int root, mx_err *err) {
    for (size_t i = 0; i < bytes; i += CHUNK) {
        int k = (int)(bytes - i < CHUNK ? bytes - i : CHUNK);
        int rc = MPI_Bcast((char *)buf + i, k, MPI_BYTE, root, MPI_COMM_WORLD);
        if (mpi_check(c, rc, "broadcast", err)) return err->code;
    }
    return 0;
}

static int mpi_broadcast(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    return mpi_bcast_bytes(c, x, n * sizeof(float), root, err);
}

static int mpi_send(mx_comm *c, const float *x, size_t n, int peer, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        int rc = MPI_Send(x + i, k, MPI_FLOAT, peer, 0, MPI_COMM_WORLD);
        if (mpi_check(c, rc, "send", err)) return err->code;
    }
    return 0;
}

static int mpi_recv(mx_comm *c, float *x, size_t n, int peer, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        int rc = MPI_Recv(x + i, k, MPI_FLOAT, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (mpi_check(c, rc, "recv", err)) return err->code;
    }
    return 0;
}

/* The lowest failing rank broadcasts its message; every rank returns it. */
static int mpi_agree(mx_comm *c, bool ok, const mx_err *mine, mx_err *err) {
    int me = ok ? INT_MAX : c->rank, first = INT_MAX;
    int rc = MPI_Allreduce(&me, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_check(c, rc, "agree", err);
    if (first == INT_MAX) return 0;
    mx_err msg = {0};
    if (c->rank == first) {
        msg.code = mine && mine->code ? mine->code : MX_ERR_ARG;
        snprintf(msg.msg, sizeof msg.msg, "rank %d: %.1000s", first, mine ? mine->msg : "failed");
    }
    rc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, first, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_check(c, rc, "agree", err);
    if (err) *err = msg;
    return msg.code ? msg.code : MX_ERR_ARG;
}

static void mpi_barrier(mx_comm *c) {
    MPI_Barrier(MPI_COMM_WORLD);
}

static void mpi_abort(mx_comm *c, const char *msg, int code) {
    if (msg && *msg) fprintf(stderr, "mixatt: rank %d: %s\n", c->rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static int mpi_attach(mx_comm *c, mx_backend *be, mx_err *err);

static void mpi_destroy(mx_comm *c) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
    free(c);
}

#include "../backend/backend.h"
static int mpi_attach(mx_comm *c, mx_backend *be, mx_err *err) {
    if (!be || !(be->caps & MX_CAP_CUDA_STREAM)) return 0; /* host buffers: MPI itself */
    return mx_comm_nccl_attach(c, be, err); /* comm_nccl.c; explains itself when built without NCCL */
}

int mx_comm_mpi_create(int *argc, char ***argv, mx_comm **out, mx_err *err) {
    *out = NULL;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init(argc, argv) != MPI_SUCCESS) return mx_err_set(err, MX_ERR_IO, "MPI_Init failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    mx_comm *c = calloc(1, sizeof *c);
    if (!c) return mx_err_set(err, MX_ERR_NOMEM, "allocating the communicator");
    c->name = "mpi";
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->allreduce_sum = mpi_allreduce;
    c->allreduce_sum_enqueue = mpi_allreduce;
    c->reduce_sum = mpi_reduce;
    c->allgather = mpi_allgather;
    c->broadcast = mpi_broadcast;
    c->send = mpi_send;
    c->recv = mpi_recv;
    c->broadcast_host = mpi_bcast_bytes;
    c->agree = mpi_agree;
    c->barrier = mpi_barrier;
    c->abort = mpi_abort;
    c->attach = mpi_attach;
    c->destroy = mpi_destroy;
    *out = c;
    return 0;
}
#endif
