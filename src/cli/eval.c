/* eval.c: `mixatt eval ruler`: RULER's synthetic tasks (src/eval/ruler.h) at several lengths, answered by
 * greedy generation with each attention method (dense, star, xattn, star+xattn), scored by string_match_all.
 * Prints a table per task and length, the mean over tasks, accuracy as a percentage of dense and the mean
 * prefill time per method; writes JSON (--json) and a gnuplot PNG of accuracy against length (--plot).
 * Under mpirun every rank builds the same samples and runs every method (Star spreads its blocks over the
 * ranks); rank 0 prints. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "../base/clock.h"
#include "../eval/ruler.h"
#include "../run/generate.h"
#include "commands.h"
#include "common.h"
#include "star_cli.h"

enum { MAX_LENGTHS = 16, MAX_METHODS = 4 };

typedef enum { M_DENSE, M_STAR, M_XATTN, M_STAR_XATTN } method;
static const char *const METHOD_NAMES[] = {"dense", "star", "xattn", "star+xattn"};

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt eval ruler [-m MODEL] [--tasks T,...] [--lengths N,...] [--samples N] [--seed S]\n"
        "                         [--methods M,...] [--haystack FILE] [--json FILE] [--plot FILE.png]\n\n"
        "RULER's synthetic long-context tasks, generated with no downloads (docs/eval.md), answered by "
        "greedy\n"
        "generation and scored by string_match_all (the percentage of reference strings in the answer).\n\n"
        "  --tasks T,...        of niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, "
        "niah_multiquery,\n"
        "                       vt, cwe, fwe, or all (default all)\n"
        "  --lengths N,...      prompt lengths in tokens, the answer included (default 2048,4096,8192);\n"
        "                       each must fit the model's context, or --ctx\n"
        "  --samples N          samples per task and length (default 10)\n"
        "  --seed S             the samples' seed (default 1)\n"
        "  --methods M,...      of dense, star, xattn, star+xattn (default dense)\n"
        "  --star-blocks K      Star: cut the context into K blocks (default 2; --block B instead sets B)\n"
        "  --haystack FILE      the essay haystack of niah_single_2/3, multikey_1, multivalue, multiquery\n"
        "                       (any text; default the noise haystack); too short for a length: an error\n"
        "  --no-chat            plain prompts (default: the model's chat template, when it has one)\n"
        "  --json FILE          every score and time as JSON\n"
        "  --plot FILE.png      accuracy against length per method (gnuplot)\n"
        "  -q, --quiet          no progress bar\n");
    mx_common_help(f, false);
    mx_star_cli_help(f);
}

typedef struct {
    mx_common_opts c;
    bool tasks[MX_RULER_N_TASKS];
    int lengths[MAX_LENGTHS], n_lengths;
    int samples, seed, star_blocks;
    bool methods[MAX_METHODS];
    const char *haystack, *json, *plot;
    bool no_chat, quiet;
    mx_star_opts star;
} eval_opts;

/* Splits a comma list, calling each(ctx, item); returns -1 when each does. */
static int each_item(const char *list, int (*each)(void *, const char *), void *ctx) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (each(ctx, t)) return -1;
    return 0;
}

static int add_task(void *ctx, const char *name) {
    eval_opts *o = ctx;
    if (!strcmp(name, "all")) {
        for (int t = 0; t < MX_RULER_N_TASKS; t++) o->tasks[t] = true;
        return 0;
    }
    int t = mx_ruler_task_parse(name);
    if (t < 0) return fprintf(stderr, "mixatt eval: --tasks: no task '%s' (see --help)\n", name), -1;
    o->tasks[t] = true;
    return 0;
}

static int add_length(void *ctx, const char *s) {
    eval_opts *o = ctx;
    if (o->n_lengths == MAX_LENGTHS)
        return fprintf(stderr, "mixatt eval: at most %d lengths\n", MAX_LENGTHS), -1;
    return mx_parse_int("--lengths", s, 64, 1 << 24, &o->lengths[o->n_lengths++]);
}

