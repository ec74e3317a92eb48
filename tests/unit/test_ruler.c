/* test_ruler.c: the RULER generators (src/eval/ruler.c) checked by parsing their own samples. With a counter
 * of 1 token per 4 bytes, every task at 2K and 4K, two seeds, the noise and an essay haystack:
 *   - the prompt fits: count + max_new <= length, and one size step more would not (the search is tight);
 *   - NIAH: every needle "One of the special magic V for K is: X." is parsed from the context; the keys asked
 *     in the question map to exactly the references, each inserted as specified (multivalue: 4 values under
 *     one key; multiquery: 4 keys; multikey: the other keys are distractors; multikey_2/3: only needles);
 *   - vt: the chain VAR A = n, VAR B = VAR A ... resolves to exactly the reference names, in text order;
 *   - cwe: counting the numbered list, the references are the 10 words seen 30 times, others 3 times;
 *   - fwe: counting the coded text, the references are its 3 most frequent words;
 *   - string_match_all: 100 with every reference in the prediction, 50 with half, case-insensitive;
 * and an essay too short for the length fails with a message. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/eval/ruler.h"

static int count_bytes(void *ctx, const mx_ruler_sample *s) {
    (void)ctx;
    return (int)((strlen(s->pre) + strlen(s->post) + strlen(s->answer_prefix)) / 4);
}

static char *essay_text(int sentences) {
    size_t cap = (size_t)sentences * 64 + 1;
    char *t = malloc(cap);
    t[0] = 0;
    for (int i = 0; i < sentences; i++) {
        char s[64];
        snprintf(s, sizeof s, "Sentence number %d talks about rivers and hills. ", i);
        strcat(t, s);
    }
    return t;
}

static bool has_ref(const mx_ruler_sample *s, const char *v) {
    for (int i = 0; i < s->n_refs; i++)
        if (!strcmp(s->refs[i], v)) return true;
    return false;
}

/* NIAH: parses every needle of the context; checks the asked keys' values are the refs exactly. */
static void check_niah(const mx_ruler_sample *s, const char *what) {
    char keys[4096][64], vals[4096][64];
    int n = 0;
    const char *tag = "One of the special magic ";
    for (const char *p = strstr(s->pre, tag); p && n < 4096; p = strstr(p + 1, tag)) {
        char type[16];
        int got = sscanf(p, "One of the special magic %15s for %63s is: %63[^.].", type, keys[n], vals[n]);
        cr_assert(got == 3, "%s: unparsable needle '%.80s'", what, p);
        n++;
    }
    cr_assert(n >= 1, "%s: no needle", what);
    /* the question names the asked keys between "for " and " mentioned" */
    const char *q = strstr(s->post, " for ");
    cr_assert(q, "%s: question '%s'", what, s->post);
    q += 5;
    const char *end = strstr(q, " mentioned");
    cr_assert(end);
    char asked[512];
    snprintf(asked, sizeof asked, "%.*s", (int)(end - q), q);
    int matched = 0, n_asked = 0;
    for (char *tok = strtok(asked, ", "); tok; tok = strtok(NULL, ", ")) {
        if (!strcmp(tok, "and")) continue;
        n_asked++;
        for (int i = 0; i < n; i++)
            if (!strcmp(keys[i], tok)) {
                cr_expect(has_ref(s, vals[i]), "%s: value %s of asked key %s is not a reference", what,
                          vals[i], tok);
                matched++;
            }
    }
    cr_expect(matched == s->n_refs, "%s: %d needles of asked keys, %d references", what, matched, s->n_refs);
    for (int i = 0; i < s->n_refs; i++) {
        char line[160];
        cr_expect(strstr(s->pre, s->refs[i]) != NULL, "%s: reference %s not in the context", what,
                  s->refs[i]);
        (void)line;
    }
    mx_ruler_task t = s->task;
    if (t == MX_RULER_NIAH_MULTIVALUE) cr_expect(s->n_refs == 4 && n_asked == 1, "%s", what);
    if (t == MX_RULER_NIAH_MULTIQUERY) cr_expect(s->n_refs == 4 && n_asked == 4, "%s", what);
    if (t == MX_RULER_NIAH_MULTIKEY_1) cr_expect(n == 4 && s->n_refs == 1, "%s: %d needles", what, n);
    if (t == MX_RULER_NIAH_MULTIKEY_2 || t == MX_RULER_NIAH_MULTIKEY_3) {
        cr_expect(n == s->size && n > 10, "%s: %d needles for size %d", what, n, s->size);
        cr_expect(strstr(s->pre, "The grass is green") == NULL, "%s: noise in a needle haystack", what);
    }
    if (t <= MX_RULER_NIAH_SINGLE_3) cr_expect(n == 1 && s->n_refs == 1, "%s", what);
    if (t == MX_RULER_NIAH_SINGLE_3 || t == MX_RULER_NIAH_MULTIKEY_3)
        for (int i = 0; i < s->n_refs; i++)
            cr_expect(strlen(s->refs[i]) == 36 && s->refs[i][14] == '4', "%s: %s is not a v4 uuid", what,
                      s->refs[i]);
    else
        for (int i = 0; i < s->n_refs; i++)
            cr_expect(strlen(s->refs[i]) == 7 && atoi(s->refs[i]) >= 1000000, "%s: %s", what, s->refs[i]);
}

