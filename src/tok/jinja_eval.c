/* jinja_eval.c: renders a parsed template (see jinja.h): walks the statement list, evaluating expressions to
 * values (jinja_value.c) in a stack of scopes (the variables given, then one scope per loop iteration, as
 * Jinja scopes loops: a `set` inside a loop does not outlive its iteration, a namespace() attribute does).
 * Every value of a render lives in one arena, freed when the render ends. */
#include "jinja_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_SCOPES = 64 };

struct jeval {
    jarena a;
    const mx_jinja *j;
    jbuf out;
    jdict *scope[MAX_SCOPES];
    int n_scope;
    mx_err *err;
    bool failed;
    int line;
    int ctl;    /* 1 after break, 2 after continue, until the loop sees it */
    long steps; /* expressions evaluated: a render is bounded (MAX_STEPS) so that no template runs away */
};

enum { MAX_STEPS = 20000000, MAX_OUTPUT = 64 << 20 };

jarena *je_arena(jeval *ev) {
    return &ev->a;
}

int je_fail(jeval *ev, const char *fmt, ...) {
    if (ev->failed) return MX_ERR_ARG;
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ev->failed = true;
    mx_err_set(ev->err, MX_ERR_ARG, "%s: line %d: %s", ev->j->where, ev->line, msg);
    return MX_ERR_ARG;
}

static int oom(jeval *ev) {
    if (!ev->failed) mx_err_set(ev->err, MX_ERR_NOMEM, "%s: out of memory", ev->j->where);
    ev->failed = true;
    return MX_ERR_NOMEM;
}

jval jv_strn(jeval *ev, const char *s, size_t n) {
    char *d = ja_strndup(&ev->a, s, n);
    if (!d) oom(ev);
    return (jval){.t = JV_STR, .u.s = {d ? d : "", d ? n : 0}};
}

static const jval *lookup(jeval *ev, const char *name) {
    for (int i = ev->n_scope - 1; i >= 0; i--) {
        const jval *v = jv_dict_get(ev->scope[i], name, strlen(name));
        if (v) return v;
    }
    return NULL;
}

static int eval(jeval *ev, const jnode *n, jval *out);

/* ---- indexing ---- */

/* Number of code points of s[0..n) and the byte offset of code point k (k <= count). */
static size_t utf8_count(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static size_t utf8_offset(const char *s, size_t n, size_t k) {
    size_t i = 0;
    for (size_t c = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (c == k) return i;
            c++;
        }
    }
    return n;
}

static int index_value(jeval *ev, const jval *x, const jval *ix, jval *out) {
    *out = (jval){.t = JV_UNDEF};
    if (x->t == JV_DICT) {
        if (ix->t != JV_STR) return 0;
        const jval *v = jv_dict_get(x->u.d, ix->u.s.s, ix->u.s.n);
        if (v) *out = *v;
        return 0;
    }
    if (x->t == JV_UNDEF) return je_fail(ev, "indexing a value that is undefined");
    if ((x->t != JV_LIST && x->t != JV_STR) || ix->t != JV_INT) {
        if (x->t == JV_LIST || x->t == JV_STR)
            return je_fail(ev, "%s indices must be integers, not %s", jv_type_name(x), jv_type_name(ix));
        return 0;
    }
    int64_t len = x->t == JV_LIST ? x->u.l->n : (int64_t)utf8_count(x->u.s.s, x->u.s.n), k = ix->u.i;
    if (k < 0) k += len;
    if (k < 0 || k >= len) return 0;
    if (x->t == JV_LIST) {
        *out = x->u.l->v[k];
    } else {
        size_t b = utf8_offset(x->u.s.s, x->u.s.n, (size_t)k),
               e = utf8_offset(x->u.s.s, x->u.s.n, (size_t)k + 1);
        *out = (jval){.t = JV_STR, .u.s = {x->u.s.s + b, e - b}};
    }
    return 0;
}

