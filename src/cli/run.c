/* run.c: `mixatt run`: one prompt in, generated text streamed out; --chat wraps the prompt in the model's
 * chat template. Timings go to stderr so stdout holds only the text. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../base/clock.h"
#include "../run/generate.h"
#include "commands.h"
#include "common.h"
#include "star_cli.h"

enum { DEFAULT_CTX = 4096, MAX_STOPS = 16 };

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt run [-m MODEL] (-p PROMPT | -f FILE | --ids \"ID ...\") [-n N] [--chat] [options]\n\n"
        "Generates a continuation of PROMPT and streams it to stdout. A Hugging Face directory's tokenizer "
        "is\n"
        "its tokenizer.json (with tokenizer_config.json: BOS, the chat template); the BOS token is added "
        "when\n"
        "the tokenizer adds one (as Hugging Face's add_special_tokens), except with --chat, whose template\n"
        "writes its own. MODEL may also be a run directory of\n"
        "mixatt train (or its checkpoint.safetensors): it has no tokenizer, so give the prompt as --ids and\n"
        "read ids back (\"ID \" each), or take a tokenizer from a GGUF with --tokenizer.\n\n"
        "  -p, --prompt TEXT    the prompt\n"
        "  -f, --file FILE      read the prompt from FILE\n"
        "  --ids \"ID ...\"      the prompt as token ids (space-separated)\n"
        "  --tokenizer GGUF     use this GGUF file's tokenizer (and chat template) instead of the model's;\n"
        "                       its vocabulary must fit the model's\n"
        "  -n, --n-predict N    tokens to generate at most (default 128; -1 = until the context is full)\n"
        "  --chat               render the prompt as a user turn with the model's chat template (a Jinja\n"
        "                       subset, docs/formats.md) and stop at the end of the assistant's turn\n"
        "  --system TEXT        system message for --chat (default: the template's own)\n"
        "  --stop TEXT          stop when TEXT is generated (not printed); repeatable, up to 16\n"
        "  --no-special         treat special-token text in the prompt (\"<|im_start|>\") as plain text\n"
        "  --print-ids          after the text, print the prompt and generated token ids on stderr\n"
        "  -q, --quiet          no timings on stderr\n");
    mx_common_help(f, true);
    mx_star_cli_help(f);
    mx_common_help_tp(f);
}

typedef struct {
    mx_common_opts c;
    const char *prompt, *file, *system, *ids, *tokenizer;
    int n_predict;
    bool chat, quiet, parse_special, print_ids;
    const char *stops[MAX_STOPS];
    int n_stops;
    mx_star_opts star;
} run_opts;

/* The flags a table cannot say: Star's, --stop (repeated), --no-special (clears a default). */
static int run_flag(void *ctx, const char *a, const char *val, int *i) {
    run_opts *o = ctx;
    int r = mx_star_cli_flag(&o->star, a, val, i);
    if (r) return r;
    if (!strcmp(a, "--stop") && val) {
        if (o->n_stops == MAX_STOPS)
            return fprintf(stderr, "mixatt run: at most %d --stop strings\n", MAX_STOPS), -1;
        o->stops[o->n_stops++] = val, ++*i;
    } else if (!strcmp(a, "--no-special")) {
        o->parse_special = false;
    } else {
        return 0;
    }
    return 1;
}

