/* star_cli.c: the long-context attention flags of mixatt run, logits, bench and eval: Star Attention and
 * XAttention (see star_cli.h). */
#include "star_cli.h"

#include <string.h>

#include "common.h"

mx_star_opts mx_star_cli_defaults(void) {
    return (mx_star_opts){.on = false, .block = 0, .anchor = -1, .query = 0, .xattn = mx_xattn_defaults()};
}

int mx_star_cli_flag(void *star, const char *a, const char *val, int *i) {
    mx_star_opts *o = star;
    if (!strcmp(a, "--attn") && val &&
        (!strcmp(val, "star") || !strcmp(val, "xattn") || !strcmp(val, "star+xattn"))) {
        o->on = strncmp(val, "star", 4) == 0;
        o->xattn.on = strstr(val, "xattn") != NULL;
    } else if (!strcmp(a, "--xattn-stride")) {
        if (mx_parse_int(a, val, 1, MX_XATTN_BLOCK, &o->xattn.stride)) return -1;
        o->xattn_given = true;
    } else if (!strcmp(a, "--xattn-threshold")) {
        if (mx_parse_float(a, val, -1e30f, 1e30f, &o->xattn.threshold)) return -1;
        o->xattn_given = true;
    } else if (!strcmp(a, "--block")) {
        if (mx_parse_int(a, val, 1, 1 << 24, &o->block)) return -1;
    } else if (!strcmp(a, "--anchor")) {
        if (mx_parse_int(a, val, 0, 1 << 24, &o->anchor)) return -1;
    } else if (!strcmp(a, "--query")) {
        if (mx_parse_int(a, val, 1, 1 << 24, &o->query)) return -1;
    } else {
        return 0;
    }
    ++*i;
    return 1;
}

int mx_star_cli_check(const char *cmd, const mx_star_opts *o) {
    if (!o->on && (o->block || o->anchor >= 0 || o->query)) {
        fprintf(stderr,
                "mixatt %s: --block, --anchor and --query are Star Attention options: add --attn star\n",
                cmd);
        return 2;
    }
    if (!o->xattn.on && o->xattn_given) {
        fprintf(
            stderr,
            "mixatt %s: --xattn-stride and --xattn-threshold are XAttention options: add --attn xattn (or "
            "star+xattn)\n",
            cmd);
        return 2;
    }
    mx_err err = {0};
    if (o->xattn.on && mx_xattn_check_opts(&o->xattn, &err)) {
        fprintf(stderr, "mixatt %s: %s\n", cmd, err.msg);
        return 2;
    }
    return 0;
}

int mx_xattn_cli_attach(const char *cmd, const mx_star_opts *o, mx_session *s) {
    if (o->on || !o->xattn.on) return 0; /* with Star, phase 1 attaches it to its scratch sessions */
    mx_err err = {0};
    if (mx_xattn_attach(s, &o->xattn, &err)) {
        fprintf(stderr, "mixatt %s: %s\n", cmd, err.msg);
        return 1;
    }
    return 0;
}

int mx_star_cli_query(const char *cmd, const mx_star_opts *o, int n) {
    int q = o->query ? o->query : 1;
    if (q >= n) {
        fprintf(
            stderr,
            "mixatt %s: --attn star needs context before the query: the prompt is %d tokens and the query "
            "%d (--query)\n",
            cmd, n, q);
        return -1;
    }
    return q;
}

void mx_star_cli_help(FILE *f) {
    fprintf(
        f,
        "Star Attention (arXiv 2411.17116; one process, or N ranks with mpirun -np N; CPU or --device\n"
        "cuda, one GPU per rank; full MHA/GQA layers only; docs/attention.md says what is exact and what\n"
        "is approximate):\n"
        "  --attn star          split the prompt into a context (all but the last --query tokens) and a\n"
        "                       query. Phase 1 encodes the context in blocks without communication:\n"
        "                       each block sees the anchor (the first A context tokens) and its own\n"
        "                       earlier tokens only, so it is approximate unless the context is one\n"
        "                       block (or two with A = B). Phase 2: the query and generated tokens attend\n"
        "                       exactly to every block (log-sum-exp merge across ranks). Consecutive\n"
        "                       blocks go to consecutive ranks; the last rank holds the query.\n"
        "  --block B            tokens per context block (default: the context / ranks, rounded up)\n"
        "  --anchor A           anchor tokens before each block but the first, 0..B (default B)\n"
        "  --query N            the last N prompt tokens are the query (default 1)\n"
        "XAttention (arXiv 2503.16428; full-attention MHA/GQA layers; CPU; docs/attention.md):\n"
        "  --attn xattn         block-sparse prefill: blocks of 128 positions scored by anti-diagonal sums;\n"
        "                       per head and query block, the sink block, the diagonal block and the\n"
        "                       highest-scoring others up to the threshold of the mass are attended\n"
        "                       (approximate; 1 = dense). Decode and sliding-window layers stay dense.\n"
        "  --attn star+xattn    Star Attention whose phase 1 encodes each [anchor | block] with XAttention;\n"
        "                       phase 2 stays exact\n"
        "  --xattn-stride S     anti-diagonal stride, a divisor of 128 (default 8; the paper uses 8 or 16)\n"
        "  --xattn-threshold T  the kept fraction of each row's block mass, in (0, 1] (default 0.9)\n");
}
