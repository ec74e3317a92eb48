/* jinja.h: a Jinja subset for chat templates, rendered as transformers' apply_chat_template renders them
 * (Environment(trim_blocks=True, lstrip_blocks=True) with loop controls; no autoescape; one trailing newline
 * of the source dropped).
 * Statements: text, {{ expr }}, {% if / elif / else / endif %}, {% for x in xs [if cond] %} (and
 * `for k, v in d.items()`, loop.index/index0/first/last/length/revindex/revindex0/previtem/nextitem,
 * {% else %}, break, continue), {% set name = expr %}, {% set ns.attr = expr %}, {% generation %},
 * comments, whitespace control ({%- -%} {{- -}} {%+).
 * Expressions: None/True/False (either case), numbers, strings, lists, tuples, dicts, variables, .attr,
 * [index], [a:b:c] slices, calls with keyword arguments, + - * / // % ** ~, comparisons, in / not in,
 * and / or / not, `a if c else b`, filters (trim, length, count, upper, lower, title, capitalize, tojson,
 * string, int, float, default/d, first, last, join, items, list, reverse, replace, safe, abs, unique,
 * select, reject, selectattr, rejectattr, map(attribute=)), tests (defined, undefined, none, string, number, integer, float,
 * boolean, mapping, sequence, iterable, callable, true, false, even, odd, divisibleby, equalto/eq, ne, in),
 * string and dict methods (strip, lstrip, rstrip, split, startswith, endswith, upper, lower, replace, title,
 * capitalize, items, keys, values, get), and the globals raise_exception, range, namespace, dict and
 * strftime_now.
 * Anything else (macro, call, filter blocks, include, extends, an unknown filter or test...) is refused when
 * the template is parsed, naming the construct and its line. */
#ifndef MX_JINJA_H
#define MX_JINJA_H

#include <cjson/cJSON.h>

#include "../base/status.h"

typedef struct mx_jinja mx_jinja;

/* Parses src; where names it in errors ("tokenizer_config.json chat_template"). */
int mx_jinja_parse(const char *src, const char *where, mx_jinja **out, mx_err *err);
void mx_jinja_free(mx_jinja *j);
/* Renders with the variables of `vars` (a JSON object: strings, numbers, booleans, null, arrays, objects).
 * Returns a malloc'd string, or NULL with err set (raise_exception's message, a type error, no memory). */
char *mx_jinja_render(const mx_jinja *j, const cJSON *vars, mx_err *err);

#endif