/* Parses argv into o and checks the flags go together; false with *status when the command ends here. */
static bool parse(run_opts *o, int argc, char **argv, mx_comm *comm, int *status) {
    const mx_opt opts[] = {MX_OPT_S("--prompt", "-p", &o->prompt),
                           MX_OPT_S("--file", "-f", &o->file),
                           MX_OPT_I("--n-predict", "-n", &o->n_predict, -1, 1 << 24),
                           MX_OPT_S("--ids", NULL, &o->ids),
                           MX_OPT_S("--tokenizer", NULL, &o->tokenizer),
                           MX_OPT_S("--system", NULL, &o->system),
                           MX_OPT_B("--chat", NULL, &o->chat),
                           MX_OPT_B("--print-ids", NULL, &o->print_ids),
                           MX_OPT_B("--quiet", "-q", &o->quiet),
                           MX_OPT_END};
    const mx_command cmd = {.name = "run", .help = help, .opts = opts, .flag = run_flag, .ctx = o};
    if (!mx_command_start(&cmd, argc, argv, comm, &o->c, status)) return false;
    *status = 2;
    if (mx_star_cli_check("run", &o->star)) return false;
    if (o->star.on && o->c.tp > 1) {
        fprintf(stderr, "mixatt run: --tp and --attn star each need every rank of the job; use one\n");
        return false;
    }
    if ((o->prompt != NULL) + (o->file != NULL) + (o->ids != NULL) != 1) {
        fprintf(stderr, "mixatt run: give exactly one of -p PROMPT, -f FILE or --ids \"ID ...\" (see mixatt "
                        "run --help)\n");
        return false;
    }
    if (o->ids && o->chat) {
        fprintf(stderr, "mixatt run: --chat renders text; it cannot take --ids\n");
        return false;
    }
    *status = 0;
    return true;
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
    mx_err err = {0};
    char *text = mx_chat_render(m->chat, msgs, n, true, &err);
    if (!text) fprintf(stderr, "mixatt run: --chat: %s\n", err.msg);
    return text;
}

/* Parses the --ids list into a malloc'd array; every id must be in [0, vocab). */
static int parse_ids(const char *s, int vocab, int **ids, int *n_ids) {
    size_t cap = strlen(s) / 2 + 1;
    int *v = malloc(sizeof(int) * cap), n = 0;
    if (!v) return fprintf(stderr, "mixatt run: out of memory\n"), 1;
    for (const char *p = s;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x >= vocab) {
            fprintf(stderr, "mixatt run: --ids: '%.16s' is not a token id in [0, %d)\n", p, vocab);
            return free(v), 1;
        }
        v[n++] = (int)x;
        p = end;
    }
    *ids = v, *n_ids = n;
    return 0;
}

/* --tokenizer: the GGUF file's tokenizer and chat template replace the model's. */
static int use_tokenizer(mx_model *m, const char *path) {
    mx_err err = {0};
    mx_gguf *g = NULL;
    mx_tokenizer *tok = NULL;
    if (mx_gguf_open(path, &g, &err) || mx_tokenizer_from_gguf(g, &tok, &err)) {
        fprintf(stderr, "mixatt run: --tokenizer: %s\n", err.msg);
        return mx_gguf_close(g), 1;
    }
    if (mx_tokenizer_vocab_size(tok) > m->cfg.vocab) {
        fprintf(stderr, "mixatt run: --tokenizer: %s has %d tokens; the model's vocabulary is %d\n", path,
                mx_tokenizer_vocab_size(tok), m->cfg.vocab);
        return mx_tokenizer_free(tok), mx_gguf_close(g), 1;
    }
    mx_tokenizer_free(m->tok);
    mx_chat_template_free(m->chat);
    m->tok = tok;
    if (mx_chat_template_from_gguf(g, &m->chat, NULL) != MX_OK) m->chat = NULL;
    mx_gguf_close(g);
    return 0;
}

