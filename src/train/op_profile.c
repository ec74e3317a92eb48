/* op_profile.c: the per-op timing of training steps (op_profile.h). */
#include "op_profile.h"

#include <string.h>

#include "../backend/backend.h"
#include "../base/clock.h"
#include "model_train.h"

static void sync_device(const mx_tmodel *m) {
    if (m->be && m->be->sync) m->be->sync(m->be);
}

double mx_op_begin(const mx_tmodel *m) {
    if (!m->prof) return 0.0;
    sync_device(m);
    return mx_now();
}

void mx_op_end(const mx_tmodel *m, const char *name, double t0) {
    mx_op_profile *p = m->prof;
    if (!p) return;
    sync_device(m);
    double dt = mx_now() - t0;
    int i = 0;
    while (i < p->n && strcmp(p->name[i], name) != 0) i++;
    if (i == p->n) {
        if (p->n == MX_OP_PROFILE_KINDS) return; /* more kinds than the table holds: not counted */
        p->name[p->n++] = name;
    }
    p->sec[i] += dt;
    p->calls[i]++;
}

void mx_op_profile_step(mx_op_profile *p, int warmup) {
    if (!warmup) {
        p->steps++;
        return;
    }
    memset(p->sec, 0, sizeof p->sec);
    memset(p->calls, 0, sizeof p->calls);
}

void mx_op_profile_print(const mx_op_profile *p, FILE *f) {
    if (p->steps == 0) {
        fprintf(f, "profile: no step after the first (which is left out): run at least 2 steps\n");
        return;
    }
    double total = 0;
    for (int i = 0; i < p->n; i++) total += p->sec[i];
    int order[MX_OP_PROFILE_KINDS];
    for (int i = 0; i < p->n; i++) order[i] = i;
    for (int i = 1; i < p->n; i++) /* by time, largest first */
        for (int j = i; j > 0 && p->sec[order[j]] > p->sec[order[j - 1]]; j--) {
            int s = order[j];
            order[j] = order[j - 1], order[j - 1] = s;
        }
    fprintf(f, "profile over %d steps (the first left out), device synced around each op:\n", p->steps);
    fprintf(f, "  %-16s %10s %12s %8s\n", "op", "calls/step", "ms/step", "share");
    for (int k = 0; k < p->n; k++) {
        int i = order[k];
        fprintf(f, "  %-16s %10.1f %12.3f %7.1f%%\n", p->name[i], (double)p->calls[i] / p->steps,
                1e3 * p->sec[i] / p->steps, total > 0 ? 100.0 * p->sec[i] / total : 0.0);
    }
    fprintf(f, "  %-16s %10s %12.3f\n", "total", "", 1e3 * total / p->steps);
}
