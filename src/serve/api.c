/* api.c: OpenAI request and response JSON (see api.h). Request fields: model (any name is accepted, as
 * llama-server does), prompt (a string, a list of one string, token ids) or messages (content a string or
 * text parts), max_tokens / max_completion_tokens, temperature, top_p, top_k, min_p, seed, stop (a string or
 * a list), stream, stream_options.include_usage, presence_penalty, frequency_penalty. Fields whose neglect
 * would change the result are refused (n > 1, best_of > 1, echo, logprobs, logit_bias, suffix, tools,
 * response_format other than text); any other field is ignored, as the OpenAI API ignores unknown ones. */
#include "api.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { COMPLETIONS_DEFAULT_MAX = 16 }; /* OpenAI's default max_tokens for /v1/completions */

int mx_api_fail(mx_api_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = status == 401   ? "authentication_error"
              : status >= 500 ? "server_error"
                              : "invalid_request_error";
    e->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return status;
}

char *mx_api_error_json(const mx_api_error *e) {
    cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(err, "message", e->message);
    cJSON_AddStringToObject(err, "type", e->type ? e->type : "invalid_request_error");
    if (e->param)
        cJSON_AddStringToObject(err, "param", e->param);
    else
        cJSON_AddNullToObject(err, "param");
    if (e->code)
        cJSON_AddStringToObject(err, "code", e->code);
    else
        cJSON_AddNullToObject(err, "code");
    if (e->code && !strcmp(e->code, "context_length_exceeded")) {
        cJSON_AddNumberToObject(err, "n_prompt_tokens", e->n_prompt);
        cJSON_AddNumberToObject(err, "n_ctx", e->n_ctx);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ---- request fields ---- */

static bool is_int(const cJSON *v) {
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 9.0e15;
}

/* A number field in [lo, hi] into *out (absent or null: unchanged). */
static int get_number(const cJSON *req, const char *name, double lo, double hi, float *out, mx_api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return mx_api_fail(e, 400, name, "'%s' must be a number", name);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return mx_api_fail(e, 400, name, "'%s' is %g; it must be between %g and %g", name, v->valuedouble, lo,
                           hi);
    *out = (float)v->valuedouble;
    return 0;
}

static int get_int(const cJSON *req, const char *name, double lo, double hi, long long *out,
                   mx_api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!is_int(v)) return mx_api_fail(e, 400, name, "'%s' must be an integer", name);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return mx_api_fail(e, 400, name, "'%s' is %.0f; it must be between %.0f and %.0f", name,
                           v->valuedouble, lo, hi);
    *out = (long long)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *req, const char *name, bool *out, mx_api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return mx_api_fail(e, 400, name, "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Fields the server does not implement and whose neglect would change the answer. */
static int refuse_unsupported(const cJSON *req, mx_api_error *e) {
    long long n = 1, best_of = 1, top_logprobs = 0;
    bool echo = false;
    if (get_int(req, "n", 1, 128, &n, e) || get_int(req, "best_of", 1, 128, &best_of, e) ||
        get_bool(req, "echo", &echo, e) || get_int(req, "top_logprobs", 0, 20, &top_logprobs, e))
        return e->status;
    if (n != 1) return mx_api_fail(e, 400, "n", "'n' must be 1: this server returns one choice per request");
    if (best_of != 1) return mx_api_fail(e, 400, "best_of", "'best_of' must be 1");
    if (echo) return mx_api_fail(e, 400, "echo", "'echo' is not supported");
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(req, "logprobs");
    if (lp && !cJSON_IsNull(lp) && !cJSON_IsFalse(lp) && !(cJSON_IsNumber(lp) && lp->valuedouble == 0))
        return mx_api_fail(e, 400, "logprobs", "'logprobs' is not supported");
    if (top_logprobs) return mx_api_fail(e, 400, "top_logprobs", "'top_logprobs' is not supported");
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(req, "logit_bias");
    if (lb && !cJSON_IsNull(lb) && (!cJSON_IsObject(lb) || lb->child))
        return mx_api_fail(e, 400, "logit_bias", "'logit_bias' is not supported");
    const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(req, "suffix");
    if (suffix && !cJSON_IsNull(suffix) && !(cJSON_IsString(suffix) && !*suffix->valuestring))
        return mx_api_fail(e, 400, "suffix", "'suffix' is not supported");
    static const char *const tools[] = {"tools", "functions"};
    for (int i = 0; i < 2; i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(req, tools[i]);
        if (t && !cJSON_IsNull(t) && !(cJSON_IsArray(t) && !t->child))
            return mx_api_fail(e, 400, tools[i], "'%s' (tool calling) is not supported", tools[i]);
    }
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(req, "response_format");
    if (rf && !cJSON_IsNull(rf)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(ty) || strcmp(ty->valuestring, "text"))
            return mx_api_fail(e, 400, "response_format",
                               "only response_format {\"type\": \"text\"} is supported");
    }
    return 0;
}

static int get_stops(const cJSON *req, mx_job *j, mx_api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, "stop");
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        if (!*v->valuestring) return 0;
        if (!(j->stops[0] = strdup(v->valuestring))) return mx_api_fail(e, 500, NULL, "out of memory");
        j->n_stops = 1;
        return 0;
    }
    if (!cJSON_IsArray(v)) return mx_api_fail(e, 400, "stop", "'stop' must be a string or a list of strings");
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
        if (!cJSON_IsString(s))
            return mx_api_fail(e, 400, "stop", "'stop' must be a string or a list of strings");
        if (!*s->valuestring) continue;
        if (j->n_stops == MX_SERVE_MAX_STOPS)
            return mx_api_fail(e, 400, "stop", "at most %d stop strings", MX_SERVE_MAX_STOPS);
        if (!(j->stops[j->n_stops++] = strdup(s->valuestring)))
            return mx_api_fail(e, 500, NULL, "out of memory");
    }
    return 0;
}

