/* common.c: shared CLI flags, and opening the model they name (see common.h). */
#include "common.h"

#include "../attention/kvcache.h"
#include "../base/file.h"
#include "../dist/agree.h"
#include "../model/open.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void mx_common_defaults(mx_common_opts *o) {
    memset(o, 0, sizeof *o);
    o->sp = mx_sampler_defaults();
}

int mx_parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "mixatt: %s expects an integer in %d..%d, got '%s'\n", flag, lo, hi, s ? s : "");
        return -1;
    }
    *out = (int)v;
    return 0;
}

int mx_parse_float(const char *flag, const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = s ? strtof(s, &end) : 0;
    if (!s || errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "mixatt: %s expects a number in %g..%g, got '%s'\n", flag, lo, hi, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

/* One table entry against argv[*i]: 1 consumed, 0 not this entry (or a value missing), -1 a bad value. */
static int take_opt(const mx_opt *t, const char *a, const char *val, int *i) {
    if (strcmp(a, t->flag) && (!t->alias || strcmp(a, t->alias))) return 0;
    switch (t->kind) {
    case MX_OPT_STR:
        if (!val) return 0; /* "unknown or incomplete option" */
        *(const char **)t->dst = val;
        break;
    case MX_OPT_INT:
        if (mx_parse_int(a, val, (int)t->lo, (int)t->hi, t->dst)) return -1;
        break;
    case MX_OPT_FLOAT:
        if (mx_parse_float(a, val, (float)t->lo, (float)t->hi, t->dst)) return -1;
        break;
    case MX_OPT_TRUE:
        *(bool *)t->dst = true;
        return 1;
    }
    ++*i;
    return 1;
}

/* A table (ended by an entry without flag) against argv[*i]: as take_opt. */
static int take_opts(const mx_opt *t, const char *a, const char *val, int *i) {
    for (; t && t->flag; t++) {
        int r = take_opt(t, a, val, i);
        if (r) return r;
    }
    return 0;
}

int mx_common_parse(mx_common_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *val = *i + 1 < argc ? argv[*i + 1] : NULL;
    const mx_opt opts[] = {
        MX_OPT_I("--threads", "-t", &o->threads, 1, 1024),
        MX_OPT_I("--ctx", "-c", &o->ctx, 1, 1 << 24),
        MX_OPT_I("--window", NULL, &o->load.window, 1, 1 << 24),
        MX_OPT_I("--tp", NULL, &o->tp, 1, 4096),
        MX_OPT_B("--exact", NULL, &o->exact),
        MX_OPT_F("--temp", NULL, &o->sp.temperature, 0, 100),
        MX_OPT_I("--top-k", NULL, &o->sp.top_k, 0, INT_MAX),
        MX_OPT_F("--top-p", NULL, &o->sp.top_p, 0, 1),
        MX_OPT_F("--min-p", NULL, &o->sp.min_p, 0, 1),
        MX_OPT_F("--repeat-penalty", NULL, &o->sp.repeat_penalty, 0.01f, 100),
        MX_OPT_I("--repeat-last-n", NULL, &o->sp.repeat_last_n, 0, INT_MAX),
        MX_OPT_END,
    };
    int r = take_opts(opts, a, val, i), iv;
    if (r) return r;
    /* the flags with their own messages or checks */
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        if (!val) return fprintf(stderr, "mixatt: %s expects a path\n", a), -1;
        o->model = val;
    } else if (!strcmp(a, "--device")) {
        if (!val || (strcmp(val, "cpu") && strcmp(val, "cuda")))
            return fprintf(stderr, "mixatt: --device expects cpu or cuda, got '%s'\n", val ? val : ""), -1;
        o->device = val;
    } else if (!strcmp(a, "--gpu")) {
        if (mx_parse_int(a, val, 0, 1023, &o->gpu)) return -1;
        o->device = "cuda";
        o->gpu_given = true;
    } else if (!strcmp(a, "--plan")) {
        if (!val) return fprintf(stderr, "mixatt: --plan expects a plan string or preset\n"), -1;
        o->load.plan = val;
    } else if (!strcmp(a, "--attn") && val &&
               (!strcmp(val, "star") || !strcmp(val, "xattn") || !strcmp(val, "star+xattn"))) {
        return 0; /* Star Attention, XAttention: the commands that implement them take them (cli/star_cli.c) */
    } else if (!strcmp(a, "--attn")) {
        if (!val || mx_attn_kind_parse(val) < 0)
            return fprintf(stderr,
                           "mixatt: --attn expects mha, mla, mka or fastmka (or star, xattn, star+xattn: "
                           "run, logits, bench, "
                           "eval), "
                           "got '%s'\n",
                           val ? val : ""),
                   -1;
        o->load.attn = val;
    } else if (!strcmp(a, "--mla")) {
        int f = val ? mx_mla_form_parse(val) : -1;
        if (f < 0)
            return fprintf(stderr, "mixatt: --mla expects explicit, absorbed or auto, got '%s'\n",
                           val ? val : ""),
                   -1;
        o->load.mla_form = f;
    } else if (!strcmp(a, "--seed")) {
        if (mx_parse_int(a, val, 0, INT_MAX, &iv)) return -1;
        o->sp.seed = (uint64_t)iv;
    } else {
        return 0;
    }
    ++*i; /* each of them took a value */
    return 1;
}

/* The commands that run tensor parallel (chat reads the terminal on rank 0 only; the others load no model
 * for inference). */
static bool takes_tp(const char *cmd) {
    static const char *const cmds[] = {"run", "logits", "perplexity", "bench", "info"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i])) return true;
    return false;
}

