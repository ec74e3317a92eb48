/* optim.c: AdamW, the schedule and clipping (optim.h). Each update is elementwise in fp32, as PyTorch's
 * single-tensor AdamW: p *= 1 - lr*wd (decayed parameters only); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
 * p -= (lr / (1 - b1^t)) · m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
#include "optim.h"

#include <math.h>
#include <string.h>

#include "op_profile.h"

float mx_lr_at(const mx_train_config *c, int step) {
    if (step < c->warmup) return c->lr * (float)(step + 1) / (float)c->warmup;
    int span = c->steps - c->warmup;
    double progress = span > 0 ? (double)(step - c->warmup) / span : 1.0;
    if (progress > 1.0) progress = 1.0;
    return (float)(c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * progress)));
}

double mx_grad_norm(const mx_tmodel *m) {
    double t0 = mx_op_begin(m), ss = m->ops->sumsq(m->be, m->g, m->n_floats);
    mx_op_end(m, "sumsq", t0);
    return sqrt(ss);
}

float mx_clip_grads(mx_tmodel *m, double norm, float max_norm) {
    if (max_norm <= 0) return 1.0f;
    float coef = (float)(max_norm / (norm + 1e-6));
    if (coef >= 1.0f) return 1.0f;
    MX_OP(m, scale, m->g, m->g, coef, (long)m->n_floats);
    return coef;
}

static mx_tr_adamw adamw_hyper(const mx_train_config *c, float lr, int t) {
    return (mx_tr_adamw){.lr = lr,
                         .beta1 = c->beta1,
                         .beta2 = c->beta2,
                         .eps = c->adam_eps,
                         .weight_decay = c->weight_decay,
                         .t = t};
}

/* The parameters' segments of [lo, hi) of the flat vector, offsets relative to lo; returns their count. */
static int segments(mx_tmodel *m, size_t lo, size_t hi) {
    int n = 0;
    for (int i = 0; i < m->n_params; i++) {
        const mx_param *p = &m->params[i];
        size_t a = p->off > lo ? p->off : lo, b = p->off + (size_t)p->rows * p->cols;
        if (b > hi) b = hi;
        if (a >= b) continue;
        m->segs[n++] = (mx_tr_seg){.off = a - lo, .n = b - a, .lr_mult = p->lr_mult, .decay = p->decay};
    }
    return n;
}

void mx_adamw_step_range(mx_tmodel *m, float lr, int t, size_t lo, size_t hi, float *mom, float *var) {
    mx_tr_adamw h = adamw_hyper(&m->cfg, lr, t);
    int n = segments(m, lo, hi);
    if (n == 0) return; /* an empty range: ZeRO-1's tail when the ranks divide the vector */
    /* w and g are offset by lo like the slice's moments, so one segment table serves all four */
    MX_OP(m, adamw, m->segs, n, m->w + lo, m->g + lo, mom, var, &h);
}

void mx_adamw_step(mx_tmodel *m, float lr, int t) {
    mx_adamw_step_range(m, lr, t, 0, m->n_floats, m->m, m->v);
}

void mx_zero_grads(mx_tmodel *m) {
    MX_OP(m, zero, m->g, m->n_floats);
}
