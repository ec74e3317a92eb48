/* tokenize_shards.c: text files to llm.c token shards (`mixatt tokenize -o PREFIX`).
 * Each document (a file, or a part of one between --doc-sep separators) is tokenized whole, exactly as
 * `mixatt tokenize --ids` does, and written preceded by the EOS token (llm.c's convention: every document
 * starts after an end-of-text token). A document goes to the validation split when that brings the
 * validation share of the tokens so far (this document included) closer to val_fraction, so whole documents
 * never straddle the splits and the share stays near val_fraction. Each split fills shard files of
 * shard_tokens tokens in order (a document may continue in the next file, as in llm.c); the last file of each
 * split holds the rest. */
#include "tokenize_shards.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../base/clock.h"
#include "../io/gguf.h"
#include "../tok/tokenizer.h"
#include "../train/shards.h"
#include "common.h"

typedef struct {
    const char *prefix, *name; /* OUT_PREFIX, "train" / "val" */
    bool wide;                 /* uint32 tokens */
    long cap;                  /* tokens per shard */
    int *buf;
    long n;     /* tokens in buf */
    int index;  /* next shard number */
    long total; /* tokens written or buffered */
} split_writer;

typedef struct {
    char **paths;
    int n;
    long long bytes; /* total size, for the progress bar */
} file_list;

typedef struct {
    long long bytes_done, bytes_total;
    long tokens;
    double t0, last;
    bool quiet;
} progress;

static int add_path(file_list *l, const char *path) {
    char **p = realloc(l->paths, sizeof *p * (size_t)(l->n + 1));
    if (!p || !(p[l->n] = strdup(path))) {
        if (p) l->paths = p;
        fprintf(stderr, "mixatt tokenize: out of memory\n");
        return 1;
    }
    l->paths = p;
    l->n++;
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files directly in dir, sorted by name, hidden ones skipped. */
static int add_dir(file_list *l, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return fprintf(stderr, "mixatt tokenize: %s: cannot open: %s\n", dir, strerror(errno)), 1;
    int first = l->n, rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        char path[4096];
        struct stat st;
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) rc = add_path(l, path);
    }
    closedir(d);
    if (!rc) qsort(l->paths + first, (size_t)(l->n - first), sizeof *l->paths, by_name);
    if (!rc && l->n == first)
        fprintf(stderr, "mixatt tokenize: %s: no files in the directory\n", dir), rc = 1;
    return rc;
}

static int list_inputs(file_list *l, const char *const *inputs, int n) {
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(inputs[i], &st))
            return fprintf(stderr, "mixatt tokenize: %s: %s\n", inputs[i], strerror(errno)), 1;
        if (S_ISDIR(st.st_mode) ? add_dir(l, inputs[i]) : add_path(l, inputs[i])) return 1;
    }
    for (int i = 0; i < l->n; i++) {
        struct stat st;
        if (!stat(l->paths[i], &st)) l->bytes += st.st_size;
    }
    return 0;
}

