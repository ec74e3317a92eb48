/* run.c: `mixatt run`: one prompt in, generated text streamed out; --chat wraps the prompt in the model's
 * chat template. Timings go to stderr so stdout holds only the text. */
#include <stdlib.h>
#include <string.h>

#include "../run/generate.h"
#include "commands.h"
#include "common.h"

enum { DEFAULT_CTX = 4096, MAX_STOPS = 16 };

static void help(FILE *f) {
    fprintf(
        f, "usage: mixatt run [-m MODEL] (-p PROMPT | -f FILE) [-n N] [--chat] [--system TEXT] [options]\n\n"
           "Generates a continuation of PROMPT and streams it to stdout.\n\n"
           "  -p, --prompt TEXT    the prompt\n"
           "  -f, --file FILE      read the prompt from FILE\n"
           "  -n, --n-predict N    tokens to generate at most (default 128; -1 = until the context is full)\n"
           "  --chat               render the prompt as a user turn with the model's chat template\n"
           "  --system TEXT        system message for --chat (default: the template's own)\n"
           "  --stop TEXT          stop when TEXT is generated (not printed); repeatable, up to 16\n"
           "  --no-special         treat special-token text in the prompt (\"<|im_start|>\") as plain text\n"
           "  --print-ids          after the text, print the prompt and generated token ids on stderr\n"
           "  -q, --quiet          no timings on stderr\n");
    mx_common_help(f, true);
}

typedef struct {
    mx_common_opts c;
    const char *prompt, *file, *system;
    int n_predict;
    bool chat, quiet, parse_special, print_ids;
    const char *stops[MAX_STOPS];
    int n_stops;
} run_opts;

static int run_flag(void *ctx, const char *a, const char *val, int *i) {
    run_opts *o = ctx;
    if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && val) {
        o->prompt = val, ++*i;
    } else if ((!strcmp(a, "-f") || !strcmp(a, "--file")) && val) {
        o->file = val, ++*i;
    } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
        if (mx_parse_int(a, val, -1, 1 << 24, &o->n_predict)) return -1;
        ++*i;
    } else if (!strcmp(a, "--system") && val) {
        o->system = val, ++*i;
    } else if (!strcmp(a, "--stop") && val) {
        if (o->n_stops == MAX_STOPS)
            return fprintf(stderr, "mixatt run: at most %d --stop strings\n", MAX_STOPS), -1;
        o->stops[o->n_stops++] = val, ++*i;
    } else if (!strcmp(a, "--chat")) {
        o->chat = true;
    } else if (!strcmp(a, "--no-special")) {
        o->parse_special = false;
    } else if (!strcmp(a, "--print-ids")) {
        o->print_ids = true;
    } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
        o->quiet = true;
    } else {
        return 0;
    }
    return 1;
}

static int parse(run_opts *o, int argc, char **argv) {
    int rc = mx_parse_args("run", argc, argv, &o->c, run_flag, o, help);
    if (rc) return rc;
    if (!o->prompt == !o->file) {
        fprintf(stderr, "mixatt run: give exactly one of -p PROMPT or -f FILE (see mixatt run --help)\n");
        return 2;
    }
    return 0;
}

/* The text fed to the tokenizer: the raw prompt, or the chat rendering of [system,] user + assistant opening.
 */
static char *prompt_text(const run_opts *o, const mx_model *m, const char *prompt) {
    if (!o->chat) return strdup(prompt);
    if (!m->chat) {
        fprintf(stderr, "mixatt run: --chat needs a chat template, and %s has none that mixatt supports\n",
                m->path);
        return NULL;
    }
    mx_chat_msg msgs[2];
    int n = 0;
    if (o->system) msgs[n++] = (mx_chat_msg){"system", o->system};
    msgs[n++] = (mx_chat_msg){"user", prompt};
    return mx_chat_render(m->chat, msgs, n, true);
}

int mx_cmd_run(int argc, char **argv, mx_comm *comm) {
    run_opts o = {.n_predict = 128, .parse_special = true};
    mx_common_defaults(&o.c);
    int rc = parse(&o, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;

    char *file_text = NULL;
    if (o.file && !(file_text = mx_read_file(o.file, NULL))) return 1;
    mx_model *m = NULL;
    mx_backend *be = NULL;
    if (mx_open_model(&o.c, &m, &be)) return free(file_text), 1;
    int n_ctx = o.c.ctx ? o.c.ctx : (m->cfg.max_ctx < DEFAULT_CTX ? m->cfg.max_ctx : DEFAULT_CTX);

    mx_err err = {0};
    mx_session *s = NULL;
    mx_sampler smp = {0};
    mx_gen_result res = {0};
    int *ids = NULL, n_ids = 0;
    char *text = prompt_text(&o, m, o.file ? file_text : o.prompt);
    rc = 1;
    if (!text) goto done;
    if (mx_tokenize(m->tok, text, strlen(text), o.parse_special, &ids, &n_ids, &err)) {
        fprintf(stderr, "mixatt run: %s\n", err.msg);
        goto done;
    }
    if (n_ids == 0) {
        fprintf(stderr, "mixatt run: the prompt is empty\n");
        goto done;
    }
    if (n_ids >= n_ctx) {
        fprintf(stderr,
                "mixatt run: the prompt is %d tokens, longer than the context (%d tokens; --ctx up to %d)\n",
                n_ids, n_ctx, m->cfg.max_ctx);
        goto done;
    }
    if (mx_session_create(m, be, n_ctx, &s, &err) || mx_sampler_init(&smp, &o.c.sp, m->cfg.vocab)) {
        fprintf(stderr, "mixatt run: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    mx_gen_opts go = {
        .n_predict = o.n_predict, .stops = o.stops, .n_stops = o.n_stops, .stop_token = -1, .out = stdout};
    if (o.chat && m->chat) go.stop_token = mx_tokenizer_find(m->tok, mx_chat_end_of_turn(m->chat));
    if (mx_generate(s, &smp, ids, n_ids, &go, &res, &err)) {
        fprintf(stderr, "\nmixatt run: %s\n", err.msg);
        goto done;
    }
    printf("\n");
    if (o.print_ids) {
        fprintf(stderr, "ids:");
        for (int i = 0; i < n_ids; i++) fprintf(stderr, " %d", ids[i]);
        for (int i = 0; i < res.n_gen; i++) fprintf(stderr, " %d", res.tokens[i]);
        fprintf(stderr, "\n");
    }
    if (!o.quiet)
        fprintf(stderr,
                "[prompt %d tokens in %.3f s (%.1f tok/s), generated %d tokens in %.3f s (%.1f tok/s), stop: "
                "%s]\n",
                res.n_prompt, res.prefill_s, res.n_prompt / res.prefill_s, res.n_gen, res.decode_s,
                res.n_gen > 1 ? (res.n_gen - 1) / res.decode_s : 0.0, res.stop_reason);
    rc = 0;
done:
    mx_gen_result_free(&res);
    mx_sampler_free(&smp);
    mx_session_free(s);
    free(ids);
    free(text);
    free(file_text);
    mx_close_model(m, be);
    return rc;
}