static int get_sampling(const cJSON *req, const mx_api_env *env, mx_job *j, mx_api_error *e) {
    mx_sampler_params *p = &j->sp;
    /* OpenAI's defaults: temperature 1, top_p 1, no top-k or min-p */
    *p = (mx_sampler_params){.temperature = 1.0f,
                             .top_k = 0,
                             .top_p = 1.0f,
                             .min_p = 0.0f,
                             .repeat_penalty = 1.0f,
                             .repeat_last_n = 0,
                             .seed = env->seed};
    long long top_k = 0, seed = 0;
    bool has_seed = cJSON_GetObjectItemCaseSensitive(req, "seed") &&
                    !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(req, "seed"));
    if (get_number(req, "temperature", 0, 2, &p->temperature, e) ||
        get_number(req, "top_p", 0, 1, &p->top_p, e) || get_number(req, "min_p", 0, 1, &p->min_p, e) ||
        get_int(req, "top_k", -1, 1 << 30, &top_k, e) || get_int(req, "seed", -9.0e15, 9.0e15, &seed, e) ||
        get_number(req, "presence_penalty", -2, 2, &j->presence, e) ||
        get_number(req, "frequency_penalty", -2, 2, &j->frequency, e))
        return e->status;
    if (p->top_p <= 0.0f) return mx_api_fail(e, 400, "top_p", "'top_p' must be greater than 0");
    p->top_k = top_k > 0 ? (int)top_k : 0;
    if (has_seed) p->seed = (uint64_t)seed;
    return 0;
}

/* ---- prompts ---- */

static int tokenize(const mx_api_env *env, const char *text, mx_job *j, mx_api_error *e) {
    mx_err err = {0};
    if (mx_tokenize(env->m->tok, text, strlen(text), true, &j->prompt, &j->n_prompt, &err))
        return mx_api_fail(e, 400, NULL, "cannot tokenize the prompt: %s", err.msg);
    return 0;
}

/* prompt: a string, a list of one string, a list of token ids, or a list of one list of ids. */
static int completion_prompt(const mx_api_env *env, const cJSON *req, mx_job *j, mx_api_error *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(req, "prompt");
    if (!p) return mx_api_fail(e, 400, "prompt", "'prompt' is required");
    if (cJSON_IsString(p)) return tokenize(env, p->valuestring, j, e);
    if (!cJSON_IsArray(p)) return mx_api_fail(e, 400, "prompt", "'prompt' must be a string or a list");
    int n = cJSON_GetArraySize(p);
    const cJSON *first = cJSON_GetArrayItem(p, 0);
    if (n == 1 && (cJSON_IsString(first) || cJSON_IsArray(first))) {
        if (cJSON_IsString(first)) return tokenize(env, first->valuestring, j, e);
        p = first;
        n = cJSON_GetArraySize(p);
    } else if (n > 1 && !cJSON_IsNumber(first)) {
        return mx_api_fail(e, 400, "prompt", "one prompt per request: 'prompt' lists %d", n);
    }
    j->prompt = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!j->prompt) return mx_api_fail(e, 500, NULL, "out of memory");
    const cJSON *id;
    cJSON_ArrayForEach(id, p) {
        if (!is_int(id) || id->valuedouble < 0 || id->valuedouble >= env->m->cfg.vocab)
            return mx_api_fail(e, 400, "prompt", "'prompt' token ids must be integers in 0..%d",
                               env->m->cfg.vocab - 1);
        j->prompt[j->n_prompt++] = (int)id->valuedouble;
    }
    return 0;
}

