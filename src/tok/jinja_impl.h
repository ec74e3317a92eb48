/* jinja_impl.h: the insides of the Jinja subset (jinja.h), shared by jinja_parse.c (lexer and parser ->
 * syntax tree), jinja_eval.c (the interpreter) and jinja_value.c (values, filters, tests, methods): an arena
 * that owns every node and value, the syntax tree, and the values. */
#ifndef MX_JINJA_IMPL_H
#define MX_JINJA_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jinja.h"

/* ---- arena: everything of a parse or a render, freed at once ---- */
typedef struct jarena_block jarena_block;
typedef struct {
    jarena_block *head;
} jarena;
void *ja_alloc(jarena *a, size_t n); /* zeroed; NULL when out of memory */
char *ja_strndup(jarena *a, const char *s, size_t n);
void ja_free(jarena *a);

/* ---- syntax tree ---- */
typedef enum {
    /* statements */
    JN_TEXT,
    JN_OUTPUT,
    JN_IF,
    JN_FOR,
    JN_SET,
    JN_BREAK,
    JN_CONTINUE,
    JN_BLOCK,
    /* expressions */
    JN_LIT,
    JN_NAME,
    JN_LIST,
    JN_DICT,
    JN_ATTR,
    JN_INDEX,
    JN_SLICE,
    JN_CALL,
    JN_FILTER,
    JN_TEST,
    JN_UNARY,
    JN_BINARY,
    JN_AND,
    JN_OR,
    JN_NOT,
    JN_COND,
} jnode_kind;

typedef struct jval jval;
typedef struct jeval jeval;
typedef struct jnode jnode;

typedef enum { JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_FUNC } jval_type;

typedef struct jlist {
    jval *v;
    int n, cap;
    bool tuple; /* printed as (a, b) */
} jlist;

typedef struct jdict {
    const char **k;
    jval *v;
    int n, cap;
    bool ns; /* a namespace(): its attributes can be set */
} jdict;

typedef int (*jfunc)(jeval *ev, const jval *fn, int nargs, const jval *args, const char *const *kw,
                     jval *out);

struct jval {
    jval_type t;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *s;
            size_t n;
        } s;
        jlist *l;
        jdict *d;
        struct {
            jfunc call;
            const char *name;
            const jval *self; /* a bound method's object */
        } fn;
    } u;
};

struct jnode {
    jnode_kind kind;
    int line;
    jnode *next;      /* statement lists */
    jnode *a, *b, *c; /* operands; IF: a = condition, b = body, c = else; FOR: a = iterable, b = body,
                         c = else; SET: a = value; COND: a if b else c; SLICE: a[b:c:d] with d in args[0] */
    jnode *filter;    /* FOR: the `if` condition */
    jnode **args;     /* CALL/FILTER/TEST arguments, LIST items, DICT keys and values alternating */
    const char **kw;  /* the keyword of each argument, or NULL */
    int nargs;
    const char *name;  /* NAME, ATTR, FILTER, TEST, FOR's target, SET's target; */
    const char *name2; /* FOR's second target, SET's attribute */
    int op;            /* UNARY/BINARY: the operator's character code (see jinja_parse.c) */
    bool negate;       /* TEST: `is not` */
    jval lit;          /* LIT */
};

/* Operators that are not one character. */
enum { OP_EQ = 256, OP_NE, OP_LE, OP_GE, OP_FLOORDIV, OP_POW, OP_IN, OP_NOTIN };

struct mx_jinja {
    jarena arena;
    jnode *body;
    const char *where;
};

/* ---- values (jinja_value.c) ---- */
typedef struct {
    char *s;
    size_t n, cap;
    bool oom;
} jbuf;
void jb_put(jbuf *b, const char *s, size_t n);
void jb_puts(jbuf *b, const char *s);

bool jv_truthy(const jval *v);
bool jv_equal(const jval *a, const jval *b);
/* Python's str() of a value, appended to b (None, True, 1.5, ['a', 1], {'k': 'v'}). */
void jv_str(jbuf *b, const jval *v);
/* json.dumps(v, ensure_ascii=False[, indent]) appended to b; -1 for no indent. */
void jv_json(jbuf *b, const jval *v, int indent, int depth);
const char *jv_type_name(const jval *v);
jval jv_from_json(jarena *a, const cJSON *j); /* NULL from out of memory comes back as JV_UNDEF */
int jv_list_push(jarena *a, jlist *l, jval v);
int jv_dict_set(jarena *a, jdict *d, const char *k, jval v);
const jval *jv_dict_get(const jdict *d, const char *k, size_t n);

/* Filters, tests, methods and globals: each returns 0, or an error message through the evaluator. The names
 * are checked at parse time (jv_has_filter/jv_has_test), so a template never fails on an unknown one later.
 */
bool jv_has_filter(const char *name);
bool jv_has_test(const char *name);
int jv_filter(jeval *ev, const char *name, const jval *x, int nargs, const jval *args, const char *const *kw,
              jval *out);
int jv_test(jeval *ev, const char *name, const jval *x, int nargs, const jval *args, bool *out);
/* x.name as a method bound to x, or JV_UNDEF. */
jval jv_method(const jval *x, const char *name);
jval jv_global(const char *name);

/* ---- the evaluator's services for jinja_value.c (jinja_eval.c) ---- */
jarena *je_arena(jeval *ev);
int je_fail(jeval *ev, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
jval jv_strn(jeval *ev, const char *s, size_t n); /* a copy in the render arena */

#endif
