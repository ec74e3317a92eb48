/* hf_dir.c: a Hugging Face directory's tokenizer and chat template (mx_hf_load_tokenizer, see tokenizer.h):
 *   tokenizer.json          the tokenizer itself (tok_hf.c)
 *   tokenizer_config.json   bos_token / eos_token (a string or {"content": ...}), add_bos_token,
 *                           add_eos_token, chat_template (a string, or a list of {name, template} of which
 *                           "default" is taken)
 *   chat_template.jinja     the chat template, when transformers saved it apart (it then wins, as there)
 *   generation_config.json  bos_token_id / eos_token_id (a number or a list: the first), used when
 *                           tokenizer_config.json names none
 * A chat template that cannot be read (a construct outside mixatt's Jinja subset) is reported on stderr and
 * leaves *chat NULL: the tokenizer still loads. tokenizer_config.json's add_bos_token wins over the
 * post-processor's, as transformers' fast tokenizers rebuild their post-processor from it. */
#include "../base/file.h"
#include "tok_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, NUL-terminated; NULL with *missing set when it does not exist. */
static char *read_file(const char *path, size_t *len, bool *missing, mx_err *err) {
    *missing = access(path, F_OK) != 0 && errno == ENOENT;
    return *missing ? NULL : mx_file_read(path, len, err);
}

static cJSON *read_json(const char *dir, const char *name, mx_err *err, int *rc) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    bool missing;
    size_t len;
    char *text = read_file(path, &len, &missing, err);
    *rc = 0;
    if (!text) {
        if (!missing) *rc = err->code;
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) *rc = mx_err_set(err, MX_ERR_FORMAT, "%s: not valid JSON", path);
    return j;
}

/* A token named in tokenizer_config.json: "text" or {"content": "text"}. */
static const char *token_name(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A token id of generation_config.json: a number, or the first of a list. */
static int token_id(const cJSON *gen, const char *key, int n_vocab) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(gen, key);
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < n_vocab ? v->valueint : -1;
}

static const char *config_template(const cJSON *cfg) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *e;
    if (cJSON_IsString(t)) return t->valuestring;
    cJSON_ArrayForEach(e, (cJSON_IsArray(t) ? t : (const cJSON *)NULL)) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(e, "template");
        if (cJSON_IsString(name) && !strcmp(name->valuestring, "default") && cJSON_IsString(tmpl))
            return tmpl->valuestring;
    }
    return NULL;
}

static void apply_configs(mx_tokenizer *t, const cJSON *cfg, const cJSON *gen) {
    const char *bos = token_name(cfg, "bos_token"), *eos = token_name(cfg, "eos_token");
    int id;
    if (bos && (id = mx_tokenizer_find(t, bos)) >= 0)
        t->bos = id;
    else if (!bos && (id = token_id(gen, "bos_token_id", t->n_vocab)) >= 0 && t->bos < 0)
        t->bos = id;
    if (eos && (id = mx_tokenizer_find(t, eos)) >= 0)
        t->eos = id;
    else if (!eos && (id = token_id(gen, "eos_token_id", t->n_vocab)) >= 0)
        t->eos = id;
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    if (cJSON_IsBool(ab)) t->add_bos = cJSON_IsTrue(ab);
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    if (cJSON_IsBool(ae)) t->add_eos = cJSON_IsTrue(ae);
}

static int load_template(const char *dir, const mx_tokenizer *t, const cJSON *cfg, mx_chat_template **chat,
                         mx_err *err) {
    char path[4096], where[4200];
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    bool missing;
    char *file = read_file(path, NULL, &missing, err);
    if (!file && !missing) return err->code;
    const char *src = file ? file : config_template(cfg);
    snprintf(where, sizeof where, file ? "%s" : "%s/tokenizer_config.json chat_template", file ? path : dir);
    int rc = 0;
    if (src) {
        size_t n;
        const char *bos = t->bos >= 0 ? mx_token_text(t, t->bos, &n) : "";
        const char *eos = t->eos >= 0 ? mx_token_text(t, t->eos, &n) : "";
        rc = mx_chat_template_new(src, bos, eos, where, chat, err);
    }
    free(file);
    return rc;
}

int mx_hf_load_tokenizer(const char *dir, mx_tokenizer **tok, mx_chat_template **chat, mx_err *err) {
    *tok = NULL;
    *chat = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool missing;
    size_t len;
    char *json = read_file(path, &len, &missing, err);
    if (!json) return missing ? 0 : err->code;
    int rc = mx_tokenizer_from_hf_json(json, len, path, tok, err);
    free(json);
    int rc1 = 0, rc2 = 0;
    cJSON *cfg = rc ? NULL : read_json(dir, "tokenizer_config.json", err, &rc1);
    cJSON *gen = rc || rc1 ? NULL : read_json(dir, "generation_config.json", err, &rc2);
    if (!rc) rc = rc1 ? rc1 : rc2;
    if (!rc) apply_configs(*tok, cfg, gen);
    if (!rc) {
        mx_err terr = {0}; /* a template outside the subset costs --chat only, not the model */
        if (load_template(dir, *tok, cfg, chat, &terr))
            fprintf(stderr, "mixatt: warning: %s (--chat and `mixatt chat` are unavailable)\n", terr.msg);
    }
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    if (rc) {
        mx_tokenizer_free(*tok);
        *tok = NULL;
    }
    return rc;
}
