/* test_nccl.c: the NCCL communicator (src/dist/comm_nccl.c) against MPI, one rank per GPU (make test-nccl):
 *   mpirun -np 2 build/cuda/test_nccl all       every data collective on device buffers after
 *                                               comm->attach(cuda backend), compared with the same collective
 *                                               run by MPI on host buffers before the attach (and with the
 *                                               closed-form sums); prints "rank R/N: K checks passed (nccl)"
 *   mpirun -np 2 build/cuda/test_nccl timeout   (MIXATT_COMM_TIMEOUT=3) rank 1 skips an allreduce: rank 0's
 *                                               must fail within the timeout with a message naming it, and
 *                                               every rank must then exit 0 ("PASS timeout ...")
 * Values: rank r's element i is (r + 1) * 0.1 + i / 7 (tolerance 1e-6 relative: NCCL and MPI may sum in
 * another order for more than 2 ranks). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../src/backend/backend.h"
#include "../../src/dist/comm.h"
#include "cuda_check.h"

typedef struct {
    mx_comm *c;
    int checks;
} tester;

static float val(int r, size_t i) {
    return (float)((r + 1) * 0.1 + (double)i / 7.0);
}
static double sum_of(int size, size_t i) {
    return 0.1 * size * (size + 1) / 2 + size * ((double)i / 7.0);
}

static void die(tester *t, const char *what, const mx_err *err) {
    printf("rank %d/%d: FAIL %s%s%s\n", t->c->rank, t->c->size, what, err ? ": " : "", err ? err->msg : "");
    fflush(stdout);
    t->c->abort(t->c, "test_nccl: a check failed", 1);
}

static void close_to(tester *t, const char *what, const float *got, const float *want, size_t n, double tol) {
    for (size_t i = 0; i < n; i++)
        if (fabs((double)got[i] - want[i]) > tol * fabs((double)want[i]) + 1e-6) {
            printf("rank %d: %s: element %zu is %.9g, expected %.9g\n", t->c->rank, what, i, got[i], want[i]);
            die(t, what, NULL);
        }
    t->checks++;
}

typedef enum { ALLREDUCE, REDUCE, ALLGATHER, BROADCAST, SENDRECV, N_OPS } op;
static const char *const OP_NAMES[] = {"allreduce", "reduce", "allgather", "broadcast", "send/recv"};

/* Runs op on buffers x (n floats in, out) and y (size * n floats, allgather's output) of either memory. */
static int run_op(mx_comm *c, op o, float *x, float *y, size_t n, mx_err *err) {
    int r = c->rank, N = c->size, next = (r + 1) % N, prev = (r + N - 1) % N;
    switch (o) {
    case ALLREDUCE:
        return c->allreduce_sum(c, x, n, err);
    case REDUCE:
        return c->reduce_sum(c, x, n, N - 1, err);
    case ALLGATHER:
        return c->allgather(c, x, y, n, err);
    case BROADCAST:
        return c->broadcast(c, x, n, N / 2, err);
    case SENDRECV: /* a ring, even ranks sending first: y receives the previous rank's x */
        if (r % 2 == 0) return c->send(c, x, n, next, err) || c->recv(c, y, n, prev, err) ? err->code : 0;
        return c->recv(c, y, n, prev, err) || c->send(c, x, n, next, err) ? err->code : 0;
    default:
        return MX_ERR_ARG;
    }
}

/* The op's result on this rank: x for allreduce, reduce, broadcast; y for allgather, send/recv. */
static const float *result(op o, const float *x, const float *y) {
    return o == ALLGATHER || o == SENDRECV ? y : x;
}
static size_t result_n(op o, size_t n, int size) {
    return o == ALLGATHER ? n * size : n;
}

/* The independent expectation. */
static void expected(op o, int rank, int size, size_t n, float *want) {
    for (size_t i = 0; i < result_n(o, n, size); i++) switch (o) {
        case ALLREDUCE:
            want[i] = (float)sum_of(size, i);
            break;
        case REDUCE:
            want[i] = rank == size - 1 ? (float)sum_of(size, i) : val(rank, i);
            break;
        case ALLGATHER:
            want[i] = val((int)(i / n), i % n);
            break;
        case BROADCAST:
            want[i] = val(size / 2, i);
            break;
        case SENDRECV:
            want[i] = val((rank + size - 1) % size, i);
            break;
        default:
            break;
        }
}

enum { N_SIZES = 3 };
static const size_t SIZES[N_SIZES] = {1, 1000, (1 << 20) + 3};

/* MPI on host buffers: refs[o][k] = the op's result for SIZES[k]. */
static void mpi_refs(tester *t, float *refs[N_OPS][N_SIZES]) {
    for (int o = 0; o < N_OPS; o++)
        for (int k = 0; k < N_SIZES; k++) {
            size_t n = SIZES[k], m = result_n((op)o, n, t->c->size);
            float *x = malloc(sizeof(float) * n), *y = calloc(n * t->c->size, sizeof(float)),
                  *want = malloc(sizeof(float) * m);
            if (!x || !y || !want) die(t, "out of memory", NULL);
            for (size_t i = 0; i < n; i++) x[i] = val(t->c->rank, i);
            mx_err err = {0};
            if (run_op(t->c, (op)o, x, y, n, &err)) die(t, OP_NAMES[o], &err);
            memcpy(want, result((op)o, x, y), sizeof(float) * m);
            float *closed = malloc(sizeof(float) * m);
            if (!closed) die(t, "out of memory", NULL);
            expected((op)o, t->c->rank, t->c->size, n, closed);
            close_to(t, OP_NAMES[o], want, closed, m, 1e-6);
            free(closed), free(x), free(y);
            refs[o][k] = want;
        }
}

