/* logits.c: `mixatt logits`: the logits of every position of a token sequence, written as little-endian
 * float32 [T, vocab]. With --decode the tokens go through the cache one at a time instead of one prefill, so
 * the two paths can be compared. Used by the reference tests; handy for checking a model against another
 * implementation. */
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "common.h"
#include "star_cli.h"

static void help(FILE *f) {
    fprintf(
        f, "usage: mixatt logits [-m MODEL] (--ids \"1 2 3\" | -p TEXT) -o OUT.f32 [--decode] [--chunk N]\n\n"
           "Evaluates the tokens and writes the logits of every position as float32 [T, vocab].\n\n"
           "  --ids LIST           space- or comma-separated token ids\n"
           "  -p, --prompt TEXT    tokenize TEXT (special tokens parsed) instead\n"
           "  -o, --out FILE       output file\n"
           "  --decode             evaluate one token at a time (decode path) instead of one prefill\n"
           "  --chunk N            evaluate in prefills of N tokens (exercises prefill after a cache)\n"
           "With --attn star the context is encoded in blocks and only the query's logits are written:\n"
           "[--query N, vocab] for the last N tokens.\n\n");
    mx_common_help(f, false);
    mx_star_cli_help(f);
    mx_common_help_tp(f);
}

static int parse_ids(const char *s, int **ids, int *n) {
    int cap = 64;
    *n = 0;
    *ids = malloc(sizeof(int) * (size_t)cap);
    while (*ids && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s) {
            if (*s == ' ' || *s == ',' || *s == '\n' || *s == '\t') {
                s++;
                continue;
            }
            fprintf(stderr, "mixatt logits: --ids: '%c' is not part of a token id\n", *s);
            return -1;
        }
        if (*n == cap) {
            int *g = realloc(*ids, sizeof(int) * (size_t)(cap *= 2));
            if (!g) return -1;
            *ids = g;
        }
        (*ids)[(*n)++] = (int)v;
        s = end;
    }
    return *ids ? 0 : -1;
}

typedef struct {
    const char *ids, *prompt, *out;
    int chunk;
    bool decode;
    mx_star_opts star;
} logits_opts;

int mx_cmd_logits(int argc, char **argv, mx_comm *comm) {
    logits_opts lo = {.star = mx_star_cli_defaults()};
    const mx_opt opts[] = {MX_OPT_S("--ids", NULL, &lo.ids),
                           MX_OPT_S("--prompt", "-p", &lo.prompt),
                           MX_OPT_S("--out", "-o", &lo.out),
                           MX_OPT_B("--decode", NULL, &lo.decode),
                           MX_OPT_I("--chunk", NULL, &lo.chunk, 1, 1 << 20),
                           MX_OPT_END};
    mx_common_opts o;
    int status;
    const mx_command cmd = {
        .name = "logits", .help = help, .opts = opts, .flag = mx_star_cli_flag, .ctx = &lo.star};
    if (!mx_command_start(&cmd, argc, argv, comm, &o, &status)) return status;
    if (mx_star_cli_check("logits", &lo.star)) return 2;
    if (lo.star.on && o.tp > 1) {
        fprintf(stderr, "mixatt logits: --tp and --attn star each need every rank of the job; use one\n");
        return 2;
    }
    const char *ids_arg = lo.ids, *prompt = lo.prompt, *out = lo.out;
    int chunk = lo.chunk;
    bool decode = lo.decode;
    if (!out || !ids_arg == !prompt) {
        fprintf(stderr, "mixatt logits: need -o FILE and exactly one of --ids or -p (see --help)\n");
        return 2;
    }
    mx_model *m;
    mx_backend *be;
    if (mx_open_model(&o, &m, &be)) return 1;
    int *ids = NULL, n = 0, rc = 1, vocab = m->cfg.vocab;
    mx_err err = {0};
    mx_session *s = NULL;
    float *logits = NULL;
    FILE *f = NULL;
    if (ids_arg ? parse_ids(ids_arg, &ids, &n)
                : mx_tokenize(m->tok, prompt, strlen(prompt), true, &ids, &n, &err)) {
        if (err.msg[0]) fprintf(stderr, "mixatt logits: %s\n", err.msg);
        goto done;
    }
    if (n == 0) {
        fprintf(stderr, "mixatt logits: no tokens\n");
        goto done;
    }
    int first = 0; /* the first token whose logits are written: the query's with --attn star */
    if (lo.star.on) {
        int q = mx_star_cli_query("logits", &lo.star, n);
        if (q < 0) goto done;
        first = n - q;
        rc = mx_star_open(m, be, comm, &lo.star, ids, first, q, &s, &err);
    } else {
        rc = mx_session_create(m, be, o.ctx ? o.ctx : (n < m->cfg.max_ctx ? n : m->cfg.max_ctx), &s, &err);
        if (!rc && mx_xattn_cli_attach("logits", &lo.star, s)) goto done;
    }
    if (rc || !(logits = malloc(sizeof(float) * (size_t)(n - first) * vocab))) {
        rc = 1;
        fprintf(stderr, "mixatt logits: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    rc = 1;
    int step = decode ? 1 : chunk ? chunk : n;
    for (int t = first; t < n; t += step) {
        int k = n - t < step ? n - t : step;
        if (mx_session_eval(s, ids + t, k, logits + (size_t)(t - first) * vocab, true, &err)) {
            fprintf(stderr, "mixatt logits: %s\n", err.msg);
            goto done;
        }
    }
    size_t rows = (size_t)(n - first);
    if (comm->rank == 0 && /* under mpirun every rank holds the same logits; rank 0 writes them */
        (!(f = fopen(out, "wb")) || fwrite(logits, sizeof(float) * vocab, rows, f) != rows)) {
        fprintf(stderr, "mixatt logits: cannot write %s\n", out);
        goto done;
    }
    rc = 0;
done:
    if (f && fclose(f) && !rc) rc = 1, fprintf(stderr, "mixatt logits: cannot write %s\n", out);
    free(logits);
    free(ids);
    mx_star_session_free(s);
    mx_close_model(m, be);
    return rc;
}
