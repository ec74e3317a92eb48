/* common.c: shared CLI flags and model opening (see common.h). */
#include "common.h"

#include "../attention/kvcache.h"
#include "../base/file.h"
#include "../dist/agree.h"
#include "../model/tp.h"

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

int mx_common_parse(mx_common_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *val = *i + 1 < argc ? argv[*i + 1] : NULL;
    int iv;
    float fv;
#define TAKE (*i += 1)
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        if (!val) return fprintf(stderr, "mixatt: %s expects a path\n", a), -1;
        o->model = val;
        TAKE;
    } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
        if (mx_parse_int(a, val, 1, 1024, &o->threads)) return -1;
        TAKE;
    } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
        if (mx_parse_int(a, val, 1, 1 << 24, &o->ctx)) return -1;
        TAKE;
    } else if (!strcmp(a, "--device")) {
        if (!val || (strcmp(val, "cpu") && strcmp(val, "cuda")))
            return fprintf(stderr, "mixatt: --device expects cpu or cuda, got '%s'\n", val ? val : ""), -1;
        o->device = val;
        TAKE;
    } else if (!strcmp(a, "--gpu")) {
        if (mx_parse_int(a, val, 0, 1023, &o->gpu)) return -1;
        o->device = "cuda";
        o->gpu_given = true;
        TAKE;
    } else if (!strcmp(a, "--plan")) {
        if (!val) return fprintf(stderr, "mixatt: --plan expects a plan string or preset\n"), -1;
        o->load.plan = val;
        TAKE;
    } else if (!strcmp(a, "--window")) {
        if (mx_parse_int(a, val, 1, 1 << 24, &o->load.window)) return -1;
        TAKE;
    } else if (!strcmp(a, "--attn") && val && !strcmp(val, "star")) {
        return 0; /* Star Attention: the commands that implement it take it (cli/star_cli.c) */
    } else if (!strcmp(a, "--attn")) {
        if (!val || mx_attn_kind_parse(val) < 0)
            return fprintf(stderr,
                           "mixatt: --attn expects mha, mla, mka or fastmka (or star: run, logits, bench), "
                           "got '%s'\n",
                           val ? val : ""),
                   -1;
        o->load.attn = val;
        TAKE;
    } else if (!strcmp(a, "--mla")) {
        int f = val ? mx_mla_form_parse(val) : -1;
        if (f < 0)
            return fprintf(stderr, "mixatt: --mla expects explicit, absorbed or auto, got '%s'\n",
                           val ? val : ""),
                   -1;
        o->load.mla_form = f;
        TAKE;
    } else if (!strcmp(a, "--tp")) {
        if (mx_parse_int(a, val, 1, 4096, &o->tp)) return -1;
        TAKE;
    } else if (!strcmp(a, "--exact")) {
        o->exact = true;
        return 1;
    } else if (!strcmp(a, "--temp")) {
        if (mx_parse_float(a, val, 0, 100, &o->sp.temperature)) return -1;
        TAKE;
    } else if (!strcmp(a, "--top-k")) {
        if (mx_parse_int(a, val, 0, INT_MAX, &o->sp.top_k)) return -1;
        TAKE;
    } else if (!strcmp(a, "--top-p")) {
        if (mx_parse_float(a, val, 0, 1, &o->sp.top_p)) return -1;
        TAKE;
    } else if (!strcmp(a, "--min-p")) {
        if (mx_parse_float(a, val, 0, 1, &o->sp.min_p)) return -1;
        TAKE;
    } else if (!strcmp(a, "--repeat-penalty")) {
        if (mx_parse_float(a, val, 0.01f, 100, &o->sp.repeat_penalty)) return -1;
        TAKE;
    } else if (!strcmp(a, "--repeat-last-n")) {
        if (mx_parse_int(a, val, 0, INT_MAX, &o->sp.repeat_last_n)) return -1;
        TAKE;
    } else if (!strcmp(a, "--seed")) {
        if (mx_parse_int(a, val, 0, INT_MAX, &iv)) return -1;
        o->sp.seed = (uint64_t)iv;
        TAKE;
    } else {
        (void)fv;
        return 0;
    }
#undef TAKE
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

/* Whether this process prints the messages every rank would print alike (rank 0 of a job). */
static bool speaks(const mx_common_opts *o) {
    return !o->comm || o->comm->rank == 0;
}