/* The same ops through NCCL on device buffers. */
static void nccl_checks(tester *t, float *refs[N_OPS][N_SIZES]) {
    for (int o = 0; o < N_OPS; o++)
        for (int k = 0; k < N_SIZES; k++) {
            size_t n = SIZES[k], m = result_n((op)o, n, t->c->size);
            float *hx = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * m), *dx, *dy;
            if (!hx || !got) die(t, "out of memory", NULL);
            for (size_t i = 0; i < n; i++) hx[i] = val(t->c->rank, i);
            CK(cudaMalloc((void **)&dx, sizeof(float) * n));
            CK(cudaMalloc((void **)&dy, sizeof(float) * n * t->c->size));
            CK(cudaMemcpy(dx, hx, sizeof(float) * n, cudaMemcpyHostToDevice));
            CK(cudaMemset(dy, 0, sizeof(float) * n * t->c->size));
            mx_err err = {0};
            if (run_op(t->c, (op)o, dx, dy, n, &err)) die(t, OP_NAMES[o], &err);
            CK(cudaMemcpy(got, result((op)o, dx, dy), sizeof(float) * m, cudaMemcpyDeviceToHost));
            close_to(t, OP_NAMES[o], got, refs[o][k], m, t->c->size <= 2 ? 0 : 1e-6);
            CK(cudaFree(dx));
            CK(cudaFree(dy));
            free(hx), free(got);
        }
}

static mx_backend *gpu_backend(tester *t) {
    int n_gpu = 0;
    CK(cudaGetDeviceCount(&n_gpu));
    if (n_gpu < 1) die(t, "no GPU", NULL);
    mx_backend *be = NULL;
    mx_err err = {0};
    if (mx_backend_create("cuda", t->c->rank % n_gpu, 1, &be, &err))
        die(t, "creating the CUDA backend", &err);
    return be;
}

static int run_all(tester *t) {
    float *refs[N_OPS][N_SIZES];
    mpi_refs(t, refs);
    mx_backend *be = gpu_backend(t);
    mx_err err = {0};
    if (t->c->attach(t->c, be, &err)) die(t, "attach", &err);
    if (strcmp(t->c->name, "nccl")) die(t, "attach did not switch to NCCL", NULL);
    nccl_checks(t, refs);
    for (int o = 0; o < N_OPS; o++)
        for (int k = 0; k < N_SIZES; k++) free(refs[o][k]);
    t->c->barrier(t->c);
    printf("rank %d/%d: %d checks passed (%s)\n", t->c->rank, t->c->size, t->checks, t->c->name);
    fflush(stdout);
    mx_comm_free(t->c); /* before the backend: the NCCL communicator uses its stream */
    mx_backend_destroy(be);
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run_timeout(tester *t) {
    const char *env = getenv("MIXATT_COMM_TIMEOUT");
    double limit = env ? atof(env) : 60;
    mx_backend *be = gpu_backend(t);
    mx_err err = {0};
    if (t->c->attach(t->c, be, &err)) die(t, "attach", &err);
    int rc = 0;
    if (t->c->rank == 0) {
        float *d;
        CK(cudaMalloc((void **)&d, sizeof(float) * 1024));
        double t0 = now_s();
        int r = t->c->allreduce_sum(t->c, d, 1024, &err),
            ok = r && strstr(err.msg, "did not complete within");
        double dt = now_s() - t0;
        ok = ok && dt >= limit && dt < limit + 5;
        printf("rank 0: %s timeout after %.1f s (limit %g s): %s\n", ok ? "PASS" : "FAIL", dt, limit,
               r ? err.msg : "the allreduce returned without error");
        rc = !ok;
        /* a communicator aborted once fails every later collective at once */
        if (!t->c->allreduce_sum(t->c, d, 1024, &err) || !strstr(err.msg, "aborted")) {
            printf("rank 0: FAIL a collective after the abort: %s\n", err.msg);
            rc = 1;
        }
    } else {
        sleep((unsigned)limit + 2); /* skips the allreduce */
    }
    fflush(stdout);
    t->c->barrier(t->c); /* MPI still works: both ranks end cleanly */
    mx_comm_free(t->c);
    mx_backend_destroy(be);
    return rc;
}

int main(int argc, char **argv) {
    mx_comm *c = NULL;
    mx_err err = {0};
    if (mx_comm_create(&argc, &argv, &c, &err)) {
        fprintf(stderr, "test_nccl: %s\n", err.msg);
        return 1;
    }
    tester t = {c, 0};
    const char *mode = argc > 1 ? argv[1] : "all";
    if (c->size < 2) die(&t, "run under mpirun with 2 or more ranks (make test-nccl)", NULL);
    if (!strcmp(mode, "all")) return run_all(&t);
    if (!strcmp(mode, "timeout")) return run_timeout(&t);
    fprintf(stderr, "usage: test_nccl all | timeout\n");
    mx_comm_free(c);
    return 2;
}