static int slice_bound(jeval *ev, const jnode *n, int64_t len, int64_t dflt, bool *given, int64_t *out) {
    *given = false;
    *out = dflt;
    if (!n) return 0;
    jval v;
    if (eval(ev, n, &v)) return MX_ERR_ARG;
    if (v.t == JV_NONE) return 0;
    if (v.t != JV_INT) return je_fail(ev, "slice indices must be integers");
    *given = true;
    *out = v.u.i;
    return 0;
}

/* Python's x[b:e:s]. */
static int slice_value(jeval *ev, const jnode *n, const jval *x, jval *out) {
    if (x->t != JV_LIST && x->t != JV_STR) return je_fail(ev, "slicing %s", jv_type_name(x));
    int64_t len = x->t == JV_LIST ? x->u.l->n : (int64_t)utf8_count(x->u.s.s, x->u.s.n), b, e, s;
    bool gb, ge, gs;
    if (slice_bound(ev, n->args[0], len, 1, &gs, &s)) return MX_ERR_ARG;
    if (s == 0) return je_fail(ev, "slice step cannot be zero");
    if (slice_bound(ev, n->b, len, s > 0 ? 0 : len - 1, &gb, &b) ||
        slice_bound(ev, n->c, len, s > 0 ? len : -1, &ge, &e))
        return MX_ERR_ARG;
    if (gb) {
        if (b < 0) b += len;
        b = s > 0 ? (b < 0 ? 0 : b > len ? len : b) : (b < 0 ? -1 : b >= len ? len - 1 : b);
    }
    if (ge) {
        if (e < 0) e += len;
        e = s > 0 ? (e < 0 ? 0 : e > len ? len : e) : (e < -1 ? -1 : e >= len ? len - 1 : e);
    }
    jlist *l = ja_alloc(&ev->a, sizeof *l);
    if (!l) return oom(ev);
    jbuf sb = {0};
    for (int64_t i = b; s > 0 ? i < e : i > e; i += s) {
        jval item, ix = {.t = JV_INT, .u.i = i};
        index_value(ev, x, &ix, &item);
        if (x->t == JV_LIST ? jv_list_push(&ev->a, l, item) != 0
                            : (jb_put(&sb, item.u.s.s, item.u.s.n), sb.oom))
            return free(sb.s), oom(ev);
    }
    if (x->t == JV_LIST) {
        *out = (jval){.t = JV_LIST, .u.l = l};
    } else {
        *out = jv_strn(ev, sb.s ? sb.s : "", sb.n);
        free(sb.s);
    }
    return 0;
}

static int attr_value(jeval *ev, const jval *x, const char *name, jval *out) {
    *out = (jval){.t = JV_UNDEF};
    if (x->t == JV_UNDEF) return je_fail(ev, "undefined value has no attribute '%s'", name);
    if (x->t == JV_DICT) {
        const jval *v = jv_dict_get(x->u.d, name, strlen(name));
        if (v) return *out = *v, 0;
    }
    jval *self = ja_alloc(&ev->a, sizeof *self);
    if (!self) return oom(ev);
    *self = *x;
    *out = jv_method(self, name);
    return 0;
}

/* ---- operators ---- */

static bool is_num(const jval *v) {
    return v->t == JV_INT || v->t == JV_FLOAT || v->t == JV_BOOL;
}
static double num(const jval *v) {
    return v->t == JV_FLOAT ? v->u.f : v->t == JV_INT ? (double)v->u.i : v->u.b;
}
static int64_t inum(const jval *v) {
    return v->t == JV_INT ? v->u.i : v->u.b;
}

