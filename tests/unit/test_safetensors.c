/* test_safetensors.c: the safetensors reader on buffers built here: a valid file (F32, BF16, F16, an I64 that
 * parses but has no compute type, an empty tensor, __metadata__) read back exactly and looked up by name;
 * then every class of bad input (short file, header length past the end, bad JSON, unknown dtype, bad
 * shapes, bad or out-of-range data_offsets, size mismatch, duplicates, truncation at every byte) failing with
 * a message naming the file and the tensor; and checkpoints in a directory: one file, shards through
 * model.safetensors.index.json, and broken indexes. Leaks are caught by ASan. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/io/dtype.h"
#include "../../src/io/safetensors.h"

/* A safetensors buffer: 8-byte length, the header, then `data` bytes of data. */
static uint8_t *build(const char *header, const void *data, size_t data_len, size_t *size) {
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    uint8_t *b = malloc(*size);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    if (data_len) memcpy(b + 8 + h, data, data_len);
    return b;
}

static const char *VALID = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                           "\"h\":{\"dtype\":\"F16\",\"shape\":[1,1,2],\"data_offsets\":[32,36]},"
                           "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[36,44]},"
                           "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[44,44]},"
                           "\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"}}";

static uint8_t DATA[44];

static void fill_data(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[4] = {0x3f80, 0x4000, 0x4040, 0x4080}; /* bf16 1, 2, 3, 4 */
    uint16_t h[2] = {0x3c00, 0xc000};                 /* f16 1, -2 */
    int64_t i = -7;
    memcpy(DATA, a, 24);
    memcpy(DATA + 24, b, 8);
    memcpy(DATA + 32, h, 4);
    memcpy(DATA + 36, &i, 8);
}

Test(safetensors, valid_file_reads_back) {
    fill_data();
    size_t size;
    uint8_t *buf = build(VALID, DATA, sizeof DATA, &size);
    mx_st_file *f;
    mx_err err = {0};
    cr_assert_eq(mx_st_open_buffer(buf, size, "mem.safetensors", &f, &err), 0, "%s", err.msg);
    cr_assert_eq(f->n_tensors, 5);
    const mx_st_tensor *a = mx_st_find(f, "a"), *b = mx_st_find(f, "b"), *h = mx_st_find(f, "h");
    const mx_st_tensor *i = mx_st_find(f, "i"), *e = mx_st_find(f, "e");
    cr_assert(a && b && h && i && e);
    cr_assert_null(mx_st_find(f, "zzz"));
    cr_assert_null(mx_st_find(f, "__metadata__"));
    cr_assert_eq(a->type, MX_F32);
    cr_assert_eq(a->n_dims, 2);
    cr_assert_eq(a->shape[0], 2);
    cr_assert_eq(a->shape[1], 3);
    cr_assert_eq(a->nbytes, 24);
    float v;
    memcpy(&v, (const uint8_t *)a->data + 20, 4);
    cr_assert_eq(v, 6.0f);
    cr_assert_eq(b->type, MX_BF16);
    cr_assert_eq(b->data, buf + size - 44 + 24);
    cr_assert_eq(h->type, MX_F16);
    cr_assert_eq(h->n_dims, 3);
    cr_assert_eq(i->type, MX_ST_NO_TYPE);
    cr_assert_str_eq(i->dtype, "I64");
    cr_assert_eq(e->nbytes, 0);
    cr_assert_str_eq(a->file, "mem.safetensors");
    cr_assert_str_eq(mx_st_meta(f, "format"), "pt");
    cr_assert_str_eq(mx_st_meta(f, "note"), "x");
    cr_assert_null(mx_st_meta(f, "missing"));
    mx_st_close(f);
    free(buf);
}

/* Opens header + data and expects a failure whose message contains every one of the NULL-terminated needles.
 */