static int add_method(void *ctx, const char *s) {
    eval_opts *o = ctx;
    for (int m = 0; m < MAX_METHODS; m++)
        if (!strcmp(s, METHOD_NAMES[m])) return o->methods[m] = true, 0;
    return fprintf(stderr, "mixatt eval: --methods: no method '%s' (dense, star, xattn, star+xattn)\n", s),
           -1;
}

static int eval_flag(void *ctx, const char *a, const char *val, int *i) {
    eval_opts *o = ctx;
    if (!strcmp(a, "--attn")) return 0; /* methods are chosen with --methods */
    int r = mx_star_cli_flag(&o->star, a, val, i);
    if (r) return r;
    int rc = 0;
    if (!strcmp(a, "--tasks") && val) {
        memset(o->tasks, 0, sizeof o->tasks);
        rc = each_item(val, add_task, o);
    } else if (!strcmp(a, "--lengths") && val) {
        o->n_lengths = 0;
        rc = each_item(val, add_length, o);
    } else if (!strcmp(a, "--methods") && val) {
        memset(o->methods, 0, sizeof o->methods);
        rc = each_item(val, add_method, o);
    } else if (!strcmp(a, "--samples")) {
        rc = mx_parse_int(a, val, 1, 100000, &o->samples);
    } else if (!strcmp(a, "--seed")) {
        rc = mx_parse_int(a, val, 0, 1 << 30, &o->seed);
    } else if (!strcmp(a, "--star-blocks")) {
        rc = mx_parse_int(a, val, 1, 4096, &o->star_blocks);
    } else if (!strcmp(a, "--haystack") && val) {
        o->haystack = val;
    } else if (!strcmp(a, "--json") && val) {
        o->json = val;
    } else if (!strcmp(a, "--plot") && val) {
        o->plot = val;
    } else if (!strcmp(a, "--no-chat")) {
        o->no_chat = true;
        return 1;
    } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
        o->quiet = true;
        return 1;
    } else {
        return 0;
    }
    if (rc) return -1;
    ++*i;
    return 1;
}

/* ---- prompts ---- */

typedef struct {
    const mx_model *m;
    bool chat;
} prompt_ctx;

/* The full prompt text and the offset where the context ends (Star's split). */
static char *render(const prompt_ctx *p, const mx_ruler_sample *s, size_t *split) {
    size_t np = strlen(s->pre), nq = strlen(s->post), na = strlen(s->answer_prefix);
    char *user = malloc(np + nq + 1);
    if (!user) return NULL;
    memcpy(user, s->pre, np), memcpy(user + np, s->post, nq + 1);
    char *head = user;
    if (p->chat) {
        mx_chat_msg msg = {"user", user};
        mx_err err = {0};
        head = mx_chat_render(p->m->chat, &msg, 1, true, &err);
        free(user);
        if (!head) return NULL;
    }
    size_t nh = strlen(head);
    char *full = realloc(head, nh + na + 1);
    if (!full) return free(head), NULL;
    memcpy(full + nh, s->answer_prefix, na + 1);
    const char *at = strstr(full, s->pre);
    *split = at ? (size_t)(at - full) + np : np;
    return full;
}

/* Tokenizes the prompt as two parts, context then query, so that Star's split is a token boundary. */
static int tokenize_prompt(const prompt_ctx *p, const mx_ruler_sample *s, int **ids, int *n, int *n_ctx) {
    size_t split = 0;
    char *full = render(p, s, &split);
    if (!full) return -1;
    int *a = NULL, *b = NULL, na = 0, nb = 0;
    mx_err err = {0};
    int rc = mx_tokenize(p->m->tok, full, split, true, &a, &na, &err) ||
             mx_tokenize(p->m->tok, full + split, strlen(full + split), true, &b, &nb, &err);
    free(full);
    int *all = rc ? NULL : realloc(a, sizeof(int) * (size_t)(na + nb + 1));
    if (!all) return free(a), free(b), -1;
    memcpy(all + na, b, sizeof(int) * (size_t)nb);
    free(b);
    *ids = all, *n = na + nb, *n_ctx = na;
    return 0;
}