static int compare(jeval *ev, int op, const jval *a, const jval *b, bool *res) {
    if (op == OP_EQ || op == OP_NE) {
        *res = jv_equal(a, b) == (op == OP_EQ);
        return 0;
    }
    int c;
    if (is_num(a) && is_num(b)) {
        double x = num(a), y = num(b);
        c = x < y ? -1 : x > y;
    } else if (a->t == JV_STR && b->t == JV_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        c = memcmp(a->u.s.s, b->u.s.s, n);
        if (!c) c = a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    } else {
        return je_fail(ev, "cannot compare %s with %s", jv_type_name(a), jv_type_name(b));
    }
    *res = op == '<' ? c < 0 : op == '>' ? c > 0 : op == OP_LE ? c <= 0 : c >= 0;
    return 0;
}

static int contains(jeval *ev, const jval *hay, const jval *needle, bool *res) {
    *res = false;
    if (hay->t == JV_STR) {
        if (needle->t != JV_STR) return je_fail(ev, "'in <string>' requires a string on the left");
        if (needle->u.s.n == 0) return *res = true, 0;
        for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n && !*res; i++)
            *res = memcmp(hay->u.s.s + i, needle->u.s.s, needle->u.s.n) == 0;
        return 0;
    }
    if (hay->t == JV_LIST) {
        for (int i = 0; i < hay->u.l->n && !*res; i++) *res = jv_equal(&hay->u.l->v[i], needle);
        return 0;
    }
    if (hay->t == JV_DICT) {
        *res = needle->t == JV_STR && jv_dict_get(hay->u.d, needle->u.s.s, needle->u.s.n);
        return 0;
    }
    if (hay->t == JV_UNDEF) return 0;
    return je_fail(ev, "'in' on %s", jv_type_name(hay));
}

static int arith(jeval *ev, int op, const jval *a, const jval *b, jval *out) {
    if (op == '~') {
        jbuf sb = {0};
        jv_str(&sb, a);
        jv_str(&sb, b);
        if (sb.oom) return free(sb.s), oom(ev);
        *out = jv_strn(ev, sb.s ? sb.s : "", sb.n);
        free(sb.s);
        return 0;
    }
    if (a->t == JV_UNDEF || b->t == JV_UNDEF)
        return je_fail(ev, "an undefined value in an arithmetic expression");
    if (op == '+' && a->t == JV_STR && b->t == JV_STR) {
        char *d = ja_alloc(&ev->a, a->u.s.n + b->u.s.n + 1);
        if (!d) return oom(ev);
        memcpy(d, a->u.s.s, a->u.s.n);
        memcpy(d + a->u.s.n, b->u.s.s, b->u.s.n);
        *out = (jval){.t = JV_STR, .u.s = {d, a->u.s.n + b->u.s.n}};
        return 0;
    }
    if (op == '+' && a->t == JV_LIST && b->t == JV_LIST) {
        jlist *l = ja_alloc(&ev->a, sizeof *l);
        if (!l) return oom(ev);
        for (int i = 0; i < a->u.l->n; i++)
            if (jv_list_push(&ev->a, l, a->u.l->v[i])) return oom(ev);
        for (int i = 0; i < b->u.l->n; i++)
            if (jv_list_push(&ev->a, l, b->u.l->v[i])) return oom(ev);
        *out = (jval){.t = JV_LIST, .u.l = l};
        return 0;
    }
    if (op == '*' && ((a->t == JV_STR && b->t == JV_INT) || (a->t == JV_INT && b->t == JV_STR))) {
        const jval *s = a->t == JV_STR ? a : b;
        int64_t k = a->t == JV_INT ? a->u.i : b->u.i;
        jbuf sb = {0};
        for (int64_t i = 0; i < k && s->u.s.n && !sb.oom; i++) jb_put(&sb, s->u.s.s, s->u.s.n);
        if (sb.oom) return free(sb.s), oom(ev);
        *out = jv_strn(ev, sb.s ? sb.s : "", sb.n);
        free(sb.s);
        return 0;
    }
    if (!is_num(a) || !is_num(b))
        return je_fail(ev, "unsupported operand types for '%s': %s and %s",
                       op == OP_FLOORDIV ? "//"
                       : op == OP_POW    ? "**"
                                         : (char[2]){(char)op, 0},
                       jv_type_name(a), jv_type_name(b));
    bool ints = a->t != JV_FLOAT && b->t != JV_FLOAT;
    double x = num(a), y = num(b);
    if ((op == '/' || op == OP_FLOORDIV || op == '%') && y == 0) return je_fail(ev, "division by zero");
    if (ints && op != '/' && !(op == OP_POW && (inum(b) < 0 || inum(b) > 62))) {
        int64_t i = inum(a), j = inum(b), r = 0;
        switch (op) {
        case '+':
            r = i + j;
            break;
        case '-':
            r = i - j;
            break;
        case '*':
            r = i * j;
            break;
        case OP_FLOORDIV:
            r = i / j - ((i % j != 0) && ((i < 0) != (j < 0)));
            break;
        case '%':
            r = i % j;
            if (r && ((r < 0) != (j < 0))) r += j;
            break;
        case OP_POW:
            r = 1;
            for (int64_t k = 0; k < j; k++) r *= i;
            break;
        }
        *out = (jval){.t = JV_INT, .u.i = r};
        return 0;
    }
    double r = 0;
    switch (op) {
    case '+':
        r = x + y;
        break;
    case '-':
        r = x - y;
        break;
    case '*':
        r = x * y;
        break;
    case '/':
        r = x / y;
        break;
    case OP_FLOORDIV:
        r = floor(x / y);
        break;
    case '%':
        r = fmod(x, y);
        if (r && ((r < 0) != (y < 0))) r += y;
        break;
    case OP_POW:
        r = pow(x, y);
        break;
    }
    *out = (jval){.t = JV_FLOAT, .u.f = r};
    return 0;
}

