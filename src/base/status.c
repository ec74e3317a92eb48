/* status.c: error messages with context (see status.h). */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int mx_err_set(mx_err *err, mx_code code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int mx_err_wrap(mx_err *err, const char *fmt, ...) {
    if (!err) return MX_ERR_ARG;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3) n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = 0;
    return err->code;
}

const char *mx_code_name(mx_code code) {
    switch (code) {
    case MX_OK:
        return "ok";
    case MX_ERR_IO:
        return "i/o error";
    case MX_ERR_FORMAT:
        return "bad format";
    case MX_ERR_UNSUPPORTED:
        return "unsupported";
    case MX_ERR_NOMEM:
        return "out of memory";
    case MX_ERR_ARG:
        return "bad argument";
    case MX_ERR_MISSING:
        return "missing";
    }
    return "unknown error";
}
