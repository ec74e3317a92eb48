/* jinja_value.c: the values of the Jinja subset (see jinja_impl.h): buffers, truthiness, equality, Python's
 * str() and json.dumps() of a value, values from JSON, and the filters, tests, methods and globals of
 * jinja.h, each doing what its Jinja/Python namesake does for the value kinds chat templates use. */
#include "jinja_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

/* ---- buffers ---- */

void jb_put(jbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n >
        ((size_t)1 << 28)) { /* 256 MiB: a runaway template (`'x' * 10**9`), reported as no memory */
        b->oom = true;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->n, s, n);
    b->n += n;
}

void jb_puts(jbuf *b, const char *s) {
    jb_put(b, s, strlen(s));
}

/* ---- basics ---- */

const char *jv_type_name(const jval *v) {
    static const char *const names[] = {"undefined", "none", "bool", "int",     "float",
                                        "string",    "list", "dict", "function"};
    return names[v->t];
}

bool jv_truthy(const jval *v) {
    switch (v->t) {
    case JV_BOOL:
        return v->u.b;
    case JV_INT:
        return v->u.i != 0;
    case JV_FLOAT:
        return v->u.f != 0;
    case JV_STR:
        return v->u.s.n != 0;
    case JV_LIST:
        return v->u.l->n != 0;
    case JV_DICT:
        return v->u.d->n != 0 || v->u.d->ns;
    case JV_FUNC:
        return true;
    default:
        return false;
    }
}

bool jv_equal(const jval *a, const jval *b) {
    bool na = a->t == JV_INT || a->t == JV_FLOAT || a->t == JV_BOOL,
         nb = b->t == JV_INT || b->t == JV_FLOAT || b->t == JV_BOOL;
    if (na && nb) {
        double x = a->t == JV_FLOAT ? a->u.f : a->t == JV_INT ? (double)a->u.i : a->u.b;
        double y = b->t == JV_FLOAT ? b->u.f : b->t == JV_INT ? (double)b->u.i : b->u.b;
        return x == y;
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a->u.s.n == b->u.s.n && memcmp(a->u.s.s, b->u.s.s, a->u.s.n) == 0;
    case JV_LIST:
        if (a->u.l->n != b->u.l->n) return false;
        for (int i = 0; i < a->u.l->n; i++)
            if (!jv_equal(&a->u.l->v[i], &b->u.l->v[i])) return false;
        return true;
    case JV_DICT:
        if (a->u.d->n != b->u.d->n) return false;
        for (int i = 0; i < a->u.d->n; i++) {
            const jval *o = jv_dict_get(b->u.d, a->u.d->k[i], strlen(a->u.d->k[i]));
            if (!o || !jv_equal(&a->u.d->v[i], o)) return false;
        }
        return true;
    default:
        return a == b;
    }
}

int jv_list_push(jarena *a, jlist *l, jval v) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        jval *nv = ja_alloc(a, sizeof *nv * (size_t)cap);
        if (!nv) return MX_ERR_NOMEM;
        if (l->n) memcpy(nv, l->v, sizeof *nv * (size_t)l->n);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
    return 0;
}

const jval *jv_dict_get(const jdict *d, const char *k, size_t n) {
    for (int i = 0; i < d->n; i++)
        if (strlen(d->k[i]) == n && memcmp(d->k[i], k, n) == 0) return &d->v[i];
    return NULL;
}

int jv_dict_set(jarena *a, jdict *d, const char *k, jval v) {
    if (!k) return MX_ERR_NOMEM;
    for (int i = 0; i < d->n; i++)
        if (!strcmp(d->k[i], k)) return d->v[i] = v, 0;
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 8;
        const char **nk = ja_alloc(a, sizeof *nk * (size_t)cap);
        jval *nv = ja_alloc(a, sizeof *nv * (size_t)cap);
        if (!nk || !nv) return MX_ERR_NOMEM;
        if (d->n) memcpy(nk, d->k, sizeof *nk * (size_t)d->n), memcpy(nv, d->v, sizeof *nv * (size_t)d->n);
        d->k = nk, d->v = nv, d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
    return 0;
}

jval jv_from_json(jarena *a, const cJSON *j) {
    jval undef = {.t = JV_UNDEF};
    if (cJSON_IsNull(j)) return (jval){.t = JV_NONE};
    if (cJSON_IsBool(j)) return (jval){.t = JV_BOOL, .u.b = cJSON_IsTrue(j)};
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9e15) return (jval){.t = JV_INT, .u.i = (int64_t)d};
        return (jval){.t = JV_FLOAT, .u.f = d};
    }
    if (cJSON_IsString(j)) {
        char *s = ja_strndup(a, j->valuestring, strlen(j->valuestring));
        return s ? (jval){.t = JV_STR, .u.s = {s, strlen(s)}} : undef;
    }
    if (cJSON_IsArray(j)) {
        jlist *l = ja_alloc(a, sizeof *l);
        if (!l) return undef;
        const cJSON *e;
        cJSON_ArrayForEach(e, j) {
            jval v = jv_from_json(a, e);
            if (v.t == JV_UNDEF || jv_list_push(a, l, v)) return undef;
        }
        return (jval){.t = JV_LIST, .u.l = l};
    }
    if (cJSON_IsObject(j)) {
        jdict *d = ja_alloc(a, sizeof *d);
        if (!d) return undef;
        const cJSON *e;
        cJSON_ArrayForEach(e, j) {
            jval v = jv_from_json(a, e);
            if (v.t == JV_UNDEF || jv_dict_set(a, d, ja_strndup(a, e->string, strlen(e->string)), v))
                return undef;
        }
        return (jval){.t = JV_DICT, .u.d = d};
    }
    return undef;
}

