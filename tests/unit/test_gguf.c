/* test_gguf.c: the GGUF reader on buffers built here: a valid file with every metadata type (nested arrays
 * too) read back exactly, then every class of bad input (bad magic, versions, truncation at every byte,
 * counts that cannot fit, strings past the end, n_dims 5, dims overflow, unknown tensor type, data past the
 * end, unaligned offsets, duplicates) failing with a message that names the file. Leaks are caught by ASan.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/io/dtype.h"
#include "../../src/io/gguf.h"

/* ---- a little-endian byte builder ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void u8(buf_t *b, uint8_t v) {
    put(b, &v, 1);
}
static void u32(buf_t *b, uint32_t v) {
    put(b, &v, 4);
}
static void u64(buf_t *b, uint64_t v) {
    put(b, &v, 8);
}
static void str(buf_t *b, const char *s) {
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad(buf_t *b, size_t align) {
    while (b->n % align) u8(b, 0);
}
static void header(buf_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    u32(b, version);
    u64(b, n_tensors);
    u64(b, n_kv);
}
static void kv_u32(buf_t *b, const char *key, uint32_t v) {
    str(b, key);
    u32(b, MX_GGUF_U32);
    u32(b, v);
}
static void tensor_info(buf_t *b, const char *name, int n_dims, const uint64_t *ne, uint32_t type,
                        uint64_t off) {
    str(b, name);
    u32(b, (uint32_t)n_dims);
    for (int d = 0; d < n_dims; d++) u64(b, ne[d]);
    u32(b, type);
    u64(b, off);
}

/* The valid file: 13 metadata keys of every type, alignment 64, two tensors (F32 [4,2], Q8_0 [32]). */
static buf_t valid_file(void) {
    buf_t b = {0};
    header(&b, 3, 2, 14);
    kv_u32(&b, "general.alignment", 64);
    str(&b, "k.u8"), u32(&b, MX_GGUF_U8), u8(&b, 200);
    str(&b, "k.i8"), u32(&b, MX_GGUF_I8), u8(&b, 0xFE);
    str(&b, "k.u16"), u32(&b, MX_GGUF_U16), u8(&b, 0x34), u8(&b, 0x12);
    str(&b, "k.i16"), u32(&b, MX_GGUF_I16), u8(&b, 0xFF), u8(&b, 0xFF);
    str(&b, "k.i32"), u32(&b, MX_GGUF_I32), u32(&b, (uint32_t)-5);
    float f = 1.5f;
    str(&b, "k.f32"), u32(&b, MX_GGUF_F32), put(&b, &f, 4);
    str(&b, "k.bool"), u32(&b, MX_GGUF_BOOL), u8(&b, 1);
    str(&b, "k.str"), u32(&b, MX_GGUF_STRING), str(&b, "hello");
    str(&b, "k.u64"), u32(&b, MX_GGUF_U64), u64(&b, 1ull << 40);
    str(&b, "k.i64"), u32(&b, MX_GGUF_I64), u64(&b, (uint64_t)-3);
    double d = -0.25;
    str(&b, "k.f64"), u32(&b, MX_GGUF_F64), put(&b, &d, 8);
    str(&b, "k.strs"), u32(&b, MX_GGUF_ARRAY), u32(&b, MX_GGUF_STRING), u64(&b, 2), str(&b, "ab"),
        str(&b, "");
    /* [[1, 2], [3]] as i16, then nested once more: [[[7]]] would be deeper; keep two levels */
    str(&b, "k.nested"), u32(&b, MX_GGUF_ARRAY), u32(&b, MX_GGUF_ARRAY), u64(&b, 2);
    u32(&b, MX_GGUF_I16), u64(&b, 2), u8(&b, 1), u8(&b, 0), u8(&b, 2), u8(&b, 0);
    u32(&b, MX_GGUF_I16), u64(&b, 1), u8(&b, 3), u8(&b, 0);
    uint64_t ne_a[2] = {4, 2}, ne_b[1] = {32};
    tensor_info(&b, "a", 2, ne_a, MX_F32, 0);
    tensor_info(&b, "b", 1, ne_b, MX_Q8_0, 64);
    pad(&b, 64);
    for (int i = 0; i < 8; i++) {
        float v = (float)i;
        put(&b, &v, 4);
    }
    while (b.n % 64) u8(&b, 0);
    for (int i = 0; i < 34; i++) u8(&b, (uint8_t)i);
    return b;
}

