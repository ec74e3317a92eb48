/* ruler.c: RULER's synthetic tasks and string_match_all (see ruler.h). A sample of size N is built from two
 * random streams seeded by (seed, task, index): one draws the needles (keys, values, chains, vocabularies),
 * the other their places, so that the binary search over N changes the haystack's length only. */
#include "ruler.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/rng.h"

/* ---- a growing string ---- */

typedef struct {
    char *s;
    size_t n, cap;
    bool failed;
} sbuf;

static void sb_put(sbuf *b, const char *fmt, ...) {
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)need + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)need;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->failed = true;
            return;
        }
        b->s = s, b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

static char *sb_take(sbuf *b) {
    if (b->failed) return free(b->s), NULL;
    if (!b->s) return strdup("");
    return b->s;
}

/* ---- words ---- */

static const char *const ADJ[] = {
    "amber",   "ancient", "bitter", "bold",   "brave",  "bright", "calm",   "clever", "cold",   "crimson",
    "curious", "dark",    "eager",  "early",  "fancy",  "fierce", "gentle", "giant",  "golden", "grand",
    "happy",   "hidden",  "hollow", "humble", "icy",    "jolly",  "kind",   "lively", "lonely", "loud",
    "lucky",   "mighty",  "modest", "noble",  "odd",    "pale",   "proud",  "quick",  "quiet",  "rapid",
    "rough",   "rustic",  "silent", "silver", "sleepy", "smooth", "solid",  "sour",   "steady", "swift",
};
static const char *const NOUN[] = {
    "anchor", "apple",  "badger", "basket", "beacon",  "bridge", "candle", "canyon",  "castle", "cedar",
    "comet",  "copper", "desert", "dragon", "falcon",  "forest", "garden", "glacier", "harbor", "helmet",
    "island", "jacket", "kettle", "ladder", "lantern", "meadow", "mirror", "monkey",  "needle", "orchid",
    "otter",  "pebble", "pepper", "piano",  "planet",  "pocket", "rabbit", "river",   "saddle", "shadow",
    "spider", "statue", "summit", "teapot", "thunder", "tiger",  "tunnel", "violin",  "wagon",  "willow",
};
enum { N_ADJ = sizeof ADJ / sizeof ADJ[0], N_NOUN = sizeof NOUN / sizeof NOUN[0] };

static const char NOISE[] =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

static int uniform(mx_rng *r, int n) {
    return (int)(mx_rng_u64(r) % (uint64_t)n);
}

/* An adjective-noun key, distinct from the first n_used of used[] (indices adj * N_NOUN + noun). */
static int draw_word_key(mx_rng *r, const int *used, int n_used) {
    for (;;) {
        int k = uniform(r, N_ADJ * N_NOUN), dup = 0;
        for (int i = 0; i < n_used && !dup; i++) dup = used[i] == k;
        if (!dup) return k;
    }
}

static void word_key_text(int k, char *buf, size_t n) {
    snprintf(buf, n, "%s-%s", ADJ[k / N_NOUN], NOUN[k % N_NOUN]);
}

static void uuid_text(mx_rng *r, char *buf, size_t n) {
    uint64_t a = mx_rng_u64(r), b = mx_rng_u64(r);
    snprintf(buf, n, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32), (unsigned)(a >> 16) & 0xffff,
             (unsigned)a & 0xfff, 0x8000 | ((unsigned)(b >> 48) & 0x3fff),
             (unsigned long long)(b & 0xffffffffffffull));
}

static void number_text(mx_rng *r, char *buf, size_t n) {
    snprintf(buf, n, "%d", 1000000 + uniform(r, 9000000));
}

/* A pronounceable pseudo-word of 2..3 syllables, distinct within one sample by construction of the caller. */
static void pseudo_word(mx_rng *r, char *buf, size_t n) {
    static const char C[] = "bdfgklmnprstvz", V[] = "aeiou";
    int syl = 2 + uniform(r, 2), o = 0;
    for (int i = 0; i < syl && o + 3 < (int)n; i++) {
        buf[o++] = C[uniform(r, (int)sizeof C - 1)];
        buf[o++] = V[uniform(r, (int)sizeof V - 1)];
    }
    buf[o] = 0;
}

