/* tokenize.c: `mixatt tokenize`: the token ids of a text (or file) under a model's tokenizer, or one line per
 * token with its piece; with -o PREFIX, text files become llm.c token shards for `mixatt train`
 * (tokenize_shards.c). Options live in one struct filled by parse_args, so that more modes can be added. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../base/file.h"
#include "../io/gguf.h"
#include "../tok/tokenizer.h"
#include "commands.h"
#include "common.h"
#include "tokenize_shards.h"

#define TOKENIZE_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

enum { MAX_FILES = 256 };

typedef struct {
    const char *model;            /* -m; NULL = $MIXATT_MODEL or the default model */
    const char *prompt;           /* -p TEXT */
    const char *file;             /* -f FILE ("-" = standard input): the first -f */
    const char *files[MAX_FILES]; /* every -f (shard mode takes several, and directories) */
    int n_files;
    bool pieces;          /* --pieces: "id<TAB>piece" per line instead of the ids on one line */
    bool no_special;      /* --no-special: special tokens written in the text stay text */
    mx_shard_opts shards; /* -o PREFIX and the shard options; out == NULL: print the ids */
} tokenize_opts;

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: mixatt tokenize [-m MODEL] (-p TEXT | -f FILE) [--ids | --pieces] [--no-special]\n"
        "       mixatt tokenize [-m MODEL] -f FILE|DIR [-f ...] -o OUT_PREFIX [--val-fraction F]\n"
        "                       [--shard-tokens N] [--doc-sep TEXT] [-q]\n"
        "\n"
        "Prints the token ids of TEXT (or of FILE's bytes) under the model's tokenizer. No BOS is added.\n"
        "\n"
        "With -o, writes llm.c token shards for `mixatt train` instead. Each file (a directory stands for\n"
        "the files directly in it, sorted by name, hidden ones skipped) is one document, or several cut at\n"
        "--doc-sep; each is tokenized as above and written preceded by the EOS token, as llm.c does.\n"
        "Shards hold uint16 tokens (magic 20240520, version 1) when the vocabulary fits 65536 ids, else\n"
        "uint32 (magic 20240801, version 7). A document goes whole to OUT_PREFIX_val_NNNNNN.bin when that\n"
        "brings the validation share of the tokens so far closer to F, else to OUT_PREFIX_train_NNNNNN.bin\n"
        "(with F below 0.5 a lone document goes to training). A progress bar (bytes, tokens/s, ETA) goes\n"
        "to stderr.\n"
        "\n"
        "  -m, --model PATH  GGUF file or Hugging Face directory (tokenizer.json) whose tokenizer to use\n"
        "                    (default: $MIXATT_MODEL, else\n"
        "                    " TOKENIZE_DEFAULT_MODEL " here or next to the binary)\n"
        "  -p, --prompt TEXT the text to tokenize\n"
        "  -f, --file FILE   tokenize the contents of FILE ('-' reads standard input)\n"
        "      --ids         print the ids on one line, separated by spaces (the default)\n"
        "      --pieces      print one token per line: its id, a tab, and its text quoted with C escapes\n"
        "      --no-special  treat special tokens written in the text (\"<|im_start|>\") as plain text\n"
        "  -o, --out PREFIX  write token shards PREFIX_{train,val}_NNNNNN.bin (directories must exist)\n"
        "      --val-fraction F  share of the tokens held out for validation, 0 <= F < 1 (default "
        "0.05;\n"
        "                    0 writes no validation shard)\n"
        "      --shard-tokens N  tokens per shard file (default 100000000, as llm.c)\n"
        "      --doc-sep TEXT  also split files into documents at TEXT (dropped), e.g. '<|endoftext|>'\n"
        "  -q, --quiet       no progress bar\n"
        "  -h, --help        this help\n");
}

/* Value of the option at argv[*i]; NULL (message printed) when it is missing. */
static const char *take_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "mixatt tokenize: %s expects a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* --val-fraction F or --shard-tokens N; 0 when valid (else a message printed). */
static int parse_number(const char *flag, const char *v, mx_shard_opts *s) {
    char *end;
    errno = 0;
    if (!strcmp(flag, "--val-fraction")) {
        s->val_fraction = strtod(v, &end);
        if (!*end && end != v && !errno && s->val_fraction >= 0 && s->val_fraction < 1) return 0;
        fprintf(stderr, "mixatt tokenize: --val-fraction expects a number in [0, 1), got '%s'\n", v);
        return 1;
    }
    s->shard_tokens = strtol(v, &end, 10);
    if (!*end && end != v && !errno && s->shard_tokens >= 1 && s->shard_tokens <= INT32_MAX) return 0;
    fprintf(stderr, "mixatt tokenize: --shard-tokens expects an integer in [1, %d], got '%s'\n", INT32_MAX,
            v);
    return 1;
}

static int check_shard_args(const tokenize_opts *o) {
    if (o->prompt || !o->n_files || o->pieces) {
        fprintf(stderr, "mixatt tokenize: -o takes text files or directories (-f), not -p or --pieces\n");
        return 2;
    }
    return 0;
}