/* Opens buf expecting failure with `code`; checks the message names the file and contains `word`. */
static void expect_fail(const buf_t *b, mx_code code, const char *word) {
    mx_gguf *g = (mx_gguf *)1;
    mx_err err = {0};
    int rc = mx_gguf_open_buffer(b->p, b->n, "crafted.gguf", &g, &err);
    cr_assert_eq(rc, (int)code, "rc %d (%s), want %d: %s", rc, mx_code_name(rc), code, err.msg);
    cr_assert_null(g);
    cr_assert(strstr(err.msg, "crafted.gguf"), "message does not name the file: %s", err.msg);
    if (word) cr_assert(strstr(err.msg, word), "message lacks '%s': %s", word, err.msg);
}

Test(gguf, valid_round_trip) {
    buf_t b = valid_file();
    mx_gguf *g;
    mx_err err;
    cr_assert_eq(mx_gguf_open_buffer(b.p, b.n, "valid.gguf", &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g->version, 3);
    cr_assert_eq(g->n_kv, 14);
    cr_assert_eq(g->alignment, 64);
    cr_assert_eq(g->data_offset % 64, 0);
    int64_t i;
    double f;
    bool bo;
    char *s;
    cr_assert_eq(mx_gguf_get_i64(g, "k.u8", &i, &err), 0);
    cr_assert_eq(i, 200);
    cr_assert_eq(mx_gguf_get_i64(g, "k.i8", &i, &err), 0);
    cr_assert_eq(i, -2);
    cr_assert_eq(mx_gguf_get_i64(g, "k.u16", &i, &err), 0);
    cr_assert_eq(i, 0x1234);
    cr_assert_eq(mx_gguf_get_i64(g, "k.i16", &i, &err), 0);
    cr_assert_eq(i, -1);
    cr_assert_eq(mx_gguf_get_i64(g, "k.i32", &i, &err), 0);
    cr_assert_eq(i, -5);
    cr_assert_eq(mx_gguf_get_i64(g, "k.u64", &i, &err), 0);
    cr_assert_eq(i, 1ll << 40);
    cr_assert_eq(mx_gguf_get_i64(g, "k.i64", &i, &err), 0);
    cr_assert_eq(i, -3);
    cr_assert_eq(mx_gguf_get_f64(g, "k.f32", &f, &err), 0);
    cr_assert_eq(f, 1.5);
    cr_assert_eq(mx_gguf_get_f64(g, "k.f64", &f, &err), 0);
    cr_assert_eq(f, -0.25);
    cr_assert_eq(mx_gguf_get_bool(g, "k.bool", &bo, &err), 0);
    cr_assert(bo);
    cr_assert_eq(mx_gguf_get_str(g, "k.str", &s, &err), 0);
    cr_assert_str_eq(s, "hello");
    free(s);
    const mx_gguf_kv *kv = mx_gguf_kv_find(g, "k.strs");
    cr_assert_eq(kv->type, MX_GGUF_ARRAY);
    cr_assert_eq(kv->elem, MX_GGUF_STRING);
    cr_assert_eq(kv->count, 2);
    cr_assert_eq(kv->strs[0].len, 2);
    cr_assert(!memcmp(kv->strs[0].ptr, "ab", 2));
    cr_assert_eq(kv->strs[1].len, 0);
    kv = mx_gguf_kv_find(g, "k.nested");
    cr_assert_eq(kv->elem, MX_GGUF_ARRAY);
    cr_assert_eq(kv->count, 2);
    cr_assert_eq(kv->items[0].count, 2);
    cr_assert_eq(kv->items[1].count, 1);
    cr_assert_eq(mx_gguf_arr_i64(&kv->items[0], 1), 2);
    cr_assert_eq(mx_gguf_arr_f64(&kv->items[1], 0), 3.0);
    /* errors of the getters */
    cr_assert_eq(mx_gguf_get_i64(g, "nope", &i, &err), MX_ERR_MISSING);
    cr_assert(strstr(err.msg, "valid.gguf") && strstr(err.msg, "nope"));
    cr_assert_eq(mx_gguf_get_i64(g, "k.str", &i, &err), MX_ERR_FORMAT);
    cr_assert_eq(mx_gguf_get_str(g, "k.u8", &s, &err), MX_ERR_FORMAT);
    cr_assert_eq(mx_gguf_get_f64(g, "k.bool", &f, &err), MX_ERR_FORMAT);
    /* tensors */
    cr_assert_eq(g->n_tensors, 2);
    const mx_gguf_tensor *a = mx_gguf_tensor_find(g, "a"), *t = mx_gguf_tensor_find(g, "b");
    cr_assert_eq(a->n_dims, 2);
    cr_assert_eq(a->ne[0], 4);
    cr_assert_eq(a->ne[1], 2);
    cr_assert_eq(a->ne[2], 1);
    cr_assert_eq(a->nbytes, 32);
    cr_assert_eq(t->nbytes, 34);
    cr_assert_eq(t->type, MX_Q8_0);
    float v;
    memcpy(&v, (const uint8_t *)a->data + 7 * 4, 4);
    cr_assert_eq(v, 7.0f);
    cr_assert_eq(((const uint8_t *)t->data)[33], 33);
    cr_assert_eq((const uint8_t *)t->data - b.p, (ptrdiff_t)(g->data_offset + 64));
    cr_assert_null(mx_gguf_tensor_find(g, "c"));
    mx_gguf_close(g);
    free(b.p);
}

Test(gguf, version_2_accepted) {
    buf_t b = valid_file();
    b.p[4] = 2;
    mx_gguf *g;
    mx_err err;
    cr_assert_eq(mx_gguf_open_buffer(b.p, b.n, "v2.gguf", &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g->version, 2);
    mx_gguf_close(g);
    free(b.p);
}

Test(gguf, from_path) {
    buf_t b = valid_file();
    char path[] = "/tmp/mx_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    mx_gguf *g;
    mx_err err;
    cr_assert_eq(mx_gguf_open(path, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g->n_tensors, 2);
    cr_assert_str_eq(g->path, path);
    mx_gguf_close(g);
    unlink(path);
    cr_assert_eq(mx_gguf_open("/nonexistent/x.gguf", &g, &err), MX_ERR_IO);
    cr_assert(strstr(err.msg, "/nonexistent/x.gguf"));
    free(b.p);
}

Test(gguf, bad_magic_and_versions) {
    buf_t b = valid_file();
    b.p[0] = 'X';
    expect_fail(&b, MX_ERR_FORMAT, "not a GGUF file");
    b.p[0] = 'G';
    b.p[4] = 1;
    expect_fail(&b, MX_ERR_UNSUPPORTED, "version 1");
    b.p[4] = 4;
    expect_fail(&b, MX_ERR_UNSUPPORTED, "version 4");
    b.p[4] = 0, b.p[7] = 3; /* a big-endian v3 */
    expect_fail(&b, MX_ERR_UNSUPPORTED, "big-endian");
    free(b.p);
    buf_t e = {0};
    expect_fail(&e, MX_ERR_FORMAT, "not a GGUF file");
}

Test(gguf, truncated_at_every_byte) {
    buf_t b = valid_file();
    size_t full = b.n;
    for (size_t cut = 0; cut < full; cut++) {
        buf_t t = {b.p, cut, cut};
        mx_gguf *g;
        mx_err err = {0};
        int rc = mx_gguf_open_buffer(t.p, t.n, "cut.gguf", &g, &err);
        cr_assert_neq(rc, 0, "prefix of %zu bytes accepted", cut);
        cr_assert(strstr(err.msg, "cut.gguf"), "%s", err.msg);
    }
    free(b.p);
}

Test(gguf, huge_counts) {
    buf_t b = {0};
    header(&b, 3, 1ull << 62, 0);
    expect_fail(&b, MX_ERR_FORMAT, "tensor count");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, UINT64_MAX);
    expect_fail(&b, MX_ERR_FORMAT, "metadata count");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1); /* an array of 2^61 u32 */
    str(&b, "arr"), u32(&b, MX_GGUF_ARRAY), u32(&b, MX_GGUF_U32), u64(&b, 1ull << 61);
    expect_fail(&b, MX_ERR_FORMAT, "'arr'");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1); /* an array of 2^60 strings */
    str(&b, "strs"), u32(&b, MX_GGUF_ARRAY), u32(&b, MX_GGUF_STRING), u64(&b, 1ull << 60);
    expect_fail(&b, MX_ERR_FORMAT, "'strs'");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1); /* nested: 2^59 inner arrays */
    str(&b, "nest"), u32(&b, MX_GGUF_ARRAY), u32(&b, MX_GGUF_ARRAY), u64(&b, 1ull << 59);
    expect_fail(&b, MX_ERR_FORMAT, "'nest'");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1); /* a key longer than the file */
    u64(&b, 1ull << 40);
    u64(&b, 0), u64(&b, 0);
    expect_fail(&b, MX_ERR_FORMAT, "past the end");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1);
    str(&b, "s"), u32(&b, MX_GGUF_STRING), u64(&b, UINT64_MAX);
    expect_fail(&b, MX_ERR_FORMAT, "past the end");
    free(b.p);
}