/* ---- expressions ---- */

static int eval_args(jeval *ev, const jnode *n, jval *args) {
    for (int i = 0; i < n->nargs; i++)
        if (eval(ev, n->args[i], &args[i])) return MX_ERR_ARG;
    return 0;
}

static int eval(jeval *ev, const jnode *n, jval *out) {
    if (ev->failed) return MX_ERR_ARG;
    if (++ev->steps > MAX_STEPS) return je_fail(ev, "the template ran for more than %d steps", MAX_STEPS);
    ev->line = n->line;
    jval a, b, args[32];
    bool r;
    switch (n->kind) {
    case JN_LIT:
        *out = n->lit;
        return 0;
    case JN_NAME: {
        const jval *v = lookup(ev, n->name);
        *out = v ? *v : jv_global(n->name);
        return 0;
    }
    case JN_LIST:
    case JN_DICT: {
        jlist *l = n->kind == JN_LIST ? ja_alloc(&ev->a, sizeof *l) : NULL;
        jdict *d = n->kind == JN_DICT ? ja_alloc(&ev->a, sizeof *d) : NULL;
        if (!l && !d) return oom(ev);
        for (int i = 0; i < n->nargs; i++) {
            if (eval(ev, n->args[i], &a)) return MX_ERR_ARG;
            if (l) {
                if (jv_list_push(&ev->a, l, a)) return oom(ev);
                continue;
            }
            if (a.t != JV_STR) return je_fail(ev, "dict keys must be strings here");
            if (eval(ev, n->args[++i], &b)) return MX_ERR_ARG;
            if (jv_dict_set(&ev->a, d, ja_strndup(&ev->a, a.u.s.s, a.u.s.n), b)) return oom(ev);
        }
        if (l) l->tuple = n->op;
        *out = l ? (jval){.t = JV_LIST, .u.l = l} : (jval){.t = JV_DICT, .u.d = d};
        return 0;
    }
    case JN_ATTR:
        return eval(ev, n->a, &a) || attr_value(ev, &a, n->name, out);
    case JN_INDEX:
        return eval(ev, n->a, &a) || eval(ev, n->b, &b) || index_value(ev, &a, &b, out);
    case JN_SLICE:
        return eval(ev, n->a, &a) || slice_value(ev, n, &a, out);
    case JN_CALL:
        if (eval(ev, n->a, &a) || eval_args(ev, n, args)) return MX_ERR_ARG;
        if (a.t != JV_FUNC)
            return je_fail(ev, "%s is not callable",
                           a.t == JV_UNDEF ? "an undefined value" : jv_type_name(&a));
        ev->line = n->line;
        return a.u.fn.call(ev, &a, n->nargs, args, n->kw, out);
    case JN_FILTER:
        if (eval(ev, n->a, &a) || eval_args(ev, n, args)) return MX_ERR_ARG;
        ev->line = n->line;
        return jv_filter(ev, n->name, &a, n->nargs, args, n->kw, out);
    case JN_TEST:
        if (eval(ev, n->a, &a) || eval_args(ev, n, args)) return MX_ERR_ARG;
        ev->line = n->line;
        if (jv_test(ev, n->name, &a, n->nargs, args, &r)) return MX_ERR_ARG;
        *out = (jval){.t = JV_BOOL, .u.b = r != n->negate};
        return 0;
    case JN_UNARY:
        if (eval(ev, n->a, &a)) return MX_ERR_ARG;
        if (!is_num(&a)) return je_fail(ev, "unary '%c' on %s", n->op, jv_type_name(&a));
        *out = a.t == JV_FLOAT ? (jval){.t = JV_FLOAT, .u.f = n->op == '-' ? -a.u.f : a.u.f}
                               : (jval){.t = JV_INT, .u.i = n->op == '-' ? -inum(&a) : inum(&a)};
        return 0;
    case JN_NOT:
        if (eval(ev, n->a, &a)) return MX_ERR_ARG;
        *out = (jval){.t = JV_BOOL, .u.b = !jv_truthy(&a)};
        return 0;
    case JN_AND:
    case JN_OR: /* Python's: the deciding operand itself */
        if (eval(ev, n->a, &a)) return MX_ERR_ARG;
        if (jv_truthy(&a) == (n->kind == JN_OR)) return *out = a, 0;
        return eval(ev, n->b, out);
    case JN_COND:
        if (eval(ev, n->b, &a)) return MX_ERR_ARG;
        if (jv_truthy(&a)) return eval(ev, n->a, out);
        if (n->c) return eval(ev, n->c, out);
        *out = (jval){.t = JV_UNDEF};
        return 0;
    case JN_BINARY:
        if (eval(ev, n->a, &a) || eval(ev, n->b, &b)) return MX_ERR_ARG;
        ev->line = n->line;
        if (n->op == OP_IN || n->op == OP_NOTIN) {
            if (contains(ev, &b, &a, &r)) return MX_ERR_ARG;
            *out = (jval){.t = JV_BOOL, .u.b = r == (n->op == OP_IN)};
            return 0;
        }
        if (n->op == OP_EQ || n->op == OP_NE || n->op == '<' || n->op == '>' || n->op == OP_LE ||
            n->op == OP_GE) {
            if (compare(ev, n->op, &a, &b, &r)) return MX_ERR_ARG;
            *out = (jval){.t = JV_BOOL, .u.b = r};
            return 0;
        }
        return arith(ev, n->op, &a, &b, out);
    default:
        return je_fail(ev, "a statement where an expression belongs");
    }
}

