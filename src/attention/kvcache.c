/* kvcache.c: KV cache allocation from the plan (see kvcache.h). MHA layers own a K and a V store; MLA layers
 * one latent store (read as both K and V); MKA layers K/V stores for two memories plus fp32 prefix sums,
 * FastMKA one K/V pair plus the sums. MLA's explicit form borrows two stores of ubatch slots shared by every
 * MLA layer. */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

static int slots_for(const mx_layer_plan *p, int n_ctx, int ubatch) {
    if (p->window <= 0) return n_ctx;
    int ring = p->window + ubatch - 1;
    return ring < n_ctx ? ring : n_ctx;
}

static bool is_mka(mx_attn_kind k) {
    return k == MX_ATTN_MKA || k == MX_ATTN_FASTMKA;
}

int mx_mla_form_parse(const char *s) {
    if (!strcmp(s, "auto")) return MX_MLA_AUTO;
    if (!strcmp(s, "explicit")) return MX_MLA_EXPLICIT;
    if (!strcmp(s, "absorbed")) return MX_MLA_ABSORBED;
    return -1;
}

size_t mx_kv_elems_per_token(const mx_config *cfg, int l) {
    if (cfg->plan[l].kv_from != l) return 0;
    size_t kv = 2 * (size_t)cfg->n_kv_head * cfg->head_dim;
    switch (cfg->plan[l].kind) {
    case MX_ATTN_MLA:
        return (size_t)cfg->mla_kv_rank + cfg->mla_rope_dim;
    case MX_ATTN_MKA:
        return 2 * kv;
    default:
        return kv;
    }
}

/* fp32 prefix-sum bytes per token of layer l (MKA and FastMKA writers). */
static size_t sum_bytes_per_token(const mx_config *cfg, int l) {
    return cfg->plan[l].kv_from == l && is_mka(cfg->plan[l].kind) ? sizeof(float) * (size_t)cfg->d_model : 0;
}

size_t mx_kv_bytes_at(const mx_config *cfg, int n_ctx, int ubatch, size_t elem_bytes) {
    size_t total = 0;
    for (int l = 0; l < cfg->n_layer; l++)
        total += (mx_kv_elems_per_token(cfg, l) * elem_bytes + sum_bytes_per_token(cfg, l)) *
                 (size_t)slots_for(&cfg->plan[l], n_ctx, ubatch);
    return total;
}

/* Allocates bytes on the backend into *p, counting them; false when out of memory. */
static bool alloc_store(mx_kvcache *kv, void **p, size_t bytes) {
    *p = kv->be->alloc(kv->be, bytes);
    kv->bytes += *p ? bytes : 0;
    return *p != NULL;
}

static bool alloc_layer(mx_kvcache *kv, const mx_config *cfg, int l, mx_kv_layer *L) {
    size_t eb = kv->be->kv_elem_bytes, S = (size_t)L->n_slots;
    mx_attn_kind kind = cfg->plan[l].kind;
    if (kind == MX_ATTN_MLA) {
        L->k_row = L->v_row = (size_t)cfg->mla_kv_rank + cfg->mla_rope_dim;
        if (!alloc_store(kv, &L->k, S * L->k_row * eb)) return false;
        L->v = L->k;
        return true;
    }
    L->k_row = L->v_row = (size_t)cfg->n_kv_head * cfg->head_dim;
    size_t bytes = S * L->k_row * eb;
    if (!alloc_store(kv, &L->k, bytes) || !alloc_store(kv, &L->v, bytes)) return false;
    if (kind == MX_ATTN_MKA && (!alloc_store(kv, &L->k2, bytes) || !alloc_store(kv, &L->v2, bytes)))
        return false;
    if (is_mka(kind) && !alloc_store(kv, (void **)&L->sums, S * sizeof(float) * (size_t)cfg->d_model))
        return false;
    return true;
}

/* The explicit-MLA stores: ubatch slots of per-head K and V, when any layer is MLA. */
static bool alloc_mla_scratch(mx_kvcache *kv, const mx_config *cfg, int ubatch) {
    bool any = false;
    for (int l = 0; l < cfg->n_layer; l++) any = any || cfg->plan[l].kind == MX_ATTN_MLA;
    if (!any) return true;
    size_t eb = kv->be->kv_elem_bytes, H = (size_t)cfg->n_head;
    kv->mla_slots = ubatch;
    return alloc_store(kv, &kv->mla_k, (size_t)ubatch * H * (cfg->mla_nope_dim + cfg->mla_rope_dim) * eb) &&
           alloc_store(kv, &kv->mla_v, (size_t)ubatch * H * cfg->mla_v_dim * eb);
}

int mx_kvcache_init(mx_kvcache *kv, const mx_config *cfg, mx_backend *be, int n_ctx, int ubatch,
                    mx_err *err) {
    memset(kv, 0, sizeof *kv);
    kv->n_layer = cfg->n_layer;
    kv->be = be;
    kv->layers = calloc((size_t)cfg->n_layer, sizeof *kv->layers);
    if (!kv->layers) return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating the KV cache");
    for (int l = 0; l < cfg->n_layer; l++) {
        mx_kv_layer *L = &kv->layers[l];
        int src = cfg->plan[l].kv_from;
        if (src != l) {
            *L = kv->layers[src];
            continue;
        }
        L->writer = l;
        L->n_slots = slots_for(&cfg->plan[l], n_ctx, ubatch);
        if (!alloc_layer(kv, cfg, l, L)) {
            size_t want = mx_kv_elems_per_token(cfg, l) * be->kv_elem_bytes * (size_t)L->n_slots;
            mx_kvcache_free(kv);
            return mx_err_set(err, MX_ERR_NOMEM,
                              "out of memory allocating the KV cache of layer %d (%zu bytes)", l, want);
        }
    }
    if (!alloc_mla_scratch(kv, cfg, ubatch)) {
        mx_kvcache_free(kv);
        return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating MLA's explicit-form K/V (%d tokens)",
                          ubatch);
    }
    return MX_OK;
}

void mx_kvcache_free(mx_kvcache *kv) {
    if (!kv->layers) return;
    mx_backend *be = kv->be;
    for (int l = 0; l < kv->n_layer; l++) {
        mx_kv_layer *L = &kv->layers[l];
        if (L->writer != l) continue;
        void *stores[] = {L->k, L->v != L->k ? L->v : NULL, L->k2, L->v2, L->sums};
        for (size_t i = 0; i < sizeof stores / sizeof stores[0]; i++)
            if (stores[i]) be->free(be, stores[i]);
    }
    if (kv->mla_k) be->free(be, kv->mla_k);
    if (kv->mla_v) be->free(be, kv->mla_v);
    free(kv->layers);
    kv->layers = NULL;
}
