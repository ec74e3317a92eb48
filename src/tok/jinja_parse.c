/* jinja_parse.c: template source -> syntax tree (see jinja.h, jinja_impl.h). The lexer cuts the source into
 * text and tags, applying the whitespace rules transformers renders with (trim_blocks: the newline after a
 * block or comment tag goes; lstrip_blocks: spaces and tabs before one on its line go; '-' strips all
 * whitespace on its side, '+' keeps it; newlines normalized to '\n'; one trailing newline of the source
 * dropped), and tags into tokens. A recursive-descent parser follows Jinja's precedence: conditional, or,
 * and, not, comparisons (in, is), + -, ~, * / // %, **, unary - +, then primary with . [] () and |filters. */
#include "jinja_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */

struct jarena_block {
    jarena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *ja_alloc(jarena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    jarena_block *b = a->head;
    if (!b || b->used + n > b->cap) {
        size_t cap = n > 60000 ? n : 60000;
        jarena_block *nb = malloc(sizeof *nb + cap);
        if (!nb) return NULL;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        a->head = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

char *ja_strndup(jarena *a, const char *s, size_t n) {
    char *p = ja_alloc(a, n + 1);
    if (p) memcpy(p, s, n), p[n] = '\0';
    return p;
}

void ja_free(jarena *a) {
    for (jarena_block *b = a->head, *nx; b; b = nx) nx = b->next, free(b);
    a->head = NULL;
}

/* ---- lexer ---- */

typedef enum {
    TK_TEXT,
    TK_VAR_BEGIN,
    TK_VAR_END,
    TK_BLOCK_BEGIN,
    TK_BLOCK_END,
    TK_NAME,
    TK_STR,
    TK_INT,
    TK_FLOAT,
    TK_OP,
    TK_EOF
} tk_type;

typedef struct {
    tk_type t;
    const char *s; /* TEXT, NAME, STR: the text (NUL-terminated, in the arena) */
    size_t n;
    int op; /* OP: the character or OP_* */
    int64_t i;
    double f;
    int line;
} token;

typedef struct {
    jarena *a;
    const char *src, *where;
    size_t len, pos;
    int line;
    token *tk;
    int n, cap, at; /* tokens; the parser's position */
    mx_err *err;
    bool failed;
    int loop_depth;
    int depth; /* nesting of expressions and statements, bounded so that no input exhausts the stack */
} parser;

enum { MAX_DEPTH = 200 };

static int fail(parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(parser *p, int line, const char *fmt, ...) {
    if (p->failed) return MX_ERR_FORMAT;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->failed = true;
    return mx_err_set(p->err, MX_ERR_UNSUPPORTED, "%s: line %d: %s", p->where, line, msg);
}

static int nomem(parser *p) {
    if (!p->failed) mx_err_set(p->err, MX_ERR_NOMEM, "%s: out of memory", p->where);
    p->failed = true;
    return MX_ERR_NOMEM;
}

static token *push_tok(parser *p, tk_type t, int line) {
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 256;
        token *nt = realloc(p->tk, sizeof *nt * (size_t)cap);
        if (!nt) return nomem(p), NULL;
        p->tk = nt;
        p->cap = cap;
    }
    token *k = &p->tk[p->n++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->line = line;
    return k;
}

static bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Text between tags, newlines normalized; s[0..n) after the whitespace rules. */
static int push_text(parser *p, const char *s, size_t n, int line) {
    if (n == 0) return 0;
    char *d = ja_alloc(p->a, n + 1);
    if (!d) return nomem(p);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            d[w++] = '\n';
            if (i + 1 < n && s[i + 1] == '\n') i++;
        } else {
            d[w++] = s[i];
        }
    }
    token *k = push_tok(p, TK_TEXT, line);
    if (!k) return MX_ERR_NOMEM;
    k->s = d;
    k->n = w;
    return 0;
}

static int count_lines(const char *s, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    return k;
}

static int lex_string(parser *p, char quote) {
    const char *s = p->src;
    size_t i = p->pos + 1;
    char *d = ja_alloc(p->a, p->len - p->pos + 1);
    if (!d) return nomem(p);
    size_t w = 0;
    int line = p->line;
    for (; i < p->len && s[i] != quote; i++) {
        char c = s[i];
        if (c == '\n') p->line++;
        if (c != '\\' || i + 1 == p->len) {
            d[w++] = c == '\r' ? '\n' : c;
            if (c == '\r' && i + 1 < p->len && s[i + 1] == '\n') i++;
            continue;
        }
        c = s[++i];
        switch (c) {
        case 'n':
            d[w++] = '\n';
            break;
        case 't':
            d[w++] = '\t';
            break;
        case 'r':
            d[w++] = '\r';
            break;
        case '0':
            d[w++] = '\0';
            break;
        case '\\':
        case '\'':
        case '"':
            d[w++] = c;
            break;
        case '\n':
            break; /* line continuation */
        case 'u':
        case 'x': {
            int digits = c == 'u' ? 4 : 2;
            unsigned cp = 0;
            for (int k = 0; k < digits; k++) {
                char h = i + 1 < p->len ? s[++i] : 0;
                int v = h >= '0' && h <= '9'                 ? h - '0'
                        : (h | 32) >= 'a' && (h | 32) <= 'f' ? (h | 32) - 'a' + 10
                                                             : -1;
                if (v < 0) return fail(p, line, "bad \\%c escape in a string", c);
                cp = cp << 4 | (unsigned)v;
            }
            if (cp < 0x80)
                d[w++] = (char)cp;
            else if (cp < 0x800)
                d[w++] = (char)(0xC0 | cp >> 6), d[w++] = (char)(0x80 | (cp & 63));
            else
                d[w++] = (char)(0xE0 | cp >> 12), d[w++] = (char)(0x80 | (cp >> 6 & 63)),
                d[w++] = (char)(0x80 | (cp & 63));
            break;
        }
        default:
            d[w++] = '\\', d[w++] = c; /* Python keeps unknown escapes */
        }
    }
    if (i >= p->len) return fail(p, line, "a string that does not end");
    token *k = push_tok(p, TK_STR, line);
    if (!k) return MX_ERR_NOMEM;
    d[w] = '\0';
    k->s = d;
    k->n = w;
    p->pos = i + 1;
    return 0;
}

/* Tokens of one tag's inside, up to and with its end ("}}" or "%}"); *strip_after set by "-}}" / "-%}". */
static int lex_tag(parser *p, bool block, bool *strip_after) {
    const char *s = p->src;
    const char *end = block ? "%}" : "}}";
    for (;;) {
        while (p->pos < p->len && is_ws(s[p->pos])) p->line += s[p->pos++] == '\n';
        if (p->pos >= p->len) return fail(p, p->line, "a tag that does not end ('%s' missing)", end);
        size_t i = p->pos;
        char c = s[i];
        if ((c == '-' || c == '+') && i + 2 < p->len + 0 && s[i + 1] == end[0] && s[i + 2] == end[1]) {
            *strip_after = c == '-';
            p->pos = i + 3;
            return push_tok(p, block ? TK_BLOCK_END : TK_VAR_END, p->line) ? 0 : MX_ERR_NOMEM;
        }
        if (c == end[0] && i + 1 < p->len && s[i + 1] == end[1]) {
            *strip_after = false;
            p->pos = i + 2;
            return push_tok(p, block ? TK_BLOCK_END : TK_VAR_END, p->line) ? 0 : MX_ERR_NOMEM;
        }
        if (c == '\'' || c == '"') {
            if (lex_string(p, c)) return MX_ERR_FORMAT;
            continue;
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            while (
                i < p->len &&
                ((s[i] | 32) >= 'a' && (s[i] | 32) <= 'z' ? 1 : (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
                i++;
            token *k = push_tok(p, TK_NAME, p->line);
            if (!k || !(k->s = ja_strndup(p->a, s + p->pos, i - p->pos))) return nomem(p);
            k->n = i - p->pos;
            p->pos = i;
            continue;
        }
        if (c >= '0' && c <= '9') {
            char *e1;
            long long v = strtoll(s + i, &e1, 10);
            bool is_float = *e1 == '.' && e1[1] >= '0' && e1[1] <= '9';
            token *k = push_tok(p, is_float ? TK_FLOAT : TK_INT, p->line);
            if (!k) return MX_ERR_NOMEM;
            if (is_float) k->f = strtod(s + i, &e1);
            k->i = v;
            p->pos = (size_t)(e1 - s);
            continue;
        }
        static const struct {
            const char *s;
            int op;
        } two[] = {{"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ},
                   {"!=", OP_NE},       {"<=", OP_LE},  {">=", OP_GE}};
        int op = 0;
        for (size_t k = 0; k < sizeof two / sizeof two[0] && !op; k++)
            if (i + 1 < p->len && s[i] == two[k].s[0] && s[i + 1] == two[k].s[1]) op = two[k].op, p->pos += 2;
        if (!op && strchr("+-*/%~<>=()[]{}.,:|", c)) op = c, p->pos++;
        if (!op) return fail(p, p->line, "unexpected character '%c' in a tag", c);
        token *k = push_tok(p, TK_OP, p->line);
        if (!k) return MX_ERR_NOMEM;
        k->op = op;
    }
}

static int lex(parser *p) {
    const char *s = p->src;
    bool strip_next = false, trim_next = false; /* from the tag before: '-', or trim_blocks */
    bool line_start = true;                     /* the text being read starts a line */
    while (p->pos <= p->len) {
        size_t start = p->pos, i = start;
        while (i + 1 < p->len && !(s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')))
            i++;
        bool tag = i + 1 < p->len;
        if (!tag) i = p->len;
        size_t tb = start, te = i; /* the text */
        if (strip_next)
            while (tb < te && is_ws(s[tb])) tb++;
        else if (trim_next && tb < te && (s[tb] == '\n' || s[tb] == '\r'))
            tb += s[tb] == '\r' && tb + 1 < te && s[tb + 1] == '\n' ? 2 : 1;
        char kind = tag ? s[i + 1] : 0, mod = tag && i + 2 < p->len ? s[i + 2] : 0;
        if (tag && mod == '-') {
            while (te > tb && is_ws(s[te - 1])) te--;
        } else if (tag && kind != '{' && mod != '+') { /* lstrip_blocks */
            size_t k = te;
            while (k > tb && (s[k - 1] == ' ' || s[k - 1] == '\t')) k--;
            if ((k > tb && s[k - 1] == '\n') || (k == tb && (tb > start ? s[tb - 1] == '\n' : line_start)))
                te = k;
        }
        int line = p->line + count_lines(s + start, tb - start);
        if (push_text(p, s + tb, te - tb, line)) return MX_ERR_NOMEM;
        p->line += count_lines(s + start, i - start);
        if (!tag) break;
        p->pos = i + 2 + (mod == '-' || mod == '+');
        bool strip_after = false;
        if (kind == '#') {
            const char *e = strstr(s + p->pos, "#}");
            if (!e) return fail(p, p->line, "a comment that does not end ('#}' missing)");
            strip_after = e > s + p->pos && e[-1] == '-';
            p->line += count_lines(s + p->pos, (size_t)(e - s) - p->pos);
            p->pos = (size_t)(e - s) + 2;
        } else {
            if (!push_tok(p, kind == '%' ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, p->line)) return MX_ERR_NOMEM;
            if (lex_tag(p, kind == '%', &strip_after)) return MX_ERR_FORMAT;
        }
        strip_next = strip_after;
        trim_next = kind != '{';
        line_start = p->pos > 0 && s[p->pos - 1] == '\n';
    }
    return push_tok(p, TK_EOF, p->line) ? 0 : MX_ERR_NOMEM;
}

/* ---- parser ---- */

static token *peek(parser *p) {
    return &p->tk[p->at];
}
static token *next_tok(parser *p) {
    token *k = &p->tk[p->at];
    if (k->t != TK_EOF) p->at++;
    return k;
}
static bool is_op(parser *p, int op) {
    return peek(p)->t == TK_OP && peek(p)->op == op;
}
static bool is_name(parser *p, const char *name) {
    return peek(p)->t == TK_NAME && strcmp(peek(p)->s, name) == 0;
}
static bool accept_op(parser *p, int op) {
    if (!is_op(p, op)) return false;
    p->at++;
    return true;
}
static bool accept_name(parser *p, const char *name) {
    if (!is_name(p, name)) return false;
    p->at++;
    return true;
}

static const char *tok_desc(const token *k, char *buf, size_t n) {
    switch (k->t) {
    case TK_NAME:
        snprintf(buf, n, "'%s'", k->s);
        break;
    case TK_STR:
        snprintf(buf, n, "a string");
        break;
    case TK_INT:
    case TK_FLOAT:
        snprintf(buf, n, "a number");
        break;
    case TK_OP:
        snprintf(buf, n, k->op < 256 ? "'%c'" : "an operator", k->op);
        break;
    case TK_VAR_END:
        snprintf(buf, n, "'}}'");
        break;
    case TK_BLOCK_END:
        snprintf(buf, n, "'%%}'");
        break;
    case TK_EOF:
        snprintf(buf, n, "the end of the template");
        break;
    default:
        snprintf(buf, n, "a tag");
        break;
    }
    return buf;
}

static int expect_op(parser *p, int op) {
    if (accept_op(p, op)) return 0;
    char b[64];
    return fail(p, peek(p)->line, "expected '%c', found %s", op, tok_desc(peek(p), b, sizeof b));
}

static jnode *new_node(parser *p, jnode_kind kind, int line) {
    jnode *n = ja_alloc(p->a, sizeof *n);
    if (!n) return nomem(p), NULL;
    n->kind = kind;
    n->line = line;
    return n;
}

static jnode *parse_expr(parser *p);
static jnode *parse_or(parser *p);
static jnode *parse_unary(parser *p);

/* Arguments of a call, filter or test: (a, b, name=c). */
static int parse_args(parser *p, jnode *n) {
    jnode *args[32];
    const char *kw[32];
    int k = 0;
    if (expect_op(p, '(')) return MX_ERR_FORMAT;
    while (!accept_op(p, ')')) {
        if (k && expect_op(p, ',')) return MX_ERR_FORMAT;
        if (accept_op(p, ')')) break;
        if (k == 32) return fail(p, peek(p)->line, "more than 32 arguments");
        kw[k] = NULL;
        if (peek(p)->t == TK_NAME && p->tk[p->at + 1].t == TK_OP && p->tk[p->at + 1].op == '=') {
            kw[k] = next_tok(p)->s;
            p->at++;
        }
        if (!(args[k++] = parse_expr(p))) return MX_ERR_FORMAT;
    }
    n->nargs = k;
    n->args = ja_alloc(p->a, sizeof *n->args * (size_t)(k + 1));
    n->kw = ja_alloc(p->a, sizeof *n->kw * (size_t)(k + 1));
    if (!n->args || !n->kw) return nomem(p);
    memcpy(n->args, args, sizeof *args * (size_t)k);
    memcpy(n->kw, kw, sizeof *kw * (size_t)k);
    return 0;
}

/* [a, b] or (a, b) or {k: v}: items into n->args. */
static jnode *parse_collection(parser *p, int close, jnode_kind kind, int line) {
    jnode *n = new_node(p, kind, line), *items[256];
    int k = 0;
    if (!n) return NULL;
    bool tuple_comma = false;
    while (!accept_op(p, close)) {
        if (k && (expect_op(p, ',') || (tuple_comma = true, false))) return NULL;
        if (accept_op(p, close)) break;
        if (k >= 254) return fail(p, line, "a literal of more than 127 items"), NULL;
        if (!(items[k++] = parse_expr(p))) return NULL;
        if (kind == JN_DICT) {
            if (expect_op(p, ':') || !(items[k++] = parse_expr(p))) return NULL;
        }
    }
    if (close == ')' && k == 1 && !tuple_comma) return items[0]; /* parenthesized expression */
    n->op = close == ')';                                        /* a tuple */
    n->nargs = k;
    n->args = ja_alloc(p->a, sizeof *n->args * (size_t)(k + 1));
    if (!n->args) return nomem(p), NULL;
    memcpy(n->args, items, sizeof *items * (size_t)k);
    return n;
}

static jnode *parse_primary(parser *p) {
    token *k = next_tok(p);
    jnode *n;
    char b[64];
    switch (k->t) {
    case TK_STR: {
        if (!(n = new_node(p, JN_LIT, k->line))) return NULL;
        /* adjacent strings concatenate, as in Python */
        size_t len = k->n;
        const char *s = k->s;
        while (peek(p)->t == TK_STR) {
            token *k2 = next_tok(p);
            char *cat = ja_alloc(p->a, len + k2->n + 1);
            if (!cat) return nomem(p), NULL;
            memcpy(cat, s, len);
            memcpy(cat + len, k2->s, k2->n);
            s = cat;
            len += k2->n;
        }
        n->lit = (jval){.t = JV_STR, .u.s = {s, len}};
        return n;
    }
    case TK_INT:
    case TK_FLOAT:
        if (!(n = new_node(p, JN_LIT, k->line))) return NULL;
        n->lit = k->t == TK_INT ? (jval){.t = JV_INT, .u.i = k->i} : (jval){.t = JV_FLOAT, .u.f = k->f};
        return n;
    case TK_NAME:
        if (!(n = new_node(p, JN_LIT, k->line))) return NULL;
        if (!strcmp(k->s, "true") || !strcmp(k->s, "True"))
            n->lit = (jval){.t = JV_BOOL, .u.b = true};
        else if (!strcmp(k->s, "false") || !strcmp(k->s, "False"))
            n->lit = (jval){.t = JV_BOOL, .u.b = false};
        else if (!strcmp(k->s, "none") || !strcmp(k->s, "None"))
            n->lit = (jval){.t = JV_NONE};
        else
            n->kind = JN_NAME, n->name = k->s;
        return n;
    case TK_OP:
        if (k->op == '(') return parse_collection(p, ')', JN_LIST, k->line);
        if (k->op == '[') return parse_collection(p, ']', JN_LIST, k->line);
        if (k->op == '{') return parse_collection(p, '}', JN_DICT, k->line);
        break;
    default:
        break;
    }
    fail(p, k->line, "expected an expression, found %s", tok_desc(k, b, sizeof b));
    return NULL;
}

static jnode *parse_postfix(parser *p, jnode *n) {
    while (n) {
        int line = peek(p)->line;
        if (accept_op(p, '.')) {
            token *k = next_tok(p);
            if (k->t != TK_NAME && k->t != TK_INT) return fail(p, line, "expected a name after '.'"), NULL;
            jnode *a = new_node(p, JN_ATTR, line);
            if (!a) return NULL;
            a->a = n;
            if (k->t == TK_NAME) {
                a->name = k->s;
            } else { /* x.0 is x[0] */
                a->kind = JN_INDEX;
                if (!(a->b = new_node(p, JN_LIT, line))) return NULL;
                a->b->lit = (jval){.t = JV_INT, .u.i = k->i};
            }
            n = a;
        } else if (accept_op(p, '[')) {
            jnode *ix = new_node(p, JN_INDEX, line), *parts[3] = {0};
            if (!ix) return NULL;
            int colons = 0;
            while (!accept_op(p, ']')) {
                if (accept_op(p, ':')) {
                    if (++colons > 2) return fail(p, line, "a slice with more than 2 ':'"), NULL;
                    continue;
                }
                if (parts[colons]) return fail(p, line, "expected ']' or ':'"), NULL;
                if (!(parts[colons] = parse_expr(p))) return NULL;
            }
            ix->a = n;
            if (colons) {
                ix->kind = JN_SLICE;
                ix->b = parts[0], ix->c = parts[1];
                ix->args = ja_alloc(p->a, sizeof *ix->args);
                if (!ix->args) return nomem(p), NULL;
                ix->args[0] = parts[2];
            } else if (!(ix->b = parts[0])) {
                return fail(p, line, "an empty index []"), NULL;
            }
            n = ix;
        } else if (is_op(p, '(')) {
            jnode *c = new_node(p, JN_CALL, line);
            if (!c || parse_args(p, c)) return NULL;
            c->a = n;
            n = c;
        } else {
            return n;
        }
    }
    return n;
}

/* |filter and `is` tests on x. */
static jnode *parse_filters(parser *p, jnode *n) {
    while (n) {
        int line = peek(p)->line;
        if (accept_op(p, '|')) {
            token *k = next_tok(p);
            if (k->t != TK_NAME) return fail(p, line, "expected a filter name after '|'"), NULL;
            if (!jv_has_filter(k->s)) return fail(p, line, "the filter '%s' is not supported", k->s), NULL;
            jnode *f = new_node(p, JN_FILTER, line);
            if (!f) return NULL;
            f->a = n;
            f->name = k->s;
            if (is_op(p, '(') && parse_args(p, f)) return NULL;
            n = f;
        } else if (accept_name(p, "is")) {
            jnode *t = new_node(p, JN_TEST, line);
            if (!t) return NULL;
            t->negate = accept_name(p, "not");
            token *k = next_tok(p);
            const char *name = k->t == TK_NAME ? k->s : NULL;
            if (k->t == TK_OP && k->op == OP_EQ) name = "eq";
            if (!name) return fail(p, line, "expected a test name after 'is'"), NULL;
            if (!jv_has_test(name)) return fail(p, line, "the test '%s' is not supported", name), NULL;
            t->a = n;
            t->name = name;
            if (is_op(p, '(')) {
                if (parse_args(p, t)) return NULL;
            } else if (peek(p)->t == TK_STR || peek(p)->t == TK_INT || peek(p)->t == TK_FLOAT ||
                       (peek(p)->t == TK_NAME && !is_name(p, "and") && !is_name(p, "or") &&
                        !is_name(p, "else") &&
                        !is_name(p, "if"))) { /* `is divisibleby 3`, `is equalto 'x'` */
                t->args = ja_alloc(p->a, sizeof *t->args);
                t->kw = ja_alloc(p->a, sizeof *t->kw);
                if (!t->args || !t->kw || !(t->args[0] = parse_primary(p))) return NULL;
                t->nargs = 1;
            }
            n = t;
        } else {
            return n;
        }
    }
    return n;
}

static jnode *binary(parser *p, int op, jnode *l, jnode *r, int line) {
    if (!l || !r) return NULL;
    jnode *n = new_node(p, JN_BINARY, line);
    if (n) n->op = op, n->a = l, n->b = r;
    return n;
}

static jnode *parse_unary(parser *p) {
    int line = peek(p)->line;
    if (accept_op(p, '-') || accept_op(p, '+')) {
        int op = p->tk[p->at - 1].op;
        if (++p->depth > MAX_DEPTH)
            return fail(p, line, "expressions nested more than %d deep", MAX_DEPTH), NULL;
        jnode *x = parse_unary(p), *n = x ? new_node(p, JN_UNARY, line) : NULL;
        p->depth--;
        if (n) n->op = op, n->a = x;
        return parse_filters(p, n);
    }
    return parse_filters(p, parse_postfix(p, parse_primary(p)));
}

static jnode *parse_pow(parser *p) {
    jnode *l = parse_unary(p);
    while (l && is_op(p, OP_POW)) {
        int line = next_tok(p)->line;
        l = binary(p, OP_POW, l, parse_unary(p), line);
    }
    return l;
}

static jnode *parse_mul(parser *p) {
    jnode *l = parse_pow(p);
    while (l && (is_op(p, '*') || is_op(p, '/') || is_op(p, OP_FLOORDIV) || is_op(p, '%'))) {
        token *k = next_tok(p);
        l = binary(p, k->op, l, parse_pow(p), k->line);
    }
    return l;
}

static jnode *parse_concat(parser *p) {
    jnode *l = parse_mul(p);
    while (l && is_op(p, '~')) {
        int line = next_tok(p)->line;
        l = binary(p, '~', l, parse_mul(p), line);
    }
    return l;
}

static jnode *parse_add(parser *p) {
    jnode *l = parse_concat(p);
    while (l && (is_op(p, '+') || is_op(p, '-'))) {
        token *k = next_tok(p);
        l = binary(p, k->op, l, parse_concat(p), k->line);
    }
    return l;
}

static jnode *parse_compare(parser *p) {
    jnode *l = parse_add(p);
    while (l) {
        int line = peek(p)->line, op = 0;
        if (is_op(p, OP_EQ) || is_op(p, OP_NE) || is_op(p, '<') || is_op(p, '>') || is_op(p, OP_LE) ||
            is_op(p, OP_GE))
            op = next_tok(p)->op;
        else if (accept_name(p, "in"))
            op = OP_IN;
        else if (is_name(p, "not") && p->tk[p->at + 1].t == TK_NAME && !strcmp(p->tk[p->at + 1].s, "in"))
            p->at += 2, op = OP_NOTIN;
        else
            return l;
        l = binary(p, op, l, parse_add(p), line);
    }
    return l;
}

static jnode *parse_not(parser *p) {
    int line = peek(p)->line;
    if (accept_name(p, "not")) {
        if (++p->depth > MAX_DEPTH)
            return fail(p, line, "expressions nested more than %d deep", MAX_DEPTH), NULL;
        jnode *x = parse_not(p), *n = x ? new_node(p, JN_NOT, line) : NULL;
        p->depth--;
        if (n) n->a = x;
        return n;
    }
    return parse_compare(p);
}

static jnode *parse_and(parser *p) {
    jnode *l = parse_not(p);
    while (l && is_name(p, "and")) {
        int line = next_tok(p)->line;
        jnode *r = parse_not(p), *n = r ? new_node(p, JN_AND, line) : NULL;
        if (!n) return NULL;
        n->a = l, n->b = r, l = n;
    }
    return l;
}

static jnode *parse_or(parser *p) {
    jnode *l = parse_and(p);
    while (l && is_name(p, "or")) {
        int line = next_tok(p)->line;
        jnode *r = parse_and(p), *n = r ? new_node(p, JN_OR, line) : NULL;
        if (!n) return NULL;
        n->a = l, n->b = r, l = n;
    }
    return l;
}

/* a if cond [else b]; also a bare tuple `a, b` is not an expression here. */
static jnode *parse_expr_inner(parser *p);
static jnode *parse_expr(parser *p) {
    if (++p->depth > MAX_DEPTH)
        return fail(p, peek(p)->line, "expressions nested more than %d deep", MAX_DEPTH), NULL;
    jnode *x = parse_expr_inner(p);
    p->depth--;
    return x;
}

static jnode *parse_expr_inner(parser *p) {
    jnode *x = parse_or(p);
    while (x && is_name(p, "if")) {
        int line = next_tok(p)->line;
        jnode *cond = parse_or(p), *n = cond ? new_node(p, JN_COND, line) : NULL;
        if (!n) return NULL;
        n->a = x, n->b = cond;
        if (accept_name(p, "else") && !(n->c = parse_expr(p))) return NULL;
        x = n;
    }
    return x;
}

/* ---- statements ---- */

static int expect_block_end(parser *p) {
    if (next_tok(p)->t == TK_BLOCK_END) return 0;
    char b[64];
    p->at--;
    return fail(p, peek(p)->line, "expected '%%}', found %s", tok_desc(peek(p), b, sizeof b));
}

/* Parses statements until a block tag whose name is one of `ends` (NULL-terminated); leaves the parser on
 * that name and returns the list (NULL for an empty one; check p->failed). */
static jnode *parse_body(parser *p, const char *const *ends, const char *opener, int open_line);

static jnode *parse_if(parser *p, int line) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    jnode *n = new_node(p, JN_IF, line);
    if (!n || !(n->a = parse_expr(p)) || expect_block_end(p)) return NULL;
    n->b = parse_body(p, ends, "if", line);
    if (p->failed) return NULL;
    token *k = next_tok(p);
    if (!strcmp(k->s, "elif")) {
        n->c = parse_if(p, k->line);
        return n->c ? n : NULL;
    }
    if (!strcmp(k->s, "else")) {
        static const char *const ends2[] = {"endif", NULL};
        if (expect_block_end(p)) return NULL;
        n->c = parse_body(p, ends2, "if", line);
        if (p->failed) return NULL;
        next_tok(p);
    }
    return expect_block_end(p) ? NULL : n;
}

static jnode *parse_for(parser *p, int line) {
    static const char *const ends[] = {"else", "endfor", NULL}, *const ends2[] = {"endfor", NULL};
    jnode *n = new_node(p, JN_FOR, line);
    if (!n) return NULL;
    token *k = next_tok(p);
    if (k->t != TK_NAME) return fail(p, line, "expected a loop variable after 'for'"), NULL;
    n->name = k->s;
    if (accept_op(p, ',')) {
        k = next_tok(p);
        if (k->t != TK_NAME) return fail(p, line, "expected a second loop variable"), NULL;
        n->name2 = k->s;
        if (is_op(p, ',')) return fail(p, line, "a loop over more than 2 variables is not supported"), NULL;
    }
    if (!accept_name(p, "in")) return fail(p, line, "expected 'in' in the for loop"), NULL;
    if (!(n->a = parse_or(p))) return NULL;
    if (accept_name(p, "if") && !(n->filter = parse_or(p))) return NULL;
    if (is_name(p, "recursive")) return fail(p, line, "'recursive' loops are not supported"), NULL;
    if (expect_block_end(p)) return NULL;
    p->loop_depth++;
    n->b = parse_body(p, ends, "for", line);
    p->loop_depth--;
    if (p->failed) return NULL;
    if (!strcmp(next_tok(p)->s, "else")) {
        if (expect_block_end(p)) return NULL;
        n->c = parse_body(p, ends2, "for", line);
        if (p->failed) return NULL;
        next_tok(p);
    }
    return expect_block_end(p) ? NULL : n;
}

static jnode *parse_set(parser *p, int line) {
    jnode *n = new_node(p, JN_SET, line);
    token *k = next_tok(p);
    if (!n || k->t != TK_NAME) return fail(p, line, "expected a name after 'set'"), NULL;
    n->name = k->s;
    if (accept_op(p, '.')) {
        k = next_tok(p);
        if (k->t != TK_NAME) return fail(p, line, "expected an attribute name after '.'"), NULL;
        n->name2 = k->s;
    }
    if (is_op(p, ',')) return fail(p, line, "'set' of several names is not supported"), NULL;
    if (peek(p)->t == TK_BLOCK_END)
        return fail(p, line, "block 'set' (set ... endset) is not supported"), NULL;
    if (expect_op(p, '=') || !(n->a = parse_expr(p)) || expect_block_end(p)) return NULL;
    return n;
}

static jnode *parse_statement_inner(parser *p);
static jnode *parse_statement(parser *p) {
    if (++p->depth > MAX_DEPTH)
        return fail(p, peek(p)->line, "statements nested more than %d deep", MAX_DEPTH), NULL;
    jnode *n = parse_statement_inner(p);
    p->depth--;
    return n;
}

static jnode *parse_statement_inner(parser *p) {
    token *k = next_tok(p);
    if (k->t == TK_TEXT) {
        jnode *n = new_node(p, JN_TEXT, k->line);
        if (n) n->lit = (jval){.t = JV_STR, .u.s = {k->s, k->n}};
        return n;
    }
    if (k->t == TK_VAR_BEGIN) {
        jnode *n = new_node(p, JN_OUTPUT, k->line);
        if (!n || !(n->a = parse_expr(p))) return NULL;
        if (next_tok(p)->t != TK_VAR_END) {
            char b[64];
            p->at--;
            return fail(p, peek(p)->line, "expected '}}', found %s", tok_desc(peek(p), b, sizeof b)), NULL;
        }
        return n;
    }
    /* a block tag */
    token *name = next_tok(p);
    int line = name->line;
    if (name->t != TK_NAME) return fail(p, line, "expected a statement name after '{%%'"), NULL;
    if (!strcmp(name->s, "if")) return parse_if(p, line);
    if (!strcmp(name->s, "for")) return parse_for(p, line);
    if (!strcmp(name->s, "set")) return parse_set(p, line);
    if (!strcmp(name->s, "break") || !strcmp(name->s, "continue")) {
        if (!p->loop_depth) return fail(p, line, "'%s' outside a loop", name->s), NULL;
        jnode *n = new_node(p, name->s[0] == 'b' ? JN_BREAK : JN_CONTINUE, line);
        return !n || expect_block_end(p) ? NULL : n;
    }
    if (!strcmp(name->s, "generation")) { /* transformers' marker of assistant text: rendered as its body */
        static const char *const ends[] = {"endgeneration", NULL};
        jnode *n = new_node(p, JN_BLOCK, line);
        if (!n || expect_block_end(p)) return NULL;
        n->b = parse_body(p, ends, "generation", line);
        if (p->failed) return NULL;
        next_tok(p);
        return expect_block_end(p) ? NULL : n;
    }
    static const char *const known[] = {"macro", "call", "filter", "include",    "import", "from", "extends",
                                        "block", "raw",  "with",   "autoescape", "do",     NULL};
    for (int i = 0; known[i]; i++)
        if (!strcmp(name->s, known[i]))
            return fail(p, line, "the '%s' statement is not supported by mixatt's template subset", name->s),
                   NULL;
    return fail(p, line, "unknown statement '%s'", name->s), NULL;
}

static jnode *parse_body(parser *p, const char *const *ends, const char *opener, int open_line) {
    jnode *head = NULL, **tail = &head;
    for (;;) {
        token *k = peek(p);
        if (k->t == TK_EOF) {
            if (ends) fail(p, open_line, "'%s' is never closed (expected '%s')", opener, ends[0]);
            return head;
        }
        if (k->t == TK_BLOCK_BEGIN && p->tk[p->at + 1].t == TK_NAME) {
            const char *nm = p->tk[p->at + 1].s;
            for (int i = 0; ends && ends[i]; i++)
                if (!strcmp(nm, ends[i])) {
                    p->at++; /* on the name */
                    return head;
                }
            if (!strncmp(nm, "end", 3) || !strcmp(nm, "elif") || !strcmp(nm, "else")) {
                fail(p, k->line, "unexpected '%s'", nm);
                return NULL;
            }
        }
        jnode *s = parse_statement(p);
        if (!s) return NULL;
        *tail = s;
        tail = &s->next;
    }
}

int mx_jinja_parse(const char *src, const char *where, mx_jinja **out, mx_err *err) {
    *out = NULL;
    mx_jinja *j = calloc(1, sizeof *j);
    if (!j) return mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory", where);
    parser p = {.a = &j->arena, .src = src, .where = where, .len = strlen(src), .line = 1, .err = err};
    if (p.len && src[p.len - 1] == '\n') p.len--; /* keep_trailing_newline=False */
    if (p.len && src[p.len - 1] == '\r') p.len--;
    j->where = ja_strndup(&j->arena, where, strlen(where));
    if (!j->where) nomem(&p);
    if (!p.failed && !lex(&p)) j->body = parse_body(&p, NULL, NULL, 0);
    free(p.tk);
    if (p.failed) {
        mx_jinja_free(j);
        return err ? err->code : MX_ERR_FORMAT;
    }
    *out = j;
    return 0;
}

void mx_jinja_free(mx_jinja *j) {
    if (!j) return;
    ja_free(&j->arena);
    free(j);
}
