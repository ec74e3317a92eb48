/* optim.c: AdamW, the schedule and clipping (optim.h). Each update is elementwise in fp32, as PyTorch's
 * single-tensor AdamW: p *= 1 - lr*wd (decayed parameters only); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
 * p -= (lr / (1 - b1^t)) · m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
#include "optim.h"

#include <math.h>
#include <string.h>

float mx_lr_at(const mx_train_config *c, int step) {
    if (step < c->warmup) return c->lr * (float)(step + 1) / (float)c->warmup;
    int span = c->steps - c->warmup;
    double progress = span > 0 ? (double)(step - c->warmup) / span : 1.0;
    if (progress > 1.0) progress = 1.0;
    return (float)(c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * progress)));
}

double mx_grad_norm(const mx_tmodel *m) {
    double ss = 0.0;
    for (size_t i = 0; i < m->n_floats; i++) ss += (double)m->g[i] * m->g[i];
    return sqrt(ss);
}

float mx_clip_grads(mx_tmodel *m, double norm, float max_norm) {
    if (max_norm <= 0) return 1.0f;
    float coef = (float)(max_norm / (norm + 1e-6));
    if (coef >= 1.0f) return 1.0f;
#pragma omp parallel for
    for (size_t i = 0; i < m->n_floats; i++) m->g[i] *= coef;
    return coef;
}

void mx_adamw_step_range(mx_tmodel *m, float lr, int t, size_t lo, size_t hi, float *mom, float *var) {
    const mx_train_config *c = &m->cfg;
    float b1 = c->beta1, b2 = c->beta2, eps = c->adam_eps;
    float bc1 = 1.0f - powf(b1, (float)t), bc2 = 1.0f - powf(b2, (float)t);
    float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2);
    for (int i = 0; i < m->n_params; i++) {
        const mx_param *p = &m->params[i];
        size_t a = p->off > lo ? p->off : lo, b = p->off + (size_t)p->rows * p->cols;
        if (b > hi) b = hi;
        if (a >= b) continue;
        size_t n = b - a;
        float *w = m->w + a, *pm = mom + (a - lo), *pv = var + (a - lo);
        const float *pg = m->g + a;
        float plr = lr * p->lr_mult, ps = step_size * p->lr_mult; /* muP's per-tensor rates (mup.h) */
        float decay = p->decay ? 1.0f - plr * c->weight_decay : 1.0f;
#pragma omp parallel for if (n > 65536)
        for (size_t j = 0; j < n; j++) {
            float g = pg[j];
            w[j] *= decay;
            pm[j] = pm[j] * b1 + (1.0f - b1) * g; /* PyTorch: lerp(m, g, 1 - b1) */
            pv[j] = pv[j] * b2 + (1.0f - b2) * g * g;
            w[j] -= ps * (pm[j] / (sqrtf(pv[j]) / bc2_sqrt + eps));
        }
    }
}

void mx_adamw_step(mx_tmodel *m, float lr, int t) {
    mx_adamw_step_range(m, lr, t, 0, m->n_floats, m->m, m->v);
}

void mx_zero_grads(mx_tmodel *m) {
    memset(m->g, 0, sizeof(float) * m->n_floats);
}