/* ---- str() and json.dumps() ---- */

static void put_float(jbuf *b, double f) {
    char s[40];
    if (isnan(f)) return jb_puts(b, "nan");
    if (isinf(f)) return jb_puts(b, f < 0 ? "-inf" : "inf");
    for (int p = 1; p <= 17; p++) { /* the shortest text that reads back as f, as Python's repr */
        snprintf(s, sizeof s, "%.*g", p, f);
        if (strtod(s, NULL) == f) break;
    }
    jb_puts(b, s);
    if (!strpbrk(s, ".e")) jb_puts(b, ".0");
}

static void put_repr_str(jbuf *b, const char *s, size_t n) {
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    jb_put(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '\\' || c == (unsigned char)q)
            snprintf(e, sizeof e, "\\%c", c);
        else if (c == '\n')
            snprintf(e, sizeof e, "\\n");
        else if (c == '\r')
            snprintf(e, sizeof e, "\\r");
        else if (c == '\t')
            snprintf(e, sizeof e, "\\t");
        else if (c < 0x20 || c == 0x7f)
            snprintf(e, sizeof e, "\\x%02x", c);
        else
            e[0] = (char)c, e[1] = 0;
        jb_puts(b, e);
    }
    jb_put(b, &q, 1);
}

static void put_repr(jbuf *b, const jval *v) {
    if (v->t == JV_STR)
        put_repr_str(b, v->u.s.s, v->u.s.n);
    else
        jv_str(b, v);
}

void jv_str(jbuf *b, const jval *v) {
    char s[32];
    switch (v->t) {
    case JV_UNDEF:
        break;
    case JV_NONE:
        jb_puts(b, "None");
        break;
    case JV_BOOL:
        jb_puts(b, v->u.b ? "True" : "False");
        break;
    case JV_INT:
        snprintf(s, sizeof s, "%lld", (long long)v->u.i), jb_puts(b, s);
        break;
    case JV_FLOAT:
        put_float(b, v->u.f);
        break;
    case JV_STR:
        jb_put(b, v->u.s.s, v->u.s.n);
        break;
    case JV_LIST:
        jb_puts(b, v->u.l->tuple ? "(" : "[");
        for (int i = 0; i < v->u.l->n; i++) {
            if (i) jb_puts(b, ", ");
            put_repr(b, &v->u.l->v[i]);
        }
        jb_puts(b, v->u.l->tuple ? (v->u.l->n == 1 ? ",)" : ")") : "]");
        break;
    case JV_DICT:
        jb_puts(b, v->u.d->ns ? "<Namespace {" : "{");
        for (int i = 0; i < v->u.d->n; i++) {
            if (i) jb_puts(b, ", ");
            put_repr_str(b, v->u.d->k[i], strlen(v->u.d->k[i]));
            jb_puts(b, ": ");
            put_repr(b, &v->u.d->v[i]);
        }
        jb_puts(b, v->u.d->ns ? "}>" : "}");
        break;
    case JV_FUNC:
        jb_puts(b, "<function "), jb_puts(b, v->u.fn.name), jb_puts(b, ">");
        break;
    }
}

static void put_json_str(jbuf *b, const char *s, size_t n) {
    jb_puts(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '"' || c == '\\')
            snprintf(e, sizeof e, "\\%c", c);
        else if (c == '\n')
            snprintf(e, sizeof e, "\\n");
        else if (c == '\r')
            snprintf(e, sizeof e, "\\r");
        else if (c == '\t')
            snprintf(e, sizeof e, "\\t");
        else if (c == '\b')
            snprintf(e, sizeof e, "\\b");
        else if (c == '\f')
            snprintf(e, sizeof e, "\\f");
        else if (c < 0x20)
            snprintf(e, sizeof e, "\\u%04x", c);
        else
            e[0] = (char)c, e[1] = 0;
        jb_puts(b, e);
    }
    jb_puts(b, "\"");
}

static void json_newline(jbuf *b, int indent, int depth) {
    jb_puts(b, "\n");
    for (int i = 0; i < indent * depth; i++) jb_puts(b, " ");
}

