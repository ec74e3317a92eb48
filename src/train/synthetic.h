/* synthetic.h: synthetic tasks written as token shards (shards.h), for training runs that need no dataset
 * and test what attention can do. Tokens: 0 begins a document, 1 separates, 2 asks a query, 3 is filler;
 * content tokens are 4 .. vocab-1. Each document fits `seq` tokens:
 *   copy     0 a1 .. an 1 a1 .. an              (n = (seq - 2) / 2 random content tokens)
 *   reverse  0 a1 .. an 1 an .. a1
 *   farcopy  0 a1 .. an 3 3 .. 3 1 a1 .. an    (n = (seq - 2) / 8: copy at a distance of about seq - 2n)
 *   recall   0 k1 v1 .. kp vp 3 3 .. 3 2 ki vi  (p distinct keys with values; filler pushes the pairs far
 * back; one key is asked at the end: its value must be recalled) */
#ifndef MX_SYNTHETIC_H
#define MX_SYNTHETIC_H

#include <stdint.h>

#include "../base/status.h"

/* True when name is a task ("copy", "reverse", "farcopy", "recall"). */
int mx_synth_known(const char *task);
/* Fills tokens[0..n) with documents of the task. vocab >= 16, seq >= 8. */
int mx_synth_generate(const char *task, int *tokens, long n, int vocab, int seq, uint64_t seed, mx_err *err);
/* Generates n tokens and writes them as a shard at path. */
int mx_synth_write(const char *task, const char *path, long n, int vocab, int seq, uint64_t seed,
                   mx_err *err);

#endif
