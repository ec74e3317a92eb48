/* common.h: flags shared by the subcommands that load a model (-m, -t, --ctx, sampling), the default model
 * path, and opening a model with a clear message when it is missing. */
#ifndef MX_CLI_COMMON_H
#define MX_CLI_COMMON_H

#include <stdbool.h>
#include <stdio.h>

#include "../dist/comm.h"
#include "../model/session.h"
#include "../run/sampler.h"

#define MX_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct {
    const char *model;  /* NULL = the default model */
    int threads;        /* 0 = all cores */
    int ctx;            /* 0 = min(model context, default) */
    bool exact;         /* fp32 activations in every matmul */
    const char *device; /* "cpu" (default) or "cuda" */
    mx_load_opts load;  /* --plan, --window, --attn */
    int gpu;            /* GPU index for cuda */
    bool gpu_given; /* --gpu was passed (otherwise a rank of a multi-rank job takes its local rank's GPU) */
    mx_sampler_params sp;
    mx_comm *comm; /* the job's communicator (main.c); NULL = one rank */
    int tp;        /* --tp N: tensor parallel over the job's N ranks (0 = off) */
} mx_common_opts;

void mx_common_defaults(mx_common_opts *o);
/* Tries to consume argv[*i] (and its value). Returns 1 when consumed, 0 when not a common flag, -1 on a bad
 * value (message printed). */
int mx_common_parse(mx_common_opts *o, int argc, char **argv, int *i);
/* A command's own flags: given argv[*i] (flag) and argv[*i + 1] (val, NULL at the end), returns 1 when it
 * consumed the flag (advancing *i past a value it took), 0 when the flag is not the command's, -1 on a bad
 * value (message printed). */
typedef int (*mx_flag_fn)(void *ctx, const char *flag, const char *val, int *i);
/* Parses argv[1..]: the common flags, -h/--help, then the command's own through `own`. Returns 0 to go on,
 * -1 when help was printed (exit 0), 2 on a bad or unknown flag (message printed). */
int mx_parse_args(const char *cmd, int argc, char **argv, mx_common_opts *o, mx_flag_fn own, void *ctx,
                  void (*help)(FILE *));
/* A flag as a table entry: STR takes the next argument (const char **dst), INT the next argument as an
 * integer in lo..hi (int *dst), FLOAT as a number in lo..hi (float *dst), TRUE sets a bool (bool *dst). */
typedef enum { MX_OPT_STR, MX_OPT_INT, MX_OPT_FLOAT, MX_OPT_TRUE } mx_opt_kind;
typedef struct {
    const char *flag, *alias; /* "--file" and "-f"; alias NULL when there is none */
    mx_opt_kind kind;
    void *dst;
    double lo, hi; /* MX_OPT_INT, MX_OPT_FLOAT: the values accepted */
} mx_opt;
/* Table entries (the conditional makes the compiler check dst's type), and the end of a table. */
#define MX_OPT_S(flag, alias, dst)                                                                           \
    { (flag), (alias), MX_OPT_STR, 1 ? (dst) : (const char **)0, 0, 0 }
#define MX_OPT_I(flag, alias, dst, lo, hi)                                                                   \
    { (flag), (alias), MX_OPT_INT, 1 ? (dst) : (int *)0, (lo), (hi) }
#define MX_OPT_F(flag, alias, dst, lo, hi)                                                                   \
    { (flag), (alias), MX_OPT_FLOAT, 1 ? (dst) : (float *)0, (lo), (hi) }
#define MX_OPT_B(flag, alias, dst)                                                                           \
    { (flag), (alias), MX_OPT_TRUE, 1 ? (dst) : (bool *)0, 0, 0 }
#define MX_OPT_END                                                                                           \
    { NULL, NULL, MX_OPT_STR, NULL, 0, 0 }
/* A command as the shared start sees it. */
typedef struct {
    const char *name;     /* "perplexity": messages read "mixatt perplexity: ..." */
    void (*help)(FILE *); /* printed by -h / --help */
    const mx_opt *opts;   /* the command's flags, ended by an entry whose flag is NULL; NULL = none */
    mx_flag_fn flag; /* then the flags a table cannot say (repeated, conditional, checked); may be NULL */
    void *ctx;       /* flag's first argument */
} mx_command;
/* The start every command that takes the common flags shares: o set to the defaults with the job's
 * communicator, then argv parsed (the common flags, -h/--help, cmd->opts, cmd->flag; mx_parse_args). Returns
 * true to go on; false when the command is to return *status at once: 0 after --help, 2 on a bad or unknown
 * flag (message printed). */
bool mx_command_start(const mx_command *cmd, int argc, char **argv, mx_comm *comm, mx_common_opts *o,
                      int *status);
/* Help text for the common model flags and, when sampling is true, the sampling flags. */
void mx_common_help(FILE *f, bool sampling);
/* Help text for --tp (the commands that accept it: run, logits, perplexity, bench, info). */
void mx_common_help_tp(FILE *f);
/* Resolves the model path: -m, else $MIXATT_MODEL, else MX_DEFAULT_MODEL under the current directory or
 * next to the binary (../models/). */
const char *mx_resolve_model(const mx_common_opts *o, char *buf, size_t size);
/* Opens the model the options name on the backend they name (mx_model_open, model/open.h), with every rank
 * of o->comm; prints the message (once per job) and returns non-zero on failure, and notes a plan the model
 * was not trained with. mx_close_model undoes it. */
int mx_open_model(const mx_common_opts *o, mx_model **m, mx_backend **be);
void mx_close_model(mx_model *m, mx_backend *be);
/* Prints n bytes quoted, with C escapes for quotes, backslashes and control bytes (UTF-8 bytes as they are). */
void mx_print_quoted(FILE *f, const char *s, size_t n);
/* mx_file_read (base/file.h) for a command: prints the message and returns NULL on failure. */
char *mx_read_file(const char *path, size_t *len);
/* Parses an int flag value, printing "--flag expects ..." on error. */
int mx_parse_int(const char *flag, const char *s, int lo, int hi, int *out);
int mx_parse_float(const char *flag, const char *s, float lo, float hi, float *out);

#endif
