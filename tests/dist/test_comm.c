/* test_comm.c: checks the communicator of this process (one rank, or MPI under mpirun) against values
 * computed here independently, in closed form. Run by tests/e2e/test_dist.py (make build/dist/test_comm):
 *   test_comm all              every collective, then an agree where no rank fails; prints
 *                              "rank R/N: K checks passed (COMM)" and exits 0, else names the first mismatch
 *   test_comm agree R1,R2,...  the listed ranks fail ("failure on rank R"); every rank prints what
 *                              mx_dist_agree returned: "rank R: agreed: CODE MESSAGE" (or "agreed: ok")
 *   test_comm hang DIR         each rank writes DIR/rank.R.pid, then the last rank sleeps and the others wait
 *                              in an allreduce for it (the test kills one of them)
 * Values: rank r's element i is (r + 1) * 1000 + i % 97 (integers: sums are exact in any order) or
 * (r + 1) * 0.1 + i / 7 (compared with a relative tolerance). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/dist/agree.h"
#include "../../src/dist/comm.h"

typedef struct {
    mx_comm *c;
    int checks;
} tester;

static float ival(int r, size_t i) {
    return (float)((r + 1) * 1000 + (int)(i % 97));
}
static float fval(int r, size_t i) {
    return (float)((r + 1) * 0.1 + (double)i / 7.0);
}

static void fail(tester *t, const char *what, size_t i, double got, double want) {
    printf("rank %d/%d: FAIL %s: element %zu is %.9g, expected %.9g\n", t->c->rank, t->c->size, what, i, got,
           want);
    fflush(stdout);
    t->c->abort(t->c, "test_comm: a check failed", 1);
}

static void check_call(tester *t, int rc, const char *what, const mx_err *err) {
    if (!rc) return;
    printf("rank %d/%d: FAIL %s returned %d: %s\n", t->c->rank, t->c->size, what, rc, err->msg);
    fflush(stdout);
    t->c->abort(t->c, "test_comm: a call failed", 1);
}

static float *alloc_floats(tester *t, size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) t->c->abort(t->c, "test_comm: out of memory", 1);
    return p;
}

/* Σ_r over ranks of ival / fval, in double. */
static double isum(int size, size_t i) {
    return 1000.0 * size * (size + 1) / 2 + (double)size * (i % 97);
}
static double fsum(int size, size_t i) {
    return 0.1 * size * (size + 1) / 2 + size * ((double)i / 7.0);
}

static void check_close(tester *t, const char *what, const float *x, size_t n, double (*want)(int, size_t)) {
    for (size_t i = 0; i < n; i++) {
        double w = want(t->c->size, i);
        if (fabs(x[i] - w) > 1e-6 * fabs(w) + 1e-6) fail(t, what, i, x[i], w);
    }
    t->checks++;
}

static void test_allreduce(tester *t, size_t n) {
    mx_err err = {0};
    float *x = alloc_floats(t, n);
    for (size_t i = 0; i < n; i++) x[i] = ival(t->c->rank, i);
    check_call(t, t->c->allreduce_sum(t->c, x, n, &err), "allreduce_sum", &err);
    for (size_t i = 0; i < n; i++)
        if (x[i] != (float)isum(t->c->size, i))
            fail(t, "allreduce_sum (integers)", i, x[i], isum(t->c->size, i));
    t->checks++;
    for (size_t i = 0; i < n; i++) x[i] = fval(t->c->rank, i);
    check_call(t, t->c->allreduce_sum(t->c, x, n, &err), "allreduce_sum", &err);
    check_close(t, "allreduce_sum (fractions)", x, n, fsum);
    free(x);
}

static void test_reduce(tester *t, size_t n) {
    mx_err err = {0};
    int root = t->c->size - 1;
    float *x = alloc_floats(t, n);
    for (size_t i = 0; i < n; i++) x[i] = fval(t->c->rank, i);
    check_call(t, t->c->reduce_sum(t->c, x, n, root, &err), "reduce_sum", &err);
    if (t->c->rank == root)
        check_close(t, "reduce_sum at the root", x, n, fsum);
    else
        for (size_t i = 0; i < n; i++)
            if (x[i] != fval(t->c->rank, i))
                fail(t, "reduce_sum (a non-root's input)", i, x[i], fval(t->c->rank, i));
    if (t->c->rank != root) t->checks++; /* check_close counted the root's */
    free(x);
}

static void test_allgather(tester *t, size_t n) {
    mx_err err = {0};
    float *send = alloc_floats(t, n), *recv = alloc_floats(t, n * t->c->size);
    for (size_t i = 0; i < n; i++) send[i] = fval(t->c->rank, i);
    check_call(t, t->c->allgather(t->c, send, recv, n, &err), "allgather", &err);
    for (int r = 0; r < t->c->size; r++)
        for (size_t i = 0; i < n; i++)
            if (recv[r * n + i] != fval(r, i)) fail(t, "allgather", r * n + i, recv[r * n + i], fval(r, i));
    t->checks++;
    free(send), free(recv);
}

