/* mla_train.h: Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434) for training, in its explicit
 * form, forward and backward (llama blocks). H heads, R = mla_kv_rank, r = mla_rope_dim, n = mla_nope_dim,
 * v = mla_v_dim, Q = mla_q_rank; x (N, C) the normed layer input:
 *   q = wq_b · RMSNorm(wq_a · x) (Q > 0) or wq · x    (N, H, n + r); RoPE on the last r of each head
 *   [c ; k_r] = wkv_a · x                              (N, R + r)
 *   [k_nope ; v]_h = wkv_b_h · RMSNorm(c)              (N, H, n + v)
 *   K_h = [k_nope_h ; RoPE(k_r)] (one k_r for every head), V_h = v_h
 *   out = wo · attn(q, K, V)                          scores scaled by (n + r)^-1/2 (muP: (n + r)^-1)
 * RoPE is the rotate-half layout on the r dims, as the rest of training. */
#ifndef MX_MLA_TRAIN_H
#define MX_MLA_TRAIN_H

#include "model_train.h"

int mx_mla_tacts_alloc(mx_tmodel *m, mx_err *err); /* nothing unless the plan has MLA layers */
void mx_mla_tacts_free(mx_tmodel *m);
/* acts.ln1 of layer l → acts.tmp (N, C). */
void mx_mla_tr_fwd(mx_tmodel *m, int l);
/* acts.dx (N, C), the gradient of the attention output → acts.dln (N, C, overwritten); parameter
 * gradients accumulated. */
void mx_mla_tr_bwd(mx_tmodel *m, int l);

#endif