int mx_parse_args(const char *cmd, int argc, char **argv, mx_common_opts *o, mx_flag_fn own, void *ctx,
                  void (*help)(FILE *)) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help(stdout);
            return -1;
        }
        if (!strcmp(a, "--tp") && !takes_tp(cmd)) {
            fprintf(stderr, "mixatt %s: --tp is for run, logits, perplexity, bench and info\n", cmd);
            return 2;
        }
        int r = mx_common_parse(o, argc, argv, &i);
        if (r == 0 && own) r = own(ctx, a, val, &i);
        if (r < 0) return 2;
        if (r == 0 && !strcmp(a, "--attn")) { /* star, which this command's own flags did not take */
            fprintf(stderr, "mixatt %s: --attn star is implemented by mixatt run, logits and bench only\n",
                    cmd);
            return 2;
        }
        if (r == 0) {
            fprintf(stderr, "mixatt %s: unknown or incomplete option '%s' (see mixatt %s --help)\n", cmd, a,
                    cmd);
            return 2;
        }
    }
    return 0;
}

/* mx_flag_fn over a command: its table, then its own function. */
static int command_flag(void *ctx, const char *a, const char *val, int *i) {
    const mx_command *cmd = ctx;
    int r = take_opts(cmd->opts, a, val, i);
    if (r) return r;
    return cmd->flag ? cmd->flag(cmd->ctx, a, val, i) : 0;
}

bool mx_command_start(const mx_command *cmd, int argc, char **argv, mx_comm *comm, mx_common_opts *o,
                      int *status) {
    mx_common_defaults(o);
    o->comm = comm;
    int rc = mx_parse_args(cmd->name, argc, argv, o, command_flag, (void *)cmd, cmd->help);
    *status = rc < 0 ? 0 : rc;
    return rc == 0;
}

void mx_common_help(FILE *f, bool sampling) {
    fprintf(
        f,
        "model options:\n"
        "  -m, --model FILE     GGUF model (default: $MIXATT_MODEL, else " MX_DEFAULT_MODEL ")\n"
        "  -t, --threads N      CPU threads (default: all cores)\n"
        "  --device cpu|cuda    where to run (default cpu); --gpu N picks a GPU and implies cuda\n"
        "  -c, --ctx N          context length in tokens (default: the model's, at most 4096)\n"
        "  --plan P             attention plan: a preset (standard, ma, ma-endslide, ma-offset, ma-pairs,\n"
        "                       ma-offset-slideshare) or one token per layer: G (full), S (window),\n"
        "                       G@N / S@N (read layer N's cache), S512 (window 512), X*N (repeat);\n"
        "                       layers count from 0. A plan the model was not trained with is reported.\n"
        "  --window W           window of S layers (default: the model's, else 1024)\n"
        "  --attn KIND          attention kind of every layer: mha, mla, mka, fastmka\n"
        "  --mla FORM           MLA layers: explicit (per-head K/V from the latent), absorbed (attention on\n"
        "                       the cached latent) or auto (explicit for prefill, absorbed for decode)\n"
        "  --exact              fp32 activations in every matmul (CPU); by default the layer matmuls of\n"
        "                       decode steps quantize activations to 8 bits for speed, as llama.cpp does\n"
        "                       (~3e-2 relative difference in the logits; the output head stays fp32)\n");
    if (sampling)
        fprintf(f,
                "sampling options (applied in this order):\n"
                "  --repeat-penalty X   divide repeated tokens' positive logits by X (default 1 = off)\n"
                "  --repeat-last-n N    tokens the penalty looks back over (default 64)\n"
                "  --temp X             temperature; 0 = greedy (default 0)\n"
                "  --top-k N            keep the N most likely tokens; 0 = off (default 40)\n"
                "  --top-p X            keep the smallest set with probability mass >= X (default 0.95)\n"
                "  --min-p X            drop tokens below X times the best one's probability (default 0.05)\n"
                "  --seed N             random seed (default 42)\n"
                "  with --device cuda the draw runs on the GPU (greedy, or --top-k 1..1024, no repeat\n"
                "  penalty; the same tokens as the CPU's sampler for a seed), else on the host\n");
}

