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

void mx_adamw_step(mx_tmodel *m, float lr, int t) {
    const mx_train_config *c = &m->cfg;
    float b1 = c->beta1, b2 = c->beta2, eps = c->adam_eps;
    float bc1 = 1.0f - powf(b1, (float)t), bc2 = 1.0f - powf(b2, (float)t);
    float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2);
    for (int i = 0; i < m->n_params; i++) {
        const mx_param *p = &m->params[i];
        size_t n = (size_t)p->rows * p->cols;
        float decay = p->decay ? 1.0f - lr * c->weight_decay : 1.0f;
#pragma omp parallel for if (n > 65536)
        for (size_t j = 0; j < n; j++) {
            float g = p->g[j];
            p->w[j] *= decay;
            p->m[j] = p->m[j] * b1 + (1.0f - b1) * g; /* PyTorch: lerp(m, g, 1 - b1) */
            p->v[j] = p->v[j] * b2 + (1.0f - b2) * g * g;
            p->w[j] -= step_size * (p->m[j] / (sqrtf(p->v[j]) / bc2_sqrt + eps));
        }
    }
}

void mx_zero_grads(mx_tmodel *m) {
    memset(m->g, 0, sizeof(float) * m->n_floats);
}
