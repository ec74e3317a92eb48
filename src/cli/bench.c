/* bench.c: `mixatt bench`: llama-bench-style throughput. pp N = one prefill of N tokens from an empty cache;
 * tg N = N single-token decode steps from an empty cache (on a backend that samples, such as CUDA, the way
 * `mixatt run` decodes: each step's greedy token drawn there and fed to the next step, read back two steps
 * behind; elsewhere each step's logits come to the host). Random token ids (seeded), mean ± sd over
 * repetitions after one warm-up (two on a GPU: the second captures its CUDA graphs). Decode is bound by
 * reading the weights, so the achieved weight-read bandwidth is printed beside this machine's copy bandwidth,
 * measured here on a buffer larger than the last-level cache, and the model's size against that cache. With
 * --attn star (cli/star_cli.h) pp N times Star Attention's phase 1 instead: mx_star_open of N context tokens
 * over the job's ranks (blocks of --block with --anchor), from a barrier until every rank's GPU work and the
 * closing barrier are done, so a repetition's time is the slowest rank's. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../base/rng.h"
#include "../io/dtype.h"
#include "../base/clock.h"
#include "../run/generate.h"
#include "../run/star_pipeline.h"
#include "../model/tp.h"
#include "commands.h"
#include "common.h"
#include "star_cli.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: mixatt bench [-m MODEL] [-p N] [-n N] [-r REPS] [--json] [--attn star ...]\n\n"
            "  -p N          prompt tokens for the prefill test pp N (default 512; 0 = skip)\n"
            "  -n N          tokens for the decode test tg N (default 128; 0 = skip)\n"
            "  -r REPS       repetitions (default 5), after one warm-up (two on a GPU)\n"
            "  --json        also print one JSON line per test (for scripts)\n"
            "  --attn star   pp N times Star Attention's phase 1 over N context tokens on the job's ranks\n"
            "                (mpirun -np R; with --block B, --anchor A as for mixatt run; needs -n 0)\n\n");
    mx_common_help(f, false);
    mx_common_help_tp(f);
}

/* Copy bandwidth (read + write bytes per second) over 2 x 512 MiB with all threads: the DRAM ceiling. */
static double copy_bandwidth(void) {
    size_t n = (size_t)512 << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) return free(a), free(b), 0;
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = mx_now();
#pragma omp parallel
        {
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            size_t chunk = n / nt;
            memcpy(b + chunk * id, a + chunk * id, chunk);
        }
        double bw = 2.0 * n / (mx_now() - t0);
        if (bw > best) best = bw;
    }
    free(a);
    free(b);
    return best;
}

