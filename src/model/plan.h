/* plan.h: the per-layer attention plan. Each layer has a kind, a window (0 = full causal) and the layer whose
 * KV cache it reads (its own index when it writes one).
 *
 * The plan string: one token per layer, comma-separated, layers numbered from 0:
 *   G      full attention, writes its own cache        S     sliding window (the default window), own cache
 *   G@5    full attention reading layer 5's cache       S@2   window attention reading layer 2's cache
 *   S512   a window of 512 keys                         X*N   the token X repeated for N layers
 * or a preset name: standard, ma, ma-endslide, ma-offset, ma-pairs, ma-offset-slideshare (MixAttention,
 * arXiv 2409.15012), placed at any depth the way the paper places them in 24 layers: full-attention layers at
 * the starts of the four quarters (ma, ma-pairs) or at their ends (ma-offset), window layers between them
 * sharing caches in alternating groups of 2 and 3 (one group per run with -slideshare). */
#ifndef MX_PLAN_H
#define MX_PLAN_H

#include <stddef.h>

#include "../base/status.h"

typedef enum { MX_ATTN_MHA, MX_ATTN_MLA, MX_ATTN_MKA, MX_ATTN_FASTMKA } mx_attn_kind;

typedef struct {
    mx_attn_kind kind;
    int window;  /* 0 = full causal; W > 0 = the last W keys, including the current token */
    int kv_from; /* layer whose KV cache this layer reads; == own index when it writes its own */
} mx_layer_plan;

enum { MX_DEFAULT_WINDOW = 1024 }; /* MixAttention's window */

/* Every layer of `kind`, its own cache, window w (0 = full). */
void mx_plan_uniform(mx_layer_plan *plan, int n_layer, mx_attn_kind kind, int window);
/* Parses a plan string or preset for n_layer layers into plan (kind applied to every layer). */
int mx_plan_parse(const char *s, int n_layer, int window, mx_attn_kind kind, mx_layer_plan *plan,
                  mx_err *err);
/* Checks a plan before any work: readers read an earlier (or own) writer of the same kind, full layers do not
 * read a window ring, windows fit the context. */
int mx_plan_validate(const mx_layer_plan *plan, int n_layer, int max_ctx, mx_err *err);
/* Writes the plan string ("G,S,S@1,...") into buf. */
void mx_plan_to_string(const mx_layer_plan *plan, int n_layer, char *buf, size_t size);
const char *mx_attn_kind_name(mx_attn_kind k);
/* Parses "mha" | "mla" | "mka" | "fastmka"; -1 if unknown. */
int mx_attn_kind_parse(const char *s);
/* The preset names, NULL-terminated. */
extern const char *const MX_PLAN_PRESETS[];

#endif