/* ---- statements ---- */

static int exec_list(jeval *ev, const jnode *n);

/* The items a for loop walks: a list's items, a dict's keys, a string's characters. */
static int iter_items(jeval *ev, const jval *x, jlist **out) {
    jlist *l = ja_alloc(&ev->a, sizeof *l);
    if (!l) return oom(ev);
    *out = l;
    if (x->t == JV_LIST) {
        for (int i = 0; i < x->u.l->n; i++)
            if (jv_list_push(&ev->a, l, x->u.l->v[i])) return oom(ev);
    } else if (x->t == JV_DICT) {
        for (int i = 0; i < x->u.d->n; i++)
            if (jv_list_push(&ev->a, l, (jval){.t = JV_STR, .u.s = {x->u.d->k[i], strlen(x->u.d->k[i])}}))
                return oom(ev);
    } else if (x->t == JV_STR) {
        size_t len = utf8_count(x->u.s.s, x->u.s.n);
        for (size_t i = 0; i < len; i++) {
            jval c, ix = {.t = JV_INT, .u.i = (int64_t)i};
            index_value(ev, x, &ix, &c);
            if (jv_list_push(&ev->a, l, c)) return oom(ev);
        }
    } else if (x->t != JV_UNDEF) {
        return je_fail(ev, "%s is not iterable", jv_type_name(x));
    }
    return 0;
}