static void expect_error(const char *header, const void *data, size_t data_len, ...) {
    size_t size;
    uint8_t *buf = build(header, data, data_len, &size);
    mx_st_file *f = (mx_st_file *)1;
    mx_err err = {0};
    int rc = mx_st_open_buffer(buf, size, "bad.safetensors", &f, &err);
    cr_assert_neq(rc, 0, "accepted: %s", header);
    cr_assert_null(f);
    cr_assert(strstr(err.msg, "bad.safetensors"), "message does not name the file: %s", err.msg);
    va_list ap;
    va_start(ap, data_len);
    for (const char *s; (s = va_arg(ap, const char *));)
        cr_assert(strstr(err.msg, s), "message lacks '%s': %s", s, err.msg);
    va_end(ap);
    free(buf);
}

Test(safetensors, bad_headers) {
    uint8_t d[64] = {0};
    expect_error("not json", d, 8, "not valid JSON", NULL);
    expect_error("[1,2]", d, 8, "not a JSON object", NULL);
    expect_error("{\"t\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8, "'t'",
                 "unknown dtype 'Q4'", NULL);
    expect_error("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8, "'t'", "unknown dtype", NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]}}", d, 12, "'t'", "shape",
                 NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", d, 8, "'t'", "shape[0]",
                 NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", d, 8, "shape[0]",
                 NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", d, 8,
                 "at most", NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", d, 8, "'t'",
                 "data_offsets", NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", d, 8, "begin <= end",
                 NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", d, 8, "'t'",
                 "runs past the end", NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d, 8, "'t'",
                 "need 12 bytes", NULL);
    expect_error(
        "{\"t\":{\"dtype\":\"F32\",\"shape\":[2147483647,2147483647,2147483647],\"data_offsets\":[0,8]}}", d,
        8, "overflows", NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,0],\"data_offsets\":[0,0]}}", d, 0,
                 "shape[0] = 4294967296 exceeds", NULL);
    expect_error("{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"},\"__metadata__\":{\"d\":\"4\"}}", d,
                 0, "more than one __metadata__", NULL);
    expect_error("{\"__metadata__\":{\"d\":\"4\"},\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"}}", d,
                 0, "more than one __metadata__", NULL);
    expect_error("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", d, 0, "'k' appears twice", NULL);
    expect_error("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 d, 8, "'t' appears twice", NULL);
    expect_error("{\"__metadata__\":{\"k\":1}}", d, 0, "__metadata__", NULL);
    expect_error("{\"t\":[1]}", d, 0, "'t'", "not an object", NULL);
}

Test(safetensors, short_and_lying_lengths) {
    mx_st_file *f;
    mx_err err = {0};
    uint8_t tiny[5] = {0};
    cr_assert_neq(mx_st_open_buffer(tiny, sizeof tiny, "tiny.st", &f, &err), 0);
    cr_assert(strstr(err.msg, "tiny.st") && strstr(err.msg, "truncated"), "%s", err.msg);
    uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    cr_assert_neq(mx_st_open_buffer(big, sizeof big, "big.st", &f, &err), 0);
    cr_assert(strstr(err.msg, "big.st") && strstr(err.msg, "header length"), "%s", err.msg);
}

Test(safetensors, truncation_at_every_byte_fails_cleanly) {
    fill_data();
    size_t size;
    uint8_t *buf = build(VALID, DATA, sizeof DATA, &size);
    for (size_t n = 0; n < size; n++) {
        uint8_t *cut = malloc(n ? n : 1); /* a buffer of exactly n bytes so ASan sees any overread */
        memcpy(cut, buf, n);
        mx_st_file *f;
        mx_err err = {0};
        cr_assert_neq(mx_st_open_buffer(cut, n, "cut.safetensors", &f, &err), 0, "accepted %zu of %zu bytes",
                      n, size);
        cr_assert(strstr(err.msg, "cut.safetensors"), "%s", err.msg);
        free(cut);
    }
    free(buf);
}

/* ---- checkpoints in a directory ---- */

static char dir[64];