void jv_json(jbuf *b, const jval *v, int indent, int depth) {
    switch (v->t) {
    case JV_UNDEF:
    case JV_NONE:
        jb_puts(b, "null");
        break;
    case JV_BOOL:
        jb_puts(b, v->u.b ? "true" : "false");
        break;
    case JV_FLOAT:
        if (isnan(v->u.f) || isinf(v->u.f))
            jb_puts(b, isnan(v->u.f) ? "NaN" : v->u.f < 0 ? "-Infinity" : "Infinity");
        else
            put_float(b, v->u.f);
        break;
    case JV_STR:
        put_json_str(b, v->u.s.s, v->u.s.n);
        break;
    case JV_LIST:
    case JV_DICT: {
        bool list = v->t == JV_LIST;
        int n = list ? v->u.l->n : v->u.d->n;
        jb_puts(b, list ? "[" : "{");
        for (int i = 0; i < n; i++) {
            if (i) jb_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) json_newline(b, indent, depth + 1);
            if (!list) {
                put_json_str(b, v->u.d->k[i], strlen(v->u.d->k[i]));
                jb_puts(b, ": ");
            }
            jv_json(b, list ? &v->u.l->v[i] : &v->u.d->v[i], indent, depth + 1);
        }
        if (indent >= 0 && n) json_newline(b, indent, depth);
        jb_puts(b, list ? "]" : "}");
        break;
    }
    default:
        jv_str(b, v);
    }
}

/* ---- helpers for filters and methods ---- */

static jval str_of(jeval *ev, const jval *x) {
    if (x->t == JV_STR) return *x;
    jbuf b = {0};
    jv_str(&b, x);
    jval v = jv_strn(ev, b.s ? b.s : "", b.n);
    free(b.s);
    return v;
}

static const jval *kwarg(int nargs, const jval *args, const char *const *kw, const char *name, int pos) {
    for (int i = 0; i < nargs; i++)
        if (kw && kw[i] && !strcmp(kw[i], name)) return &args[i];
    int k = 0;
    for (int i = 0; i < nargs; i++)
        if (!kw || !kw[i]) {
            if (k == pos) return &args[i];
            k++;
        }
    return NULL;
}

static bool in_set(const char *chars, size_t nc, const char *p, size_t len) {
    if (!chars) return len == 1 && strchr(" \t\n\r\v\f", *p) && *p;
    for (size_t i = 0; i + len <= nc; i++)
        if (!memcmp(chars + i, p, len)) return true;
    return false;
}

static size_t cp_len(const char *s, size_t n) {
    size_t k = 1;
    while (k < n && ((unsigned char)s[k] & 0xC0) == 0x80) k++;
    return k;
}

static bool is_unicode_space(const char *s, size_t n) {
    utf8proc_int32_t cp;
    if (utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &cp) <= 0) return false;
    if (cp < 0x80) return cp == ' ' || (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x1f);
    utf8proc_category_t c = utf8proc_category(cp);
    return cp == 0x85 || c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

