/* compare.c: `mixatt compare RUN_DIR...`: one markdown table of training runs (runs.h): plan, parameters,
 * final and best validation loss, final training loss, tokens trained, speed and KV cache bytes per token. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "runs.h"

static void help(FILE *f) {
    fprintf(
        f, "usage: mixatt compare RUN_DIR...\n\n"
           "Prints one markdown table row per run directory written by `mixatt train -o RUN_DIR`, read from\n"
           "its checkpoint.safetensors (config, plan, parameters) and log.jsonl (losses, speed):\n\n"
           "  run         the directory's name\n"
           "  plan        the attention plan, expanded (\"\" = every layer full attention)\n"
           "  params      parameters of the model (M = millions)\n"
           "  val final   the last validation loss logged; val best: the lowest (- when none)\n"
           "  train final the last step's training loss\n"
           "  tokens      tokens trained: last step x batch x seq x grad_accum\n"
           "  tok/s       median training speed over the logged steps\n"
           "  KV B/tok    KV cache bytes per token at the run's max_ctx, fp32 elements (mixatt trains in\n"
           "              fp32), window layers counted at their ring of W slots\n\n"
           "  -h, --help  this help\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const mx_curve *c) {
    double *v = malloc(sizeof *v * (size_t)c->n);
    if (!v) return NAN;
    memcpy(v, c->value, sizeof *v * (size_t)c->n);
    qsort(v, (size_t)c->n, sizeof *v, cmp_double);
    double m = c->n % 2 ? v[c->n / 2] : (v[c->n / 2 - 1] + v[c->n / 2]) / 2;
    free(v);
    return m;
}

static void fmt_loss(char *buf, size_t n, double v) {
    if (isnan(v))
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%.4f", v);
}

static void fmt_count(char *buf, size_t n, double v) {
    if (v >= 1e9)
        snprintf(buf, n, "%.2fG", v / 1e9);
    else if (v >= 1e6)
        snprintf(buf, n, "%.2fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%.1fk", v / 1e3);
    else
        snprintf(buf, n, "%.0f", v);
}

static void print_row(const mx_run *r) {
    const mx_train_config *c = &r->cfg;
    double best = NAN, last = r->val.n ? r->val.value[r->val.n - 1] : NAN;
    for (int i = 0; i < r->val.n; i++)
        if (isnan(best) || r->val.value[i] < best) best = r->val.value[i];
    int steps = r->train.step[r->train.n - 1];
    double tokens = (double)steps * c->batch * c->seq * c->grad_accum, kv = mx_run_kv_bytes_per_token(r);
    char vf[32], vb[32], tf[32], params[32], tok[32], tps[32], kvs[32];
    fmt_loss(vf, sizeof vf, last), fmt_loss(vb, sizeof vb, best);
    fmt_loss(tf, sizeof tf, r->train.value[r->train.n - 1]);
    fmt_count(params, sizeof params, (double)r->n_params), fmt_count(tok, sizeof tok, tokens);
    fmt_count(tps, sizeof tps, r->tok_s.n ? median(&r->tok_s) : 0);
    snprintf(kvs, sizeof kvs, kv < 0 ? "?" : "%.0f", kv);
    printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r->name, r->plan[0] ? r->plan : "(full)",
           params, vf, vb, tf, tok, tps, kvs);
}

int mx_cmd_compare(int argc, char **argv, mx_comm *comm) {
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return help(stdout), 0;
        if (argv[i][0] == '-')
            return fprintf(stderr, "mixatt compare: unknown flag '%s' (see mixatt compare --help)\n",
                           argv[i]),
                   2;
        n++;
    }
    if (!n)
        return fprintf(stderr, "mixatt compare: give one or more RUN_DIR (see mixatt compare --help)\n"), 2;
    mx_run *runs = calloc((size_t)n, sizeof *runs);
    if (!runs) return fprintf(stderr, "mixatt compare: out of memory\n"), 1;
    int rc = 0, k = 0;
    for (int i = 1; i < argc && !rc; i++) {
        rc = mx_run_load(argv[i], &runs[k++]);
        if (rc) fprintf(stderr, "mixatt compare: cannot read the run %s\n", argv[i]);
    }
    if (!rc) {
        printf("| run | plan | params | val final | val best | train final | tokens | tok/s | KV B/tok |\n");
        printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for (int i = 0; i < n; i++) print_row(&runs[i]);
    }
    for (int i = 0; i < k; i++) mx_run_free(&runs[i]);
    free(runs);
    return rc;
}