static int count_tokens(void *ctx, const mx_ruler_sample *s) {
    int *ids = NULL, n = 0, nc = 0;
    if (tokenize_prompt(ctx, s, &ids, &n, &nc)) return -1;
    free(ids);
    return n;
}

/* ---- one answer ---- */

typedef struct {
    double score, prefill_s;
} answer;

static int answer_one(const eval_opts *o, mx_model *m, mx_backend *be, method me, const prompt_ctx *p,
                      const mx_ruler_sample *s, int length, answer *out, mx_err *err) {
    int *ids = NULL, n = 0, n_ctx = 0;
    if (tokenize_prompt(p, s, &ids, &n, &n_ctx))
        return free(ids), mx_err_set(err, MX_ERR_NOMEM, "tokenizing");
    mx_session *sess = NULL;
    mx_sampler smp = {0};
    mx_gen_result res = {0};
    mx_sampler_params sp = o->c.sp;
    sp.temperature = 0; /* greedy */
    int first = 0, rc = MX_OK;
    double t0 = mx_now(), open_s = 0;
    if (me == M_STAR || me == M_STAR_XATTN) {
        mx_star_opts so = o->star;
        so.on = true;
        so.xattn.on = me == M_STAR_XATTN;
        so.query = n - n_ctx;
        if (!so.block) so.block = (n_ctx + o->star_blocks - 1) / o->star_blocks;
        first = n_ctx;
        rc = mx_star_open(m, be, o->c.comm, &so, ids, n_ctx, n - n_ctx + s->max_new, &sess, err);
        open_s = mx_now() - t0;
    } else {
        rc = mx_session_create(m, be, length, &sess, err);
        if (!rc && me == M_XATTN) rc = mx_xattn_attach(sess, &o->star.xattn, err);
    }
    if (!rc && mx_sampler_init(&smp, &sp, m->cfg.vocab)) rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    if (!rc) {
        mx_gen_opts go = {.n_predict = s->max_new, .stop_token = -1, .out = NULL};
        if (p->chat) go.stop_token = mx_tokenizer_find(m->tok, mx_chat_end_of_turn(m->chat));
        rc = mx_generate(sess, &smp, ids + first, n - first, &go, &res, err);
    }
    if (!rc) {
        out->score = mx_ruler_score(s, res.text ? res.text : "");
        out->prefill_s = open_s + res.prefill_s;
    }
    mx_gen_result_free(&res);
    mx_sampler_free(&smp);
    mx_star_session_free(sess);
    free(ids);
    return rc;
}

/* ---- output ---- */

typedef struct {
    double score_sum[MX_RULER_N_TASKS][MAX_LENGTHS][MAX_METHODS];
    double time_sum[MAX_LENGTHS][MAX_METHODS];
    int n[MX_RULER_N_TASKS][MAX_LENGTHS][MAX_METHODS];
} tally;

static double mean_over_tasks(const eval_opts *o, const tally *t, int li, int me) {
    double sum = 0;
    int k = 0;
    for (int task = 0; task < MX_RULER_N_TASKS; task++)
        if (o->tasks[task] && t->n[task][li][me]) sum += t->score_sum[task][li][me] / t->n[task][li][me], k++;
    return k ? sum / k : 0;
}