/* A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined). */
static char *message_content(const cJSON *msg, int i, mx_api_error *e) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
    if (cJSON_IsString(c)) return strdup(c->valuestring);
    if (!c || cJSON_IsNull(c)) return strdup("");
    if (!cJSON_IsArray(c)) {
        mx_api_fail(e, 400, "messages", "messages[%d].content must be a string or a list of text parts", i);
        return NULL;
    }
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type"),
                    *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") || !cJSON_IsString(tx)) {
            mx_api_fail(e, 400, "messages", "messages[%d].content: only text parts are supported", i);
            return NULL;
        }
        len += strlen(tx->valuestring);
    }
    char *s = malloc(len + 1), *w = s;
    if (!s) return NULL;
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        memcpy(w, t, strlen(t));
        w += strlen(t);
    }
    *w = '\0';
    return s;
}

/* messages rendered with the model's chat template, then tokenized; the template's end of turn stops. */
static int chat_prompt(const mx_api_env *env, const cJSON *req, mx_job *j, mx_api_error *e) {
    const mx_model *m = env->m;
    if (!m->chat)
        return mx_api_fail(e, 400, "messages",
                           "%s has no chat template that mixatt supports: use /v1/completions", m->path);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return mx_api_fail(e, 400, "messages", "'messages' must be a non-empty list");
    int n = cJSON_GetArraySize(msgs), i = 0, rc = 0;
    mx_chat_msg *cm = calloc((size_t)n, sizeof *cm);
    char **contents = calloc((size_t)n, sizeof *contents);
    if (!cm || !contents) rc = mx_api_fail(e, 500, NULL, "out of memory");
    const cJSON *msg;
    cJSON_ArrayForEach(msg, msgs) {
        if (rc) break;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        if (!cJSON_IsObject(msg) || !cJSON_IsString(role)) {
            rc = mx_api_fail(e, 400, "messages", "messages[%d] must be an object with a string 'role'", i);
            break;
        }
        if (!(contents[i] = message_content(msg, i, e))) {
            rc = e->status ? e->status : mx_api_fail(e, 500, NULL, "out of memory");
            break;
        }
        /* OpenAI's "developer" role is the system role of older models */
        cm[i] = (mx_chat_msg){!strcmp(role->valuestring, "developer") ? "system" : role->valuestring,
                              contents[i]};
        i++;
    }
    mx_err terr = {0};
    char *text = rc ? NULL : mx_chat_render(m->chat, cm, n, true, &terr);
    if (!rc && !text)
        rc = terr.code == MX_ERR_NOMEM || !terr.code ? mx_api_fail(e, 500, NULL, "out of memory")
                                                     : mx_api_fail(e, 400, NULL, "%s", terr.msg);
    if (!rc) rc = tokenize(env, text, j, e);
    if (!rc) j->stop_token = mx_tokenizer_find(m->tok, mx_chat_end_of_turn(m->chat));
    free(text);
    for (int k = 0; contents && k < n; k++) free(contents[k]);
    free(contents);
    free(cm);
    return rc;
}

/* The token budget: max_tokens (chat also max_completion_tokens), within the context left after the prompt.
 */