/* ---- tasks ---- */

static const char *const NAMES[MX_RULER_N_TASKS] = {
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
};

const char *mx_ruler_task_name(mx_ruler_task t) {
    return (unsigned)t < MX_RULER_N_TASKS ? NAMES[t] : "?";
}

int mx_ruler_task_parse(const char *name) {
    for (int t = 0; t < MX_RULER_N_TASKS; t++)
        if (!strcmp(name, NAMES[t])) return t;
    return -1;
}

typedef enum { HAY_NOISE, HAY_ESSAY, HAY_NEEDLES } hay_kind;

typedef struct {
    hay_kind hay;
    bool key_uuid, value_uuid;
    int n_keys;    /* needles with distinct keys (multikey: 1 queried + distractors) */
    int n_values;  /* values under the queried key */
    int n_queries; /* keys asked */
} niah_cfg;

static niah_cfg niah_config(mx_ruler_task t) {
    niah_cfg c = {HAY_NOISE, false, false, 1, 1, 1};
    switch (t) {
    case MX_RULER_NIAH_SINGLE_2:
        c.hay = HAY_ESSAY;
        break;
    case MX_RULER_NIAH_SINGLE_3:
        c.hay = HAY_ESSAY, c.value_uuid = true;
        break;
    case MX_RULER_NIAH_MULTIKEY_1:
        c.hay = HAY_ESSAY, c.n_keys = 4;
        break;
    case MX_RULER_NIAH_MULTIKEY_2:
        c.hay = HAY_NEEDLES;
        break;
    case MX_RULER_NIAH_MULTIKEY_3:
        c.hay = HAY_NEEDLES, c.key_uuid = c.value_uuid = true;
        break;
    case MX_RULER_NIAH_MULTIVALUE:
        c.hay = HAY_ESSAY, c.n_values = 4;
        break;
    case MX_RULER_NIAH_MULTIQUERY:
        c.hay = HAY_ESSAY, c.n_keys = 4, c.n_queries = 4;
        break;
    default:
        break;
    }
    return c;
}

/* The words of an essay text: offsets and lengths of its whitespace-separated words. */
typedef struct {
    const char *text;
    int n;
    int *start, *len;
} words;

static int split_words(const char *text, words *w) {
    memset(w, 0, sizeof *w);
    w->text = text;
    int cap = 0;
    for (const char *p = text; *p;) {
        while (*p && isspace((unsigned char)*p)) p++;
        if (!*p) break;
        const char *q = p;
        while (*q && !isspace((unsigned char)*q)) q++;
        if (w->n == cap) {
            cap = cap ? 2 * cap : 1024;
            int *s = realloc(w->start, sizeof(int) * (size_t)cap),
                *l = s ? realloc(w->len, sizeof(int) * (size_t)cap) : NULL;
            if (s) w->start = s;
            if (!s || !l) return -1;
            w->len = l;
        }
        w->start[w->n] = (int)(p - text), w->len[w->n] = (int)(q - p), w->n++;
        p = q;
    }
    return 0;
}

/* Lines of a haystack with items inserted: pieces[0..n) are haystack units and at[i] says before which unit
 * item i goes (non-decreasing). The units are NOISE lines (sep "\n") or essay words (sep " "). */
typedef struct {
    const char *const *items;
    const int *at;
    int n_items;
} inserts;

static void put_noise(sbuf *b, int n_lines, const inserts *in) {
    int k = 0;
    for (int i = 0; i <= n_lines; i++) {
        while (k < in->n_items && in->at[k] == i) sb_put(b, "%s\n", in->items[k++]);
        if (i < n_lines) sb_put(b, "%s\n", NOISE);
    }
}

