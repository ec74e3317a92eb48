/* perplexity.c: `mixatt perplexity`: exp(mean negative log-likelihood) of a text under the model, in
 * consecutive chunks of --ctx tokens, each evaluated from an empty cache; every token of a chunk but the
 * first is scored (predicted from the ones before it in the chunk). Log-softmax in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../base/clock.h"
#include "../run/generate.h"
#include "commands.h"
#include "common.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: mixatt perplexity [-m MODEL] -f TEXT [--ctx N] [--chunks K]\n\n"
            "Splits the tokenized text into chunks of N tokens (default 512), evaluates each from an empty\n"
            "cache and scores every token after the first of its chunk. Prints the perplexity, its standard\n"
            "error and the tokens scored.\n\n"
            "  -f, --file FILE      the text\n"
            "  --chunks K           evaluate at most K chunks (default: all)\n\n");
    mx_common_help(f, false);
    mx_common_help_tp(f);
}

static double chunk_nll(const float *logits, const int *ids, int n, int vocab, double *sq) {
    double total = 0;
    for (int t = 0; t + 1 < n; t++) {
        const float *row = logits + (size_t)t * vocab;
        double mx = row[0], sum = 0;
        for (int i = 1; i < vocab; i++) mx = row[i] > mx ? row[i] : mx;
        for (int i = 0; i < vocab; i++) sum += exp(row[i] - mx);
        double nll = log(sum) + mx - row[ids[t + 1]];
        total += nll;
        *sq += nll * nll;
    }
    return total;
}

int mx_cmd_perplexity(int argc, char **argv, mx_comm *comm) {
    const char *file = NULL;
    int max_chunks = 0;
    const mx_opt opts[] = {MX_OPT_S("--file", "-f", &file),
                           MX_OPT_I("--chunks", NULL, &max_chunks, 1, 1 << 30), MX_OPT_END};
    mx_common_opts o;
    int status;
    const mx_command cmd = {.name = "perplexity", .help = help, .opts = opts};
    if (!mx_command_start(&cmd, argc, argv, comm, &o, &status)) return status;
    if (!file) return fprintf(stderr, "mixatt perplexity: -f FILE is required (see --help)\n"), 2;
    size_t len;
    char *text = mx_read_file(file, &len);
    if (!text) return 1;
    mx_model *m;
    mx_backend *be;
    if (mx_open_model(&o, &m, &be)) return free(text), 1;
    int ctx = o.ctx ? o.ctx : 512, vocab = m->cfg.vocab, rc = 1;
    mx_err err = {0};
    int *ids = NULL, n_ids = 0;
    mx_session *s = NULL;
    float *logits = NULL;
    if (mx_tokenize(m->tok, text, len, false, &ids, &n_ids, &err) ||
        mx_session_create(m, be, ctx, &s, &err)) {
        fprintf(stderr, "mixatt perplexity: %s\n", err.msg);
        goto done;
    }
    int n_chunks = n_ids / ctx;
    if (max_chunks && n_chunks > max_chunks) n_chunks = max_chunks;
    if (n_chunks == 0) {
        fprintf(stderr, "mixatt perplexity: %s has %d tokens, fewer than one chunk of %d (lower --ctx)\n",
                file, n_ids, ctx);
        goto done;
    }
    logits = malloc(sizeof(float) * (size_t)ctx * vocab);
    if (!logits) goto done;
    double nll = 0, sq = 0, t0 = mx_now();
    long scored = 0;
    fprintf(stderr, "perplexity of %s: %d tokens, %d chunks of %d\n", file, n_ids, n_chunks, ctx);
    for (int c = 0; c < n_chunks; c++) {
        mx_session_truncate(s, 0);
        if (mx_session_eval(s, ids + (size_t)c * ctx, ctx, logits, true, &err)) {
            fprintf(stderr, "mixatt perplexity: %s\n", err.msg);
            goto done;
        }
        nll += chunk_nll(logits, ids + (size_t)c * ctx, ctx, vocab, &sq);
        scored += ctx - 1;
        double el = mx_now() - t0;
        fprintf(stderr, "\r  chunk %d/%d  ppl %.4f  %.0f tok/s  ETA %.0f s   ", c + 1, n_chunks,
                exp(nll / scored), (c + 1) * ctx / el, el / (c + 1) * (n_chunks - c - 1));
    }
    fprintf(stderr, "\n");
    double mean = nll / scored, var = sq / scored - mean * mean;
    double se = sqrt(var > 0 ? var / scored : 0);
    printf("perplexity: %.4f ± %.4f  (mean NLL %.5f nats, %ld tokens scored, ctx %d)\n", exp(mean),
           exp(mean) * se, mean, scored, ctx);
    rc = 0;
done:
    free(logits);
    free(ids);
    free(text);
    mx_session_free(s);
    mx_close_model(m, be);
    return rc;
}