static void free_list(file_list *l) {
    for (int i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
}

static void fmt_size(char *buf, size_t n, long long b) {
    if (b >= 1000000)
        snprintf(buf, n, "%.1f MB", b / 1e6);
    else
        snprintf(buf, n, "%.1f kB", b / 1e3);
}

static void progress_draw(progress *p, bool final) {
    double t = mx_now();
    if (p->quiet || (!final && t - p->last < 0.2)) return;
    p->last = t;
    double frac = p->bytes_total ? (double)p->bytes_done / (double)p->bytes_total : 1, dt = t - p->t0;
    int fill = (int)(frac * 30 + 0.5);
    char bar[31];
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    double eta = frac > 0 ? dt * (1 - frac) / frac : 0;
    char done[32], total[32];
    fmt_size(done, sizeof done, p->bytes_done);
    fmt_size(total, sizeof total, p->bytes_total);
    fprintf(stderr, "\r[%s] %5.1f%% %s / %s | %ld tokens | %.0f tok/s | ETA %.0fs   ", bar, frac * 100, done,
            total, p->tokens, dt > 0 ? p->tokens / dt : 0, eta);
    if (final) fputc('\n', stderr);
}

static int flush_shard(split_writer *w) {
    char path[4096];
    mx_err err = {0};
    snprintf(path, sizeof path, "%s_%s_%06d.bin", w->prefix, w->name, w->index);
    if (mx_shard_write(path, w->buf, w->n, w->wide, &err))
        return fprintf(stderr, "mixatt tokenize: %s\n", err.msg), 1;
    w->index++;
    w->n = 0;
    return 0;
}

static int push_tokens(split_writer *w, const int *ids, long n) {
    for (long i = 0; i < n; i++) {
        w->buf[w->n++] = ids[i];
        if (w->n == w->cap && flush_shard(w)) return 1;
    }
    w->total += n;
    return 0;
}

/* Tokenizes one document and appends EOS + its tokens to the split it belongs to. */
static int add_document(const mx_tokenizer *t, const char *text, size_t len, const mx_shard_opts *o,
                        split_writer *train, split_writer *val, const char *path) {
    mx_err err = {0};
    int *ids = NULL, n = 0, eos = mx_tokenizer_eos(t);
    if (mx_tokenize(t, text, len, !o->no_special, &ids, &n, &err))
        return fprintf(stderr, "mixatt tokenize: %s: %s\n", path, err.msg), 1;
    double all = (double)(train->total + val->total + n + 1), half = (n + 1) / 2.0;
    split_writer *w = (double)val->total + half < o->val_fraction * all ? val : train;
    int rc = push_tokens(w, &eos, 1) || push_tokens(w, ids, n);
    free(ids);
    return rc;
}

/* Splits a file's text at doc_sep (or not) and adds each non-empty document. */
static int add_file(const mx_tokenizer *t, const char *path, const mx_shard_opts *o, split_writer *train,
                    split_writer *val, progress *p) {
    size_t len;
    char *text = mx_read_file(path, &len);
    if (!text) return 1;
    const char *s = text, *end = text + len;
    size_t sep = o->doc_sep ? strlen(o->doc_sep) : 0;
    int rc = 0;
    while (!rc && s < end) {
        const char *e = sep ? strstr(s, o->doc_sep) : NULL;
        if (!e || memchr(s, '\0', (size_t)(e - s))) e = end; /* strstr stops at a NUL byte */
        long before = train->total + val->total;
        if (e > s) rc = add_document(t, s, (size_t)(e - s), o, train, val, path);
        p->tokens += train->total + val->total - before;
        p->bytes_done += (e - s) + (e < end ? (long long)sep : 0);
        progress_draw(p, false);
        s = e < end ? e + sep : end;
    }
    free(text);
    return rc;
}

static int init_writer(split_writer *w, const char *prefix, const char *name, bool wide, long cap) {
    *w = (split_writer){.prefix = prefix, .name = name, .wide = wide, .cap = cap};
    if (!(w->buf = malloc(sizeof(int) * (size_t)cap)))
        return fprintf(stderr, "mixatt tokenize: out of memory for a shard of %ld tokens\n", cap), 1;
    return 0;
}

static int tokenize_all(const mx_tokenizer *t, const file_list *l, const mx_shard_opts *o) {
    bool wide = mx_tokenizer_vocab_size(t) > 65536;
    split_writer train, val;
    int rc = init_writer(&train, o->out, "train", wide, o->shard_tokens);
    if (!rc) rc = init_writer(&val, o->out, "val", wide, o->shard_tokens);
    progress p = {.bytes_total = l->bytes, .t0 = mx_now(), .quiet = o->quiet};
    for (int i = 0; !rc && i < l->n; i++) rc = add_file(t, l->paths[i], o, &train, &val, &p);
    if (!rc && train.n) rc = flush_shard(&train);
    if (!rc && val.n) rc = flush_shard(&val);
    if (rc && !o->quiet) fputc('\n', stderr);
    if (!rc) {
        progress_draw(&p, true);
        fprintf(stderr,
                "mixatt tokenize: %ld train tokens in %d shard(s), %ld validation tokens in %d "
                "shard(s), %s, %s_{train,val}_*.bin\n",
                train.total, train.index, val.total, val.index, wide ? "uint32" : "uint16", o->out);
        if (!train.total) fprintf(stderr, "mixatt tokenize: warning: no training tokens (one document?)\n");
    }
    free(train.buf), free(val.buf);
    return rc;
}

/* The directory of OUT_PREFIX must exist (checked before any work). */
static int check_out_dir(const char *prefix) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", prefix);
    char *slash = strrchr(dir, '/');
    if (!slash) return 0;
    *slash = slash == dir ? '/' : '\0';
    if (slash == dir) slash[1] = '\0';
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    fprintf(stderr, "mixatt tokenize: %s: the directory of -o %s does not exist\n", dir, prefix);
    return 1;
}

int mx_tokenize_to_shards(const char *model_path, const char *const *inputs, int n_inputs,
                          const mx_shard_opts *o) {
    file_list l = {0};
    if (check_out_dir(o->out)) return 1;
    if (list_inputs(&l, inputs, n_inputs)) return free_list(&l), 1;
    mx_err err = {0};
    mx_tokenizer *t = NULL;
    int rc = mx_tokenizer_open(model_path, &t, &err);
    if (rc) fprintf(stderr, "mixatt tokenize: %s\n", err.msg);
    if (!rc && mx_tokenizer_eos(t) < 0) {
        fprintf(stderr, "mixatt tokenize: %s: the tokenizer has no EOS token to separate documents\n",
                model_path);
        rc = 1;
    }
    if (!rc) rc = tokenize_all(t, &l, o);
    mx_tokenizer_free(t);
    free_list(&l);
    return rc ? 1 : 0;
}