static void put_essay(sbuf *b, const words *w, int n_words, const inserts *in) {
    int k = 0;
    for (int i = 0; i <= n_words; i++) {
        while (k < in->n_items && in->at[k] == i) sb_put(b, "%s ", in->items[k++]);
        if (i < n_words) sb_put(b, "%.*s ", w->len[i], w->text + w->start[i]);
    }
}

/* Where an essay needle at depth d (of 40 evenly spaced points over 0..100%) goes: the first word at or after
 * d·n that starts a sentence (its previous word ends in . ! or ?), else d·n. */
static int essay_place(const words *w, int n_words, int point) {
    int i = (int)((long)point * n_words / 39);
    for (int j = i; j < n_words; j++) {
        if (j == 0) return 0;
        char c = w->text[w->start[j - 1] + w->len[j - 1] - 1];
        if (c == '.' || c == '!' || c == '?') return j;
    }
    return i;
}

static int cmp_int(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

/* Sorts items by place (stable: selection by index). */
static void sort_inserts(const char **items, int *at, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && at[j - 1] > at[j]; j--) {
            int t = at[j];
            at[j] = at[j - 1], at[j - 1] = t;
            const char *s = items[j];
            items[j] = items[j - 1], items[j - 1] = s;
        }
}

static int set_ref(mx_ruler_sample *s, const char *v) {
    if (s->n_refs >= MX_RULER_MAX_REFS) return -1;
    return (s->refs[s->n_refs++] = strdup(v)) ? 0 : -1;
}

enum { TXT = 64 };

/* NIAH of size N (haystack lines, essay words or needles). */
static int make_niah(mx_ruler_task t, int N, mx_rng *draw, mx_rng *place, const words *essay,
                     mx_ruler_sample *s) {
    niah_cfg c = niah_config(t);
    if (c.hay == HAY_ESSAY && !essay) c.hay = HAY_NOISE;
    const char *vt = c.value_uuid ? "uuids" : "numbers";
    int n_keys = c.hay == HAY_NEEDLES ? N : c.n_keys;
    int n_needles = n_keys - 1 + (c.n_queries == 1 ? c.n_values : 1); /* multiquery: one value per key */
    char(*keys)[TXT] = calloc((size_t)n_keys, TXT), (*needle)[3 * TXT] = calloc((size_t)n_needles, 3 * TXT);
    int *used = calloc((size_t)n_keys, sizeof(int)), *at = calloc((size_t)n_needles, sizeof(int));
    const char **items = calloc((size_t)n_needles, sizeof(char *));
    int rc = keys && needle && used && at && items ? 0 : -1;
    for (int k = 0; !rc && k < n_keys; k++) {
        if (c.key_uuid) {
            uuid_text(draw, keys[k], TXT);
        } else {
            used[k] = draw_word_key(draw, used, k);
            word_key_text(used[k], keys[k], TXT);
        }
    }
    /* keys[0 .. n_queries) are asked; keys[0] holds n_values values when n_queries == 1 */
    int m = 0;
    for (int k = 0; !rc && k < n_keys; k++) {
        int nv = (k == 0 && c.n_queries == 1) ? c.n_values : 1;
        for (int v = 0; v < nv; v++) {
            char val[TXT];
            if (c.value_uuid)
                uuid_text(draw, val, sizeof val);
            else
                number_text(draw, val, sizeof val);
            snprintf(needle[m], 3 * TXT, "One of the special magic %s for %s is: %s.", vt, keys[k], val);
            items[m] = needle[m];
            if (k < c.n_queries && set_ref(s, val)) rc = -1;
            m++;
        }
    }
    n_needles = m;
    sbuf b = {0};
    bool one = c.n_queries == 1 && c.n_values == 1;
    const char *v1 = one ? (c.value_uuid ? "uuid" : "number") : vt;
    sb_put(
        &b,
        "%s special magic %s %s hidden within the following text. Make sure to memorize it. I will quiz you "
        "about the %s afterwards.\n",
        one ? "A" : "Some", v1, one ? "is" : "are", v1);
    if (!rc && c.hay == HAY_NEEDLES) { /* the needles are the haystack, in random order */
        for (int i = 0; i < n_needles; i++) at[i] = i;
        for (int i = n_needles - 1; i > 0; i--) {
            int j = uniform(place, i + 1);
            const char *x = items[i];
            items[i] = items[j], items[j] = x;
        }
        for (int i = 0; i < n_needles; i++) sb_put(&b, "%s\n", items[i]);
    } else if (!rc) {
        for (int i = 0; i < n_needles; i++)
            at[i] = c.hay == HAY_ESSAY ? essay_place(essay, N, uniform(place, 40)) : uniform(place, N + 1);
        sort_inserts(items, at, n_needles);
        inserts in = {items, at, n_needles};
        if (c.hay == HAY_ESSAY)
            put_essay(&b, essay, N, &in);
        else
            put_noise(&b, N, &in);
    }
    s->pre = sb_take(&b);
    sbuf q = {0}, a = {0};
    char query[4 * TXT + 16] = "";
    for (int k = 0; k < c.n_queries; k++) {
        size_t l = strlen(query);
        snprintf(query + l, sizeof query - l, "%s%s%s",
                 k == 0                 ? ""
                 : k + 1 == c.n_queries ? ", and "
                                        : ", ",
                 keys[k], "");
    }
    sb_put(&q, "\nWhat %s the special magic %s for %s mentioned in the provided text?",
           one ? "is" : "are all", v1, query);
    sb_put(&a, " The special magic %s for %s mentioned in the provided text %s", v1, query,
           one ? "is" : "are");
    s->post = sb_take(&q);
    s->answer_prefix = sb_take(&a);
    s->max_new = 128;
    free(keys), free(needle), free(used), free(at), free(items);
    return rc || !s->pre || !s->post || !s->answer_prefix ? -1 : 0;
}

