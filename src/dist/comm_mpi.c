/* comm_mpi.c: the communicator over Open MPI (MPI_COMM_WORLD), buffers in host memory. Errors are returned
 * (MPI_ERRORS_RETURN) and turned into mx_err messages that name the collective and the rank. Every operation
 * is non-blocking and waited for against MIXATT_COMM_TIMEOUT seconds (default 60): a rank that stops (SIGSTOP,
 * a hang) ends the job with a message from each waiting rank, and a rank that mpirun ends because another one
 * died (SIGTERM) says so. Built when the
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
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "../base/clock.h"

enum { CHUNK = 1 << 28 }; /* elements per MPI call: counts are int */

/* What a rank is waiting in, for the timeout's and the signal handler's messages. */
typedef enum {
    OP_NONE,
    OP_ALLREDUCE,
    OP_REDUCE,
    OP_ALLGATHER,
    OP_BROADCAST,
    OP_SEND,
    OP_RECV,
    OP_AGREE,
    OP_BARRIER
} mpi_op;
static const char *const OP_NAMES[] = {"no collective", "allreduce", "reduce", "allgather", "broadcast",
                                       "send",          "recv",      "agree",  "barrier"};

/* The one MPI world of the process. File-scope because the SIGTERM handler can reach nothing else (and the
 * NCCL communicator replaces c->ctx after attach): this rank, the timeout, the operation in progress. */
static struct {
    int rank;
    double timeout_s;
    volatile sig_atomic_t op;
    volatile sig_atomic_t
        ending; /* the ranks agreed to stop, or this one is finalizing: a SIGTERM is expected */
} world;

/* Async-signal-safe decimal of a small non-negative int. */
static size_t put_int(char *p, int v) {
    char tmp[12];
    size_t n = 0;
    do tmp[n++] = (char)('0' + v % 10), v /= 10;
    while (v && n < sizeof tmp);
    for (size_t i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
    return n;
}

static size_t put_str(char *p, const char *s) {
    size_t n = strlen(s);
    memcpy(p, s, n);
    return n;
}

/* mpirun ends the other ranks with SIGTERM when one exits or is killed: say so in mixatt's words, then die of
 * the signal as before. Only async-signal-safe calls. */
static void on_sigterm(int sig) {
    if (world.ending) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    char msg[256];
    size_t n = put_str(msg, "mixatt: rank ");
    n += put_int(msg + n, world.rank);
    n += put_str(msg + n, ": ended by mpirun (SIGTERM)");
    if (world.op > OP_NONE && world.op <= OP_BARRIER) {
        n += put_str(msg + n, " while waiting in MPI ");
        n += put_str(msg + n, OP_NAMES[world.op]);
    }
    n += put_str(msg + n, ": another rank of the job exited or was killed (see mpirun's message)\n");
    ssize_t w = write(STDERR_FILENO, msg, n);
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

static int parse_timeout(double *out, mx_err *err) {
    const char *s = getenv("MIXATT_COMM_TIMEOUT");
    *out = 60;
    if (!s || !*s) return MX_OK;
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v > 0) || v > 1e9)
        return mx_err_set(err, MX_ERR_ARG,
                          "MIXATT_COMM_TIMEOUT must be a positive number of seconds, got '%s'", s);
    *out = v;
    return MX_OK;
}

static int mpi_check(mx_comm *c, int rc, const char *what, mx_err *err) {
    if (rc == MPI_SUCCESS) return 0;
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, s, &len);
    return mx_err_set(err, MX_ERR_IO, "rank %d: MPI %s failed: %.*s", c->rank, what, len, s);
}

/* A collective that outlived the timeout cannot be cancelled (MPI has no abort of one operation) and its peers
 * may wait on it too: the whole job ends, with this rank's message first. */
static void timeout_abort(mx_comm *c, mpi_op op) {
    world.ending = 1;
    fprintf(
        stderr,
        "mixatt: rank %d: MPI %s did not complete within %g s (MIXATT_COMM_TIMEOUT): another rank is stuck "
        "or gone; ending the job\n",
        c->rank, OP_NAMES[op], world.timeout_s);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    _exit(1);
}

/* Waits for a non-blocking operation against the timeout: polls (yielding the CPU, then sleeping briefly once
 * the wait is long, so an oversubscribed host keeps the rank it waits for running). */
static int mpi_wait(mx_comm *c, int rc, MPI_Request *req, mpi_op op, mx_err *err) {
    if (rc != MPI_SUCCESS) return mpi_check(c, rc, OP_NAMES[op], err);
    world.op = op;
    double t0 = mx_now();
    for (;;) {
        int done = 0;
        rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS || done) break;
        double waited = mx_now() - t0;
        if (waited > world.timeout_s) timeout_abort(c, op);
        if (waited < 0.01) {
            sched_yield();
        } else {
            struct timespec ts = {0, 200000}; /* 0.2 ms */
            nanosleep(&ts, NULL);
        }
    }
    world.op = OP_NONE;
    return mpi_check(c, rc, OP_NAMES[op], err);
}