/* str.strip/lstrip/rstrip: chars NULL for whitespace. */
static jval strip(const jval *x, const jval *chars, bool left, bool right) {
    const char *s = x->u.s.s, *cs = chars && chars->t == JV_STR ? chars->u.s.s : NULL;
    size_t b = 0, e = x->u.s.n, nc = cs ? chars->u.s.n : 0;
    while (left && b < e) {
        size_t l = cp_len(s + b, e - b);
        if (cs ? !in_set(cs, nc, s + b, l) : !is_unicode_space(s + b, l)) break;
        b += l;
    }
    while (right && e > b) {
        size_t k = e - 1;
        while (k > b && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        if (cs ? !in_set(cs, nc, s + k, e - k) : !is_unicode_space(s + k, e - k)) break;
        e = k;
    }
    return (jval){.t = JV_STR, .u.s = {s + b, e - b}};
}

/* upper, lower, title, capitalize. */
static jval recase(jeval *ev, const jval *x, char how) {
    jbuf b = {0};
    bool word_start = true;
    for (utf8proc_ssize_t i = 0; i < (utf8proc_ssize_t)x->u.s.n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len =
            utf8proc_iterate((const utf8proc_uint8_t *)x->u.s.s + i, (utf8proc_ssize_t)x->u.s.n - i, &cp);
        if (len <= 0) {
            jb_put(&b, x->u.s.s + i, 1);
            i++;
            continue;
        }
        bool up = how == 'U' || (how == 'T' && word_start) || (how == 'C' && i == 0);
        utf8proc_int32_t o = up ? utf8proc_toupper(cp) : how == 'U' ? cp : utf8proc_tolower(cp);
        utf8proc_uint8_t enc[4];
        jb_put(&b, (const char *)enc, (size_t)utf8proc_encode_char(o, enc));
        utf8proc_category_t c = utf8proc_category(cp);
        word_start = !(c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) && !(cp >= '0' && cp <= '9') &&
                     cp != '\'';
        i += len;
    }
    jval v = jv_strn(ev, b.s ? b.s : "", b.n);
    free(b.s);
    return v;
}

static int replace_str(jeval *ev, const jval *x, const jval *from, const jval *to, const jval *count,
                       jval *out) {
    if (x->t != JV_STR || !from || !to || from->t != JV_STR || to->t != JV_STR)
        return je_fail(ev, "replace() needs strings");
    int64_t left = count && count->t == JV_INT ? count->u.i : -1;
    jbuf b = {0};
    size_t nf = from->u.s.n;
    for (size_t i = 0; i < x->u.s.n;) {
        if (left != 0 && nf && i + nf <= x->u.s.n && !memcmp(x->u.s.s + i, from->u.s.s, nf)) {
            jb_put(&b, to->u.s.s, to->u.s.n);
            i += nf;
            left--;
        } else {
            jb_put(&b, x->u.s.s + i, 1);
            i++;
        }
    }
    *out = jv_strn(ev, b.s ? b.s : "", b.n);
    free(b.s);
    return 0;
}

static int split_str(jeval *ev, const jval *x, const jval *sep, jval *out) {
    jarena *a = je_arena(ev);
    jlist *l = ja_alloc(a, sizeof *l);
    if (!l) return je_fail(ev, "out of memory");
    const char *s = x->u.s.s;
    size_t n = x->u.s.n;
    if (!sep || sep->t == JV_NONE) { /* runs of whitespace, none at the ends */
        for (size_t i = 0; i < n;) {
            while (i < n && is_unicode_space(s + i, n - i)) i += cp_len(s + i, n - i);
            size_t b = i;
            while (i < n && !is_unicode_space(s + i, n - i)) i += cp_len(s + i, n - i);
            if (i > b && jv_list_push(a, l, (jval){.t = JV_STR, .u.s = {s + b, i - b}}))
                return je_fail(ev, "out of memory");
        }
    } else {
        if (sep->t != JV_STR || sep->u.s.n == 0)
            return je_fail(ev, "split() needs a non-empty string separator");
        size_t b = 0, k = sep->u.s.n;
        for (size_t i = 0; i + k <= n; i++)
            if (!memcmp(s + i, sep->u.s.s, k)) {
                if (jv_list_push(a, l, (jval){.t = JV_STR, .u.s = {s + b, i - b}}))
                    return je_fail(ev, "out of memory");
                b = i + k;
                i = b - 1;
            }
        if (jv_list_push(a, l, (jval){.t = JV_STR, .u.s = {s + b, n - b}}))
            return je_fail(ev, "out of memory");
    }
    *out = (jval){.t = JV_LIST, .u.l = l};
    return 0;
}

static bool affix(const jval *x, const jval *p, bool end) {
    if (p->t == JV_LIST) {
        for (int i = 0; i < p->u.l->n; i++)
            if (affix(x, &p->u.l->v[i], end)) return true;
        return false;
    }
    if (p->t != JV_STR || p->u.s.n > x->u.s.n) return false;
    return !memcmp(x->u.s.s + (end ? x->u.s.n - p->u.s.n : 0), p->u.s.s, p->u.s.n);
}

static int items_of(jeval *ev, const jval *x, jval *out) {
    jarena *a = je_arena(ev);
    jlist *l = ja_alloc(a, sizeof *l);
    if (!l) return je_fail(ev, "out of memory");
    if (x->t != JV_DICT) return je_fail(ev, "items() of %s", jv_type_name(x));
    for (int i = 0; i < x->u.d->n; i++) {
        jlist *pair = ja_alloc(a, sizeof *pair);
        if (pair) pair->tuple = true;
        if (!pair ||
            jv_list_push(a, pair, (jval){.t = JV_STR, .u.s = {x->u.d->k[i], strlen(x->u.d->k[i])}}) ||
            jv_list_push(a, pair, x->u.d->v[i]) || jv_list_push(a, l, (jval){.t = JV_LIST, .u.l = pair}))
            return je_fail(ev, "out of memory");
    }
    *out = (jval){.t = JV_LIST, .u.l = l};
    return 0;
}

/* ---- methods ---- */

static int call_method(jeval *ev, const jval *fn, int nargs, const jval *args, const char *const *kw,
                       jval *out) {
    const jval *x = fn->u.fn.self;
    const char *m = fn->u.fn.name;
    const jval *a0 = nargs > 0 ? &args[0] : NULL, *a1 = nargs > 1 ? &args[1] : NULL,
               *a2 = nargs > 2 ? &args[2] : NULL;
    if (x->t == JV_DICT) {
        if (!strcmp(m, "items")) return items_of(ev, x, out);
        if (!strcmp(m, "keys") || !strcmp(m, "values")) {
            jlist *l = ja_alloc(je_arena(ev), sizeof *l);
            if (!l) return je_fail(ev, "out of memory");
            for (int i = 0; i < x->u.d->n; i++)
                if (jv_list_push(je_arena(ev), l,
                                 m[0] == 'k'
                                     ? (jval){.t = JV_STR, .u.s = {x->u.d->k[i], strlen(x->u.d->k[i])}}
                                     : x->u.d->v[i]))
                    return je_fail(ev, "out of memory");
            *out = (jval){.t = JV_LIST, .u.l = l};
            return 0;
        }
        if (!strcmp(m, "get")) {
            const jval *v = a0 && a0->t == JV_STR ? jv_dict_get(x->u.d, a0->u.s.s, a0->u.s.n) : NULL;
            *out = v ? *v : a1 ? *a1 : (jval){.t = JV_NONE};
            return 0;
        }
    }
    if (x->t == JV_STR) {
        if (!strcmp(m, "strip")) return *out = strip(x, a0, true, true), 0;
        if (!strcmp(m, "lstrip")) return *out = strip(x, a0, true, false), 0;
        if (!strcmp(m, "rstrip")) return *out = strip(x, a0, false, true), 0;
        if (!strcmp(m, "upper")) return *out = recase(ev, x, 'U'), 0;
        if (!strcmp(m, "lower")) return *out = recase(ev, x, 'L'), 0;
        if (!strcmp(m, "title")) return *out = recase(ev, x, 'T'), 0;
        if (!strcmp(m, "capitalize")) return *out = recase(ev, x, 'C'), 0;
        if (!strcmp(m, "split")) return split_str(ev, x, kwarg(nargs, args, kw, "sep", 0), out);
        if (!strcmp(m, "replace")) return replace_str(ev, x, a0, a1, a2, out);
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            if (!a0) return je_fail(ev, "%s() needs an argument", m);
            *out = (jval){.t = JV_BOOL, .u.b = affix(x, a0, m[0] == 'e')};
            return 0;
        }
    }
    return je_fail(ev, "%s has no method '%s'", jv_type_name(x), m);
}

