/* status.h: mixatt's error convention.
 * Every fallible function returns int: 0 on success, an mx_code on failure, and fills the caller's mx_err
 * with a message that names the file, tensor or layer concerned. Callers add context with mx_err_wrap. */
#ifndef MX_STATUS_H
#define MX_STATUS_H

#include <stddef.h>

typedef enum {
    MX_OK = 0,
    MX_ERR_IO,          /* open/read/write/mmap failed */
    MX_ERR_FORMAT,      /* a file is not what it claims to be (bad magic, truncated, offsets past the end) */
    MX_ERR_UNSUPPORTED, /* valid input that mixatt does not handle (unknown tensor type, architecture) */
    MX_ERR_NOMEM,       /* allocation failed */
    MX_ERR_ARG,         /* bad argument from the user (flag, prompt too long, bad plan) */
    MX_ERR_MISSING,     /* a required tensor or metadata key is absent */
} mx_code;

typedef struct {
    mx_code code;
    char msg[1024];
} mx_err;

/* Sets err (if not NULL) to code and a printf-formatted message; returns code. */
int mx_err_set(mx_err *err, mx_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes the existing message with printf-formatted context ("loading layer 3: ..."); returns err->code. */
int mx_err_wrap(mx_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *mx_code_name(mx_code code);

#endif
