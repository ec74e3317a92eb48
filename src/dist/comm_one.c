/* comm_one.c: the single-rank communicator (every collective is the identity) and mx_comm_create, which picks
 * MPI when the process was started by an MPI launcher and this one otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

static int one_reduce(mx_comm *c, float *x, size_t n, mx_err *err) {
    return 0;
}
static int one_reduce_root(mx_comm *c, float *x, size_t n, int root, mx_err *err) {
    return 0;
}
static int one_allgather(mx_comm *c, const float *send, float *recv, size_t n, mx_err *err) {
    if (recv != send) memmove(recv, send, n * sizeof(float));
    return 0;
}
static int one_p2p(mx_comm *c, float *x, size_t n, int peer, mx_err *err) {
    return mx_err_set(err, MX_ERR_ARG, "send/recv to rank %d on a single-rank communicator", peer);
}
static int one_send(mx_comm *c, const float *x, size_t n, int peer, mx_err *err) {
    return one_p2p(c, (float *)x, n, peer, err);
}
static int one_bcast_host(mx_comm *c, void *buf, size_t bytes, int root, mx_err *err) {
    return 0;
}
static int one_agree(mx_comm *c, bool ok, const mx_err *mine, mx_err *err) {
    if (ok) return 0;
    if (err && mine && err != mine) *err = *mine;
    return err && err->code ? err->code : MX_ERR_ARG;
}
static void one_barrier(mx_comm *c) {}
static void one_abort(mx_comm *c, const char *msg, int code) {
    if (msg && *msg) fprintf(stderr, "mixatt: %s\n", msg);
    exit(code);
}
static int one_attach(mx_comm *c, mx_backend *be, mx_err *err) {
    return 0;
}
static void one_destroy(mx_comm *c) {
    free(c);
}

mx_comm *mx_comm_one_create(void) {
    mx_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->name = "one";
    c->rank = 0;
    c->size = 1;
    c->allreduce_sum = one_reduce;
    c->allreduce_sum_enqueue = one_reduce;
    c->reduce_sum = one_reduce_root;
    c->allgather = one_allgather;
    c->broadcast = one_reduce_root;
    c->send = one_send;
    c->recv = one_p2p;
    c->broadcast_host = one_bcast_host;
    c->agree = one_agree;
    c->barrier = one_barrier;
    c->abort = one_abort;
    c->attach = one_attach;
    c->destroy = one_destroy;
    return c;
}

bool mx_comm_launched_by_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

int mx_comm_create(int *argc, char ***argv, mx_comm **out, mx_err *err) {
    *out = NULL;
    if (mx_comm_launched_by_mpi()) return mx_comm_mpi_create(argc, argv, out, err);
    *out = mx_comm_one_create();
    return *out ? 0 : mx_err_set(err, MX_ERR_NOMEM, "allocating the communicator");
}

void mx_comm_free(mx_comm *c) {
    if (c) c->destroy(c);
}
