/* mup.h: the parameterization of training: per-parameter init std and learning-rate multipliers, the
 * attention score scale and the output logit multiplier, under the standard rules or muP (Yang et al.,
 * "Tensor Programs V", arXiv 2203.03466, Adam variant), and the per-layer activation RMS of a coordinate
 * check. docs/training.md states the rules. With width multiplier w = d_model / mup_base_width:
 *   embeddings (token, position): std init_std, lr x1       vectors (norms, biases): 1 / 0, lr x1
 *   hidden matrices (fan-in grows with width): std init_std / sqrt(w) (residual projections also
 *     / sqrt(2 n_layer)), lr x 1/w        query projections (attn_q, attn_q_b): zero init, lr x 1/w
 *   matrices onto a fixed width (MoE router, MKA router2): zero init, lr x 1/w
 *   output head (untied): zero init, lr x1; logits multiplied by 1/w (tied or not)
 *   attention scores: q·k / head_dim instead of / sqrt(head_dim).
 * Without muP every multiplier is 1, every matrix N(0, init_std) (residual projections / sqrt(2 n_layer)). */
#ifndef MX_MUP_H
#define MX_MUP_H

#include "model_train.h"

/* Sets every parameter's lr_mult, m->attn_scale_pow and m->logit_scale from m->cfg. */
void mx_mup_setup(mx_tmodel *m);
/* The init std of matrix p (vectors are not drawn: norms 1, biases 0). */
float mx_mup_init_std(const mx_tmodel *m, const mx_param *p);
/* The attention score scale for keys of D elements: D^-attn_scale_pow. */
float mx_attn_scale(const mx_tmodel *m, int D);
/* The root mean square of the residual stream entering each layer and leaving the last (n_layer + 1 values
 * into rms) after the last forward pass: the coordinate check's measure. */
void mx_act_rms(const mx_tmodel *m, double *rms);

#endif
