/* mup.c: standard and muP parameterizations of training (mup.h; the rules in docs/training.md). */
#include "mup.h"

#include <math.h>
#include <string.h>

typedef enum { PC_VECTOR, PC_EMBED, PC_HIDDEN, PC_QUERY, PC_FIXED_OUT, PC_READOUT } pclass;

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static pclass classify(const mx_param *p) {
    const char *n = p->name;
    if (p->rows == 1 && (strstr(n, "norm") || strstr(n, "bias"))) return PC_VECTOR;
    if (!strcmp(n, "token_embd.weight") || !strcmp(n, "position_embd.weight")) return PC_EMBED;
    if (!strcmp(n, "output.weight")) return PC_READOUT;
    if (ends_with(n, "attn_q.weight") || ends_with(n, "attn_q_b.weight")) return PC_QUERY;
    if (ends_with(n, "ffn_gate_inp.weight") || ends_with(n, "mka_router2.weight")) return PC_FIXED_OUT;
    return PC_HIDDEN;
}

static bool is_residual_proj(const char *name) {
    return ends_with(name, "attn_output.weight") || ends_with(name, "ffn_down.weight") ||
           ends_with(name, "ffn_down_exps.weight");
}

static float width_mult(const mx_tmodel *m) {
    return (float)m->cfg.d_model / (float)m->cfg.mup_base_width;
}

void mx_mup_setup(mx_tmodel *m) {
    bool mup = m->cfg.mup;
    float w = mup ? width_mult(m) : 1.0f;
    m->attn_scale_pow = mup ? 1.0f : 0.5f;
    m->logit_scale = 1.0f / w;
    for (int i = 0; i < m->n_params; i++) {
        pclass c = classify(&m->params[i]);
        m->params[i].lr_mult =
            mup && (c == PC_HIDDEN || c == PC_QUERY || c == PC_FIXED_OUT) ? 1.0f / w : 1.0f;
    }
}

float mx_mup_init_std(const mx_tmodel *m, const mx_param *p) {
    const mx_train_config *c = &m->cfg;
    float std = c->init_std, res = is_residual_proj(p->name) ? 1.0f / sqrtf(2.0f * (float)c->n_layer) : 1.0f;
    if (!c->mup) return std * res;
    switch (classify(p)) {
    case PC_HIDDEN:
        return std * res / sqrtf(width_mult(m));
    case PC_QUERY:
    case PC_FIXED_OUT:
    case PC_READOUT:
        return 0.0f;
    default:
        return std;
    }
}

float mx_attn_scale(const mx_tmodel *m, int D) {
    return m->attn_scale_pow == 1.0f ? 1.0f / (float)D : 1.0f / sqrtf((float)D);
}

void mx_act_rms(const mx_tmodel *m, double *rms) {
    const mx_tacts *a = &m->acts;
    size_t nc = (size_t)a->B * a->T * m->cfg.d_model;
    for (int l = 0; l <= m->cfg.n_layer; l++) {
        const float *x = a->x + (size_t)l * nc;
        double ss = 0;
        for (size_t i = 0; i < nc; i++) ss += (double)x[i] * x[i];
        rms[l] = sqrt(ss / (double)nc);
    }
}
