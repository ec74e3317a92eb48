/* metrics.c: /metrics in the Prometheus text exposition format (version 0.0.4): counters of requests,
 * responses by status, prompt and generated tokens, steps; gauges of the queue, the slots, the KV memory and
 * the recent generation rate. */
#include <stdio.h>
#include <stdlib.h>

#include "serve.h"

static void metric(FILE *f, const char *name, const char *type, const char *help, const char *model,
                   double value) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s{model=\"%s\"} %.17g\n", name, help, name, type, name, model,
            value);
}

char *mx_metrics_text(const mx_sched_stats *st, const char *model, const int *codes, const uint64_t *counts,
                      int n_codes) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    metric(f, "mixatt_requests_total", "counter", "Generation requests finished (any reason).", model,
           (double)st->requests);
    metric(f, "mixatt_requests_cancelled_total", "counter", "Generation requests whose client went away.",
           model, (double)st->cancelled);
    fprintf(f, "# HELP mixatt_http_responses_total HTTP responses by status code.\n"
               "# TYPE mixatt_http_responses_total counter\n");
    for (int i = 0; i < n_codes; i++)
        fprintf(f, "mixatt_http_responses_total{model=\"%s\",code=\"%d\"} %llu\n", model, codes[i],
                (unsigned long long)counts[i]);
    metric(f, "mixatt_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", model,
           (double)st->prompt_tokens);
    metric(f, "mixatt_generated_tokens_total", "counter", "Tokens generated.", model, (double)st->gen_tokens);
    metric(f, "mixatt_steps_total", "counter", "Batched forward steps run.", model, (double)st->steps);
    metric(f, "mixatt_queue_depth", "gauge", "Requests waiting for a slot.", model, st->queued);
    metric(f, "mixatt_slots_active", "gauge", "Slots running a request.", model, st->active);
    metric(f, "mixatt_slots", "gauge", "Slots (sequences decoded together).", model, st->slots);
    metric(f, "mixatt_context_tokens", "gauge", "Context of each slot, in tokens.", model, st->n_ctx);
    metric(f, "mixatt_kv_cache_bytes", "gauge", "KV cache memory of all slots.", model, (double)st->kv_bytes);
    metric(f, "mixatt_tokens_per_second", "gauge", "Tokens generated per second over the last 5 s.", model,
           st->tok_per_s);
    fclose(f);
    return text;
}
