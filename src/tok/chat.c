/* chat.c: chat templates (see tokenizer.h). The ChatML family is recognised by '<|im_start|>' in
 * tokenizer.chat_template and rendered directly, without a Jinja engine:
 *   [<|im_start|>system\n{default}<|im_end|>\n]   when the template has a default system prompt and the
 *                                                first message is not a system one
 *   <|im_start|>{role}\n{content}<|im_end|>\n     for each message
 *   <|im_start|>assistant\n                      with add_generation_prompt
 * The default system prompt is read out of the template's string literal at load time, not hard-coded. */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

#define IM_START "<|im_start|>"
#define IM_END   "<|im_end|>"

struct mx_chat_template {
    char *default_system; /* NULL when the template has none */
};

/* Undoes the escapes of a Jinja string literal (\n, \t, \r, \\, \', \") of s[0..n) into a new string. */
static char *unescape_literal(const char *s, size_t n) {
    char *out = malloc(n + 1), *w = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 == n) {
            *w++ = s[i];
            continue;
        }
        char c = s[++i];
        *w++ = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    }
    *w = '\0';
    return out;
}

/* Finds a string literal '<|im_start|>system\n...<|im_end|>' (newline written as \n or raw) whose text is
 * fixed: the template's default system turn. Returns 0 and *out (malloc'd, or NULL when there is none). */
static int find_default_system(const char *tmpl, char **out) {
    static const char head[] = IM_START "system";
    *out = NULL;
    for (const char *p = strstr(tmpl, head); p; p = strstr(p + 1, head)) {
        if (p == tmpl || (p[-1] != '\'' && p[-1] != '"')) continue; /* must open a literal */
        const char quote = p[-1], *q = p + strlen(head);
        if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else if (q[0] == '\n')
            q += 1;
        else
            continue;
        const char *end = strstr(q, IM_END);
        if (!end) continue;
        bool literal = true; /* no closing quote (unescaped) before <|im_end|> */
        for (const char *r = q; r < end && literal; r++) {
            if (*r == '\\')
                r++;
            else if (*r == quote)
                literal = false;
        }
        if (!literal) continue;
        *out = unescape_literal(q, (size_t)(end - q));
        return *out ? 0 : MX_ERR_NOMEM;
    }
    return 0;
}

int mx_chat_template_from_gguf(const mx_gguf *g, mx_chat_template **out, mx_err *err) {
    *out = NULL;
    char *tmpl = NULL;
    if (!mx_gguf_kv_find(g, "tokenizer.chat_template"))
        return mx_err_set(err, MX_ERR_MISSING, "%s: the model has no chat template (tokenizer.chat_template)",
                          g->path);
    int rc = mx_gguf_get_str(g, "tokenizer.chat_template", &tmpl, err);
    if (rc) return rc;
    if (!strstr(tmpl, IM_START)) {
        size_t n = strcspn(tmpl, "\n");
        rc = mx_err_set(err, MX_ERR_UNSUPPORTED, "%s: unsupported chat template (only ChatML is): %.*s%s",
                        g->path, (int)(n > 200 ? 200 : n), tmpl, n > 200 ? "..." : "");
        free(tmpl);
        return rc;
    }
    mx_chat_template *ct = calloc(1, sizeof *ct);
    if (!ct || find_default_system(tmpl, &ct->default_system)) {
        free(tmpl);
        mx_chat_template_free(ct);
        return mx_err_set(err, MX_ERR_NOMEM, "chat template: no memory");
    }
    free(tmpl);
    *out = ct;
    return 0;
}

void mx_chat_template_free(mx_chat_template *ct) {
    if (!ct) return;
    free(ct->default_system);
    free(ct);
}

const char *mx_chat_end_of_turn(const mx_chat_template *ct) {
    return IM_END;
}

/* Appends one turn "<|im_start|>role\ncontent<|im_end|>\n" at w (or only counts its length when w is NULL).
 */
static size_t put_turn(char *w, const char *role, const char *content) {
    const char *parts[] = {IM_START, role ? role : "", "\n", content ? content : "", IM_END "\n"};
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t len = strlen(parts[i]);
        if (w) memcpy(w + n, parts[i], len);
        n += len;
    }
    return n;
}

/* Writes the whole conversation at w (or counts it when w is NULL); returns its length. */
static size_t render(const mx_chat_template *ct, const mx_chat_msg *msgs, int n, bool gen, char *w) {
    static const char gen_prompt[] = IM_START "assistant\n";
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        if (i == 0 && ct->default_system && (!msgs[0].role || strcmp(msgs[0].role, "system") != 0))
            len += put_turn(w ? w + len : NULL, "system", ct->default_system);
        len += put_turn(w ? w + len : NULL, msgs[i].role, msgs[i].content);
    }
    if (gen) {
        if (w) memcpy(w + len, gen_prompt, sizeof gen_prompt - 1);
        len += sizeof gen_prompt - 1;
    }
    return len;
}

char *mx_chat_render(const mx_chat_template *ct, const mx_chat_msg *msgs, int n, bool add_generation_prompt) {
    size_t len = render(ct, msgs, n, add_generation_prompt, NULL);
    char *s = malloc(len + 1);
    if (!s) return NULL;
    render(ct, msgs, n, add_generation_prompt, s);
    s[len] = '\0';
    return s;
}
