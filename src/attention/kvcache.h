/* kvcache.h: the KV cache laid out from the attention plan. Each layer that writes a cache owns a K store and
 * a V store of n_slots rows; a full layer keeps n_ctx slots (slot == position), a window layer a ring of
 * window + ubatch - 1 slots (enough that writing one ubatch never evicts a key that a query of the same ubatch
 * still needs). Layers that read another layer's cache point at the writer's stores. */
#ifndef MX_KVCACHE_H
#define MX_KVCACHE_H

#include <stddef.h>

#include "../backend/backend.h"
#include "../model/model.h"

typedef struct {
    void *k, *v;    /* [n_slots, G*D] and [n_slots, G*Dv] of be->kv_elem_bytes each; the writer's when shared */
    int n_slots;
    int writer;     /* layer that writes these stores */
    size_t k_row, v_row; /* elements per slot */
} mx_kv_layer;

typedef struct {
    int n_layer;
    mx_kv_layer *layers;
    size_t bytes;   /* total bytes allocated */
    mx_backend *be;
} mx_kvcache;

int mx_kvcache_init(mx_kvcache *kv, const mx_config *cfg, mx_backend *be, int n_ctx, int ubatch, mx_err *err);
void mx_kvcache_free(mx_kvcache *kv);
/* Elements stored per token for layer l under cfg's plan if it writes a cache (0 if it reads another's). */
size_t mx_kv_elems_per_token(const mx_config *cfg, int l);
/* Bytes the cache holds at n_ctx tokens with elem_bytes per element (rings counted at their size). */
size_t mx_kv_bytes_at(const mx_config *cfg, int n_ctx, int ubatch, size_t elem_bytes);

#endif