/* Returns 0 to go on, 1 after --help, 2 on a usage error (message printed). */
static int parse_args(int argc, char **argv, tokenize_opts *o) {
    memset(o, 0, sizeof *o);
    o->shards.val_fraction = 0.05;
    o->shards.shard_tokens = 100000000L;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            dst = &o->model;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            dst = &o->prompt;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (o->n_files == MAX_FILES) {
                fprintf(stderr, "mixatt tokenize: at most %d -f\n", MAX_FILES);
                return 2;
            }
            dst = &o->files[o->n_files++];
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            dst = &o->shards.out;
        } else if (!strcmp(a, "--doc-sep")) {
            dst = &o->shards.doc_sep;
        } else if (!strcmp(a, "--val-fraction") || !strcmp(a, "--shard-tokens")) {
            const char *v = take_value(argc, argv, &i);
            if (!v || parse_number(a, v, &o->shards)) return 2;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o->shards.quiet = true;
        } else if (!strcmp(a, "--ids")) {
            o->pieces = false;
        } else if (!strcmp(a, "--pieces")) {
            o->pieces = true;
        } else if (!strcmp(a, "--no-special")) {
            o->no_special = true;
        } else {
            fprintf(stderr, "mixatt tokenize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (dst && !(*dst = take_value(argc, argv, &i))) return 2;
    }
    o->file = o->n_files ? o->files[0] : NULL;
    if (o->shards.out) return check_shard_args(o);
    if (o->n_files > 1 || o->shards.doc_sep) {
        fprintf(stderr, "mixatt tokenize: several -f and --doc-sep need -o OUT_PREFIX\n");
        return 2;
    }
    if (!o->prompt == !o->file) {
        fprintf(stderr, "mixatt tokenize: give exactly one of -p TEXT or -f FILE\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

static char *read_input(const tokenize_opts *o, size_t *len) {
    if (o->prompt) {
        *len = strlen(o->prompt);
        return strdup(o->prompt);
    }
    mx_err err = {0};
    char *buf = strcmp(o->file, "-") ? mx_file_read(o->file, len, &err)
                                     : mx_file_read_stream(stdin, "stdin", len, &err);
    if (!buf) fprintf(stderr, "mixatt tokenize: %s\n", err.msg);
    return buf;
}

/* The model path; NULL (message printed) when the file does not exist. */
/* The model path as every command resolves it (-m, $MIXATT_MODEL, the default model here or next to the
 * binary); NULL with a message when it is missing. buf holds the path when it was built. */
static const char *model_path(const tokenize_opts *o, char *buf, size_t size) {
    mx_common_opts c;
    mx_common_defaults(&c);
    c.model = o->model;
    const char *path = mx_resolve_model(&c, buf, size);
    if (access(path, F_OK) == 0) return path;
    if (o->model)
        fprintf(stderr, "mixatt tokenize: model not found: %s\n", path);
    else
        fprintf(stderr,
                "mixatt tokenize: model not found: %s — run `make model` (or scripts/get-model.sh) to "
                "download it\n",
                path);
    return NULL;
}

/* Writes a token's bytes quoted (a piece may hold part of a UTF-8 character). */
static void print_piece(const char *s, size_t n) {
    mx_print_quoted(stdout, s, n);
}

static void print_tokens(const mx_tokenizer *t, const int *ids, int n, bool pieces) {
    for (int i = 0; i < n; i++) {
        if (!pieces) {
            printf(i ? " %d" : "%d", ids[i]);
            continue;
        }
        size_t len;
        const char *b = mx_token_bytes(t, ids[i], &len);
        printf("%d\t", ids[i]);
        print_piece(b, len);
        putchar('\n');
    }
    if (!pieces) putchar('\n');
}

int mx_cmd_tokenize(int argc, char **argv, mx_comm *comm) {
    tokenize_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    char buf[4096];
    const char *path = model_path(&o, buf, sizeof buf);
    if (!path) return 1;
    if (o.shards.out) {
        o.shards.no_special = o.no_special;
        return mx_tokenize_to_shards(path, o.files, o.n_files, &o.shards);
    }
    size_t len;
    char *text = read_input(&o, &len);
    if (!text) return 1;
    mx_err err = {0};
    mx_tokenizer *t = NULL;
    int *ids = NULL, n = 0;
    rc = mx_tokenizer_open(path, &t, &err);
    if (!rc) rc = mx_tokenize(t, text, len, !o.no_special, &ids, &n, &err);
    if (rc) {
        fprintf(stderr, "mixatt tokenize: %s\n", err.msg);
    } else {
        print_tokens(t, ids, n, o.pieces);
        size_t dropped = 0;
        for (size_t i = 0; i < len; i++) dropped += mx_tokenizer_byte_token(t, (uint8_t)text[i]) < 0;
        if (dropped)
            fprintf(stderr,
                    "mixatt tokenize: warning: %zu byte(s) of the input have no token in this vocabulary "
                    "and were dropped (as Hugging Face's tokenizer does)\n",
                    dropped);
        if (fflush(stdout) != 0 || ferror(stdout)) {
            fprintf(stderr, "mixatt tokenize: cannot write the output: %s\n", strerror(errno));
            rc = 1;
        }
    }
    free(ids);
    mx_tokenizer_free(t);
    free(text);
    return rc ? 1 : 0;
}