Test(gguf, deep_nesting_rejected) {
    buf_t b = {0};
    header(&b, 3, 0, 1);
    str(&b, "deep"), u32(&b, MX_GGUF_ARRAY);
    for (int i = 0; i < 100; i++) u32(&b, MX_GGUF_ARRAY), u64(&b, 1);
    u32(&b, MX_GGUF_U8), u64(&b, 0);
    expect_fail(&b, MX_ERR_FORMAT, "nested");
    free(b.p);
}

Test(gguf, unknown_value_types) {
    buf_t b = {0};
    header(&b, 3, 0, 1);
    str(&b, "bad"), u32(&b, 13), u32(&b, 0);
    expect_fail(&b, MX_ERR_FORMAT, "unknown value type 13");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1);
    str(&b, "bad"), u32(&b, MX_GGUF_ARRAY), u32(&b, 77), u64(&b, 1), u32(&b, 0);
    expect_fail(&b, MX_ERR_FORMAT, "unknown array element type 77");
    free(b.p);
}

/* A file with one tensor whose info is given; data_bytes zero bytes of data after the infos. */
static buf_t one_tensor(const char *name, int n_dims, const uint64_t *ne, uint32_t type, uint64_t off,
                        size_t data_bytes) {
    buf_t b = {0};
    header(&b, 3, 1, 0);
    tensor_info(&b, name, n_dims, ne, type, off);
    pad(&b, 32);
    for (size_t i = 0; i < data_bytes; i++) u8(&b, 0);
    return b;
}

