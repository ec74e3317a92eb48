/* http.c: the HTTP side of `mixatt serve` (see serve.h). libmicrohttpd runs one thread per connection, so a
 * handler may block: a non-streaming request waits for its job in the handler; a streaming one returns a
 * callback response whose reader blocks until the job releases text. While waiting, both poll the client's
 * socket: a client that hung up cancels its job, and the scheduler frees the slot at its next step.
 * Errors are OpenAI error objects: 400 (bad JSON, wrong types, unsupported fields, a prompt longer than the
 * context, with its token counts), 401 (API key), 404, 405, 413 (body over --max-body), 503 with Retry-After
 * (queue full, or draining). */
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "../base/clock.h"
#include "api.h"
#include "serve.h"

static const int CODES[] = {200, 400, 401, 404, 405, 413, 500, 503};
enum { N_CODES = sizeof CODES / sizeof CODES[0], WAIT_MS = 50, STOP_WAIT_S = 30 };

struct mx_server {
    struct MHD_Daemon *d;
    mx_sched *sc;
    const mx_model *m;
    mx_serve_opts o;
    int port;
    long started;
    pthread_mutex_t mu; /* guards what follows */
    pthread_cond_t quiet;
    int open; /* requests being answered */
    bool draining;
    uint64_t next_id;
    uint64_t counts[N_CODES];
};

/* One request: its body as it arrives. */
typedef struct {
    char *body;
    size_t len, cap;
    bool too_big;
} request;

/* A streaming response: the job, what has been sent, the bytes of the event being written. */
typedef struct {
    mx_server *srv;
    mx_job *j;
    mx_api_kind kind;
    bool include_usage, opened, closed;
    char id[64];
    long created;
    int fd;
    size_t sent; /* bytes of j->out already sent */
    char *buf;
    size_t len, off, cap;
} stream;

static void count_code(mx_server *srv, int status) {
    pthread_mutex_lock(&srv->mu);
    for (int i = 0; i < N_CODES; i++)
        if (CODES[i] == status) srv->counts[i]++;
    pthread_mutex_unlock(&srv->mu);
}