static void print_tables(const eval_opts *o, const tally *t) {
    printf("\n| task | length |");
    for (int me = 0; me < MAX_METHODS; me++)
        if (o->methods[me]) printf(" %s |", METHOD_NAMES[me]);
    printf("\n| --- | ---: |");
    for (int me = 0; me < MAX_METHODS; me++)
        if (o->methods[me]) printf(" ---: |");
    printf("\n");
    for (int task = 0; task < MX_RULER_N_TASKS; task++)
        for (int li = 0; o->tasks[task] && li < o->n_lengths; li++) {
            printf("| %s | %d |", mx_ruler_task_name(task), o->lengths[li]);
            for (int me = 0; me < MAX_METHODS; me++)
                if (o->methods[me])
                    printf(" %.1f |",
                           t->n[task][li][me] ? t->score_sum[task][li][me] / t->n[task][li][me] : 0);
            printf("\n");
        }
    for (int li = 0; li < o->n_lengths; li++) {
        printf("| **mean** | %d |", o->lengths[li]);
        for (int me = 0; me < MAX_METHODS; me++)
            if (o->methods[me]) printf(" **%.1f** |", mean_over_tasks(o, t, li, me));
        printf("\n");
    }
    if (o->methods[M_DENSE]) {
        for (int li = 0; li < o->n_lengths; li++) {
            double d = mean_over_tasks(o, t, li, M_DENSE);
            printf("| %% of dense | %d |", o->lengths[li]);
            for (int me = 0; me < MAX_METHODS; me++)
                if (o->methods[me])
                    printf(d > 0 ? " %.1f%% |" : " - |", 100 * mean_over_tasks(o, t, li, me) / d);
            printf("\n");
        }
    }
    for (int li = 0; li < o->n_lengths; li++) {
        int cnt = 0;
        for (int task = 0; task < MX_RULER_N_TASKS; task++) cnt += o->tasks[task];
        printf("| prefill s / sample | %d |", o->lengths[li]);
        for (int me = 0; me < MAX_METHODS; me++)
            if (o->methods[me]) printf(" %.3f |", t->time_sum[li][me] / ((double)cnt * o->samples));
        printf("\n");
    }
}

static int write_json(const eval_opts *o, const mx_model *m, const tally *t) {
    cJSON *root = cJSON_CreateObject(), *res = cJSON_AddArrayToObject(root, "results");
    cJSON_AddStringToObject(root, "model", m->path);
    cJSON_AddNumberToObject(root, "samples", o->samples);
    cJSON_AddNumberToObject(root, "seed", o->seed);
    cJSON_AddStringToObject(root, "haystack", o->haystack ? o->haystack : "noise");
    cJSON_AddBoolToObject(root, "chat", !o->no_chat && m->chat);
    for (int li = 0; li < o->n_lengths; li++)
        for (int me = 0; me < MAX_METHODS; me++) {
            if (!o->methods[me]) continue;
            for (int task = 0; task < MX_RULER_N_TASKS; task++) {
                if (!o->tasks[task]) continue;
                cJSON *r = cJSON_CreateObject();
                cJSON_AddStringToObject(r, "task", mx_ruler_task_name(task));
                cJSON_AddNumberToObject(r, "length", o->lengths[li]);
                cJSON_AddStringToObject(r, "method", METHOD_NAMES[me]);
                cJSON_AddNumberToObject(r, "n", t->n[task][li][me]);
                cJSON_AddNumberToObject(
                    r, "score", t->n[task][li][me] ? t->score_sum[task][li][me] / t->n[task][li][me] : 0);
                cJSON_AddItemToArray(res, r);
            }
            cJSON *r = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "task", "mean");
            cJSON_AddNumberToObject(r, "length", o->lengths[li]);
            cJSON_AddStringToObject(r, "method", METHOD_NAMES[me]);
            cJSON_AddNumberToObject(r, "score", mean_over_tasks(o, t, li, me));
            int cnt = 0;
            for (int task = 0; task < MX_RULER_N_TASKS; task++) cnt += o->tasks[task];
            cJSON_AddNumberToObject(r, "prefill_s", t->time_sum[li][me] / ((double)cnt * o->samples));
            cJSON_AddItemToArray(res, r);
        }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = txt ? fopen(o->json, "w") : NULL;
    int bad = !f || fputs(txt, f) < 0;
    if (f && fclose(f)) bad = 1;
    free(txt);
    if (bad) fprintf(stderr, "mixatt eval: cannot write %s\n", o->json);
    return bad;
}

