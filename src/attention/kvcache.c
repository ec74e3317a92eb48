/* kvcache.c: KV cache allocation from the plan (see kvcache.h). */
#include "kvcache.h"

#include <stdlib.h>

static int slots_for(const mx_layer_plan *p, int n_ctx, int ubatch) {
    if (p->window <= 0) return n_ctx;
    int ring = p->window + ubatch - 1;
    return ring < n_ctx ? ring : n_ctx;
}

size_t mx_kv_elems_per_token(const mx_config *cfg, int l) {
    if (cfg->plan[l].kv_from != l) return 0;
    return 2 * (size_t)cfg->n_kv_head * cfg->head_dim;
}

size_t mx_kv_bytes_at(const mx_config *cfg, int n_ctx, int ubatch, size_t elem_bytes) {
    size_t total = 0;
    for (int l = 0; l < cfg->n_layer; l++)
        total += mx_kv_elems_per_token(cfg, l) * (size_t)slots_for(&cfg->plan[l], n_ctx, ubatch) * elem_bytes;
    return total;
}

int mx_kvcache_init(mx_kvcache *kv, const mx_config *cfg, mx_backend *be, int n_ctx, int ubatch, mx_err *err) {
    kv->n_layer = cfg->n_layer;
    kv->be = be;
    kv->bytes = 0;
    kv->layers = calloc((size_t)cfg->n_layer, sizeof *kv->layers);
    if (!kv->layers) return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating the KV cache");
    size_t row = (size_t)cfg->n_kv_head * cfg->head_dim;
    for (int l = 0; l < cfg->n_layer; l++) {
        mx_kv_layer *L = &kv->layers[l];
        int src = cfg->plan[l].kv_from;
        if (src != l) {
            *L = kv->layers[src];
            continue;
        }
        L->writer = l;
        L->n_slots = slots_for(&cfg->plan[l], n_ctx, ubatch);
        L->k_row = L->v_row = row;
        size_t bytes = (size_t)L->n_slots * row * be->kv_elem_bytes;
        L->k = be->alloc(be, bytes);
        L->v = be->alloc(be, bytes);
        if (!L->k || !L->v) {
            mx_kvcache_free(kv);
            return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating the KV cache of layer %d (%zu bytes)",
                              l, 2 * bytes);
        }
        kv->bytes += 2 * bytes;
    }
    return MX_OK;
}

void mx_kvcache_free(mx_kvcache *kv) {
    if (!kv->layers) return;
    for (int l = 0; l < kv->n_layer; l++)
        if (kv->layers[l].writer == l) {
            kv->be->free(kv->be, kv->layers[l].k);
            kv->be->free(kv->be, kv->layers[l].v);
        }
    free(kv->layers);
    kv->layers = NULL;
}