jval jv_method(const jval *x, const char *name) {
    static const char *const dict_m[] = {"items", "keys", "values", "get", NULL};
    static const char *const str_m[] = {"strip",      "lstrip", "rstrip",  "upper",      "lower",    "title",
                                        "capitalize", "split",  "replace", "startswith", "endswith", NULL};
    const char *const *names = x->t == JV_DICT ? dict_m : x->t == JV_STR ? str_m : NULL;
    for (int i = 0; names && names[i]; i++)
        if (!strcmp(names[i], name)) return (jval){.t = JV_FUNC, .u.fn = {call_method, names[i], x}};
    return (jval){.t = JV_UNDEF};
}

/* ---- globals ---- */

static int g_raise(jeval *ev, const jval *fn, int nargs, const jval *args, const char *const *kw, jval *out) {
    jbuf b = {0};
    if (nargs) jv_str(&b, &args[0]);
    int rc = je_fail(ev, "raise_exception: %.*s", (int)b.n, b.s ? b.s : "");
    free(b.s);
    return rc;
}

static int g_range(jeval *ev, const jval *fn, int nargs, const jval *args, const char *const *kw, jval *out) {
    int64_t v[3] = {0, 0, 1};
    if (nargs < 1 || nargs > 3) return je_fail(ev, "range() takes 1 to 3 arguments");
    for (int i = 0; i < nargs; i++) {
        if (args[i].t != JV_INT) return je_fail(ev, "range() needs integers");
        v[nargs == 1 ? 1 : i] = args[i].u.i;
    }
    if (v[2] == 0) return je_fail(ev, "range() step cannot be zero");
    jlist *l = ja_alloc(je_arena(ev), sizeof *l);
    if (!l) return je_fail(ev, "out of memory");
    for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
        if (l->n > 100000) return je_fail(ev, "range() of more than 100000 items");
        if (jv_list_push(je_arena(ev), l, (jval){.t = JV_INT, .u.i = i})) return je_fail(ev, "out of memory");
    }
    *out = (jval){.t = JV_LIST, .u.l = l};
    return 0;
}

static int g_namespace(jeval *ev, const jval *fn, int nargs, const jval *args, const char *const *kw,
                       jval *out) {
    jdict *d = ja_alloc(je_arena(ev), sizeof *d);
    if (!d) return je_fail(ev, "out of memory");
    d->ns = !strcmp(fn->u.fn.name, "namespace");
    for (int i = 0; i < nargs; i++) {
        if (kw && kw[i]) {
            if (jv_dict_set(je_arena(ev), d, kw[i], args[i])) return je_fail(ev, "out of memory");
        } else if (args[i].t == JV_DICT) {
            for (int k = 0; k < args[i].u.d->n; k++)
                if (jv_dict_set(je_arena(ev), d, args[i].u.d->k[k], args[i].u.d->v[k]))
                    return je_fail(ev, "out of memory");
        } else {
            return je_fail(ev, "%s() takes keyword arguments or a dict", fn->u.fn.name);
        }
    }
    *out = (jval){.t = JV_DICT, .u.d = d};
    return 0;
}

