/* config_check.h: the invariants of an mx_config that every loader (GGUF, Hugging Face, training checkpoint)
 * checks right after it parses the hyper-parameters, before any of them sizes a buffer or a loop: expert
 * counts, the top-k, RoPE and MLA dimensions, the window. A file that breaks one gets an error naming the
 * file and the key, never a crash later in a kernel. */
#ifndef MX_CONFIG_CHECK_H
#define MX_CONFIG_CHECK_H

#include "model.h"

enum {
    MX_MAX_EXPERTS = 1 << 16, /* experts of one MoE layer (DeepSeek-V3 has 256) */
    MX_MAX_ROPE_DIM = 1024,   /* rotary dims per head: the CPU kernel's table holds 512 pairs */
};

/* Checks c (as filled by a loader; head_dim and rope_dim already defaulted). `path` names the file. */
int mx_config_check(const mx_config *c, const char *path, mx_err *err);

#endif