/* Variable tracking: VAR X1 = value, then VAR X(i+1) = VAR X(i), 4 hops, in the noise haystack of N lines. */
static int make_vt(int N, mx_rng *draw, mx_rng *place, mx_ruler_sample *s) {
    enum { HOPS = 4 };
    char names[HOPS + 1][8], stmt[HOPS + 1][64];
    const char *items[HOPS + 1];
    int at[HOPS + 1], value = 10000 + uniform(draw, 90000), rc = 0;
    for (int i = 0; i <= HOPS; i++) {
        for (int dup = 1; dup;) {
            for (int c = 0; c < 5; c++) names[i][c] = (char)('A' + uniform(draw, 26));
            names[i][5] = 0;
            dup = 0;
            for (int j = 0; j < i; j++) dup |= !strcmp(names[i], names[j]);
        }
        if (i == 0)
            snprintf(stmt[i], sizeof stmt[i], "VAR %s = %d", names[i], value);
        else
            snprintf(stmt[i], sizeof stmt[i], "VAR %s = VAR %s", names[i], names[i - 1]);
        items[i] = stmt[i];
        at[i] = uniform(place, N + 1);
        if (set_ref(s, names[i])) rc = -1;
    }
    qsort(at, HOPS + 1, sizeof(int), cmp_int); /* the chain in order */
    sbuf b = {0}, q = {0}, a = {0};
    sb_put(&b, "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n");
    inserts in = {items, at, HOPS + 1};
    put_noise(&b, N, &in);
    sb_put(&q, "\nQuestion: Find all variables that are assigned the value %d in the text above.", value);
    sb_put(&a,
           " Answer: According to the chain(s) of variable assignment in the text above, %d variables are "
           "assigned the value %d, they are: ",
           HOPS + 1, value);
    s->pre = sb_take(&b), s->post = sb_take(&q), s->answer_prefix = sb_take(&a);
    s->max_new = 30;
    return rc || !s->pre || !s->post || !s->answer_prefix ? -1 : 0;
}