static int write_plot(const eval_opts *o, const tally *t) {
    const char *gp = getenv("GNUPLOT") && *getenv("GNUPLOT") ? getenv("GNUPLOT") : "gnuplot";
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "'%s' 2>&1", gp);
    FILE *g = popen(cmd, "w");
    if (!g) return fprintf(stderr, "mixatt eval: cannot run %s\n", gp), 1;
    fprintf(g, "set terminal pngcairo size 900,560 noenhanced\nset output '%s'\n", o->plot);
    fprintf(
        g,
        "set title 'RULER (%d samples per task and length)'\nset xlabel 'length (tokens)'\n"
        "set ylabel 'accuracy (%%)'\nset yrange [0:105]\nset logscale x 2\nset grid\nset key bottom left\n"
        "plot ",
        o->samples);
    int k = 0;
    for (int me = 0; me < MAX_METHODS; me++)
        if (o->methods[me])
            fprintf(g, "%s'-' using 1:2 with linespoints pt 7 title '%s'", k++ ? ", " : "", METHOD_NAMES[me]);
    fprintf(g, "\n");
    for (int me = 0; me < MAX_METHODS; me++) {
        if (!o->methods[me]) continue;
        for (int li = 0; li < o->n_lengths; li++)
            fprintf(g, "%d %.3f\n", o->lengths[li], mean_over_tasks(o, t, li, me));
        fprintf(g, "e\n");
    }
    int st = pclose(g);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st))
        return fprintf(stderr,
                       "mixatt eval: %s failed (install gnuplot-nox, or set $GNUPLOT); %s not written\n", gp,
                       o->plot),
               1;
    return 0;
}

static void progress(const eval_opts *o, int done, int total, const char *task, int length, const char *me) {
    if (o->quiet || (o->c.comm && o->c.comm->rank)) return;
    int w = 30, fill = total ? done * w / total : w;
    fprintf(stderr, "\r[%.*s%*s] %d/%d %-16s %6d %-10s", fill, "==============================", w - fill, "",
            done, total, task, length, me);
    if (done == total) fprintf(stderr, "\n");
    fflush(stderr);
}

/* ---- the command ---- */

static int check_opts(const eval_opts *o, const mx_model *m) {
    int cap = o->c.ctx ? o->c.ctx : m->cfg.max_ctx;
    for (int li = 0; li < o->n_lengths; li++)
        if (o->lengths[li] > cap) {
            fprintf(stderr, "mixatt eval: length %d is beyond %s (%d tokens)%s\n", o->lengths[li],
                    o->c.ctx ? "--ctx" : "the model's context", cap,
                    o->c.ctx ? "" : "; --ctx N runs it anyway, past what the model was trained on");
            return 2;
        }
    if (!m->tok) return fprintf(stderr, "mixatt eval: %s has no tokenizer\n", m->path), 2;
    return 0;
}