static int g_strftime(jeval *ev, const jval *fn, int nargs, const jval *args, const char *const *kw,
                      jval *out) {
    if (nargs != 1 || args[0].t != JV_STR) return je_fail(ev, "strftime_now() takes a format string");
    char fmt[256], s[512];
    snprintf(fmt, sizeof fmt, "%.*s", (int)args[0].u.s.n, args[0].u.s.s);
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    size_t n = strftime(s, sizeof s, fmt, &tm);
    *out = jv_strn(ev, s, n);
    return 0;
}

jval jv_global(const char *name) {
    static const struct {
        const char *name;
        jfunc fn;
    } g[] = {{"raise_exception", g_raise},
             {"range", g_range},
             {"namespace", g_namespace},
             {"dict", g_namespace},
             {"strftime_now", g_strftime}};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        if (!strcmp(name, g[i].name)) return (jval){.t = JV_FUNC, .u.fn = {g[i].fn, g[i].name, NULL}};
    return (jval){.t = JV_UNDEF};
}

/* ---- tests ---- */

static const char *const test_names[] = {
    "defined", "undefined", "none",     "string",      "number",   "integer", "float", "boolean",
    "mapping", "sequence",  "iterable", "true",        "false",    "even",    "odd",   "equalto",
    "eq",      "ne",        "in",       "divisibleby", "callable", NULL};

bool jv_has_test(const char *name) {
    for (int i = 0; test_names[i]; i++)
        if (!strcmp(test_names[i], name)) return true;
    return false;
}

int jv_test(jeval *ev, const char *name, const jval *x, int nargs, const jval *args, bool *out) {
    jval_type t = x->t;
    const jval *a0 = nargs ? &args[0] : NULL;
    if (!strcmp(name, "defined"))
        *out = t != JV_UNDEF;
    else if (!strcmp(name, "undefined"))
        *out = t == JV_UNDEF;
    else if (!strcmp(name, "none"))
        *out = t == JV_NONE;
    else if (!strcmp(name, "string"))
        *out = t == JV_STR;
    else if (!strcmp(name, "number"))
        *out = t == JV_INT || t == JV_FLOAT;
    else if (!strcmp(name, "integer"))
        *out = t == JV_INT;
    else if (!strcmp(name, "float"))
        *out = t == JV_FLOAT;
    else if (!strcmp(name, "boolean"))
        *out = t == JV_BOOL;
    else if (!strcmp(name, "mapping"))
        *out = t == JV_DICT;
    else if (!strcmp(name, "sequence"))
        *out = t == JV_LIST || t == JV_STR || t == JV_DICT;
    else if (!strcmp(name, "iterable"))
        *out = t == JV_LIST || t == JV_STR || t == JV_DICT;
    else if (!strcmp(name, "callable"))
        *out = t == JV_FUNC;
    else if (!strcmp(name, "true"))
        *out = t == JV_BOOL && x->u.b;
    else if (!strcmp(name, "false"))
        *out = t == JV_BOOL && !x->u.b;
    else if (!strcmp(name, "even") || !strcmp(name, "odd")) {
        if (t != JV_INT) return je_fail(ev, "'%s' test of %s", name, jv_type_name(x));
        *out = (x->u.i % 2 == 0) == (name[0] == 'e');
    } else if (!strcmp(name, "divisibleby")) {
        if (t != JV_INT || !a0 || a0->t != JV_INT || a0->u.i == 0)
            return je_fail(ev, "'divisibleby' needs integers");
        *out = x->u.i % a0->u.i == 0;
    } else if (!strcmp(name, "in")) {
        if (!a0) return je_fail(ev, "'in' test needs an argument");
        *out = false;
        if (a0->t == JV_LIST)
            for (int i = 0; i < a0->u.l->n && !*out; i++) *out = jv_equal(&a0->u.l->v[i], x);
        else if (a0->t == JV_DICT)
            *out = t == JV_STR && jv_dict_get(a0->u.d, x->u.s.s, x->u.s.n);
        else if (a0->t == JV_STR && t == JV_STR)
            for (size_t i = 0; i + x->u.s.n <= a0->u.s.n && !*out; i++)
                *out = !memcmp(a0->u.s.s + i, x->u.s.s, x->u.s.n);
    } else { /* equalto, eq, ne */
        if (!a0) return je_fail(ev, "'%s' test needs an argument", name);
        *out = jv_equal(x, a0) == (strcmp(name, "ne") != 0);
    }
    return 0;
}

/* ---- filters ---- */

static const char *const filter_names[] = {"trim",       "length",  "count",  "upper", "lower",  "title",
                                           "capitalize", "tojson",  "string", "int",   "float",  "default",
                                           "d",          "first",   "last",   "join",  "items",  "list",
                                           "reverse",    "replace", "safe",   "abs",   "unique", "selectattr",
                                           "rejectattr", "select",  "reject", "map",   NULL};

bool jv_has_filter(const char *name) {
    for (int i = 0; filter_names[i]; i++)
        if (!strcmp(filter_names[i], name)) return true;
    return false;
}

