/* fuzz_gguf.c: libFuzzer target for the GGUF reader (make fuzz). Each input is opened as a GGUF buffer; when
 * it is accepted, every metadata value (nested arrays, strings) and every tensor's bytes are read, so that
 * any pointer or size the reader let through that is out of bounds trips ASan. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../src/io/dtype.h"
#include "../../src/io/gguf.h"

/* The bits of a double: converting a negative or huge double to uint64_t is undefined behaviour. */
static uint64_t double_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static uint64_t touch_kv(const mx_gguf_kv *kv) {
    uint64_t h = kv->count + kv->type;
    if (kv->type == MX_GGUF_STRING)
        for (uint64_t i = 0; i < kv->str.len; i++) h += (uint8_t)kv->str.ptr[i];
    if (kv->type != MX_GGUF_ARRAY) return h + kv->v.u;
    for (uint64_t i = 0; i < kv->count; i++) {
        if (kv->elem == MX_GGUF_STRING)
            for (uint64_t j = 0; j < kv->strs[i].len; j++) h += (uint8_t)kv->strs[i].ptr[j];
        else if (kv->elem == MX_GGUF_ARRAY)
            h += touch_kv(&kv->items[i]);
        else
            h += (uint64_t)mx_gguf_arr_i64(kv, i) + double_bits(mx_gguf_arr_f64(kv, i));
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mx_gguf *g = NULL;
    mx_err err;
    if (mx_gguf_open_buffer(data, size, "fuzz.gguf", &g, &err)) {
        if (!strstr(err.msg, "fuzz.gguf")) __builtin_trap(); /* every message names the file */
        return 0;
    }
    volatile uint64_t h = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        h += touch_kv(&g->kv[i]);
        if (mx_gguf_kv_find(g, g->kv[i].key) == NULL) __builtin_trap();
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const mx_gguf_tensor *t = &g->tensors[i];
        if (!mx_dtype_get(t->type) || t->n_dims < 1 || t->n_dims > 4) __builtin_trap();
        const uint8_t *p = t->data;
        for (size_t j = 0; j < t->nbytes; j++) h += p[j];
        if (mx_gguf_tensor_find(g, t->name) != t) __builtin_trap();
    }
    int64_t iv;
    double fv;
    mx_gguf_get_i64(g, "general.alignment", &iv, &err);
    mx_gguf_get_f64(g, "general.alignment", &fv, &err);
    (void)h;
    mx_gguf_close(g);
    return 0;
}
