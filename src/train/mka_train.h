/* mka_train.h: MKA and FastMKA (docs/attention.md, "MKA and FastMKA") for training, forward and backward,
 * causal: the session memory is the running mean L2(t) = mean(x_0..x_t) of the layer's normed input x. With
 * the router r = softmax(W2 · tanh(W1 · x + b1) + b2) (N, 3) and q = RoPE(Wq · x + bq):
 *   MKA:     o_i = attn(q, RoPE(Wk · L_i + bk), Wv · L_i + bv) for L_1 = x, L_2 = L2; o_3 = bv;
 *            out = Wo · (r_1 o_1 + r_2 o_2 + r_3 o_3) + bo
 *   FastMKA: mem = r_1 x + r_2 L2; out = Wo · attn(q, RoPE(Wk · mem + bk), Wv · mem + bv) + bo
 * (biases on gpt2 blocks, RoPE on llama ones; the plan's window applies). */
#ifndef MX_MKA_TRAIN_H
#define MX_MKA_TRAIN_H

#include "model_train.h"

int mx_mka_tacts_alloc(mx_tmodel *m, mx_err *err); /* nothing unless the plan has MKA/FastMKA layers */
void mx_mka_tacts_free(mx_tmodel *m);
/* acts.ln1 of layer l → acts.tmp (N, C). */
void mx_mka_tr_fwd(mx_tmodel *m, int l);
/* acts.dx (N, C), the gradient of the attention output → acts.dln (N, C, overwritten); parameter
 * gradients accumulated. */
void mx_mka_tr_bwd(mx_tmodel *m, int l);

#endif