static int to_list(jeval *ev, const jval *x, jlist **out) {
    jlist *l = ja_alloc(je_arena(ev), sizeof *l);
    if (!l) return je_fail(ev, "out of memory");
    *out = l;
    if (x->t == JV_LIST) {
        for (int i = 0; i < x->u.l->n; i++)
            if (jv_list_push(je_arena(ev), l, x->u.l->v[i])) return je_fail(ev, "out of memory");
    } else if (x->t == JV_DICT) {
        for (int i = 0; i < x->u.d->n; i++)
            if (jv_list_push(je_arena(ev), l,
                             (jval){.t = JV_STR, .u.s = {x->u.d->k[i], strlen(x->u.d->k[i])}}))
                return je_fail(ev, "out of memory");
    } else if (x->t == JV_STR) {
        for (size_t i = 0; i < x->u.s.n;) {
            size_t k = cp_len(x->u.s.s + i, x->u.s.n - i);
            if (jv_list_push(je_arena(ev), l, (jval){.t = JV_STR, .u.s = {x->u.s.s + i, k}}))
                return je_fail(ev, "out of memory");
            i += k;
        }
    } else if (x->t != JV_UNDEF) {
        return je_fail(ev, "%s is not iterable", jv_type_name(x));
    }
    return 0;
}

/* An item's attribute for selectattr/map: "a.b" walks dicts. */
static jval item_attr(const jval *item, const jval *attr) {
    jval v = *item;
    if (!attr || attr->t != JV_STR) return (jval){.t = JV_UNDEF};
    const char *s = attr->u.s.s, *e = s + attr->u.s.n;
    while (s < e) {
        const char *dot = memchr(s, '.', (size_t)(e - s));
        size_t n = dot ? (size_t)(dot - s) : (size_t)(e - s);
        const jval *f = v.t == JV_DICT ? jv_dict_get(v.u.d, s, n) : NULL;
        if (!f) return (jval){.t = JV_UNDEF};
        v = *f;
        s += n + (dot != NULL);
    }
    return v;
}

/* select/reject (a test on each item) and selectattr/rejectattr (on each item's attribute args[0]). */
static int select_items(jeval *ev, const jval *x, int nargs, const jval *args, bool reject, bool by_attr,
                        jval *out) {
    jlist *in, *l = ja_alloc(je_arena(ev), sizeof *l);
    if (!l || to_list(ev, x, &in)) return je_fail(ev, "out of memory");
    int t = by_attr; /* the test's name is args[t] */
    for (int i = 0; i < in->n; i++) {
        jval v = by_attr ? item_attr(&in->v[i], nargs ? &args[0] : NULL) : in->v[i];
        bool ok;
        if (nargs <= t) {
            ok = jv_truthy(&v);
        } else {
            char name[64];
            snprintf(name, sizeof name, "%.*s", args[t].t == JV_STR ? (int)args[t].u.s.n : 0, args[t].u.s.s);
            if (!jv_has_test(name)) return je_fail(ev, "the test '%s' is not supported", name);
            if (jv_test(ev, name, &v, nargs - t - 1, args + t + 1, &ok)) return MX_ERR_ARG;
        }
        if (ok != reject && jv_list_push(je_arena(ev), l, in->v[i])) return je_fail(ev, "out of memory");
    }
    *out = (jval){.t = JV_LIST, .u.l = l};
    return 0;
}