/* Distinct pseudo-words: n of them into w (TXT each). */
static int distinct_words(mx_rng *r, int n, char (*w)[TXT]) {
    for (int i = 0; i < n; i++) {
        for (int tries = 0;; tries++) {
            pseudo_word(r, w[i], TXT);
            int dup = 0;
            for (int j = 0; j < i && !dup; j++) dup = !strcmp(w[i], w[j]);
            if (!dup) break;
            if (tries > 1000) return -1;
        }
    }
    return 0;
}

/* Common words extraction: 10 words 30 times each and N others 3 times each, shuffled, numbered; one small
 * worked example first. */
static int make_cwe(int N, mx_rng *draw, mx_rng *place, mx_ruler_sample *s) {
    enum { N_CW = 10, F_CW = 30, F_UCW = 3, EX_CW = 10, EX_UCW = 20 };
    int n_words = N_CW + N + EX_CW + EX_UCW;
    char(*w)[TXT] = malloc((size_t)n_words * TXT);
    int n_list = N_CW * F_CW + N * F_UCW, n_ex = EX_CW * 6 + EX_UCW;
    int *list = malloc(sizeof(int) * (size_t)(n_list > n_ex ? n_list : n_ex));
    if (!w || !list || distinct_words(draw, n_words, w)) return free(w), free(list), -1;
    sbuf b = {0}, q = {0}, a = {0};
    const char *intro =
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n";
    /* the example: words N_CW+N .. (EX_CW of them 6 times, EX_UCW once) */
    int e0 = N_CW + N, n = 0;
    for (int i = 0; i < EX_CW; i++)
        for (int f = 0; f < 6; f++) list[n++] = e0 + i;
    for (int i = 0; i < EX_UCW; i++) list[n++] = e0 + EX_CW + i;
    for (int i = n - 1; i > 0; i--) {
        int j = uniform(place, i + 1), x = list[i];
        list[i] = list[j], list[j] = x;
    }
    sb_put(&b, "%s", intro);
    for (int i = 0; i < n; i++) sb_put(&b, "%d. %s\n", i + 1, w[list[i]]);
    sb_put(
        &b,
        "Question: What are the 10 most common words in the above list? Answer: The top 10 words that appear "
        "most often in the list are:");
    for (int i = 0; i < EX_CW; i++) sb_put(&b, " %d. %s", i + 1, w[e0 + i]);
    sb_put(&b, "\n\n%s", intro);
    n = 0;
    for (int i = 0; i < N_CW; i++)
        for (int f = 0; f < F_CW; f++) list[n++] = i;
    for (int i = 0; i < N; i++)
        for (int f = 0; f < F_UCW; f++) list[n++] = N_CW + i;
    for (int i = n - 1; i > 0; i--) {
        int j = uniform(place, i + 1), x = list[i];
        list[i] = list[j], list[j] = x;
    }
    for (int i = 0; i < n; i++) sb_put(&b, "%d. %s\n", i + 1, w[list[i]]);
    int rc = 0;
    for (int i = 0; i < N_CW; i++)
        if (set_ref(s, w[i])) rc = -1;
    sb_put(&q, "Question: What are the 10 most common words in the above list?");
    sb_put(&a, " Answer: The top 10 words that appear most often in the list are:");
    s->pre = sb_take(&b), s->post = sb_take(&q), s->answer_prefix = sb_take(&a);
    s->max_new = 120;
    free(w), free(list);
    return rc || !s->pre || !s->post || !s->answer_prefix ? -1 : 0;
}

/* Frequent words extraction: N coded words drawn from Zipf(2) over a vocabulary of 500; the answer is the 3
 * most frequent. Redrawn (from the same streams) until the 3rd is strictly more frequent than the 4th. */