Test(gguf, tensor_errors) {
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    buf_t b = one_tensor("w.five", 5, ne, MX_F32, 0, 256);
    expect_fail(&b, MX_ERR_FORMAT, "5 dimensions");
    free(b.p);
    b = one_tensor("w.type", 2, ne, 99, 0, 256);
    expect_fail(&b, MX_ERR_UNSUPPORTED, "unknown tensor type 99");
    {
        mx_gguf *g;
        mx_err err;
        mx_gguf_open_buffer(b.p, b.n, "crafted.gguf", &g, &err);
        cr_assert(strstr(err.msg, "w.type"), "%s", err.msg);
    }
    free(b.p);
    b = one_tensor("w.short", 2, ne, MX_F32, 0, 255); /* 256 bytes needed */
    expect_fail(&b, MX_ERR_FORMAT, "past the end");
    free(b.p);
    b = one_tensor("w.far", 2, ne, MX_F32, 1ull << 62, 256);
    expect_fail(&b, MX_ERR_FORMAT, "past the end");
    free(b.p);
    b = one_tensor("w.wrap", 2, ne, MX_F32, UINT64_MAX - 31, 256); /* offset + size wraps around */
    expect_fail(&b, MX_ERR_FORMAT, NULL);
    free(b.p);
    b = one_tensor("w.unaligned", 2, ne, MX_F32, 4, 512);
    expect_fail(&b, MX_ERR_FORMAT, "alignment");
    free(b.p);
    uint64_t big[4] = {1ull << 32, 1ull << 32, 1ull << 32, 1};
    b = one_tensor("w.overflow", 3, big, MX_F32, 0, 0);
    expect_fail(&b, MX_ERR_FORMAT, "overflow");
    free(b.p);
    uint64_t big2[2] = {1ull << 31, 1ull << 31}; /* 2^62 elements fit int64, 2^64 bytes do not */
    b = one_tensor("w.bytes", 2, big2, MX_F32, 0, 0);
    expect_fail(&b, MX_ERR_FORMAT, "w.bytes");
    free(b.p);
    uint64_t neg[1] = {UINT64_MAX};
    b = one_tensor("w.neg", 1, neg, MX_F32, 0, 0);
    expect_fail(&b, MX_ERR_FORMAT, "w.neg");
    free(b.p);
    uint64_t odd[1] = {33};
    b = one_tensor("w.block", 1, odd, MX_Q4_0, 0, 64);
    expect_fail(&b, MX_ERR_FORMAT, "block size");
    free(b.p);
}