static void write_file(const char *name, const void *p, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void write_st(const char *name, const char *header, size_t data_len) {
    uint8_t d[64] = {0};
    size_t size;
    uint8_t *b = build(header, d, data_len, &size);
    write_file(name, b, size);
    free(b);
}

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/mx_st_XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void remove_dir(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

static const char *ONE = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
static const char *TWO = "{\"y\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";

Test(safetensors, directory_single_and_sharded) {
    make_dir();
    mx_st_set *s;
    mx_err err = {0};
    cr_assert_neq(mx_st_set_open(dir, &s, &err), 0);
    cr_assert(strstr(err.msg, "no model.safetensors"), "%s", err.msg);
    write_st("weights.safetensors", ONE, 8); /* the only file, under another name */
    cr_assert_eq(mx_st_set_open(dir, &s, &err), 0, "%s", err.msg);
    cr_assert(mx_st_set_find(s, "x"));
    mx_st_set_close(s);
    write_st("a.safetensors", ONE, 8);
    write_st("b.safetensors", TWO, 4);
    const char *index = "{\"metadata\":{},\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"b.safetensors\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    cr_assert_eq(mx_st_set_open(dir, &s, &err), 0, "%s", err.msg);
    cr_assert_eq(s->n_files, 2);
    const mx_st_tensor *y = mx_st_set_find(s, "y");
    cr_assert(y && y->type == MX_F16 && strstr(y->file, "b.safetensors"));
    cr_assert_null(mx_st_set_find(s, "z"));
    mx_st_set_close(s);
    remove_dir();
}

static void expect_index_error(const char *index, const char *needle) {
    write_file("model.safetensors.index.json", index, strlen(index));
    mx_st_set *s = (mx_st_set *)1;
    mx_err err = {0};
    cr_assert_neq(mx_st_set_open(dir, &s, &err), 0, "accepted %s", index);
    cr_assert_null(s);
    cr_assert(strstr(err.msg, needle), "message lacks '%s': %s", needle, err.msg);
}

Test(safetensors, broken_indexes) {
    make_dir();
    write_st("a.safetensors", ONE, 8);
    expect_index_error("{", "not valid JSON");
    expect_index_error("{\"weight_map\":3}", "weight_map");
    expect_index_error("{\"weight_map\":{\"x\":\"../a.safetensors\"}}", "not a file name");
    expect_index_error("{\"weight_map\":{\"x\":\"gone.safetensors\"}}", "gone.safetensors");
    expect_index_error("{\"weight_map\":{\"q\":\"a.safetensors\"}}", "tensor 'q' is not in a.safetensors");
    write_st("c.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,80]}}", 8);
    expect_index_error("{\"weight_map\":{\"x\":\"c.safetensors\"}}", "c.safetensors: tensor 'x'");
    remove_dir();
}

/* The checksum of safetensors.h: computed over the metadata (in file order, without "checksum") and the data;
 * a flipped data byte, a changed value or a missing checksum is reported. The expected CRC comes from zlib's
 * crc32 over the same bytes laid out by hand here. */
Test(safetensors, checksum) {
    const char data[8] = "abcdefgh";
    uLong crc = crc32(0,
                      (const Bytef *)"step\0"
                                     "3\0",
                      7);
    crc = crc32(crc, (const Bytef *)data, 8);
    char header[256];
    snprintf(header, sizeof header,
             "{\"__metadata__\":{\"step\":\"3\",\"checksum\":\"crc32:%08lx\"},"
             "\"t\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
             crc);
    size_t size;
    uint8_t *buf = build(header, data, 8, &size);
    mx_st_file *f;
    mx_err err = {0};
    cr_assert_eq(mx_st_open_buffer(buf, size, "c.safetensors", &f, &err), 0, "%s", err.msg);
    cr_assert_eq(mx_st_verify_checksum(f, true, &err), 0, "%s", err.msg);
    buf[size - 1] ^= 1;
    cr_assert_neq(mx_st_verify_checksum(f, true, &err), 0);
    cr_assert(strstr(err.msg, "checksum mismatch") && strstr(err.msg, "c.safetensors"), "%s", err.msg);
    mx_st_close(f);
    free(buf);
    buf = build("{\"__metadata__\":{\"step\":\"3\"}}", data, 0, &size);
    cr_assert_eq(mx_st_open_buffer(buf, size, "c.safetensors", &f, &err), 0, "%s", err.msg);
    cr_assert_eq(mx_st_verify_checksum(f, false, &err), 0);
    cr_assert_neq(mx_st_verify_checksum(f, true, &err), 0);
    cr_assert(strstr(err.msg, "no checksum"), "%s", err.msg);
    mx_st_close(f);
    free(buf);
}
