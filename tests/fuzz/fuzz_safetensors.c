/* fuzz_safetensors.c: libFuzzer target for the safetensors reader (make fuzz). Each input is opened as a
 * safetensors buffer; when accepted, every promise safetensors.h makes is checked (dims, byte counts, data inside
 * the buffer, names and metadata keys unique and found) and every tensor byte is read, so any size or pointer
 * the reader let through that is out of bounds trips ASan. The checksum is verified too (it must not crash,
 * whatever it says). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../src/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mx_st_file *f = NULL;
    mx_err err = {0};
    if (mx_st_open_buffer(data, size, "fuzz.safetensors", &f, &err)) {
        if (f || !strstr(err.msg, "fuzz.safetensors")) __builtin_trap(); /* every message names the file */
        return 0;
    }
    volatile uint64_t h = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const mx_st_tensor *t = &f->tensors[i];
        if (t->n_dims < 0 || t->n_dims > MX_ST_MAX_DIMS) __builtin_trap();
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims; d++) {
            if (t->shape[d] < 0 || t->shape[d] > INT32_MAX) __builtin_trap();
            n *= (uint64_t)t->shape[d];
        }
        const uint8_t *p = t->data;
        if (p < data + f->data_start || p + t->nbytes > data + size) __builtin_trap();
        if (n && t->nbytes % n) __builtin_trap();
        for (size_t j = 0; j < t->nbytes; j++) h += p[j];
        if (mx_st_find(f, t->name) != t) __builtin_trap();
    }
    for (int i = 0; i < f->n_meta; i++)
        if (mx_st_meta(f, f->meta_keys[i]) != f->meta_vals[i]) __builtin_trap(); /* keys are unique */
    mx_st_verify_checksum(f, false, &err);
    (void)h;
    mx_st_close(f);
    return 0;
}
