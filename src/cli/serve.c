/* serve.c: `mixatt serve`: loads a model once and answers the OpenAI API over HTTP with continuous batching
 * (src/serve/). The slots' KV caches are sized from the attention plan, so a plan with window rings fits
 * more slots in the same --kv-budget. SIGTERM or SIGINT drains: the requests in flight finish, then it exits.
 */
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../serve/batch.h"
#include "../serve/serve.h"
#include "commands.h"
#include "common.h"

enum { DEFAULT_CTX = 4096, DEFAULT_SLOTS = 4, DEFAULT_QUEUE = 256, DEFAULT_PORT = 8080 };
static const size_t DEFAULT_MAX_BODY = 4u << 20;

typedef struct {
    mx_common_opts c;
    const char *host, *api_key, *alias;
    int port, parallel, queue, chunk;
    bool batch_gemm;
    double kv_budget; /* bytes; 0 = not given */
    size_t max_body;
} serve_opts;

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt serve [-m MODEL] [--host 127.0.0.1] [--port 8080] [--parallel N] [--ctx N] [--plan "
        "P]\n"
        "                    [--device cpu|cuda] [--api-key KEY] [--kv-budget BYTES] [options]\n\n"
        "An OpenAI-compatible HTTP server with continuous batching: every step runs one forward over the\n"
        "next token of each active request plus chunks of new prompts. Endpoints:\n"
        "  POST /v1/chat/completions  messages rendered with the model's chat template; \"stream\": true\n"
        "                             sends SSE chunks ending in data: [DONE]\n"
        "  POST /v1/completions       a raw prompt (default max_tokens 16, as OpenAI's)\n"
        "  GET  /v1/models, /health, /metrics (Prometheus text), / (a chat page, served from the binary)\n"
        "Request fields: model (ignored), messages or prompt, max_tokens, temperature (default 1), top_p,\n"
        "top_k, min_p, seed, stop (a string or a list), stream, stream_options.include_usage,\n"
        "presence_penalty, frequency_penalty. n > 1, logprobs, echo, logit_bias, tools and a JSON\n"
        "response_format are refused with 400; other fields are ignored. Greedy (temperature 0) output is\n"
        "the same as mixatt run's for the same prompt, however many requests share a batch (CPU).\n\n"
        "server options:\n"
        "  --host ADDR          address to listen on (default 127.0.0.1: this machine only)\n"
        "  --port N             TCP port (default %d; 0 picks a free one, printed at start)\n"
        "  -np, --parallel N    slots: requests decoded together (default %d)\n"
        "  --kv-budget BYTES    instead of --parallel: as many slots as this much KV cache holds under\n"
        "                       the plan (suffixes K, M, G: powers of 1024)\n"
        "  --queue N            requests that may wait for a slot; more get 503 (default %d)\n"
        "  --chunk N            prompt tokens per step (default the backend's prefill chunk, 512)\n"
        "  --api-key KEY        require \"Authorization: Bearer KEY\" (all but /health and /)\n"
        "  --alias NAME         model name in responses (default: the file name)\n"
        "  --max-body BYTES     larger request bodies get 413 (default 4M)\n"
        "  --batch-gemm         decode rows of a batch through the prefill GEMM: more tokens per second at\n"
        "                       many streams, but a row's rounding then depends on its batch, so greedy "
        "output\n"
        "                       may differ from mixatt run's (by default each row is computed as if "
        "alone)\n\n",
        DEFAULT_PORT, DEFAULT_SLOTS, DEFAULT_QUEUE);
    mx_common_help(f, false);
    fprintf(f, "Sampling comes from each request; the sampling flags of mixatt run do not apply here.\n");
}

/* BYTES with an optional K, M or G suffix (powers of 1024). */
static int parse_bytes(const char *flag, const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    double mul = *end == 'K' || *end == 'k'   ? 1024.0
                 : *end == 'M' || *end == 'm' ? 1048576.0
                 : *end == 'G' || *end == 'g' ? 1073741824.0
                                              : 1.0;
    if (mul > 1.0) end++;
    if (end == s || *end || !(v > 0)) {
        fprintf(stderr, "mixatt serve: %s expects a positive size in bytes (e.g. 512M, 2G), not '%s'\n", flag,
                s);
        return -1;
    }
    *out = v * mul;
    return 0;
}

static int serve_flag(void *ctx, const char *a, const char *val, int *i) {
    serve_opts *o = ctx;
    int rc = 0;
    double bytes;
    if (!strcmp(a, "--batch-gemm")) return o->batch_gemm = true, 1;
    if (!val) return 0;
    if (!strcmp(a, "--host"))
        o->host = val;
    else if (!strcmp(a, "--port"))
        rc = mx_parse_int(a, val, 0, 65535, &o->port);
    else if (!strcmp(a, "--parallel") || !strcmp(a, "-np"))
        rc = mx_parse_int(a, val, 1, 4096, &o->parallel);
    else if (!strcmp(a, "--queue"))
        rc = mx_parse_int(a, val, 0, 1 << 20, &o->queue);
    else if (!strcmp(a, "--chunk"))
        rc = mx_parse_int(a, val, 1, 1 << 16, &o->chunk);
    else if (!strcmp(a, "--api-key"))
        o->api_key = val;
    else if (!strcmp(a, "--alias"))
        o->alias = val;
    else if (!strcmp(a, "--kv-budget"))
        rc = parse_bytes(a, val, &o->kv_budget);
    else if (!strcmp(a, "--max-body")) {
        rc = parse_bytes(a, val, &bytes);
        o->max_body = (size_t)bytes;
    } else
        return 0;
    ++*i;
    return rc ? -1 : 1;
}