void mx_common_help_tp(FILE *f) {
    fprintf(
        f, "tensor parallelism (Open MPI; NCCL with --device cuda, one GPU per rank):\n"
           "  --tp N               split the model over the N ranks of `mpirun -np N mixatt ...`: attention\n"
           "                       heads, MLP rows, experts and vocabulary rows per rank, one allreduce per\n"
           "                       block; N must equal the job's ranks (docs/ARCHITECTURE.md, \"Tensor\n"
           "                       parallelism\", says what splits how and what N a model accepts). With\n"
           "                       --device cuda each rank takes its host-local rank's GPU unless --gpu N\n");
}

const char *mx_resolve_model(const mx_common_opts *o, char *buf, size_t size) {
    if (o->model) return o->model;
    const char *env = getenv("MIXATT_MODEL");
    if (env && *env) return env;
    if (access(MX_DEFAULT_MODEL, R_OK) == 0) return MX_DEFAULT_MODEL;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(buf, size, "%s/../%s", exe, MX_DEFAULT_MODEL);
            if (access(buf, R_OK) == 0) return buf;
        }
    }
    return MX_DEFAULT_MODEL;
}

/* Whether the model the options name is there, said in the terms of the command line (-m, the default model
 * and how to get it). */
static int check_model_path(const mx_common_opts *o, const char *path, mx_err *err) {
    if (access(path, F_OK) == 0) return MX_OK;
    if (o->model) return mx_err_set(err, MX_ERR_IO, "model not found: %s", path);
    return mx_err_set(err, MX_ERR_IO,
                      "the default model is not downloaded (looked for %s).\n"
                      "  Get it with:  make model   (or: bash scripts/get-model.sh)\n"
                      "  or pass another GGUF with -m FILE.",
                      path);
}

int mx_open_model(const mx_common_opts *o, mx_model **m, mx_backend **be) {
    char buf[PATH_MAX + 64];
    mx_open_opts oo = {
        .path = mx_resolve_model(o, buf, sizeof buf),
        .load = o->load,
        .device = o->device,
        /* --device cuda without --gpu: each rank of a job takes its host-local rank's GPU */
        .gpu = o->device && !strcmp(o->device, "cuda") && !o->gpu_given ? -1 : o->gpu,
        .threads = o->threads,
        .exact = o->exact,
        .comm = o->comm,
        .tp = o->tp,
    };
    mx_err err = {0};
    *m = NULL, *be = NULL;
    /* collective, as mx_model_open is: every rank goes on, or every rank stops with the same message */
    int rc = mx_dist_agree(o->comm, check_model_path(o, oo.path, &err), &err);
    if (!rc) rc = mx_model_open(&oo, m, be, &err);
    if (rc) {
        mx_dist_report(o->comm, "mixatt", &err);
        return 1;
    }
    if (!(*m)->cfg.plan_is_trained && mx_dist_is_root(o->comm)) {
        char plan[512];
        mx_plan_to_string((*m)->cfg.plan, (*m)->cfg.n_layer, plan, sizeof plan);
        fprintf(stderr,
                "mixatt: note: running %s with attention plan %s%s, which it was not trained with; its "
                "outputs are not the trained model's (mixatt perplexity measures the cost)\n",
                (*m)->path, plan, strlen(plan) >= sizeof plan - 1 ? "..." : "");
    }
    return 0;
}

void mx_close_model(mx_model *m, mx_backend *be) {
    mx_model_close(m, be);
}

void mx_print_quoted(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20 || c == 0x7F)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

char *mx_read_file(const char *path, size_t *len) {
    mx_err err = {0};
    char *text = mx_file_read(path, len, &err);
    if (!text) fprintf(stderr, "mixatt: %s\n", err.msg);
    return text;
}