static void test_broadcast(tester *t, size_t n) {
    mx_err err = {0};
    int root = t->c->size / 2;
    float *x = alloc_floats(t, n);
    for (size_t i = 0; i < n; i++) x[i] = fval(t->c->rank, i);
    check_call(t, t->c->broadcast(t->c, x, n, root, &err), "broadcast", &err);
    for (size_t i = 0; i < n; i++)
        if (x[i] != fval(root, i)) fail(t, "broadcast", i, x[i], fval(root, i));
    t->checks++;
    struct {
        int a;
        char s[19];
        double d;
    } h = {0};
    if (t->c->rank == root) h.a = 7, h.d = 0.125, snprintf(h.s, sizeof h.s, "from %d", root);
    check_call(t, t->c->broadcast_host(t->c, &h, sizeof h, root, &err), "broadcast_host", &err);
    char want[19];
    snprintf(want, sizeof want, "from %d", root);
    if (h.a != 7 || h.d != 0.125 || strcmp(h.s, want)) fail(t, "broadcast_host", 0, h.a, 7);
    t->checks++;
    free(x);
}

/* A ring: rank r sends its values to r + 1 and receives r - 1's (even ranks send first). */
static void test_send_recv(tester *t, size_t n) {
    mx_err err = {0};
    int r = t->c->rank, N = t->c->size, next = (r + 1) % N, prev = (r + N - 1) % N;
    float *send = alloc_floats(t, n), *recv = alloc_floats(t, n);
    for (size_t i = 0; i < n; i++) send[i] = fval(r, i);
    if (N == 1) { /* a single rank has no peer: an error, not a silent copy */
        if (!t->c->send(t->c, send, n, 0, &err)) fail(t, "send on one rank must fail", 0, 0, 1);
        t->checks++;
        free(send), free(recv);
        return;
    }
    if (r % 2 == 0) {
        check_call(t, t->c->send(t->c, send, n, next, &err), "send", &err);
        check_call(t, t->c->recv(t->c, recv, n, prev, &err), "recv", &err);
    } else {
        check_call(t, t->c->recv(t->c, recv, n, prev, &err), "recv", &err);
        check_call(t, t->c->send(t->c, send, n, next, &err), "send", &err);
    }
    for (size_t i = 0; i < n; i++)
        if (recv[i] != fval(prev, i)) fail(t, "send/recv", i, recv[i], fval(prev, i));
    t->checks++;
    free(send), free(recv);
}

static int run_all(mx_comm *c) {
    tester t = {c, 0};
    const size_t sizes[] = {1, 5, 100003};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        test_allreduce(&t, sizes[k]);
        test_reduce(&t, sizes[k]);
        test_allgather(&t, sizes[k]);
        test_broadcast(&t, sizes[k]);
        test_send_recv(&t, sizes[k]);
    }
    mx_err err = {0};
    check_call(&t, mx_dist_agree(c, 0, &err), "agree (every rank ok)", &err);
    t.checks++;
    c->barrier(c);
    printf("rank %d/%d: %d checks passed (%s)\n", c->rank, c->size, t.checks, c->name);
    return 0;
}

static int run_agree(mx_comm *c, const char *list) {
    int fails = 0;
    for (const char *p = list; *p;) {
        char *end;
        long r = strtol(p, &end, 10);
        if (end == p) break;
        if (r == c->rank) fails = 1;
        p = *end == ',' ? end + 1 : end;
    }
    mx_err err = {0};
    int rc = fails ? mx_err_set(&err, MX_ERR_IO, "failure on rank %d", c->rank) : 0;
    rc = mx_dist_agree(c, rc, &err);
    if (rc)
        printf("rank %d: agreed: %s %s\n", c->rank, mx_code_name(err.code), err.msg);
    else
        printf("rank %d: agreed: ok\n", c->rank);
    return 0;
}

static int run_hang(mx_comm *c, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/rank.%d.pid", dir, c->rank);
    FILE *f = fopen(path, "w");
    if (!f) c->abort(c, "test_comm: cannot write the pid file", 1);
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    if (c->rank == c->size - 1) {
        sleep(120);
        return 0;
    }
    float x = 1;
    mx_err err = {0};
    int rc = c->allreduce_sum(c, &x, 1, &err);
    printf("rank %d: allreduce returned %d %s\n", c->rank, rc, err.msg);
    return 0;
}

int main(int argc, char **argv) {
    mx_comm *c = NULL;
    mx_err err = {0};
    if (mx_comm_create(&argc, &argv, &c, &err)) {
        fprintf(stderr, "test_comm: %s\n", err.msg);
        return 1;
    }
    const char *mode = argc > 1 ? argv[1] : "all";
    int rc;
    if (!strcmp(mode, "all"))
        rc = run_all(c);
    else if (!strcmp(mode, "agree") && argc > 2)
        rc = run_agree(c, argv[2]);
    else if (!strcmp(mode, "hang") && argc > 2)
        rc = run_hang(c, argv[2]);
    else {
        fprintf(stderr, "usage: test_comm all | agree RANKS | hang DIR\n");
        rc = 2;
    }
    fflush(stdout);
    mx_comm_free(c);
    return rc;
}
