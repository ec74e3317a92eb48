/* plot.c: `mixatt plot RUN_DIR... -o loss.png`: training (lines) and validation (points) loss curves of
 * runs (runs.h) in one PNG, drawn by gnuplot driven through a pipe with the data inline. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "runs.h"

enum { MAX_RUNS = 64 };

typedef struct {
    const char *out, *title;
    const char *dirs[MAX_RUNS];
    int n_dirs;
    bool log_y;
} plot_opts;

static void help(FILE *f) {
    fprintf(f,
            "usage: mixatt plot RUN_DIR... -o OUT.png [--title TEXT] [--log-y]\n\n"
            "Draws the training loss (lines) and validation loss (points joined) against the step of each\n"
            "run directory written by `mixatt train -o RUN_DIR` (its log.jsonl) into one PNG, with gnuplot\n"
            "(the Debian package gnuplot-nox; $GNUPLOT names another gnuplot binary).\n\n"
            "  -o, --out FILE  the PNG to write\n"
            "  --title TEXT    the plot's title (default: \"loss\")\n"
            "  --log-y         logarithmic loss axis\n"
            "  -h, --help      this help\n");
}

static int parse(plot_opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool takes = !strcmp(a, "-o") || !strcmp(a, "--out") || !strcmp(a, "--title");
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return help(stdout), -1;
        if (!strcmp(a, "--log-y")) {
            o->log_y = true;
        } else if (takes) {
            if (i + 1 >= argc) return fprintf(stderr, "mixatt plot: %s expects a value\n", a), 2;
            *(a[1] == 'o' || a[2] == 'o' ? &o->out : &o->title) = argv[++i];
        } else if (a[0] == '-') {
            return fprintf(stderr, "mixatt plot: unknown flag '%s' (see mixatt plot --help)\n", a), 2;
        } else if (o->n_dirs == MAX_RUNS) {
            return fprintf(stderr, "mixatt plot: at most %d runs\n", MAX_RUNS), 2;
        } else {
            o->dirs[o->n_dirs++] = a;
        }
    }
    if (!o->n_dirs || !o->out)
        return fprintf(stderr, "mixatt plot: give RUN_DIR... and -o OUT.png (see mixatt plot --help)\n"), 2;
    return 0;
}

/* The gnuplot binary: $GNUPLOT, else "gnuplot" found on $PATH; NULL when there is none. */
static const char *find_gnuplot(char *buf, size_t size) {
    const char *env = getenv("GNUPLOT"), *path = getenv("PATH");
    if (env && *env) return access(env, X_OK) == 0 ? env : NULL;
    for (const char *p = path ? path : ""; *p;) {
        size_t n = strcspn(p, ":");
        snprintf(buf, size, "%.*s/gnuplot", (int)n, n ? p : ".");
        if (access(buf, X_OK) == 0) return buf;
        p += n + (p[n] == ':');
    }
    return NULL;
}

/* gnuplot string literal: single quotes, a quote doubled. */
static void put_quoted(FILE *g, const char *s) {
    fputc('\'', g);
    for (; *s; s++) fputs(*s == '\'' ? "''" : (char[]){*s, 0}, g);
    fputc('\'', g);
}

static void put_series(FILE *g, const mx_curve *c) {
    for (int i = 0; i < c->n; i++) fprintf(g, "%d %.9g\n", c->step[i], c->value[i]);
    fputs("e\n", g);
}

static void write_script(FILE *g, const plot_opts *o, const mx_run *runs, int n) {
    fputs("set terminal pngcairo size 1000,600 noenhanced\nset output ", g);
    put_quoted(g, o->out);
    fputs("\nset title ", g);
    put_quoted(g, o->title ? o->title : "loss");
    fprintf(g, "\nset xlabel 'step'\nset ylabel 'loss'\nset grid\nset key top right\n%s",
            o->log_y ? "set logscale y\n" : "");
    fputs("plot ", g);
    for (int i = 0; i < n; i++) {
        char t[300];
        fprintf(g, "%s'-' using 1:2 with lines lc %d title ", i ? ", " : "", i + 1);
        snprintf(t, sizeof t, "%s train", runs[i].name);
        put_quoted(g, t);
        if (!runs[i].val.n) continue;
        fprintf(g, ", '-' using 1:2 with linespoints dt 2 pt 7 lc %d title ", i + 1);
        snprintf(t, sizeof t, "%s val", runs[i].name);
        put_quoted(g, t);
    }
    fputc('\n', g);
    for (int i = 0; i < n; i++) {
        put_series(g, &runs[i].train);
        if (runs[i].val.n) put_series(g, &runs[i].val);
    }
}

static int draw(const plot_opts *o, const mx_run *runs, int n) {
    char buf[4096], cmd[4200];
    const char *gp = find_gnuplot(buf, sizeof buf);
    if (!gp)
        return fprintf(stderr,
                       "mixatt plot: gnuplot not found%s: install the Debian package gnuplot-nox "
                       "(apt-get install gnuplot-nox, or scripts/install-deps.sh)\n",
                       getenv("GNUPLOT") && *getenv("GNUPLOT") ? " at $GNUPLOT" : " on $PATH"),
               1;
    snprintf(cmd, sizeof cmd, "'%s'", gp);
    FILE *g = popen(cmd, "w");
    if (!g) return fprintf(stderr, "mixatt plot: cannot run %s: %s\n", gp, strerror(errno)), 1;
    write_script(g, o, runs, n);
    int st = pclose(g);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st))
        return fprintf(stderr, "mixatt plot: %s failed (its message is above); %s not written\n", gp, o->out),
               1;
    if (access(o->out, F_OK)) return fprintf(stderr, "mixatt plot: %s: not written by gnuplot\n", o->out), 1;
    return 0;
}

int mx_cmd_plot(int argc, char **argv, mx_comm *comm) {
    plot_opts o = {0};
    int rc = parse(&o, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    mx_run runs[MAX_RUNS];
    int k = 0;
    for (int i = 0; i < o.n_dirs && !rc; i++) {
        rc = mx_run_load(o.dirs[i], &runs[k++]);
        if (rc) fprintf(stderr, "mixatt plot: cannot read the run %s\n", o.dirs[i]);
    }
    if (!rc) rc = draw(&o, runs, o.n_dirs);
    for (int i = 0; i < k; i++) mx_run_free(&runs[i]);
    if (!rc) fprintf(stderr, "mixatt plot: wrote %s\n", o.out);
    return rc;
}