static void check_vt(const mx_ruler_sample *s, const char *what) {
    char name[16][8], from[16][8];
    int n = 0, value = -1, asked = -1;
    for (const char *p = strstr(s->pre, "VAR "); p && n < 16; p = strstr(p + 1, "VAR ")) {
        int v;
        if (sscanf(p, "VAR %7s = VAR %7s", name[n], from[n]) == 2) {
            n++;
            p += 8;
        } else if (sscanf(p, "VAR %7s = %d", name[n], &v) == 2) {
            from[n][0] = 0, value = v, n++;
        }
    }
    cr_assert(sscanf(strstr(s->post, "value ") + 6, "%d", &asked) == 1);
    cr_expect(asked == value && n == 5 && s->n_refs == 5, "%s: %d statements, value %d asked %d", what, n,
              value, asked);
    /* resolve: a name holds the value if assigned it, or assigned a name that holds it (text order) */
    int holds = 0;
    for (int i = 0; i < n; i++) {
        bool ok = from[i][0] == 0;
        for (int j = 0; j < i && !ok; j++) ok = !strcmp(from[i], name[j]);
        cr_expect(ok, "%s: %s is assigned before its source", what, name[i]);
        cr_expect(has_ref(s, name[i]), "%s: %s not a reference", what, name[i]);
        holds += ok;
    }
    cr_expect(holds == s->n_refs);
}

/* Counts "N. word" entries after the example (the second list). */
static void check_cwe(const mx_ruler_sample *s, const char *what) {
    const char *list = strstr(s->pre, "\n\nBelow is a numbered list");
    cr_assert(list, "%s: no second list", what);
    char(*w)[64] = malloc(sizeof(char[64]) * 8192);
    int cnt[8192] = {0}, n = 0;
    for (const char *p = strchr(list + 2, '\n'); p && *p; p = strchr(p + 1, '\n')) {
        int idx;
        char word[64];
        if (sscanf(p + 1, "%d. %63s", &idx, word) != 2) continue;
        int k = 0;
        while (k < n && strcmp(w[k], word)) k++;
        if (k == n) strcpy(w[n++], word);
        cnt[k]++;
    }
    int n30 = 0;
    for (int k = 0; k < n; k++) {
        cr_expect(cnt[k] == 30 || cnt[k] == 3, "%s: %s appears %d times", what, w[k], cnt[k]);
        if (cnt[k] == 30) {
            n30++;
            cr_expect(has_ref(s, w[k]), "%s: common word %s not a reference", what, w[k]);
        }
    }
    cr_expect(n30 == 10 && s->n_refs == 10 && n == 10 + s->size, "%s: %d common of %d", what, n30, n);
    free(w);
}

static void check_fwe(const mx_ruler_sample *s, const char *what) {
    const char *p = strstr(s->pre, "coded words. ");
    cr_assert(p);
    p += 13;
    char(*w)[8] = malloc(sizeof(char[8]) * 1024);
    int cnt[1024] = {0}, n = 0, total = 0;
    char word[16];
    int len;
    while (sscanf(p, "%15s%n", word, &len) == 1) {
        p += len;
        if (!strcmp(word, "....")) continue;
        int k = 0;
        while (k < n && strcmp(w[k], word)) k++;
        if (k == n) strcpy(w[n++], word);
        cnt[k]++, total++;
    }
    cr_expect(total == s->size, "%s: %d words, size %d", what, total, s->size);
    for (int r = 0; r < 3; r++) {
        int k = 0;
        while (k < n && strcmp(w[k], s->refs[r])) k++;
        cr_assert(k < n, "%s: reference %s not in the text", what, s->refs[r]);
        int above = 0;
        for (int j = 0; j < n; j++) above += cnt[j] > cnt[k];
        cr_expect(above < 3, "%s: %s (%d times) is not among the 3 most frequent", what, s->refs[r], cnt[k]);
    }
    free(w);
}