static int make_fwe(int N, mx_rng *draw, mx_rng *place, mx_ruler_sample *s) {
    enum { V = 500 };
    char(*w)[TXT] = malloc((size_t)V * TXT);
    double *cdf = malloc(sizeof(double) * V);
    int *text = malloc(sizeof(int) * (size_t)(N > 0 ? N : 1)), *cnt = calloc(V, sizeof(int));
    if (!w || !cdf || !text || !cnt) {
        free(w), free(cdf), free(text), free(cnt);
        return -1;
    }
    for (int i = 0; i < V; i++) /* distinct 5-letter codes */
        for (int dup = 1; dup;) {
            for (int c = 0; c < 5; c++) w[i][c] = (char)('a' + uniform(draw, 26));
            w[i][5] = 0;
            dup = 0;
            for (int j = 0; j < i && !dup; j++) dup = !strcmp(w[i], w[j]);
        }
    double z = 0;
    for (int i = 0; i < V; i++) cdf[i] = (z += 1.0 / ((double)(i + 1) * (i + 1)));
    int top[4] = {0};
    for (int attempt = 0; attempt < 100; attempt++) {
        memset(cnt, 0, sizeof(int) * V);
        for (int i = 0; i < N; i++) {
            double u = mx_rng_float(place) * z;
            int k = 0;
            while (k < V - 1 && cdf[k] < u) k++;
            text[i] = k, cnt[k]++;
        }
        for (int r = 0; r < 4; r++) { /* the 4 most frequent, ties: lower index */
            int best = -1;
            for (int k = 0; k < V; k++) {
                bool taken = false;
                for (int p = 0; p < r; p++) taken |= top[p] == k;
                if (!taken && (best < 0 || cnt[k] > cnt[best])) best = k;
            }
            top[r] = best;
        }
        if (cnt[top[2]] > cnt[top[3]]) break;
    }
    int rc = cnt[top[2]] > cnt[top[3]] ? 0 : -1;
    sbuf b = {0}, q = {0}, a = {0};
    sb_put(&b,
           "Read the following coded text and track the frequency of each coded word. Find the three most "
           "frequently appeared coded words. ");
    for (int i = 0; i < N; i++) sb_put(&b, "%s%s", w[text[i]], (i + 1) % 10 == 0 ? " .... " : " ");
    for (int r = 0; r < 3 && !rc; r++)
        if (set_ref(s, w[top[r]])) rc = -1;
    sb_put(
        &q,
        "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
        "frequently appeared words in the above coded text?");
    sb_put(&a, " Answer: According to the coded text above, the three most frequently appeared words are:");
    s->pre = sb_take(&b), s->post = sb_take(&q), s->answer_prefix = sb_take(&a);
    s->max_new = 50;
    free(w), free(cdf), free(text), free(cnt);
    return rc || !s->pre || !s->post || !s->answer_prefix ? -1 : 0;
}

static int build(mx_ruler_task t, int N, uint64_t seed, int index, const words *essay, mx_ruler_sample *s) {
    mx_ruler_sample_free(s);
    s->task = t, s->size = N;
    uint64_t base = seed * 1000003u + (uint64_t)t * 7919u + (uint64_t)index * 104729u;
    mx_rng draw, place;
    mx_rng_seed(&draw, base);
    mx_rng_seed(&place, base ^ 0x9e3779b97f4a7c15ull);
    switch (t) {
    case MX_RULER_VT:
        return make_vt(N, &draw, &place, s);
    case MX_RULER_CWE:
        return make_cwe(N, &draw, &place, s);
    case MX_RULER_FWE:
        return make_fwe(N, &draw, &place, s);
    default:
        return make_niah(t, N, &draw, &place, essay, s);
    }
}

