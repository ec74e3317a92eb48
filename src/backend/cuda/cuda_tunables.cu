/* cuda_tunables.cu: the CUDA backend's tunables (cuda_common.h: mx_cuda_tunables), read from the environment
 * once per backend, when it is created. This is the only file of the backend that reads the environment; the
 * table of names, values and defaults is docs/PERFORMANCE.md's "CUDA tunables". Kernel experiments (variants,
 * switches that give wrong results on purpose for profiling) live in bench/cuda, not here. */
#include <string.h>
#include <unistd.h>

#include "cuda_common.h"

extern char **environ;

/* NAME=0 is false, any other non-empty value true; unset or empty: dflt. */
static bool env_bool(const char *name, bool dflt) {
    const char *e = getenv(name);
    return e && *e ? strcmp(e, "0") != 0 : dflt;
}

/* NAME as an integer in [lo, hi] (or one of the allowed values when allowed != NULL, n_allowed of them);
 * unset: dflt; anything else: a warning and dflt. */
static int env_int(const char *name, int dflt, int lo, int hi, const int *allowed, int n_allowed) {
    const char *e = getenv(name);
    if (!e || !*e) return dflt;
    char *end = NULL;
    long v = strtol(e, &end, 10);
    bool ok = end && *end == '\0' && v >= lo && v <= hi;
    if (ok && allowed) {
        ok = false;
        for (int i = 0; i < n_allowed; i++) ok = ok || allowed[i] == v;
    }
    if (!ok) {
        fprintf(stderr, "mixatt: %s=%s is out of range (docs/PERFORMANCE.md: CUDA tunables); using %d\n",
                name, e, dflt);
        return dflt;
    }
    return (int)v;
}

/* NAME as one of two words (the first is the default); anything else: a warning and the default. */
static bool env_word(const char *name, const char *dflt_word, const char *other_word) {
    const char *e = getenv(name);
    if (!e || !*e || !strcmp(e, dflt_word)) return false;
    if (!strcmp(e, other_word)) return true;
    fprintf(stderr, "mixatt: %s=%s is neither %s nor %s; using %s\n", name, e, dflt_word, other_word,
            dflt_word);
    return false;
}

static const char *const known_names[] = {"MX_CUDA_GRAPHS",
                                          "MX_CUDA_TIMING",
                                          "MX_CUDA_FUSE",
                                          "MX_CUDA_PDL",
                                          "MX_CUDA_WSTAGE",
                                          "MX_CUDA_FUSED_KS",
                                          "MX_CUDA_FUSED_KS_UNITS",
                                          "MX_CUDA_DEC_PF",
                                          "MX_CUDA_DEC_RM",
                                          "MX_CUDA_DECODE_V1",
                                          "MX_CUDA_PREFILL",
                                          "MX_CUDA_LT_BUCKET",
                                          "MX_CUDA_LT_STATS",
                                          "MX_CUDA_SCATTER",
                                          "MX_CUDA_MOE",
                                          "MX_CUDA_MOE_STREAMS",
                                          "MX_CUDA_MOE_TIMING",
                                          "MX_CUDA_TRAIN_GEMM",
                                          "MX_CUDA_TRAIN_ATTN"};

/* Warns about MX_CUDA_* variables that are no tunable: a typo would otherwise be silently ignored, and
 * MX_CUDA_FA_VAR / MX_CUDA_SKIP / MX_CUDA_FUSED_PROBE are bench/cuda experiments now. */
static void warn_unknown(void) {
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "MX_CUDA_", 8)) continue;
        size_t n = strcspn(*e, "=");
        bool known = false;
        for (size_t i = 0; i < sizeof known_names / sizeof known_names[0] && !known; i++)
            known = strlen(known_names[i]) == n && !strncmp(*e, known_names[i], n);
        if (!known)
            fprintf(stderr,
                    "mixatt: %.*s is not a CUDA tunable (docs/PERFORMANCE.md: CUDA tunables; kernel "
                    "variants are compared in bench/cuda); ignored\n",
                    (int)n, *e);
    }
}

void mx_cuda_tunables_read(mx_cuda_tunables *t) {
    static const int ks_allowed[] = {0, 1, 2, 4, 8}, rm_allowed[] = {0, 4, 8};
    memset(t, 0, sizeof *t);
    t->graphs = env_bool("MX_CUDA_GRAPHS", true);
    t->timing = env_bool("MX_CUDA_TIMING", false);
    t->fuse = env_bool("MX_CUDA_FUSE", true);
    t->pdl = env_bool("MX_CUDA_PDL", true);
    t->wstage = env_bool("MX_CUDA_WSTAGE", true);
    t->fused_ks = env_int("MX_CUDA_FUSED_KS", 0, 0, 8, ks_allowed, 5);
    t->fused_ks_units = env_int("MX_CUDA_FUSED_KS_UNITS", 48, 8, 1 << 20, NULL, 0);
    t->dec_pf = env_int("MX_CUDA_DEC_PF", 0, 0, 8, NULL, 0);
    t->dec_rm = env_int("MX_CUDA_DEC_RM", 0, 0, 8, rm_allowed, 3);
    t->decode_v1 = env_bool("MX_CUDA_DECODE_V1", false);
    t->prefill_fa2 = env_word("MX_CUDA_PREFILL", "auto", "fa2");
    t->lt_bucket = env_bool("MX_CUDA_LT_BUCKET", true);
    t->lt_stats = env_bool("MX_CUDA_LT_STATS", false);
    t->scatter_serial = env_word("MX_CUDA_SCATTER", "parallel", "serial");
    t->moe = env_bool("MX_CUDA_MOE", true);
    t->moe_streams = env_int("MX_CUDA_MOE_STREAMS", 4, 1, 8, NULL, 0);
    t->moe_timing = env_bool("MX_CUDA_MOE_TIMING", false);
    t->train_gemm_fast16bf = env_word("MX_CUDA_TRAIN_GEMM", "bf16", "fast16bf");
    t->train_attn_gemm = env_word("MX_CUDA_TRAIN_ATTN", "flash", "gemm");
    warn_unknown();
}