int jv_filter(jeval *ev, const char *f, const jval *x, int nargs, const jval *args, const char *const *kw,
              jval *out) {
    const jval *a0 = nargs ? &args[0] : NULL;
    jlist *l;
    if (!strcmp(f, "safe")) return *out = *x, 0;
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        const jval *dv = kwarg(nargs, args, kw, "default_value", 0),
                   *b = kwarg(nargs, args, kw, "boolean", 1);
        bool use = x->t == JV_UNDEF || (b && jv_truthy(b) && !jv_truthy(x));
        *out = use ? (dv ? *dv : (jval){.t = JV_STR, .u.s = {"", 0}}) : *x;
        return 0;
    }
    if (!strcmp(f, "tojson")) {
        const jval *ind = kwarg(nargs, args, kw, "indent", 0);
        jbuf b = {0};
        jv_json(&b, x, ind && ind->t == JV_INT ? (int)ind->u.i : -1, 0);
        *out = jv_strn(ev, b.s ? b.s : "", b.n);
        free(b.s);
        return 0;
    }
    if (!strcmp(f, "string")) return *out = str_of(ev, x), 0;
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        int64_t n = x->t == JV_LIST ? x->u.l->n : x->t == JV_DICT ? x->u.d->n : -1;
        if (x->t == JV_STR) {
            n = 0;
            for (size_t i = 0; i < x->u.s.n; i++) n += ((unsigned char)x->u.s.s[i] & 0xC0) != 0x80;
        }
        if (x->t == JV_UNDEF) n = 0;
        if (n < 0) return je_fail(ev, "length of %s", jv_type_name(x));
        *out = (jval){.t = JV_INT, .u.i = n};
        return 0;
    }
    if (!strcmp(f, "int") || !strcmp(f, "float")) {
        double d = 0;
        if (x->t == JV_INT || x->t == JV_BOOL)
            d = x->t == JV_INT ? (double)x->u.i : x->u.b;
        else if (x->t == JV_FLOAT)
            d = x->u.f;
        else if (x->t == JV_STR) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*s", (int)x->u.s.n, x->u.s.s);
            d = strtod(buf, NULL);
        }
        *out = f[0] == 'i' ? (jval){.t = JV_INT, .u.i = (int64_t)d} : (jval){.t = JV_FLOAT, .u.f = d};
        return 0;
    }
    if (!strcmp(f, "abs")) {
        if (x->t == JV_INT) return *out = (jval){.t = JV_INT, .u.i = x->u.i < 0 ? -x->u.i : x->u.i}, 0;
        if (x->t == JV_FLOAT) return *out = (jval){.t = JV_FLOAT, .u.f = fabs(x->u.f)}, 0;
        return je_fail(ev, "abs of %s", jv_type_name(x));
    }
    if (!strcmp(f, "items")) return items_of(ev, x, out);
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr") || !strcmp(f, "select") || !strcmp(f, "reject"))
        return select_items(ev, x, nargs, args, f[0] == 'r', strlen(f) > 6, out);
    if (!strcmp(f, "list") || !strcmp(f, "first") || !strcmp(f, "last") || !strcmp(f, "reverse") ||
        !strcmp(f, "unique") || !strcmp(f, "join") || !strcmp(f, "map")) {
        if (to_list(ev, x, &l)) return MX_ERR_ARG;
        if (!strcmp(f, "list")) return *out = (jval){.t = JV_LIST, .u.l = l}, 0;
        if (!strcmp(f, "first")) return *out = l->n ? l->v[0] : (jval){.t = JV_UNDEF}, 0;
        if (!strcmp(f, "last")) return *out = l->n ? l->v[l->n - 1] : (jval){.t = JV_UNDEF}, 0;
        if (!strcmp(f, "reverse")) {
            for (int i = 0; i < l->n / 2; i++) {
                jval t = l->v[i];
                l->v[i] = l->v[l->n - 1 - i], l->v[l->n - 1 - i] = t;
            }
            if (x->t != JV_STR) return *out = (jval){.t = JV_LIST, .u.l = l}, 0;
            jbuf b = {0};
            for (int i = 0; i < l->n; i++) jv_str(&b, &l->v[i]);
            *out = jv_strn(ev, b.s ? b.s : "", b.n);
            free(b.s);
            return 0;
        }
        if (!strcmp(f, "unique")) {
            jlist *u = ja_alloc(je_arena(ev), sizeof *u);
            if (!u) return je_fail(ev, "out of memory");
            for (int i = 0; i < l->n; i++) {
                bool dup = false;
                for (int k = 0; k < u->n && !dup; k++) dup = jv_equal(&u->v[k], &l->v[i]);
                if (!dup && jv_list_push(je_arena(ev), u, l->v[i])) return je_fail(ev, "out of memory");
            }
            return *out = (jval){.t = JV_LIST, .u.l = u}, 0;
        }
        if (!strcmp(f, "map")) {
            const jval *attr = kwarg(nargs, args, kw, "attribute", 99);
            if (!attr) return je_fail(ev, "map() is supported with attribute= only");
            for (int i = 0; i < l->n; i++) l->v[i] = item_attr(&l->v[i], attr);
            return *out = (jval){.t = JV_LIST, .u.l = l}, 0;
        }
        /* join */
        const jval *sep = kwarg(nargs, args, kw, "d", 0), *attr = kwarg(nargs, args, kw, "attribute", 1);
        jbuf b = {0};
        for (int i = 0; i < l->n; i++) {
            if (i && sep) jv_str(&b, sep);
            jval v = attr ? item_attr(&l->v[i], attr) : l->v[i];
            jv_str(&b, &v);
        }
        *out = jv_strn(ev, b.s ? b.s : "", b.n);
        free(b.s);
        return 0;
    }
    /* string filters */
    jval s = str_of(ev, x);
    if (!strcmp(f, "trim")) return *out = strip(&s, kwarg(nargs, args, kw, "chars", 0), true, true), 0;
    if (!strcmp(f, "upper")) return *out = recase(ev, &s, 'U'), 0;
    if (!strcmp(f, "lower")) return *out = recase(ev, &s, 'L'), 0;
    if (!strcmp(f, "title")) return *out = recase(ev, &s, 'T'), 0;
    if (!strcmp(f, "capitalize")) return *out = recase(ev, &s, 'C'), 0;
    if (!strcmp(f, "replace"))
        return replace_str(ev, &s, a0, nargs > 1 ? &args[1] : NULL, nargs > 2 ? &args[2] : NULL, out);
    return je_fail(ev, "the filter '%s' is not supported", f);
}
