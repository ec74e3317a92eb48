/* moe_train.h: the mixture-of-experts MLP of training (llama blocks), forward and backward, with the
 * load-balancing auxiliary loss. Per layer, for the N rows x of the normed MLP input (N, C):
 *   p = softmax(x · Wrᵀ)                         (N, E)   router probabilities
 *   ids = top-k of p (ties: the lower index)      (N, k)   w_j = p[ids_j] (/ Σ_j p[ids_j] when
 *                                                          expert_norm_topk)
 *   out = Σ_j w_j · Wd_e (silu(Wg_e x) ⊙ Wu_e x), e = ids_j       (N, C)
 * Experts run only on their tokens (gathered rows, stacked weights: Wg_e, Wu_e are rows e*F.. of
 * ffn_{gate,up}_exps (E*F, C), Wd_e rows e*C.. of ffn_down_exps (E*C, F)).
 * Auxiliary loss (Switch Transformer's, pooled over every MoE layer as Hugging Face's
 * load_balancing_loss_func does): over the R = n_layer * N router rows of the batch,
 *   f_e = (number of top-k choices, over all rows and all k slots, that are e) / R   (Σ_e f_e = k)
 *   P_e = Σ_rows p_e / R
 *   aux = E · Σ_e f_e · P_e             (1·k at perfect balance; f carries no gradient)
 * and the objective is cross-entropy + moe_aux_weight · aux. */
#ifndef MX_MOE_TRAIN_H
#define MX_MOE_TRAIN_H

#include "model_train.h"

/* The activations of every layer's experts (nothing without experts). */
int mx_moe_tacts_alloc(mx_tmodel *m, mx_err *err);
void mx_moe_tacts_free(mx_tmodel *m);
/* acts.ln2 of layer l → acts.tmp (N, C). */
void mx_moe_tr_fwd(mx_tmodel *m, int l);
/* After every layer's forward: the auxiliary loss; grad_scale (the caller's scale of the objective) times
 * moe_aux_weight is kept as the scale of its gradient for the backward. */
double mx_moe_tr_aux(mx_tmodel *m, float grad_scale);
/* acts.dx (N, C), the gradient of the block's output → acts.dln (N, C, overwritten), the gradient of its
 * input; parameter gradients accumulated (the auxiliary loss's included). */
void mx_moe_tr_bwd(mx_tmodel *m, int l);
/* The experts chosen for each row by the last forward of layer l: (N, k), in rank order. */
const int *mx_moe_tr_ids(const mx_tmodel *m, int l);

#endif
