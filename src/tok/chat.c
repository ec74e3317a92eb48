/* chat.c: chat templates (see tokenizer.h): the model's Jinja template, parsed once by jinja_parse.c and
 * rendered by jinja_eval.c with the variables transformers' apply_chat_template gives a template: messages
 * ([{role, content}]), add_generation_prompt, bos_token, eos_token, tools and documents (None).
 * The end of an assistant turn is not guessed from the template's text: a probe conversation (user, then
 * assistant "MXPROBE") is rendered, and what the template writes right after the assistant's text, up to the
 * first whitespace, is the end-of-turn text ("<|im_end|>", "<|eot_id|>", "</s>"); when it writes nothing
 * there, the EOS token's text. */
#include "jinja.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROBE "MXPROBE"

struct mx_chat_template {
    char *source, *bos, *eos, *end_of_turn;
    mx_jinja *j;
};

void mx_chat_template_free(mx_chat_template *ct) {
    if (!ct) return;
    mx_jinja_free(ct->j);
    free(ct->source);
    free(ct->bos);
    free(ct->eos);
    free(ct->end_of_turn);
    free(ct);
}

const char *mx_chat_template_source(const mx_chat_template *ct) {
    return ct->source;
}

const char *mx_chat_end_of_turn(const mx_chat_template *ct) {
    return ct->end_of_turn;
}

static cJSON *chat_vars(const mx_chat_template *ct, const mx_chat_msg *msgs, int n, bool gen) {
    cJSON *v = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(v, "messages");
    bool ok = v && list && cJSON_AddBoolToObject(v, "add_generation_prompt", gen) &&
              cJSON_AddStringToObject(v, "bos_token", ct->bos) &&
              cJSON_AddStringToObject(v, "eos_token", ct->eos) && cJSON_AddNullToObject(v, "tools") &&
              cJSON_AddNullToObject(v, "documents");
    for (int i = 0; i < n && ok; i++) {
        cJSON *m = cJSON_CreateObject();
        ok = m && cJSON_AddItemToArray(list, m) &&
             cJSON_AddStringToObject(m, "role", msgs[i].role ? msgs[i].role : "") &&
             cJSON_AddStringToObject(m, "content", msgs[i].content ? msgs[i].content : "");
    }
    if (!ok) cJSON_Delete(v), v = NULL;
    return v;
}

char *mx_chat_render(const mx_chat_template *ct, const mx_chat_msg *msgs, int n, bool add_generation_prompt,
                     mx_err *err) {
    cJSON *vars = chat_vars(ct, msgs, n, add_generation_prompt);
    if (!vars) return mx_err_set(err, MX_ERR_NOMEM, "chat template: out of memory"), NULL;
    char *s = mx_jinja_render(ct->j, vars, err);
    cJSON_Delete(vars);
    return s;
}

/* What the template writes after an assistant message, up to the first whitespace (see the top comment). */
static char *find_end_of_turn(const mx_chat_template *ct) {
    static const mx_chat_msg with_system[] = {{"system", "S"}, {"user", "U"}, {"assistant", PROBE}};
    for (int tries = 0; tries < 2; tries++) {
        mx_err err = {0};
        char *r = mx_chat_render(ct, with_system + (tries == 0), tries == 0 ? 2 : 3, false, &err);
        char *p = r ? strstr(r, PROBE) : NULL;
        if (!p) {
            free(r);
            continue;
        }
        p += strlen(PROBE);
        size_t k = strcspn(p, " \t\r\n");
        char *eot = k ? strndup(p, k) : NULL;
        free(r);
        if (k) return eot;
        break;
    }
    return strdup(ct->eos);
}

int mx_chat_template_new(const char *source, const char *bos, const char *eos, const char *where,
                         mx_chat_template **out, mx_err *err) {
    *out = NULL;
    mx_chat_template *ct = calloc(1, sizeof *ct);
    if (!ct || !(ct->source = strdup(source)) || !(ct->bos = strdup(bos ? bos : "")) ||
        !(ct->eos = strdup(eos ? eos : "")))
        return mx_chat_template_free(ct), mx_err_set(err, MX_ERR_NOMEM, "chat template: out of memory");
    int rc = mx_jinja_parse(source, where, &ct->j, err);
    if (!rc && !(ct->end_of_turn = find_end_of_turn(ct)))
        rc = mx_err_set(err, MX_ERR_NOMEM, "chat template: out of memory");
    if (rc) return mx_chat_template_free(ct), rc;
    *out = ct;
    return 0;
}

/* The text of token `key`'s id in the GGUF's token list, or "" (malloc'd). */
static char *token_text(const mx_gguf *g, const char *key) {
    int64_t id;
    const mx_gguf_kv *toks = mx_gguf_kv_find(g, "tokenizer.ggml.tokens");
    if (!mx_gguf_kv_find(g, key) || mx_gguf_get_i64(g, key, &id, NULL) || !toks ||
        toks->type != MX_GGUF_ARRAY || toks->elem != MX_GGUF_STRING || id < 0 || (uint64_t)id >= toks->count)
        return strdup("");
    return strndup(toks->strs[id].ptr, toks->strs[id].len);
}

int mx_chat_template_from_gguf(const mx_gguf *g, mx_chat_template **out, mx_err *err) {
    *out = NULL;
    char *tmpl = NULL;
    if (!mx_gguf_kv_find(g, "tokenizer.chat_template"))
        return mx_err_set(err, MX_ERR_MISSING, "%s: the model has no chat template (tokenizer.chat_template)",
                          g->path);
    int rc = mx_gguf_get_str(g, "tokenizer.chat_template", &tmpl, err);
    if (rc) return rc;
    char *bos = token_text(g, "tokenizer.ggml.bos_token_id"),
         *eos = token_text(g, "tokenizer.ggml.eos_token_id");
    char where[1200];
    snprintf(where, sizeof where, "%s: tokenizer.chat_template", g->path);
    rc = bos && eos ? mx_chat_template_new(tmpl, bos, eos, where, out, err)
                    : mx_err_set(err, MX_ERR_NOMEM, "chat template: out of memory");
    free(tmpl);
    free(bos);
    free(eos);
    return rc;
}