/* Checks --tp against the job before anything is loaded: N must be the number of ranks mpirun started. */
static int check_tp(const mx_common_opts *o, mx_err *err) {
    int world = o->comm ? o->comm->size : 1;
    if (o->tp == 0) return MX_OK;
    if (world == 1 && o->tp > 1)
        return mx_err_set(err, MX_ERR_ARG,
                          "--tp %d needs %d ranks, and this process is a single one: launch it with "
                          "`mpirun -np %d mixatt ... --tp %d`",
                          o->tp, o->tp, o->tp, o->tp);
    if (o->tp != world)
        return mx_err_set(err, MX_ERR_ARG,
                          "--tp %d, but this job has %d ranks (mpirun -np %d): they must be equal", o->tp,
                          world, world);
    return MX_OK;
}

static bool on_gpu(const mx_common_opts *o) {
    return o->device && !strcmp(o->device, "cuda");
}

/* The GPU of this rank: --gpu when given; otherwise, in a job of several ranks, the rank's index among the
 * ranks of its host (OMPI_COMM_WORLD_LOCAL_RANK, set by mpirun; the world rank when it is missing), so that
 * `mpirun -np N mixatt ... --device cuda` puts one rank on each GPU of a host. */
static int rank_gpu(const mx_common_opts *o, mx_err *err) {
    if (o->gpu_given || !o->comm || o->comm->size == 1) return o->gpu;
    const char *s = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!s || !*s) return o->comm->rank;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 1023) {
        mx_err_set(err, MX_ERR_ARG, "OMPI_COMM_WORLD_LOCAL_RANK is '%s', not a rank; pass --gpu N", s);
        return -1;
    }
    return (int)v;
}

/* Loads and places the model on this rank; on failure err says why and nothing is left open. */
static int open_local(const mx_common_opts *o, mx_model **m, mx_backend **be, mx_err *err) {
    char buf[PATH_MAX + 64];
    const char *path = mx_resolve_model(o, buf, sizeof buf);
    *m = NULL, *be = NULL;
    if (access(path, F_OK) != 0) {
        if (o->model) return mx_err_set(err, MX_ERR_IO, "model not found: %s", path);
        return mx_err_set(err, MX_ERR_IO,
                          "the default model is not downloaded (looked for %s).\n"
                          "  Get it with:  make model   (or: bash scripts/get-model.sh)\n"
                          "  or pass another GGUF with -m FILE.",
                          path);
    }
    if (check_tp(o, err)) return err->code;
    if (mx_model_load(path, &o->load, m, err)) return mx_err_wrap(err, "cannot load model");
    if (o->tp > 1 && mx_tp_shard(*m, o->comm, err)) { /* this rank's slice of the weights (model/tp.h) */
        mx_model_free(*m);
        *m = NULL;
        return err->code;
    }
    int gpu = on_gpu(o) ? rank_gpu(o, err) : o->gpu;
    if (gpu < 0) {
        mx_model_free(*m);
        *m = NULL;
        return err->code;
    }
    if (mx_backend_create(o->device, gpu, o->threads, be, err) || mx_model_check_backend(*m, *be, err) ||
        mx_model_place(*m, *be, err)) {
        mx_backend_destroy(*be);
        mx_model_free(*m);
        *m = NULL, *be = NULL;
        return err->code ? err->code : MX_ERR_ARG;
    }
    return MX_OK;
}

int mx_open_model(const mx_common_opts *o, mx_model **m, mx_backend **be) {
    mx_err err = {0};
    /* every rank of the job goes on, or every rank stops with the first failing rank's message */
    int rc = mx_dist_agree(o->comm, open_local(o, m, be, &err), &err);
    /* tensor parallel on the GPU: the collectives go to NCCL on the backend's stream (collective itself:
     * every rank attaches or every rank fails with the first failing rank's message) */
    if (!rc && o->tp > 1 && ((*be)->caps & MX_CAP_CUDA_STREAM) && o->comm->attach(o->comm, *be, &err))
        rc = mx_err_wrap(&err, "--tp %d: attaching the ranks' collectives to %s", o->tp, (*be)->name);
    if (rc) {
        mx_dist_report(o->comm, "mixatt", &err);
        mx_close_model(*m, *be);
        *m = NULL, *be = NULL;
        return 1;
    }
    (*be)->exact = o->exact;
    if (!(*m)->cfg.plan_is_trained && speaks(o)) {
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
    if (m && be) mx_model_unplace(m, be);
    mx_backend_destroy(be);
    mx_model_free(m);
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
