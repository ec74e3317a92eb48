/* main.c: the mixatt command line: one subcommand per file in src/cli/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **, mx_comm *);
    const char *what;
} command;

static const command COMMANDS[] = {
    {"run", mx_cmd_run, "generate text from a prompt (or a chat turn with --chat)"},
    {"chat", mx_cmd_chat, "interactive chat with an instruct model"},
    {"serve", mx_cmd_serve, "OpenAI-compatible HTTP server with continuous batching and a chat page"},
    {"info", mx_cmd_info, "architecture, parameters, tensor types, KV cache size"},
    {"perplexity", mx_cmd_perplexity, "perplexity of a model on a text file"},
    {"bench", mx_cmd_bench, "prefill (pp) and decode (tg) speed, llama-bench style"},
    {"eval", mx_cmd_eval, "long-context accuracy: RULER's synthetic tasks per attention method"},
    {"logits", mx_cmd_logits, "write the logits of every position of a token sequence"},
    {"tokenize", mx_cmd_tokenize, "print the token ids of a text, or write token shards for training"},
    {"convert", mx_cmd_convert, "write a Hugging Face directory or a GGUF as GGUF v3"},
    {"train", mx_cmd_train, "train a GPT-2- or Llama-shaped model on the CPU (fp32)"},
    {"compare", mx_cmd_compare, "one table of training runs: losses, speed, KV bytes per token"},
    {"plot", mx_cmd_plot, "training and validation loss curves of runs as a PNG (gnuplot)"},
    {"tensor", mx_cmd_tensor, "list a GGUF's metadata and tensors, dump tensors as fp32"},
};

static void usage(FILE *f) {
    fprintf(f, "mixatt: a transformer engine in which attention is a per-layer choice\n\n"
               "usage: mixatt COMMAND [options]   (mixatt COMMAND --help for each)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-11s %s\n", COMMANDS[i].name, COMMANDS[i].what);
    fprintf(f, "\nThe default model (SmolLM2-135M-Instruct, Q4_1 GGUF) is fetched by `make model`.\n");
}

/* Runs a command on this process's communicator: one rank, or MPI under mpirun. Only rank 0 prints to stdout
 * (the other ranks' stdout goes to /dev/null; their errors still reach stderr). */
static int run_command(const command *cmd, int argc, char **argv) {
    mx_comm *comm = NULL;
    mx_err err = {0};
    if (mx_comm_create(NULL, NULL, &comm, &err)) {
        fprintf(stderr, "mixatt: %s\n", err.msg);
        return 1;
    }
    if (comm->rank != 0 && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, "mixatt: rank %d: cannot silence stdout\n", comm->rank);
        comm->abort(comm, "", 1);
    }
    int rc = cmd->fn(argc, argv, comm);
    fflush(stdout);
    mx_comm_free(comm);
    return rc;
}

/* OpenMP reads its wait policy when the library loads, before main. Its default spins about 300k rounds at
 * every barrier, so on a CPU that other programs also use the spinning threads wait for a descheduled one
 * (decode at 3.7 tok/s with 2 busy processes, against 35-38 with -t 1); passive waits sleep at once, and every
 * one of a decode step's ~240 parallel regions then pays a futex wake-up (decode at 35-37 tok/s on the quiet
 * machine, against 84-86 spinning). A short spin of 20k rounds, then sleep, keeps most of both: 76-83 tok/s
 * quiet, and under load medians of 37-39, about -t 1 and twice llama.cpp, though not robust there (one run in
 * four fell to 14; passive held 42-48: bench/busy_cpu.py, bench/RESULTS.md, 2026-12-03). So unless the user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT set, e.g.
 * OMP_WAIT_POLICY=active on a dedicated machine), mixatt runs itself again once with GOMP_SPINCOUNT=20000.
 * Should the exec fail, it goes on with the default. */
static void prefer_short_openmp_spins(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", "20000", 1)) return;
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    prefer_short_openmp_spins(argv);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return run_command(&COMMANDS[i], argc - 1, argv + 1);
    fprintf(stderr, "mixatt: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
