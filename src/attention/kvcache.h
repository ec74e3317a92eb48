/* kvcache.h: the KV cache laid out from the attention plan. Each layer that writes a cache owns a K store and
 * a V store of n_slots rows; a full layer keeps n_ctx slots (slot == position), a window layer a ring of
 * window + ubatch - 1 slots (enough that writing one ubatch never evicts a key that a query of the same
 * ubatch still needs). Layers that read another layer's cache point at the writer's stores. */
#ifndef MX_KVCACHE_H
#define MX_KVCACHE_H

#include <stddef.h>

#include "../backend/backend.h"
#include "../model/config.h"

typedef struct {
    void *k, *v; /* [n_slots, G*D] and [n_slots, G*Dv] of be->kv_elem_bytes each; the writer's when shared */
    int n_slots;
    int writer;          /* layer that writes these stores */
    size_t k_row, v_row; /* elements per slot */
    /* MLA: k holds the latent [c_kv (normed) ; k_rope] (kv_rank + rope_dim per slot) and v == k (the values
     * are the first kv_rank elements of each latent row). */
    /* MKA: k, v hold pass 1 (keys/values of L1 = x), k2, v2 pass 2 (of L2 = the running mean); MKA and
     * FastMKA: sums holds the fp32 prefix sums of the layer inputs, [n_slots, C] (see docs/attention.md, "MKA
     * and FastMKA").
     */
    void *k2, *v2;
    float *sums;
} mx_kv_layer;

/* How MLA layers attend: explicit (per-head K/V up-projected from the latent; prefill), absorbed (W_uk folded
 * into the query, attention on the latent as MQA; decode), or auto (explicit for prompts whose keys fit the
 * scratch stores, absorbed otherwise). Both forms give the same logits. */
typedef enum { MX_MLA_AUTO, MX_MLA_EXPLICIT, MX_MLA_ABSORBED } mx_mla_form;

typedef struct {
    int n_layer;
    mx_kv_layer *layers;
    size_t bytes; /* total bytes allocated */
    mx_backend *be;
    /* MLA explicit form: per-head K [mla_slots, H*(nope+rope)] and V [mla_slots, H*v] of the keys being
     * attended (rebuilt from the latent each call; shared by all MLA layers). NULL when no layer is MLA. */
    void *mla_k, *mla_v;
    int mla_slots;
    mx_mla_form mla_form; /* MX_MLA_AUTO after init; set it after mx_session_create to force a form */
} mx_kvcache;

/* Parses "auto" | "explicit" | "absorbed"; -1 if unknown. */
int mx_mla_form_parse(const char *s);

int mx_kvcache_init(mx_kvcache *kv, const mx_config *cfg, mx_backend *be, int n_ctx, int ubatch, mx_err *err);
void mx_kvcache_free(mx_kvcache *kv);
/* Elements stored per token for layer l under cfg's plan if it writes a cache (0 if it reads another's):
 * 2*G*D for MHA and FastMKA, 4*G*D for MKA (two cached memories), kv_rank + rope_dim for MLA. MKA layers
 * also keep C fp32 prefix sums per token (counted by mx_kv_bytes_at). */
size_t mx_kv_elems_per_token(const mx_config *cfg, int l);
/* Bytes the cache holds at n_ctx tokens with elem_bytes per element (rings counted at their size). */
size_t mx_kv_bytes_at(const mx_config *cfg, int n_ctx, int ubatch, size_t elem_bytes);

#endif
