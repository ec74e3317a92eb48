/* plan.h: the per-layer attention plan. Each layer has a kind, a window (0 = full causal) and the layer whose
 * KV cache it reads (its own index when it writes one). */
#ifndef MX_PLAN_H
#define MX_PLAN_H

#include "../base/status.h"

typedef enum { MX_ATTN_MHA, MX_ATTN_MLA, MX_ATTN_MKA, MX_ATTN_FASTMKA } mx_attn_kind;

typedef struct {
    mx_attn_kind kind;
    int window;  /* 0 = full causal; W > 0 = the last W keys, including the current token */
    int kv_from; /* layer whose KV cache this layer reads; == own index when it writes its own */
} mx_layer_plan;

/* Every layer full attention over its own cache. */
void mx_plan_standard(mx_layer_plan *plan, int n_layer);
/* Checks a plan before any work: readers read an earlier (or own) writer, windows fit the context. */
int mx_plan_validate(const mx_layer_plan *plan, int n_layer, int max_ctx, mx_err *err);
/* Writes the plan string ("G,S,S@1,...") into buf. */
void mx_plan_to_string(const mx_layer_plan *plan, int n_layer, char *buf, size_t size);

#endif