int mx_cmd_eval(int argc, char **argv, mx_comm *comm) {
    if (argc < 2 || (strcmp(argv[1], "ruler") && strcmp(argv[1], "-h") && strcmp(argv[1], "--help"))) {
        fprintf(stderr,
                "mixatt eval: give a suite: mixatt eval ruler [options] (see mixatt eval ruler --help)\n");
        return 2;
    }
    if (strcmp(argv[1], "ruler")) return help(stdout), 0;
    eval_opts o = {.n_lengths = 3,
                   .lengths = {2048, 4096, 8192},
                   .samples = 10,
                   .seed = 1,
                   .star_blocks = 2,
                   .star = mx_star_cli_defaults()};
    for (int t = 0; t < MX_RULER_N_TASKS; t++) o.tasks[t] = true;
    o.methods[M_DENSE] = true;
    mx_common_defaults(&o.c);
    o.c.comm = comm;
    int rc = mx_parse_args("eval ruler", argc - 1, argv + 1, &o.c, eval_flag, &o, help);
    if (rc) return rc < 0 ? 0 : rc;
    o.star.xattn.on = true; /* --xattn-* apply to the xattn methods */
    mx_err err = {0};
    if (mx_xattn_check_opts(&o.star.xattn, &err)) return fprintf(stderr, "mixatt eval: %s\n", err.msg), 2;
    if (o.star.anchor >= 0 && o.star.block && o.star.anchor > o.star.block)
        return fprintf(stderr, "mixatt eval: --anchor %d is longer than --block %d\n", o.star.anchor,
                       o.star.block),
               2;
    char *essay = NULL;
    if (o.haystack && !(essay = mx_read_file(o.haystack, NULL))) return 1;
    mx_model *m = NULL;
    mx_backend *be = NULL;
    if (mx_open_model(&o.c, &m, &be)) return free(essay), 1;
    rc = check_opts(&o, m);
    prompt_ctx pc = {m, !o.no_chat && m->chat};
    tally *t = calloc(1, sizeof *t);
    int n_tasks = 0, n_methods = 0;
    for (int i = 0; i < MX_RULER_N_TASKS; i++) n_tasks += o.tasks[i];
    for (int i = 0; i < MAX_METHODS; i++) n_methods += o.methods[i];
    int total = n_tasks * o.n_lengths * o.samples * n_methods, done = 0;
    if (!t && !rc) rc = (fprintf(stderr, "mixatt eval: out of memory\n"), 1);
    for (int li = 0; !rc && li < o.n_lengths; li++)
        for (int task = 0; !rc && task < MX_RULER_N_TASKS; task++) {
            if (!o.tasks[task]) continue;
            for (int k = 0; !rc && k < o.samples; k++) {
                mx_ruler_sample s = {0};
                if (mx_ruler_make(task, o.lengths[li], (uint64_t)o.seed, k, essay, count_tokens, &pc, &s,
                                  &err)) {
                    fprintf(stderr, "\nmixatt eval: %s\n", err.msg);
                    rc = 1;
                    break;
                }
                for (int me = 0; !rc && me < MAX_METHODS; me++) {
                    if (!o.methods[me]) continue;
                    progress(&o, done, total, mx_ruler_task_name(task), o.lengths[li], METHOD_NAMES[me]);
                    answer a = {0};
                    if (answer_one(&o, m, be, me, &pc, &s, o.lengths[li], &a, &err)) {
                        fprintf(stderr, "\nmixatt eval: %s, %s at %d, sample %d: %s\n", METHOD_NAMES[me],
                                mx_ruler_task_name(task), o.lengths[li], k, err.msg);
                        rc = 1;
                        break;
                    }
                    t->score_sum[task][li][me] += a.score;
                    t->time_sum[li][me] += a.prefill_s;
                    t->n[task][li][me]++;
                    progress(&o, ++done, total, mx_ruler_task_name(task), o.lengths[li], METHOD_NAMES[me]);
                }
                mx_ruler_sample_free(&s);
            }
        }
    if (!rc && comm->rank == 0) {
        printf("RULER on %s (%s), %d samples per task and length, seed %d, %s haystack, %s\n", m->path,
               be->name, o.samples, o.seed, o.haystack ? o.haystack : "noise",
               pc.chat ? "chat template" : "plain prompts");
        if (o.methods[M_STAR] || o.methods[M_STAR_XATTN])
            printf("star: %d rank(s), %s, anchor %s\n", comm->size,
                   o.star.block ? "--block" : "context / --star-blocks",
                   o.star.anchor >= 0 ? "--anchor" : "= block");
        if (o.methods[M_XATTN] || o.methods[M_STAR_XATTN])
            printf("xattn: stride %d, threshold %g, blocks of %d\n", o.star.xattn.stride,
                   (double)o.star.xattn.threshold, o.star.xattn.block);
        print_tables(&o, t);
        if (o.json && write_json(&o, m, t)) rc = 1;
        if (o.plot && write_plot(&o, t)) rc = 1;
    }
    free(t);
    free(essay);
    mx_close_model(m, be);
    return rc;
}
