/* file.c: whole-file reading (see file.h). The buffer doubles from 64 KiB, so pipes and files whose size is
 * unknown read the same way as regular files. */
#include "file.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

char *mx_file_read_stream(FILE *f, const char *name, size_t *len, mx_err *err) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (ferror(f)) {
            int e = errno ? errno : EIO;
            free(buf);
            mx_err_set(err, MX_ERR_IO, "%s: cannot read: %s", name, strerror(e));
            return NULL;
        }
        if (n + 1 < cap) { /* a short read without an error: the end */
            buf[n] = '\0';
            if (len) *len = n;
            return buf;
        }
        char *grown = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!grown) break;
        buf = grown;
        cap *= 2;
    }
    free(buf);
    mx_err_set(err, MX_ERR_NOMEM, "%s: out of memory reading it (%zu bytes so far)", name, n);
    return NULL;
}

char *mx_file_read(const char *path, size_t *len, mx_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = mx_file_read_stream(f, path, len, err);
    fclose(f);
    return buf;
}