static enum MHD_Result send_body(mx_server *srv, struct MHD_Connection *c, int status, char *body,
                                 const char *type, int retry_after) {
    if (!body) return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    count_code(srv, status);
    enum MHD_Result r = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_json(mx_server *srv, struct MHD_Connection *c, int status, char *json) {
    return send_body(srv, c, status, json, "application/json", 0);
}

static enum MHD_Result send_error(mx_server *srv, struct MHD_Connection *c, const mx_api_error *e) {
    return send_body(srv, c, e->status, mx_api_error_json(e), "application/json", e->status == 503 ? 1 : 0);
}

static enum MHD_Result fail(mx_server *srv, struct MHD_Connection *c, int status, const char *code,
                            const char *msg) {
    mx_api_error e = {0};
    mx_api_fail(&e, status, NULL, "%s", msg);
    e.code = code;
    return send_error(srv, c, &e);
}

static int connection_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* Whether the client has closed its end (a read would return 0, or the socket is in error). */
static bool client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return true;
    char ch;
    return (p.revents & POLLIN) && recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* ---- generation endpoints ---- */

static void make_id(mx_server *srv, mx_api_kind kind, char *id, size_t n) {
    pthread_mutex_lock(&srv->mu);
    uint64_t k = srv->next_id++;
    pthread_mutex_unlock(&srv->mu);
    snprintf(id, n, "%s-%lx%06llx", kind == MX_API_CHAT ? "chatcmpl" : "cmpl", srv->started,
             (unsigned long long)k);
}

/* Appends one SSE event "data: PAYLOAD\n\n" (payload malloc'd, freed here). */
static int add_event(stream *st, char *payload) {
    if (!payload) return -1;
    size_t n = strlen(payload), need = st->len + n + 8;
    if (need > st->cap) {
        size_t cap = need * 2;
        char *b = realloc(st->buf, cap);
        if (!b) return free(payload), -1;
        st->buf = b;
        st->cap = cap;
    }
    st->len += (size_t)sprintf(st->buf + st->len, "data: %s\n\n", payload);
    free(payload);
    return 0;
}

/* With the lock: the events for what the job has done since the last call. */
static int stream_events(stream *st) {
    mx_job *j = st->j;
    const char *model = st->srv->o.model_name;
    int rc = 0;
    if (j->out_len > st->sent) {
        rc = add_event(st, mx_api_chunk_json(st->kind, st->id, st->created, model, j->out + st->sent,
                                             j->out_len - st->sent, NULL, false, NULL));
        st->sent = j->out_len;
    }
    if (!j->done || rc) return rc;
    if (!strcmp(j->finish, "cancelled")) return -1;
    if (!strcmp(j->finish, "error")) {
        mx_api_error e = {0};
        mx_api_fail(&e, 500, NULL, "generation failed: %s", j->error);
        rc = add_event(st, mx_api_error_json(&e));
    } else {
        rc = add_event(st, mx_api_chunk_json(st->kind, st->id, st->created, model, "", 0,
                                             mx_api_finish_reason(j), false, NULL));
        if (!rc && st->include_usage)
            rc =
                add_event(st, mx_api_chunk_json(st->kind, st->id, st->created, model, "", 0, NULL, false, j));
    }
    if (!rc) rc = add_event(st, strdup("[DONE]"));
    st->closed = true;
    return rc;
}

/* Fills st->buf with the next events, waiting for the job; -1 ends the stream (client gone, no memory). */
static int stream_fill(stream *st) {
    mx_sched *sc = st->srv->sc;
    st->len = st->off = 0;
    if (!st->opened && st->kind == MX_API_CHAT) { /* the assistant role first, as OpenAI sends it */
        st->opened = true;
        return add_event(st, mx_api_chunk_json(st->kind, st->id, st->created, st->srv->o.model_name, "", 0,
                                               NULL, true, NULL));
    }
    st->opened = true;
    mx_sched_lock(sc);
    while (!st->j->done && st->j->out_len == st->sent) {
        if (client_gone(st->fd)) {
            mx_sched_cancel(sc, st->j);
            mx_sched_unlock(sc);
            return -1;
        }
        mx_sched_wait(sc, st->j, WAIT_MS);
    }
    int rc = stream_events(st);
    mx_sched_unlock(sc);
    return rc;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    stream *st = cls;
    if (st->off == st->len) {
        if (st->closed) return MHD_CONTENT_READER_END_OF_STREAM;
        if (stream_fill(st)) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (st->len == 0) return 0;
    }
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(out, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream *st = cls;
    mx_sched *sc = st->srv->sc;
    mx_sched_lock(sc);
    if (!st->j->done) mx_sched_cancel(sc, st->j);
    mx_job_unref(st->j);
    mx_sched_unlock(sc);
    free(st->buf);
    free(st);
}

static enum MHD_Result start_stream(mx_server *srv, struct MHD_Connection *c, mx_job *j, mx_api_kind kind,
                                    const mx_api_flags *fl, const char *id, long created) {
    stream *st = calloc(1, sizeof *st);
    if (!st) {
        mx_sched_lock(srv->sc);
        mx_sched_cancel(srv->sc, j);
        mx_job_unref(j);
        mx_sched_unlock(srv->sc);
        return MHD_NO;
    }
    *st = (stream){.srv = srv,
                   .j = j,
                   .kind = kind,
                   .include_usage = fl->include_usage,
                   .created = created,
                   .fd = connection_fd(c)};
    snprintf(st->id, sizeof st->id, "%s", id);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
    if (!resp) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    count_code(srv, 200);
    enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Waits for a non-streaming job; a client that hangs up cancels it. Returns the response. */
static enum MHD_Result await_job(mx_server *srv, struct MHD_Connection *c, mx_job *j, mx_api_kind kind,
                                 const char *id, long created) {
    mx_sched *sc = srv->sc;
    int fd = connection_fd(c);
    mx_sched_lock(sc);
    while (!j->done) {
        if (!j->cancelled && client_gone(fd)) mx_sched_cancel(sc, j);
        mx_sched_wait(sc, j, WAIT_MS);
    }
    char *json = NULL;
    int status = 200;
    if (!strcmp(j->finish, "error")) {
        mx_api_error e = {0};
        mx_api_fail(&e, 500, NULL, "generation failed: %s", j->error);
        json = mx_api_error_json(&e);
        status = 500;
    } else if (strcmp(j->finish, "cancelled") != 0) {
        json = mx_api_response_json(kind, id, created, srv->o.model_name, j);
    }
    bool cancelled = !strcmp(j->finish, "cancelled");
    mx_job_unref(j);
    mx_sched_unlock(sc);
    if (cancelled) return MHD_NO; /* nobody is listening: close the connection */
    return send_json(srv, c, status, json);
}

static enum MHD_Result generate(mx_server *srv, struct MHD_Connection *c, request *r, mx_api_kind kind) {
    if (r->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body exceeds %zu bytes (--max-body)", srv->o.max_body);
        return fail(srv, c, 413, "request_too_large", msg);
    }
    pthread_mutex_lock(&srv->mu);
    bool draining = srv->draining;
    pthread_mutex_unlock(&srv->mu);
    if (draining) return fail(srv, c, 503, "shutting_down", "the server is shutting down");
    mx_job *j = mx_job_new();
    if (!j) return fail(srv, c, 500, NULL, "out of memory");
    mx_api_env env = {.m = srv->m, .n_ctx = srv->o.sched.n_ctx, .seed = mx_sched_seed(srv->sc)};
    mx_api_flags fl;
    mx_api_error e;
    j->client_gone = client_gone; /* the scheduler frees the slot at the first step after a hang-up */
    j->client_fd = connection_fd(c);
    int rc = mx_api_parse(&env, kind, r->body ? r->body : "", r->len, j, &fl, &e);
    if (!rc) {
        int q = mx_sched_submit(srv->sc, j); /* the scheduler takes its own reference */
        if (q == 1) {
            rc = mx_api_fail(&e, 503, NULL, "the queue is full (%d waiting): retry later",
                             srv->o.sched.queue_cap);
            e.code = "queue_full";
        } else if (q) {
            rc = mx_api_fail(&e, 503, NULL, "the server is shutting down");
            e.code = "shutting_down";
        }
    }
    if (rc) {
        mx_sched_lock(srv->sc);
        mx_job_unref(j);
        mx_sched_unlock(srv->sc);
        return send_error(srv, c, &e);
    }
    char id[64];
    make_id(srv, kind, id, sizeof id);
    long created = (long)time(NULL);
    if (fl.stream) return start_stream(srv, c, j, kind, &fl, id, created);
    return await_job(srv, c, j, kind, id, created);
}

/* ---- the other endpoints ---- */

static enum MHD_Result models(mx_server *srv, struct MHD_Connection *c) {
    char *json = NULL;
    const char *name = srv->o.model_name;
    size_t n = strlen(name) * 2 + 256;
    if ((json = malloc(n)))
        snprintf(json, n,
                 "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\",\"created\":%ld,"
                 "\"owned_by\":\"mixatt\",\"meta\":{\"n_ctx\":%d,\"n_slots\":%d}}]}",
                 name, srv->started, srv->o.sched.n_ctx, srv->o.sched.n_slots);
    return send_json(srv, c, 200, json);
}

static enum MHD_Result health(mx_server *srv, struct MHD_Connection *c) {
    pthread_mutex_lock(&srv->mu);
    bool draining = srv->draining;
    pthread_mutex_unlock(&srv->mu);
    return send_json(srv, c, draining ? 503 : 200,
                     strdup(draining ? "{\"status\":\"shutting down\"}" : "{\"status\":\"ok\"}"));
}

static enum MHD_Result metrics(mx_server *srv, struct MHD_Connection *c) {
    mx_sched_stats st;
    mx_sched_stats_get(srv->sc, &st);
    uint64_t counts[N_CODES];
    pthread_mutex_lock(&srv->mu);
    memcpy(counts, srv->counts, sizeof counts);
    pthread_mutex_unlock(&srv->mu);
    return send_body(srv, c, 200, mx_metrics_text(&st, srv->o.model_name, CODES, counts, N_CODES),
                     "text/plain; version=0.0.4", 0);
}

static enum MHD_Result page(mx_server *srv, struct MHD_Connection *c) {
    size_t len;
    const char *html = mx_chat_page(&len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)html, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    MHD_add_response_header(resp, "Content-Security-Policy", "default-src 'self' 'unsafe-inline'");
    count_code(srv, 200);
    enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static bool authorized(const mx_server *srv, struct MHD_Connection *c) {
    if (!srv->o.api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
    const char *got = h + 7, *want = srv->o.api_key;
    size_t ng = strlen(got), nw = strlen(want);
    unsigned diff = (unsigned)(ng ^ nw);
    for (size_t i = 0; i < nw; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < ng ? got[i] : 0);
    return diff == 0;
}

static bool is(const char *url, const char *a, const char *b) {
    return !strcmp(url, a) || (b && !strcmp(url, b));
}

static enum MHD_Result route(mx_server *srv, struct MHD_Connection *c, const char *url, const char *method,
                             request *r) {
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    if (is(url, "/health", "/v1/health")) return get ? health(srv, c) : fail(srv, c, 405, NULL, "use GET");
    if (!strcmp(url, "/") || !strcmp(url, "/index.html"))
        return get ? page(srv, c) : fail(srv, c, 405, NULL, "use GET");
    if (!authorized(srv, c)) return fail(srv, c, 401, "invalid_api_key", "invalid or missing API key");
    if (is(url, "/v1/models", "/models")) return get ? models(srv, c) : fail(srv, c, 405, NULL, "use GET");
    if (!strcmp(url, "/metrics")) return get ? metrics(srv, c) : fail(srv, c, 405, NULL, "use GET");
    if (is(url, "/v1/completions", "/completions"))
        return post ? generate(srv, c, r, MX_API_COMPLETIONS) : fail(srv, c, 405, NULL, "use POST");
    if (is(url, "/v1/chat/completions", "/chat/completions"))
        return post ? generate(srv, c, r, MX_API_CHAT) : fail(srv, c, 405, NULL, "use POST");
    char msg[160];
    snprintf(msg, sizeof msg, "no such endpoint: %s %.100s", method, url);
    return fail(srv, c, 404, "not_found", msg);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size,
                                  void **con_cls) {
    mx_server *srv = cls;
    request *r = *con_cls;
    if (!r) { /* headers only: set up the body */
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *con_cls = r;
        pthread_mutex_lock(&srv->mu);
        srv->open++;
        pthread_mutex_unlock(&srv->mu);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > srv->o.max_body) r->too_big = true;
        return MHD_YES;
    }
    if (*upload_size) { /* a piece of the body: kept, or counted and dropped once it is too big */
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_big) return MHD_YES;
        if (r->len + n > srv->o.max_body) {
            r->too_big = true;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            size_t cap = (r->len + n + 1) * 2;
            char *b = realloc(r->body, cap);
            if (!b) return MHD_NO;
            r->body = b;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload, n);
        r->len += n;
        r->body[r->len] = '\0';
        return MHD_YES;
    }
    return route(srv, c, url, method, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    mx_server *srv = cls;
    request *r = *con_cls;
    if (!r) return;
    free(r->body);
    free(r);
    *con_cls = NULL;
    pthread_mutex_lock(&srv->mu);
    srv->open--;
    pthread_cond_broadcast(&srv->quiet);
    pthread_mutex_unlock(&srv->mu);
}

/* Resolves host:port into addr (IPv4 or IPv6); *v6 when IPv6. */
static int resolve(const char *host, int port, struct sockaddr_storage *addr, bool *v6, mx_err *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE},
                    *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc) return mx_err_set(err, MX_ERR_ARG, "--host %s: %s", host, gai_strerror(rc));
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return MX_OK;
}

int mx_server_start(const mx_model *m, mx_backend *be, const mx_serve_opts *o, mx_server **out, mx_err *err) {
    *out = NULL;
    struct sockaddr_storage addr;
    bool v6 = false;
    if (resolve(o->host, o->port, &addr, &v6, err)) return err->code;
    mx_server *srv = calloc(1, sizeof *srv);
    if (!srv) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    srv->m = m;
    srv->o = *o;
    srv->started = (long)time(NULL);
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->quiet, NULL);
    int rc = mx_sched_create(m, be, &o->sched, &srv->sc, err);
    if (rc) {
        mx_server_stop(srv);
        return rc;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | (v6 ? MHD_USE_IPv6 : 0);
    srv->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR,
                              (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024, MHD_OPTION_END);
    if (!srv->d) {
        mx_server_stop(srv);
        return mx_err_set(err, MX_ERR_IO,
                          "cannot listen on %s:%d (in use, or not an address of this machine)", o->host,
                          o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : o->port;
    *out = srv;
    return MX_OK;
}

int mx_server_port(const mx_server *srv) {
    return srv->port;
}

void mx_server_stop(mx_server *srv) {
    if (!srv) return;
    pthread_mutex_lock(&srv->mu);
    srv->draining = true;
    pthread_mutex_unlock(&srv->mu);
    if (srv->sc) mx_sched_drain(srv->sc);
    /* the answers of the finished jobs are still being written: wait for their requests to complete */
    pthread_mutex_lock(&srv->mu);
    double until = mx_now() + STOP_WAIT_S;
    while (srv->d && srv->open > 0 && mx_now() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&srv->quiet, &srv->mu, &ts);
    }
    pthread_mutex_unlock(&srv->mu);
    if (srv->d) MHD_stop_daemon(srv->d);
    mx_sched_free(srv->sc);
    pthread_cond_destroy(&srv->quiet);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
}