static int mpi_allreduce(mx_comm *c, float *x, size_t n, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        MPI_Request req;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, x + i, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
        if (mpi_wait(c, rc, &req, OP_ALLREDUCE, err)) return err->code;
    }
    return 0;
}

static int mpi_reduce(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK), rc;
        MPI_Request req;
        if (c->rank == root)
            rc = MPI_Ireduce(MPI_IN_PLACE, x + i, k, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD, &req);
        else
            rc = MPI_Ireduce(x + i, NULL, k, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD, &req);
        if (mpi_wait(c, rc, &req, OP_REDUCE, err)) return err->code;
    }
    return 0;
}

static int mpi_allgather(mx_comm *c, const float *send, float *recv, size_t n, mx_err *err) {
    if (n > INT_MAX)
        return mx_err_set(err, MX_ERR_ARG, "allgather of %zu floats per rank (at most %d)", n, INT_MAX);
    MPI_Request req;
    int rc = MPI_Iallgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, MPI_COMM_WORLD, &req);
    return mpi_wait(c, rc, &req, OP_ALLGATHER, err);
}

static int mpi_bcast_op(mx_comm *c, void *buf, size_t bytes, int root, mpi_op op, mx_err *err) {
    for (size_t i = 0; i < bytes; i += CHUNK) {
        int k = (int)(bytes - i < CHUNK ? bytes - i : CHUNK);
        MPI_Request req;
        int rc = MPI_Ibcast((char *)buf + i, k, MPI_BYTE, root, MPI_COMM_WORLD, &req);
        if (mpi_wait(c, rc, &req, op, err)) return err->code;
    }
    return 0;
}

static int mpi_bcast_bytes(mx_comm *c, void *buf, size_t bytes, int root, mx_err *err) {
    return mpi_bcast_op(c, buf, bytes, root, OP_BROADCAST, err);
}

static int mpi_broadcast(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    return mpi_bcast_bytes(c, x, n * sizeof(float), root, err);
}

static int mpi_send(mx_comm *c, const float *x, size_t n, int peer, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        MPI_Request req;
        int rc = MPI_Isend(x + i, k, MPI_FLOAT, peer, 0, MPI_COMM_WORLD, &req);
        if (mpi_wait(c, rc, &req, OP_SEND, err)) return err->code;
    }
    return 0;
}

static int mpi_recv(mx_comm *c, float *x, size_t n, int peer, mx_err *err) {
    for (size_t i = 0; i < n; i += CHUNK) {
        int k = (int)(n - i < CHUNK ? n - i : CHUNK);
        MPI_Request req;
        int rc = MPI_Irecv(x + i, k, MPI_FLOAT, peer, 0, MPI_COMM_WORLD, &req);
        if (mpi_wait(c, rc, &req, OP_RECV, err)) return err->code;
    }
    return 0;
}

/* The lowest failing rank broadcasts its message; every rank returns it. */
static int mpi_agree(mx_comm *c, bool ok, const mx_err *mine, mx_err *err) {
    int me = ok ? INT_MAX : c->rank, first = INT_MAX;
    MPI_Request req;
    int rc = MPI_Iallreduce(&me, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &req);
    if (mpi_wait(c, rc, &req, OP_AGREE, err)) return err->code;
    if (first == INT_MAX) return 0;
    world.ending = 1; /* every rank exits now; mpirun may end the slower ones */
    mx_err msg = {0};
    if (c->rank == first) {
        msg.code = mine && mine->code ? mine->code : MX_ERR_ARG;
        snprintf(msg.msg, sizeof msg.msg, "rank %d: %.1000s", first, mine ? mine->msg : "failed");
    }
    if (mpi_bcast_op(c, &msg, sizeof msg, first, OP_AGREE, err)) return err->code;
    if (err) *err = msg;
    return msg.code ? msg.code : MX_ERR_ARG;
}

static void mpi_barrier(mx_comm *c) {
    MPI_Request req;
    mx_err err = {0};
    if (mpi_wait(c, MPI_Ibarrier(MPI_COMM_WORLD, &req), &req, OP_BARRIER, &err))
        fprintf(stderr, "mixatt: %s\n", err.msg);
}

static void mpi_abort(mx_comm *c, const char *msg, int code) {
    world.ending = 1;
    if (msg && *msg) fprintf(stderr, "mixatt: rank %d: %s\n", c->rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static int mpi_attach(mx_comm *c, mx_backend *be, mx_err *err);

static void mpi_destroy(mx_comm *c) {
    world.ending = 1;
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
    if (parse_timeout(&world.timeout_s, err)) return err->code;
    mx_comm *c = calloc(1, sizeof *c);
    if (!c) return mx_err_set(err, MX_ERR_NOMEM, "allocating the communicator");
    c->name = "mpi";
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    world.rank = c->rank;
    struct sigaction sa = {.sa_handler = on_sigterm};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
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