static void stats(const double *x, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* Decode as `mixatt run` does it where the backend samples (generate.c: decode_device): the first token is
 * toks[0], every later one the greedy draw of the step before, read back two steps behind. */
static int decode_kept(mx_session *s, const int *toks, int n, mx_err *err) {
    mx_backend *be = s->be;
    mx_sample_spec greedy = {0};
    int ticket[3] = {-1, -1, -1};
    for (int i = 0; i < n; i++) {
        if (mx_session_eval_keep(s, i ? NULL : toks, 1, err)) return err->code;
        ticket[i % 3] = be->sample(be, s->logits, s->m->cfg.vocab, &greedy, s->tok);
        if (i >= 2 && be->sample_wait(be, ticket[(i - 2) % 3]) < 0)
            return mx_err_set(err, MX_ERR_IO, "the backend lost the token of step %d", i - 2);
    }
    be->sync(be);
    return 0;
}

/* One repetition: tokens/s of prefill (decode = false) or decode. */
static int run_once(mx_session *s, const int *toks, int n, bool decode, float *logits, double *tps,
                    mx_err *err) {
    mx_session_truncate(s, 0);
    double t0 = mx_now();
    if (!decode) {
        if (mx_session_eval(s, toks, n, logits, false, err)) return err->code;
    } else if (mx_session_can_keep(s)) {
        if (decode_kept(s, toks, n, err)) return err->code;
    } else {
        for (int i = 0; i < n; i++)
            if (mx_session_eval(s, toks + i, 1, logits, false, err)) return err->code;
    }
    *tps = n / (mx_now() - t0);
    return 0;
}

/* One repetition of Star's phase 1 over toks[0..n): tokens/s of the slowest rank. */
static int star_once(const mx_model *m, mx_backend *be, mx_comm *comm, const mx_star_opts *so,
                     const int *toks, int n, double *tps, mx_err *err) {
    mx_session *s = NULL;
    comm->barrier(comm);
    double t0 = mx_now();
    if (mx_star_open(m, be, comm, so, toks, n, 1, &s, err)) return err->code;
    be->sync(be);
    comm->barrier(comm);
    *tps = n / (mx_now() - t0);
    mx_star_session_free(s);
    return 0;
}

typedef struct {
    int pp, tg, reps;
    bool json;
    mx_star_opts star;
} bench_opts;

int mx_cmd_bench(int argc, char **argv, mx_comm *comm) {
    bench_opts bo = {.pp = 512, .tg = 128, .reps = 5, .star = mx_star_cli_defaults()};
    const mx_opt opts[] = {MX_OPT_I("-p", NULL, &bo.pp, 0, 1 << 20), MX_OPT_I("-n", NULL, &bo.tg, 0, 1 << 20),
                           MX_OPT_I("-r", NULL, &bo.reps, 1, 1 << 20), MX_OPT_B("--json", NULL, &bo.json),
                           MX_OPT_END};
    mx_common_opts o;
    int status;
    const mx_command cmd = {
        .name = "bench", .help = help, .opts = opts, .flag = mx_star_cli_flag, .ctx = &bo.star};
    if (!mx_command_start(&cmd, argc, argv, comm, &o, &status)) return status;
    if (mx_star_cli_check("bench", &bo.star)) return 2;
    if (bo.star.on && (bo.tg || !bo.pp || o.tp > 1)) {
        fprintf(stderr,
                "mixatt bench: --attn star times the prefill only: give -p N (N > 0) and -n 0, no --tp\n");
        return 2;
    }
    int pp = bo.pp, tg = bo.tg, reps = bo.reps;
    bool json = bo.json;
    mx_model *m;
    mx_backend *be;
    if (mx_open_model(&o, &m, &be)) return 1;
    int ctx = (pp > tg ? pp : tg) + 1, rc = 1;
    mx_err err = {0};
    mx_session *s = NULL;
    int *toks = malloc(sizeof(int) * (size_t)ctx);
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.vocab);
    if (!toks || !logits || (!bo.star.on && mx_session_create(m, be, ctx, &s, &err))) {
        fprintf(stderr, "mixatt bench: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    if (s && mx_xattn_cli_attach("bench", &bo.star, s)) goto done;
    mx_rng rng;
    mx_rng_seed(&rng, 1234);
    for (int i = 0; i < ctx; i++) toks[i] = (int)(mx_rng_u64(&rng) % (uint64_t)m->cfg.vocab);

    double bw = copy_bandwidth();
    const char *type = mx_dtype_name(m->w.layers[0].wq.type);
    printf("| model                          |       size |     params | backend | threads |  test |         "
           "     t/s |\n");
    printf("| ------------------------------ | ---------: | ---------: | ------- | ------: | ----: | "
           "---------------: |\n");
    int tests[2] = {pp, tg};
    double tg_mean = 0;
    for (int k = 0; k < 2; k++) {
        if (!tests[k]) continue;
        double tps[64], mean, sd, warm;
        if (reps > 64) reps = 64;
        /* r < 0: warm-up; two where the backend records CUDA graphs (a sequence runs eagerly when first seen
         * and is captured when seen again, so the second run is the slow one) */
        int warm_runs = (be->caps & MX_CAP_GRAPHS) ? 2 : 1;
        for (int r = -warm_runs; r < reps; r++) {
            double *t = r < 0 ? &warm : &tps[r];
            if (bo.star.on ? star_once(m, be, comm, &bo.star, toks, tests[k], t, &err)
                           : run_once(s, toks, tests[k], k == 1, logits, t, &err))
                goto fail;
        }
        stats(tps, reps, &mean, &sd);
        if (k == 1) tg_mean = mean;
        char name[64], test[16];
        snprintf(name, sizeof name, "%.20s %s", m->cfg.name, type);
        snprintf(test, sizeof test, "%s%d", k ? "tg" : bo.star.on ? "star" : "pp", tests[k]);
        printf("| %-30s | %6.2f MiB | %8.2f M | %-7s | %7d | %5s | %8.2f ± %5.2f |\n", name,
               mx_model_weight_bytes(m) / 1048576.0, mx_model_n_params(m) / 1e6, be->name, be->n_threads,
               test, mean, sd);
        if (json)
            fprintf(stderr, "{\"test\":\"%s\",\"tok_s\":%.3f,\"sd\":%.3f,\"threads\":%d,\"reps\":%d}\n", test,
                    mean, sd, be->n_threads, reps);
    }
    if (bo.star.xattn.on && !bo.star.on && s && s->xattn)
        printf("\nxattn: stride %d, threshold %g: measured density %.3f of the causal blocks (%ld prefill "
               "calls)\n",
               bo.star.xattn.stride, (double)bo.star.xattn.threshold, mx_xattn_density(s->xattn),
               s->xattn->calls);
    if (tg) {
        size_t bytes = m->tp ? m->tp->decode_bytes : mx_model_decode_bytes(m); /* --tp: this rank's share */
        double read = bytes * tg_mean;
        printf(
            "\ndecode weight reads%s: %.2f MiB/token x %.1f tok/s = %.1f GB/s; machine copy bandwidth (DRAM, "
            "read+write, %d threads): %.1f GB/s\n",
            m->tp ? " (rank 0's share)" : "", bytes / 1048576.0, tg_mean, read / 1e9, be->n_threads,
            bw / 1e9);
        printf("note: a model smaller than the last-level cache is read from cache, not DRAM, once warm.\n");
        if (s && mx_session_can_keep(s))
            printf(
                "decode: greedy tokens drawn on the %s backend, fed to the next step there and read back two "
                "steps behind, as `mixatt run` does (MX_HOST_SAMPLING=1: logits to the host each step).\n",
                be->name);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "mixatt bench: %s\n", err.msg);
done:
    free(toks);
    free(logits);
    mx_star_session_free(s); /* any session; frees its XAttention state */
    mx_close_model(m, be);
    return rc;
}
