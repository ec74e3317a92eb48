/* comm.h: the communicator. Every rank of a job (one process per GPU, or per host on the CPU) holds one;
 * collectives move fp32 activations, gradients and (out, lse) pairs between ranks.
 *
 * Three implementations behind one table:
 *   one  (comm_one.c)  a single rank: every collective is the identity. Used whenever the process was not
 *                      started by mpirun, so every command runs unchanged without it.
 *   mpi  (comm_mpi.c)  Open MPI, buffers in host memory (the CPU backend).
 *   nccl (comm_nccl.c) NCCL on the CUDA backend's stream, buffers in device memory; bootstrapped over MPI
 *                      (the unique id is broadcast with MPI_Bcast), host-side control still goes through MPI.
 *
 * Data collectives take buffers in the memory of the backend the communicator is attached to
 * (mx_comm_attach): host memory until then. Control calls (*_host, mx_comm_agree) always take host memory.
 *
 * Failure: a rank that fails calls mx_comm_agree(comm, false, message) (or mx_comm_abort); every rank then
 * learns the first failing rank's message and exits with it. No collective blocks forever: every MPI operation
 * and NCCL collective is waited for against MIXATT_COMM_TIMEOUT seconds (default 60), after which the job is
 * aborted with a message naming the rank and the operation; MPI jobs are ended by mpirun when a rank dies (the
 * survivors print a mixatt line on its SIGTERM). */
#ifndef MX_COMM_H
#define MX_COMM_H

#include <stdbool.h>
#include <stddef.h>

#include "../base/status.h"

typedef struct mx_backend mx_backend;
typedef struct mx_comm mx_comm;

struct mx_comm {
    const char *name; /* "one", "mpi", "nccl" */
    int rank, size;
    void *ctx;

    /* ---- data collectives on backend buffers (host memory until mx_comm_attach) ---- */
    /* x[0..n) = Σ over ranks of x (in place, fp32). */
    int (*allreduce_sum)(mx_comm *c, float *x, size_t n, mx_err *err);
    /* As allreduce_sum, but may return once the sum is enqueued (NCCL: on the backend's stream, so that the
     * backend's later ops read the sum) instead of done; an error or a hang then surfaces at the next
     * collective that waits (every other one). Host-memory communicators complete it before returning. */
    int (*allreduce_sum_enqueue)(mx_comm *c, float *x, size_t n, mx_err *err);
    /* x[0..n) at root = Σ over ranks; other ranks' x unchanged. */
    int (*reduce_sum)(mx_comm *c, float *x, size_t n, int root, mx_err *err);
    /* recv[r * n + i] = send of rank r, element i (floats; recv holds size * n). */
    int (*allgather)(mx_comm *c, const float *send, float *recv, size_t n, mx_err *err);
    /* x[0..n) = root's x. */
    int (*broadcast)(mx_comm *c, float *x, size_t n, int root, mx_err *err);
    int (*send)(mx_comm *c, const float *x, size_t n, int peer, mx_err *err);
    int (*recv)(mx_comm *c, float *x, size_t n, int peer, mx_err *err);

    /* ---- control, host memory ---- */
    /* buf[0..bytes) = root's buf. */
    int (*broadcast_host)(mx_comm *c, void *buf, size_t bytes, int root, mx_err *err);
    /* Every rank passes ok; returns 0 on every rank when all were ok. Otherwise every rank returns non-zero
     * with err set to the message of the lowest failing rank ("rank R: ..."): the caller exits cleanly. */
    int (*agree)(mx_comm *c, bool ok, const mx_err *mine, mx_err *err);
    void (*barrier)(mx_comm *c);
    /* Ends every rank of the job now with exit status code, after printing msg once. */
    void (*abort)(mx_comm *c, const char *msg, int code);
    /* Switches the data collectives to the backend's memory (NCCL on its stream for CUDA). */
    int (*attach)(mx_comm *c, mx_backend *be, mx_err *err);
    void (*destroy)(mx_comm *c);
};

/* Creates the communicator of this process: MPI when started by mpirun (or another launcher that sets
 * OMPI_COMM_WORLD_SIZE / PMIX_RANK), one rank otherwise. argc/argv may be NULL. */
int mx_comm_create(int *argc, char ***argv, mx_comm **out, mx_err *err);
/* A single-rank communicator (comm_one.c). */
mx_comm *mx_comm_one_create(void);
/* The MPI communicator over MPI_COMM_WORLD (comm_mpi.c); MX_ERR_UNSUPPORTED when built without MPI. */
int mx_comm_mpi_create(int *argc, char ***argv, mx_comm **out, mx_err *err);
/* Switches the data collectives of an MPI communicator to NCCL on the CUDA backend be (comm_nccl.c; called by
 * the MPI communicator's attach). Collective over the ranks: every rank attaches, or every rank fails with
 * the first failing rank's message. MX_ERR_UNSUPPORTED when built without NCCL. */
int mx_comm_nccl_attach(mx_comm *c, mx_backend *be, mx_err *err);
/* Whether this process was started by an MPI launcher (environment variables). */
bool mx_comm_launched_by_mpi(void);
void mx_comm_free(mx_comm *c);

#endif