Test(gguf, duplicates_and_alignment) {
    buf_t b = {0};
    uint64_t ne[1] = {8};
    header(&b, 3, 2, 0);
    tensor_info(&b, "same", 1, ne, MX_F32, 0);
    tensor_info(&b, "same", 1, ne, MX_F32, 32);
    pad(&b, 32);
    for (int i = 0; i < 64; i++) u8(&b, 0);
    expect_fail(&b, MX_ERR_FORMAT, "duplicate tensor name 'same'");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 2);
    kv_u32(&b, "k", 1);
    kv_u32(&b, "k", 2);
    expect_fail(&b, MX_ERR_FORMAT, "duplicate metadata key 'k'");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1);
    kv_u32(&b, "general.alignment", 48);
    expect_fail(&b, MX_ERR_FORMAT, "power of two");
    free(b.p), b = (buf_t){0};
    header(&b, 3, 0, 1);
    str(&b, "general.alignment"), u32(&b, MX_GGUF_U64), u64(&b, 32);
    expect_fail(&b, MX_ERR_FORMAT, "u32 expected");
    free(b.p);
}

Test(gguf, empty_tensor_and_no_tensors) {
    buf_t b = {0};
    header(&b, 3, 0, 0);
    mx_gguf *g;
    mx_err err;
    cr_assert_eq(mx_gguf_open_buffer(b.p, b.n, "empty.gguf", &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g->n_tensors, 0);
    mx_gguf_close(g);
    free(b.p);
    uint64_t ne[2] = {32, 0};
    b = one_tensor("zero", 2, ne, MX_F32, 0, 0);
    cr_assert_eq(mx_gguf_open_buffer(b.p, b.n, "zero.gguf", &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g->tensors[0].nbytes, 0);
    mx_gguf_close(g);
    free(b.p);
}
