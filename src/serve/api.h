/* api.h: the OpenAI API's JSON shapes (cJSON): a completions or chat request parsed into a job, the responses
 * and streaming chunks built from a job's progress, and the error object. */
#ifndef MX_SERVE_API_H
#define MX_SERVE_API_H

#include <stdbool.h>
#include <stddef.h>

#include "sched.h"

typedef enum { MX_API_COMPLETIONS, MX_API_CHAT } mx_api_kind;

/* An HTTP error with OpenAI's error object; status 0 = none. */
typedef struct {
    int status;
    const char *type;  /* "invalid_request_error", ... */
    const char *param; /* the offending field, or NULL */
    const char *code;  /* e.g. "context_length_exceeded", or NULL */
    char message[512];
    int n_prompt, n_ctx; /* with code context_length_exceeded */
} mx_api_error;

typedef struct {
    bool stream, include_usage;
} mx_api_flags;

/* What request parsing needs to know about the server. */
typedef struct {
    const mx_model *m;
    int n_ctx;
    uint64_t seed; /* the seed of a request that gives none (fresh per request) */
} mx_api_env;

/* Parses a request body into j (prompt tokens, budget, sampling, stops) and flags; 0, or non-zero with e set
 * (400 for a malformed body, a wrong type, an unsupported field that would change the result, or a prompt
 * that does not fit the context). */
int mx_api_parse(const mx_api_env *env, mx_api_kind kind, const char *body, size_t len, mx_job *j,
                 mx_api_flags *fl, mx_api_error *e);
int mx_api_fail(mx_api_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The error object {"error": {...}} as malloc'd JSON. */
char *mx_api_error_json(const mx_api_error *e);
/* The whole response for a finished job (with usage), malloc'd JSON. */
char *mx_api_response_json(mx_api_kind kind, const char *id, long created, const char *model,
                           const mx_job *j);
/* One streaming chunk: text (n bytes, valid UTF-8) and finish (NULL while running); chat's first chunk
 * carries the role (role_only). usage_only: the final chunk of stream_options.include_usage. */
char *mx_api_chunk_json(mx_api_kind kind, const char *id, long created, const char *model, const char *text,
                        size_t n, const char *finish, bool role_only, const mx_job *usage_only);
/* finish_reason as OpenAI names it: "stop" or "length" (the job ended on EOS, end of turn or a stop string,
 * or on its token budget). */
const char *mx_api_finish_reason(const mx_job *j);

#endif
