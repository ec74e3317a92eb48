/* optim.h: AdamW with decoupled weight decay (PyTorch's torch.optim.AdamW update, term for term), the
 * learning-rate schedule (linear warmup, then cosine decay to min_lr) and global-norm gradient clipping
 * (torch.nn.utils.clip_grad_norm_'s coefficient). Gradient accumulation is the caller's: it sums the
 * gradients of grad_accum micro-batches, each scaled by 1 / grad_accum, before one update. */
#ifndef MX_OPTIM_H
#define MX_OPTIM_H

#include "model_train.h"

/* The learning rate of step s (0-based) of cfg->steps. */
float mx_lr_at(const mx_train_config *cfg, int step);
/* The L2 norm of every gradient (accumulated in double). */
double mx_grad_norm(const mx_tmodel *m);
/* Scales every gradient by min(1, max_norm / (norm + 1e-6)) when max_norm > 0; returns the factor. */
float mx_clip_grads(mx_tmodel *m, double norm, float max_norm);
/* One AdamW update of every parameter at learning rate lr (times the parameter's lr_mult: muP's per-tensor
 * rates, mup.h); t is the 1-based step count (bias correction). */
void mx_adamw_step(mx_tmodel *m, float lr, int t);
/* The same update of the flat parameter elements [lo, hi) alone (m->w + off, m->g + off), with their moments
 * in mom/var (mom[0] is element lo): a ZeRO-1 rank's slice (dp.h). mx_adamw_step is (0, n_floats, m->m,
 * m->v). */
void mx_adamw_step_range(mx_tmodel *m, float lr, int t, size_t lo, size_t hi, float *mom, float *var);
/* Sets every gradient to zero. */
void mx_zero_grads(mx_tmodel *m);

#endif