Test(ruler, generators_parse_and_fit) {
    char *essay = essay_text(3000);
    int lengths[] = {2048, 4096};
    for (int t = 0; t < MX_RULER_N_TASKS; t++)
        for (int li = 0; li < 2; li++)
            for (int seed = 1; seed <= 2; seed++)
                for (int e = 0; e < 2; e++) {
                    mx_ruler_sample s = {0};
                    mx_err err = {0};
                    char what[96];
                    snprintf(what, sizeof what, "%s at %d, seed %d%s", mx_ruler_task_name(t), lengths[li],
                             seed, e ? ", essay" : "");
                    int rc = mx_ruler_make(t, lengths[li], (uint64_t)seed, 0, e ? essay : NULL, count_bytes,
                                           NULL, &s, &err);
                    cr_assert(rc == MX_OK, "%s: %s", what, err.msg);
                    cr_expect(count_bytes(NULL, &s) + s.max_new <= lengths[li], "%s: does not fit", what);
                    cr_expect(count_bytes(NULL, &s) + s.max_new > lengths[li] * 9 / 10, "%s: %d tokens only",
                              what, count_bytes(NULL, &s));
                    if (t <= MX_RULER_NIAH_MULTIQUERY) check_niah(&s, what);
                    if (t == MX_RULER_VT) check_vt(&s, what);
                    if (t == MX_RULER_CWE) check_cwe(&s, what);
                    if (t == MX_RULER_FWE) check_fwe(&s, what);
                    bool essay_task = t == MX_RULER_NIAH_SINGLE_2 || t == MX_RULER_NIAH_SINGLE_3 ||
                                      t == MX_RULER_NIAH_MULTIKEY_1 || t == MX_RULER_NIAH_MULTIVALUE ||
                                      t == MX_RULER_NIAH_MULTIQUERY;
                    if (essay_task)
                        cr_expect((strstr(s.pre, "rivers and hills") != NULL) == (e == 1), "%s: haystack",
                                  what);
                    mx_ruler_sample_free(&s);
                }
    free(essay);
}

Test(ruler, same_arguments_same_sample) {
    mx_ruler_sample a = {0}, b = {0};
    mx_err err = {0};
    cr_assert(!mx_ruler_make(MX_RULER_NIAH_MULTIKEY_1, 2048, 7, 3, NULL, count_bytes, NULL, &a, &err));
    cr_assert(!mx_ruler_make(MX_RULER_NIAH_MULTIKEY_1, 2048, 7, 3, NULL, count_bytes, NULL, &b, &err));
    cr_expect(!strcmp(a.pre, b.pre) && !strcmp(a.refs[0], b.refs[0]));
    mx_ruler_sample_free(&b);
    cr_assert(!mx_ruler_make(MX_RULER_NIAH_MULTIKEY_1, 2048, 7, 4, NULL, count_bytes, NULL, &b, &err));
    cr_expect(strcmp(a.refs[0], b.refs[0]), "another index, the same needle");
    mx_ruler_sample_free(&a), mx_ruler_sample_free(&b);
}

Test(ruler, string_match_all) {
    mx_ruler_sample s = {0};
    mx_err err = {0};
    cr_assert(!mx_ruler_make(MX_RULER_NIAH_MULTIVALUE, 2048, 1, 0, NULL, count_bytes, NULL, &s, &err));
    char pred[512];
    snprintf(pred, sizeof pred, "%s, %s, %s and %s.", s.refs[3], s.refs[1], s.refs[0], s.refs[2]);
    cr_expect(mx_ruler_score(&s, pred) == 100.0);
    snprintf(pred, sizeof pred, "%s or %s", s.refs[0], s.refs[2]);
    cr_expect(mx_ruler_score(&s, pred) == 50.0);
    cr_expect(mx_ruler_score(&s, "nothing") == 0.0);
    mx_ruler_sample_free(&s);
    cr_assert(!mx_ruler_make(MX_RULER_VT, 2048, 1, 0, NULL, count_bytes, NULL, &s, &err));
    for (char *p = s.refs[0]; *p; p++) *p = (char)tolower((unsigned char)*p);
    snprintf(pred, sizeof pred, "%s", s.refs[0]);
    for (char *p = pred; *p; p++) *p = (char)toupper((unsigned char)*p);
    cr_expect(mx_ruler_score(&s, pred) == 20.0, "case-insensitive: %g", mx_ruler_score(&s, pred));
    mx_ruler_sample_free(&s);
}

Test(ruler, short_essay_is_refused) {
    char *essay = essay_text(20);
    mx_ruler_sample s = {0};
    mx_err err = {0};
    cr_expect(mx_ruler_make(MX_RULER_NIAH_SINGLE_2, 4096, 1, 0, essay, count_bytes, NULL, &s, &err) ==
              MX_ERR_ARG);
    cr_expect(strstr(err.msg, "too short") != NULL, "%s", err.msg);
    free(essay);
}
