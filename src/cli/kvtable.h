/* kvtable.h: KV cache accounting across attention variants (see kvtable.c). */
#ifndef MX_KVTABLE_H
#define MX_KVTABLE_H

#include <stdio.h>

#include "../model/model.h"

/* Prints the markdown table for the shape of c (its plan is ignored). */
int mx_print_kv_table(const mx_config *c, const char *title, FILE *f);
/* The 24-layer MixAttention-shaped config (GQA 12 q / 3 kv heads, head dim 128), shape only. */
void mx_shape_mixattention24(mx_config *c);

#endif
