/* common.c: shared CLI flags and model opening (see common.h). */
#include "common.h"

#include "../attention/kvcache.h"

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
        TAKE;
    } else if (!strcmp(a, "--plan")) {
        if (!val) return fprintf(stderr, "mixatt: --plan expects a plan string or preset\n"), -1;
        o->load.plan = val;
        TAKE;
    } else if (!strcmp(a, "--window")) {
        if (mx_parse_int(a, val, 1, 1 << 24, &o->load.window)) return -1;
        TAKE;
    } else if (!strcmp(a, "--attn")) {
        if (!val || mx_attn_kind_parse(val) < 0)
            return fprintf(stderr, "mixatt: --attn expects mha, mla, mka or fastmka, got '%s'\n",
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

int mx_parse_args(const char *cmd, int argc, char **argv, mx_common_opts *o, mx_flag_fn own, void *ctx,
                  void (*help)(FILE *)) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help(stdout);
            return -1;
        }
        int r = mx_common_parse(o, argc, argv, &i);
        if (r == 0 && own) r = own(ctx, a, val, &i);
        if (r < 0) return 2;
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
                "  --seed N             random seed (default 42)\n");
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

int mx_open_model(const mx_common_opts *o, mx_model **m, mx_backend **be) {
    char buf[PATH_MAX + 64];
    const char *path = mx_resolve_model(o, buf, sizeof buf);
    if (access(path, F_OK) != 0) {
        if (o->model)
            fprintf(stderr, "mixatt: model not found: %s\n", path);
        else
            fprintf(stderr,
                    "mixatt: the default model is not downloaded (looked for %s).\n"
                    "  Get it with:  make model   (or: bash scripts/get-model.sh)\n"
                    "  or pass another GGUF with -m FILE.\n",
                    path);
        return 1;
    }
    mx_err err = {0};
    if (mx_model_load(path, &o->load, m, &err)) {
        fprintf(stderr, "mixatt: cannot load model: %s\n", err.msg);
        return 1;
    }
    if (mx_backend_create(o->device, o->gpu, o->threads, be, &err) || mx_model_check_backend(*m, *be, &err) ||
        mx_model_place(*m, *be, &err)) {
        fprintf(stderr, "mixatt: %s\n", err.msg);
        mx_backend_destroy(*be);
        mx_model_free(*m);
        *m = NULL;
        *be = NULL;
        return 1;
    }
    (*be)->exact = o->exact;
    if (!(*m)->cfg.plan_is_trained) {
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
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "mixatt: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 >= cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) free(buf);
            buf = b;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        fprintf(stderr, "mixatt: cannot read %s\n", path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}