int mx_ruler_make(mx_ruler_task t, int length, uint64_t seed, int index, const char *essay_text,
                  mx_ruler_count_fn count, void *ctx, mx_ruler_sample *out, mx_err *err) {
    memset(out, 0, sizeof *out);
    if ((unsigned)t >= MX_RULER_N_TASKS) return mx_err_set(err, MX_ERR_ARG, "RULER: no task %d", (int)t);
    words essay = {0}, *ew = NULL;
    niah_cfg c = niah_config(t);
    bool uses_essay = essay_text && c.hay == HAY_ESSAY && t < MX_RULER_VT;
    if (uses_essay) {
        if (split_words(essay_text, &essay))
            return free(essay.start), free(essay.len), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
        ew = &essay;
    }
    int lo = t == MX_RULER_NIAH_MULTIKEY_2 || t == MX_RULER_NIAH_MULTIKEY_3 ? 2 : t == MX_RULER_FWE ? 40 : 1;
    if (uses_essay && essay.n < lo)
        return free(essay.start), free(essay.len),
               mx_err_set(err, MX_ERR_ARG, "RULER %s: the haystack text has no words", NAMES[t]);
    int hi_cap = uses_essay ? essay.n : 1 << 22, rc = MX_OK;
    /* fits(N): the prompt of size N plus max_new answer tokens is within length */
    int n_tok = -1;
    if (build(t, lo, seed, index, ew, out) || (n_tok = count(ctx, out)) < 0) {
        rc = mx_err_set(err, MX_ERR_NOMEM, "RULER %s: building or counting a sample failed", NAMES[t]);
    } else if (n_tok + out->max_new > length) {
        rc = mx_err_set(
            err, MX_ERR_ARG,
            "RULER %s: the smallest sample is %d tokens (+%d to answer), longer than the length %d", NAMES[t],
            n_tok, out->max_new, length);
    }
    int good = lo, bad = -1;
    for (int step = lo; !rc && bad < 0;) { /* grow until it no longer fits */
        int n = good + step > hi_cap ? hi_cap : good + step;
        if (n == good) break;
        if (build(t, n, seed, index, ew, out) || (n_tok = count(ctx, out)) < 0) {
            rc = mx_err_set(err, MX_ERR_NOMEM, "RULER %s: building or counting a sample failed", NAMES[t]);
        } else if (n_tok + out->max_new <= length) {
            good = n, step *= 2;
        } else {
            bad = n;
        }
    }
    while (!rc && bad >= 0 && bad - good > 1) {
        int mid = good + (bad - good) / 2;
        if (build(t, mid, seed, index, ew, out) || (n_tok = count(ctx, out)) < 0)
            rc = mx_err_set(err, MX_ERR_NOMEM, "RULER %s: building or counting a sample failed", NAMES[t]);
        else if (n_tok + out->max_new <= length)
            good = mid;
        else
            bad = mid;
    }
    if (!rc && uses_essay && bad < 0)
        rc =
            mx_err_set(err, MX_ERR_ARG,
                       "RULER %s: the haystack text (%d words) is too short to fill %d tokens; give a longer "
                       "--haystack file or a shorter length",
                       NAMES[t], essay.n, length);
    if (!rc && build(t, good, seed, index, ew, out))
        rc = mx_err_set(err, MX_ERR_NOMEM, "RULER %s: building a sample failed", NAMES[t]);
    free(essay.start), free(essay.len);
    if (rc) mx_ruler_sample_free(out);
    return rc;
}

void mx_ruler_sample_free(mx_ruler_sample *s) {
    free(s->pre), free(s->post), free(s->answer_prefix);
    for (int i = 0; i < s->n_refs; i++) free(s->refs[i]);
    mx_ruler_task t = s->task;
    memset(s, 0, sizeof *s);
    s->task = t;
}

/* Case-insensitive substring. */
static bool contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] && tolower((unsigned char)p[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return true;
    }
    return n == 0;
}

double mx_ruler_score(const mx_ruler_sample *s, const char *pred) {
    if (s->n_refs == 0) return 0;
    int hit = 0;
    for (int i = 0; i < s->n_refs; i++) hit += contains_ci(pred, s->refs[i]);
    return 100.0 * hit / s->n_refs;
}