static int get_budget(const mx_api_env *env, mx_api_kind kind, const cJSON *req, mx_job *j, mx_api_error *e) {
    long long max = kind == MX_API_COMPLETIONS ? COMPLETIONS_DEFAULT_MAX : 1LL << 40;
    const char *field = "max_tokens";
    if (kind == MX_API_CHAT && cJSON_GetObjectItemCaseSensitive(req, "max_completion_tokens"))
        field = "max_completion_tokens";
    if (get_int(req, field, 1, 9.0e15, &max, e)) return e->status;
    if (j->n_prompt == 0) return mx_api_fail(e, 400, "prompt", "the prompt is empty");
    if (j->n_prompt >= env->n_ctx) {
        e->code = "context_length_exceeded";
        e->n_prompt = j->n_prompt;
        e->n_ctx = env->n_ctx;
        return mx_api_fail(
            e, 400, kind == MX_API_CHAT ? "messages" : "prompt",
            "the prompt is %d tokens but the context is %d tokens (at least one must be left to "
            "generate): shorten the prompt or start the server with a larger --ctx",
            j->n_prompt, env->n_ctx);
    }
    long long room = env->n_ctx - j->n_prompt;
    j->max_new = (int)(max < room ? max : room);
    return 0;
}

int mx_api_parse(const mx_api_env *env, mx_api_kind kind, const char *body, size_t len, mx_job *j,
                 mx_api_flags *fl, mx_api_error *e) {
    memset(e, 0, sizeof *e);
    memset(fl, 0, sizeof *fl);
    cJSON *req = cJSON_ParseWithLength(body, len);
    if (!req) return mx_api_fail(e, 400, NULL, "the request body is not valid JSON");
    int rc = 0;
    if (!cJSON_IsObject(req)) rc = mx_api_fail(e, 400, NULL, "the request body must be a JSON object");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(req, "model");
    if (!rc && model && !cJSON_IsNull(model) && !cJSON_IsString(model))
        rc = mx_api_fail(e, 400, "model", "'model' must be a string");
    if (!rc) rc = refuse_unsupported(req, e);
    if (!rc) rc = get_bool(req, "stream", &fl->stream, e);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(req, "stream_options");
    if (!rc && so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            rc = mx_api_fail(e, 400, "stream_options", "'stream_options' must be an object");
        else
            rc = get_bool(so, "include_usage", &fl->include_usage, e);
    }
    if (!rc) rc = get_sampling(req, env, j, e);
    if (!rc) rc = get_stops(req, j, e);
    if (!rc) rc = kind == MX_API_CHAT ? chat_prompt(env, req, j, e) : completion_prompt(env, req, j, e);
    if (!rc) rc = get_budget(env, kind, req, j, e);
    cJSON_Delete(req);
    return rc;
}

/* ---- responses ---- */

const char *mx_api_finish_reason(const mx_job *j) {
    return j->finish && !strcmp(j->finish, "length") ? "length" : "stop";
}

static void add_usage(cJSON *root, const mx_job *j) {
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", j->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", j->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", j->n_prompt + j->n_gen);
}

static cJSON *envelope(mx_api_kind kind, bool chunk, const char *id, long created, const char *model) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object",
                            kind == MX_API_COMPLETIONS ? "text_completion"
                            : chunk                    ? "chat.completion.chunk"
                                                       : "chat.completion");
    cJSON_AddNumberToObject(root, "created", (double)created);
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddStringToObject(root, "system_fingerprint", "mixatt");
    return root;
}

static char *print_and_free(cJSON *root) {
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *mx_api_response_json(mx_api_kind kind, const char *id, long created, const char *model,
                           const mx_job *j) {
    cJSON *root = envelope(kind, false, id, created, model);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    const char *text = j->out_len ? j->out : "";
    if (kind == MX_API_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text);
    } else {
        cJSON_AddStringToObject(c, "text", text);
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", mx_api_finish_reason(j));
    add_usage(root, j);
    return print_and_free(root);
}

char *mx_api_chunk_json(mx_api_kind kind, const char *id, long created, const char *model, const char *text,
                        size_t n, const char *finish, bool role_only, const mx_job *usage_only) {
    cJSON *root = envelope(kind, true, id, created, model);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    if (usage_only) {
        add_usage(root, usage_only);
        return print_and_free(root);
    }
    char *piece = malloc(n + 1);
    if (!piece) {
        cJSON_Delete(root);
        return NULL;
    }
    memcpy(piece, text, n);
    piece[n] = '\0';
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (kind == MX_API_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role_only) cJSON_AddStringToObject(d, "role", "assistant");
        if (role_only || n > 0 || !finish) cJSON_AddStringToObject(d, "content", piece);
    } else {
        cJSON_AddStringToObject(c, "text", piece);
    }
    cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    free(piece);
    return print_and_free(root);
}
