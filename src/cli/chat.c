/* chat.c: `mixatt chat`: an interactive conversation with an instruct model. Each turn re-renders the whole
 * conversation with the chat template and reuses the cached tokens it shares with the previous turn, so only
 * the new text is evaluated. When the conversation outgrows the context, the oldest exchanges are dropped
 * (the system message stays) and the rest is evaluated again. */
#include <stdlib.h>
#include <string.h>

#include "../run/generate.h"
#include "commands.h"
#include "common.h"

enum { DEFAULT_CTX = 4096 };

static void help(FILE *f) {
    fprintf(f,
            "usage: mixatt chat [-m MODEL] [--system TEXT] [-n N] [options]\n\n"
            "Reads one user message per line from stdin and streams the assistant's answer. Type /exit or\n"
            "send end-of-file (Ctrl-D) to quit, /reset to start over.\n\n"
            "  --system TEXT        system message (default: the template's own)\n"
            "  -n, --n-predict N    longest answer in tokens (default 512)\n\n");
    mx_common_help(f, true);
}

typedef struct {
    mx_chat_msg *msgs;
    int n, cap;
} conversation;

static int conv_add(conversation *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 8;
        mx_chat_msg *m = realloc(c->msgs, sizeof *m * (size_t)cap);
        if (!m) return -1;
        c->msgs = m;
        c->cap = cap;
    }
    char *copy = strdup(content);
    if (!copy) return -1;
    c->msgs[c->n++] = (mx_chat_msg){role, copy};
    return 0;
}

static void conv_drop(conversation *c, int from, int count) {
    for (int i = from; i < from + count; i++) free((char *)c->msgs[i].content);
    memmove(c->msgs + from, c->msgs + from + count, sizeof *c->msgs * (size_t)(c->n - from - count));
    c->n -= count;
}

static void conv_free(conversation *c) {
    conv_drop(c, 0, c->n);
    free(c->msgs);
}

/* Renders and tokenizes; drops the oldest exchanges until the turn plus an answer of `reserve` tokens fit. */
static int render_fitting(const mx_model *m, conversation *c, int first, int n_ctx, int reserve, int **ids,
                          int *n_ids, mx_err *err) {
    for (;;) {
        char *text = mx_chat_render(m->chat, c->msgs, c->n, true, err);
        if (!text) return err->code;
        free(*ids);
        *ids = NULL;
        int rc = mx_tokenize(m->tok, text, strlen(text), true, ids, n_ids, err);
        free(text);
        if (rc) return rc;
        if (*n_ids + reserve <= n_ctx) return MX_OK;
        if (c->n - first < 3)
            return mx_err_set(err, MX_ERR_ARG,
                              "this message (%d tokens with the conversation) does not fit in the "
                              "context of %d tokens with room for an answer of %d",
                              *n_ids, n_ctx, reserve);
        conv_drop(c, first, 2); /* the oldest user message and its answer */
        fprintf(stderr, "[context full: dropped the oldest exchange]\n");
    }
}

static int chat_loop(const mx_model *m, mx_session *s, mx_sampler *smp, conversation *c, int first,
                     int n_predict) {
    int *cached = malloc(sizeof(int) * (size_t)s->n_ctx), n_cached = 0, *ids = NULL, n_ids = 0;
    char *line = NULL;
    size_t cap = 0;
    mx_err err = {0};
    int stop_token = mx_tokenizer_find(m->tok, mx_chat_end_of_turn(m->chat));
    int reserve = n_predict < s->n_ctx / 2 ? n_predict : s->n_ctx / 2;
    while (cached) {
        fprintf(stdout, "> ");
        fflush(stdout);
        ssize_t len = getline(&line, &cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            conv_drop(c, first, c->n - first);
            continue;
        }
        if (!len) continue;
        if (conv_add(c, "user", line) || render_fitting(m, c, first, s->n_ctx, reserve, &ids, &n_ids, &err)) {
            fprintf(stderr, "mixatt chat: %s\n", err.msg[0] ? err.msg : "out of memory");
            if (c->n > first && !strcmp(c->msgs[c->n - 1].role, "user")) conv_drop(c, c->n - 1, 1);
            continue;
        }
        int common = 0;
        while (common < n_cached && common < n_ids - 1 && cached[common] == ids[common]) common++;
        common = mx_session_truncate(s, common);
        mx_gen_opts go = {.n_predict = reserve, .stop_token = stop_token, .out = stdout};
        mx_gen_result res;
        if (mx_generate(s, smp, ids + common, n_ids - common, &go, &res, &err)) {
            fprintf(stderr, "\nmixatt chat: %s\n", err.msg);
            mx_gen_result_free(&res);
            break;
        }
        printf("\n");
        memcpy(cached, ids, sizeof(int) * (size_t)n_ids);
        n_cached = n_ids;
        for (int i = 0; n_cached < s->pos && i < res.n_gen; i++) cached[n_cached++] = res.tokens[i];
        int rc = conv_add(c, "assistant", res.text);
        mx_gen_result_free(&res);
        if (rc) break;
    }
    free(line);
    free(ids);
    free(cached);
    return 0;
}

int mx_cmd_chat(int argc, char **argv, mx_comm *comm) {
    const char *system = NULL;
    int n_predict = 512;
    const mx_opt opts[] = {MX_OPT_S("--system", NULL, &system),
                           MX_OPT_I("--n-predict", "-n", &n_predict, 1, 1 << 20), MX_OPT_END};
    mx_common_opts o;
    int status;
    const mx_command cmd = {.name = "chat", .help = help, .opts = opts};
    if (!mx_command_start(&cmd, argc, argv, comm, &o, &status)) return status;
    mx_model *m;
    mx_backend *be;
    if (mx_open_model(&o, &m, &be)) return 1;
    int rc = 1, n_ctx = o.ctx ? o.ctx : (m->cfg.max_ctx < DEFAULT_CTX ? m->cfg.max_ctx : DEFAULT_CTX);
    mx_err err = {0};
    mx_session *s = NULL;
    mx_sampler smp = {0};
    conversation c = {0};
    if (!m->chat) {
        fprintf(stderr, "mixatt chat: %s has no chat template that mixatt supports\n", m->path);
    } else if (mx_session_create(m, be, n_ctx, &s, &err) || mx_sampler_init(&smp, &o.sp, m->cfg.vocab) ||
               (system && conv_add(&c, "system", system))) {
        fprintf(stderr, "mixatt chat: %s\n", err.msg[0] ? err.msg : "out of memory");
    } else {
        rc = chat_loop(m, s, &smp, &c, system ? 1 : 0, n_predict);
    }
    conv_free(&c);
    mx_sampler_free(&smp);
    mx_session_free(s);
    mx_close_model(m, be);
    return rc;
}