int mx_cmd_run(int argc, char **argv, mx_comm *comm) {
    run_opts o = {.n_predict = 128, .parse_special = true, .star = mx_star_cli_defaults()};
    int rc;
    if (!parse(&o, argc, argv, comm, &rc)) return rc;

    char *file_text = NULL;
    size_t file_len = 0;
    if (o.file && !(file_text = mx_read_file(o.file, &file_len))) return 1;
    if (file_text && strlen(file_text) < file_len) { /* the prompt is a C string: a NUL would cut it short */
        fprintf(stderr, "mixatt run: %s has a NUL byte at offset %zu: a prompt must be text\n", o.file,
                strlen(file_text));
        return free(file_text), 1;
    }
    mx_model *m = NULL;
    mx_backend *be = NULL;
    if (mx_open_model(&o.c, &m, &be)) return free(file_text), 1;
    if (o.tokenizer && use_tokenizer(m, o.tokenizer)) return free(file_text), mx_close_model(m, be), 1;
    int n_ctx = o.c.ctx ? o.c.ctx : (m->cfg.max_ctx < DEFAULT_CTX ? m->cfg.max_ctx : DEFAULT_CTX);

    mx_err err = {0};
    mx_session *s = NULL;
    mx_sampler smp = {0};
    mx_gen_result res = {0};
    int *ids = NULL, n_ids = 0;
    char *text = o.ids ? NULL : prompt_text(&o, m, o.file ? file_text : o.prompt);
    rc = 1;
    if (o.ids) {
        if (parse_ids(o.ids, m->cfg.vocab, &ids, &n_ids)) goto done;
    } else if (!text) {
        goto done;
    } else if (!m->tok) {
        fprintf(stderr, "mixatt run: %s has no tokenizer: give the prompt as --ids, or --tokenizer GGUF\n",
                m->path);
        goto done;
    } else if (mx_tokenize(m->tok, text, strlen(text), o.parse_special, &ids, &n_ids, &err)) {
        fprintf(stderr, "mixatt run: %s\n", err.msg);
        goto done;
    }
    if (!o.chat && m->tok && mx_tokenizer_add_bos(m->tok) &&
        (n_ids == 0 || ids[0] != mx_tokenizer_bos(m->tok))) {
        int *with =
            realloc(ids, sizeof *ids * (size_t)(n_ids + 1)); /* as Hugging Face's add_special_tokens */
        if (!with) goto done;
        memmove(with + 1, with, sizeof *with * (size_t)n_ids);
        with[0] = mx_tokenizer_bos(m->tok);
        ids = with, n_ids++;
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
    int first = 0; /* the first prompt token given to mx_generate: the query's with --attn star */
    if (o.star.on) {
        int q = mx_star_cli_query("run", &o.star, n_ids);
        if (q < 0) goto done;
        first = n_ids - q;
        int room = n_ctx - first, after = o.n_predict >= 0 && q + o.n_predict < room ? q + o.n_predict : room;
        double t0 = mx_now();
        if (mx_star_open(m, be, comm, &o.star, ids, first, after, &s, &err)) {
            fprintf(stderr, "mixatt run: %s\n", err.msg);
            goto done;
        }
        if (!o.quiet)
            fprintf(stderr, "[star: %d context tokens encoded in %.3f s by %d rank(s); query %d tokens]\n",
                    first, mx_now() - t0, comm->size, q);
    } else if (mx_session_create(m, be, n_ctx, &s, &err)) {
        fprintf(stderr, "mixatt run: %s\n", err.msg);
        goto done;
    } else if (mx_xattn_cli_attach("run", &o.star, s)) {
        goto done;
    }
    if (mx_sampler_init(&smp, &o.c.sp, m->cfg.vocab)) {
        fprintf(stderr, "mixatt run: out of memory\n");
        goto done;
    }
    mx_gen_opts go = {
        .n_predict = o.n_predict, .stops = o.stops, .n_stops = o.n_stops, .stop_token = -1, .out = stdout};
    if (o.chat && m->chat) go.stop_token = mx_tokenizer_find(m->tok, mx_chat_end_of_turn(m->chat));
    if (mx_generate(s, &smp, ids + first, n_ids - first, &go, &res, &err)) {
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
    if (!o.quiet && o.star.xattn.on)
        fprintf(stderr, "[xattn: stride %d, threshold %g: density %.3f of the causal blocks%s]\n",
                o.star.xattn.stride, (double)o.star.xattn.threshold,
                s->xattn ? mx_xattn_density(s->xattn) : mx_star_phase1_density(s),
                o.star.on ? " in phase 1 (this rank)" : "");
    rc = 0;
done:
    mx_gen_result_free(&res);
    mx_sampler_free(&smp);
    mx_star_session_free(s);
    free(ids);
    free(text);
    free(file_text);
    mx_close_model(m, be);
    return rc;
}
