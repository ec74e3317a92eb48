/* serve.h: `mixatt serve`, an OpenAI-compatible HTTP server (libmicrohttpd, one thread per connection) over
 * the continuous-batching scheduler (sched.h). Endpoints: POST /v1/completions, POST /v1/chat/completions
 * (JSON, or SSE streaming with "stream": true, ending in "data: [DONE]"), GET /v1/models, GET /health,
 * GET /metrics (Prometheus text) and GET / (the chat page, embedded in the binary). */
#ifndef MX_SERVE_H
#define MX_SERVE_H

#include <stddef.h>

#include "sched.h"

typedef struct {
    const char *host;    /* address to bind; "127.0.0.1" by default */
    int port;            /* 0: any free port (mx_server_port says which) */
    const char *api_key; /* NULL: no key; else every endpoint but /health and / wants "Bearer KEY" */
    const char *model_name;
    size_t max_body; /* bytes; a larger request body gets 413 */
    mx_sched_opts sched;
} mx_serve_opts;

typedef struct mx_server mx_server;

/* Starts the scheduler and the HTTP daemon; the server answers from when this returns. */
int mx_server_start(const mx_model *m, mx_backend *be, const mx_serve_opts *o, mx_server **out, mx_err *err);
int mx_server_port(const mx_server *srv);
/* Drains: new generation requests get 503 while the ones queued and running finish and are delivered; then
 * stops the daemon and frees the server. */
void mx_server_stop(mx_server *srv);

/* The Prometheus text for /metrics (metrics.c), malloc'd. codes/counts: HTTP responses by status. */
char *mx_metrics_text(const mx_sched_stats *st, const char *model, const int *codes, const uint64_t *counts,
                      int n_codes);
/* The chat page for GET / (page.c): one self-contained HTML document. */
const char *mx_chat_page(size_t *len);

#endif