/* The signal that stops the server. A process-directed signal goes to any thread that does not block it, and
 * the OpenBLAS and OpenMP threads exist before main can block anything, so a handler (on every thread) records
 * it here: the one piece of static state in the server, as a signal handler can reach nothing else. */
static volatile sig_atomic_t g_stop_signal;

static void on_stop_signal(int sig) {
    g_stop_signal = sig;
}

/* The handler for SIGTERM and SIGINT (before the server starts: from then on they drain, never kill). */
static void catch_stop_signals(void) {
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Waits until a stop signal has arrived; returns it. A second one while the server drains changes nothing. */
static int wait_for_signal(void) {
    while (!g_stop_signal) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return g_stop_signal;
}

/* The model's name in responses: the file name without its directory and .gguf. */
static void model_name(const char *path, char *out, size_t n) {
    const char *base = strrchr(path, '/');
    snprintf(out, n, "%s", base ? base + 1 : path);
    size_t len = strlen(out);
    if (len > 5 && !strcmp(out + len - 5, ".gguf")) out[len - 5] = '\0';
}

/* Slots from --parallel or --kv-budget; 0 on a bad combination (message printed). */
static int slot_count(const serve_opts *o, size_t per_slot) {
    if (o->kv_budget <= 0) return o->parallel ? o->parallel : DEFAULT_SLOTS;
    if (o->parallel) {
        fprintf(stderr, "mixatt serve: give --parallel or --kv-budget, not both\n");
        return 0;
    }
    double n = o->kv_budget / (double)per_slot;
    if (n < 1) {
        fprintf(
            stderr,
            "mixatt serve: --kv-budget %.0f bytes holds no slot: one slot of this context takes %zu bytes "
            "(lower --ctx, or a plan with window layers)\n",
            o->kv_budget, per_slot);
        return 0;
    }
    return n > 4096 ? 4096 : (int)n;
}

int mx_cmd_serve(int argc, char **argv, mx_comm *comm) {
    serve_opts o = {
        .host = "127.0.0.1", .port = DEFAULT_PORT, .queue = DEFAULT_QUEUE, .max_body = DEFAULT_MAX_BODY};
    mx_common_defaults(&o.c);
    o.c.comm = comm;
    int rc = mx_parse_args("serve", argc, argv, &o.c, serve_flag, &o, help);
    if (rc) return rc < 0 ? 0 : rc;
    if (comm->size > 1) {
        fprintf(stderr, "mixatt serve: runs as one process (not under mpirun)\n");
        return 2;
    }
    mx_model *m = NULL;
    mx_backend *be = NULL;
    if (mx_open_model(&o.c, &m, &be)) return 1;
    if (!m->tok) {
        fprintf(stderr, "mixatt serve: %s has no tokenizer, which the server needs\n", m->path);
        mx_close_model(m, be);
        return 1;
    }
    int n_ctx = o.c.ctx ? o.c.ctx : (m->cfg.max_ctx < DEFAULT_CTX ? m->cfg.max_ctx : DEFAULT_CTX);
    int ub = be->ubatch > 0 ? be->ubatch : 512;
    int chunk = o.chunk ? o.chunk : ub;
    if (chunk > n_ctx) chunk = n_ctx;
    size_t per_slot = mx_seq_bytes(m, be, n_ctx, chunk);
    int slots = slot_count(&o, per_slot);
    if (!slots) {
        mx_close_model(m, be);
        return 2;
    }
    char name[256], plan[256];
    model_name(m->path, name, sizeof name);
    mx_plan_to_string(m->cfg.plan, m->cfg.n_layer, plan, sizeof plan);
    mx_serve_opts so = {.host = o.host,
                        .port = o.port,
                        .api_key = o.api_key,
                        .model_name = o.alias ? o.alias : name,
                        .max_body = o.max_body,
                        .sched = {.n_slots = slots,
                                  .n_ctx = n_ctx,
                                  .chunk = chunk,
                                  .queue_cap = o.queue,
                                  .batch_gemm = o.batch_gemm}};
    catch_stop_signals();
    mx_server *srv = NULL;
    mx_err err = {0};
    if (mx_server_start(m, be, &so, &srv, &err)) {
        fprintf(stderr, "mixatt serve: %s\n", err.msg);
        mx_close_model(m, be);
        return 1;
    }
    fprintf(stderr,
            "mixatt serve: %s on %s, plan %s: %d slots of %d tokens, KV %.1f MiB per slot (%.1f MiB in all), "
            "prefill chunks of %d, queue %d%s\n",
            so.model_name, be->name, plan, slots, n_ctx, per_slot / 1048576.0, slots * (per_slot / 1048576.0),
            chunk, o.queue, o.api_key ? ", API key required" : "");
    printf("mixatt serve: listening on http://%s:%d\n", o.host, mx_server_port(srv));
    fflush(stdout);
    int sig = wait_for_signal();
    fprintf(stderr, "mixatt serve: %s: finishing the requests in flight\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT");
    mx_server_stop(srv);
    fprintf(stderr, "mixatt serve: stopped\n");
    mx_close_model(m, be);
    return 0;
}
