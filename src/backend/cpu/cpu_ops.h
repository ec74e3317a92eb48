/* cpu_ops.h: the CPU implementations of the op contract (see ../backend.h for what each computes). */
#ifndef MX_CPU_OPS_H
#define MX_CPU_OPS_H

#include "../backend.h"

void mx_cpu_matmul(mx_backend *be, const mx_tensor *w, const float *x, float *y, int T);
void mx_cpu_matmul_group(mx_backend *be, int n, const mx_tensor *const *w, const float *x, float *const *y,
                         int T);
void mx_cpu_embed(mx_backend *be, const mx_tensor *w, const int *ids, int T, float *out);
void mx_cpu_rmsnorm(mx_backend *be, const float *x, const mx_tensor *w, float *out, int T, int C, float eps);
void mx_cpu_layernorm(mx_backend *be, const float *x, const mx_tensor *w, const mx_tensor *b, float *out,
                      int T, int C, float eps);
void mx_cpu_rope(mx_backend *be, float *x, int T, int n_head, int head_dim, int rope_dim, int pos0,
                 float theta, mx_rope_mode mode);
void mx_cpu_swiglu(mx_backend *be, float *g, const float *u, int n);
void mx_cpu_gelu(mx_backend *be, float *x, int n);
void mx_cpu_add(mx_backend *be, float *y, const float *x, int n);
void mx_cpu_add_bias(mx_backend *be, float *y, const mx_tensor *b, int T, int n);
void mx_cpu_attention(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k, const void *v,
                      float *out, float *lse);
void mx_cpu_kv_write(mx_backend *be, void *store, const float *src, int T, int n, int pos0, int n_slots);
void mx_cpu_lse_merge(mx_backend *be, const float *outs, const float *lses, size_t part_stride, int R, int T,
                      int H, int Dv, float *out, float *lse);
/* XAttention (cpu_xattn.c): backend.h's xattn_select, and the attention op over a block list (called by
 * mx_cpu_attention when spec->blocks is set). */
long mx_cpu_xattn_select(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k, int stride,
                         float tau, mx_attn_blocks *bl, int *off, int *idx, float *mass);
void mx_cpu_attention_blocks(mx_backend *be, const mx_attn_spec *spec, const float *q, const void *k,
                             const void *v, float *out, float *lse);
/* Fills the slots of the MoE/MLA/MKA ops (cpu_blocks.c). */
void mx_cpu_blocks_register(mx_backend *be);
/* Fills the server's batched decode ops (cpu_batch.c). */
void mx_cpu_batch_register(mx_backend *be);

#endif
