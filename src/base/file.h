/* file.h: reading a whole file (or stream) into memory: configs, JSON indexes, prompts and texts. */
#ifndef MX_FILE_H
#define MX_FILE_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

/* Reads the file at path into a malloc'd buffer with a NUL after its last byte; *len (when len is not NULL)
 * gets its size without the NUL. NULL on failure, err saying "PATH: cannot open: REASON", "PATH: cannot
 * read: REASON" or out of memory. */
char *mx_file_read(const char *path, size_t *len, mx_err *err);
/* The same for an open stream read to its end (stdin, a pipe); name stands for it in messages. The stream
 * stays open. */
char *mx_file_read_stream(FILE *f, const char *name, size_t *len, mx_err *err);

#endif