static int bind_target(jeval *ev, jdict *scope, const jnode *n, const jval *item) {
    if (!n->name2) return jv_dict_set(&ev->a, scope, n->name, *item) ? oom(ev) : 0;
    if (item->t != JV_LIST || item->u.l->n != 2)
        return je_fail(ev, "cannot unpack %s into 2 loop variables", jv_type_name(item));
    return jv_dict_set(&ev->a, scope, n->name, item->u.l->v[0]) ||
                   jv_dict_set(&ev->a, scope, n->name2, item->u.l->v[1])
               ? oom(ev)
               : 0;
}

static int push_scope(jeval *ev, jdict **out) {
    if (ev->n_scope == MAX_SCOPES) return je_fail(ev, "loops nested more than %d deep", MAX_SCOPES - 2);
    jdict *d = ja_alloc(&ev->a, sizeof *d);
    if (!d) return oom(ev);
    ev->scope[ev->n_scope++] = *out = d;
    return 0;
}

static int exec_for(jeval *ev, const jnode *n) {
    jval it;
    jlist *all = NULL, *items;
    if (eval(ev, n->a, &it) || iter_items(ev, &it, &all)) return MX_ERR_ARG;
    if (!n->filter) {
        items = all;
    } else { /* `for x in xs if cond`: the loop sees only the items that pass */
        jdict *scope = NULL;
        if (!(items = ja_alloc(&ev->a, sizeof *items)) || push_scope(ev, &scope)) return oom(ev);
        for (int i = 0; i < all->n; i++) {
            jval c;
            if (bind_target(ev, scope, n, &all->v[i]) || eval(ev, n->filter, &c)) return MX_ERR_ARG;
            if (jv_truthy(&c) && jv_list_push(&ev->a, items, all->v[i])) return oom(ev);
        }
        ev->n_scope--;
    }
    if (items->n == 0) return n->c ? exec_list(ev, n->c) : 0;
    for (int i = 0; i < items->n; i++) {
        jdict *scope = NULL, *loop = ja_alloc(&ev->a, sizeof *loop);
        if (!loop || push_scope(ev, &scope)) return oom(ev);
        int64_t len = items->n;
        struct {
            const char *k;
            jval v;
        } fields[] = {
            {"index", {.t = JV_INT, .u.i = i + 1}},
            {"index0", {.t = JV_INT, .u.i = i}},
            {"revindex", {.t = JV_INT, .u.i = len - i}},
            {"revindex0", {.t = JV_INT, .u.i = len - i - 1}},
            {"first", {.t = JV_BOOL, .u.b = i == 0}},
            {"last", {.t = JV_BOOL, .u.b = i == len - 1}},
            {"length", {.t = JV_INT, .u.i = len}},
            {"previtem", i > 0 ? items->v[i - 1] : (jval){.t = JV_UNDEF}},
            {"nextitem", i + 1 < len ? items->v[i + 1] : (jval){.t = JV_UNDEF}},
        };
        for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++)
            if (jv_dict_set(&ev->a, loop, fields[k].k, fields[k].v)) return oom(ev);
        if (jv_dict_set(&ev->a, scope, "loop", (jval){.t = JV_DICT, .u.d = loop}) ||
            bind_target(ev, scope, n, &items->v[i]))
            return oom(ev);
        int rc = exec_list(ev, n->b);
        ev->n_scope--;
        if (rc) return rc;
        int ctl = ev->ctl;
        ev->ctl = 0;
        if (ctl == 1) break;
    }
    return 0;
}

static int exec_set(jeval *ev, const jnode *n) {
    jval v;
    if (eval(ev, n->a, &v)) return MX_ERR_ARG;
    if (!n->name2) return jv_dict_set(&ev->a, ev->scope[ev->n_scope - 1], n->name, v) ? oom(ev) : 0;
    const jval *ns = lookup(ev, n->name);
    if (!ns || ns->t != JV_DICT || !ns->u.d->ns)
        return je_fail(ev, "cannot set '%s.%s': '%s' is not a namespace()", n->name, n->name2, n->name);
    return jv_dict_set(&ev->a, ns->u.d, n->name2, v) ? oom(ev) : 0;
}

static int exec_list(jeval *ev, const jnode *n) {
    for (; n && !ev->ctl; n = n->next) {
        ev->line = n->line;
        jval v;
        int rc = 0;
        switch (n->kind) {
        case JN_TEXT:
            jb_put(&ev->out, n->lit.u.s.s, n->lit.u.s.n);
            break;
        case JN_OUTPUT:
            if (!(rc = eval(ev, n->a, &v))) jv_str(&ev->out, &v);
            break;
        case JN_IF: {
            const jnode *b = n;
            for (; b && b->kind == JN_IF; b = b->c) { /* elif chains are nested ifs in c */
                if ((rc = eval(ev, b->a, &v))) break;
                if (jv_truthy(&v)) {
                    rc = exec_list(ev, b->b);
                    b = NULL;
                    break;
                }
                if (b->c && b->c->kind != JN_IF) {
                    rc = exec_list(ev, b->c);
                    b = NULL;
                    break;
                }
            }
            break;
        }
        case JN_FOR:
            rc = exec_for(ev, n);
            break;
        case JN_SET:
            rc = exec_set(ev, n);
            break;
        case JN_BLOCK:
            rc = exec_list(ev, n->b);
            break;
        case JN_BREAK:
            ev->ctl = 1;
            break;
        case JN_CONTINUE:
            ev->ctl = 2;
            break;
        default:
            rc = je_fail(ev, "an expression where a statement belongs");
        }
        if (rc) return rc;
        if (ev->out.oom) return oom(ev);
        if (ev->out.n > MAX_OUTPUT)
            return je_fail(ev, "the template wrote more than %d MiB", MAX_OUTPUT >> 20);
    }
    return 0;
}

char *mx_jinja_render(const mx_jinja *j, const cJSON *vars, mx_err *err) {
    jeval ev = {.j = j, .err = err};
    jdict *globals = NULL;
    int rc = push_scope(&ev, &globals);
    const cJSON *e;
    cJSON_ArrayForEach(e, vars) {
        if (rc) break;
        jval v = jv_from_json(&ev.a, e);
        if (v.t == JV_UNDEF)
            rc = oom(&ev);
        else if (jv_dict_set(&ev.a, globals, e->string, v))
            rc = oom(&ev);
    }
    if (!rc) push_scope(&ev, &globals); /* the template's own top-level `set`s */
    if (!rc && !ev.failed) rc = exec_list(&ev, j->body);
    ja_free(&ev.a);
    if (rc || ev.failed) {
        free(ev.out.s);
        return NULL;
    }
    if (!ev.out.s) {
        ev.out.s = malloc(1);
        if (!ev.out.s) return mx_err_set(err, MX_ERR_NOMEM, "out of memory"), NULL;
    }
    ev.out.s[ev.out.n] = '\0';
    return ev.out.s;
}
