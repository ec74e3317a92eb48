/* op_profile.h: where a training step's time goes, op by op (`mixatt train --profile`). Each call of the
 * training op table (backend_train.h) made through MX_OP is timed from a device sync before it to a sync
 * after it, and the totals per op are printed at the end of the run. With no profile attached (m->prof NULL)
 * an op costs one pointer test; with one, the syncs serialize host and device, so a profiled run is a little
 * slower than a plain one and its tok/s are not the figure to quote. */
#ifndef MX_OP_PROFILE_H
#define MX_OP_PROFILE_H

#include <stdio.h>

enum { MX_OP_PROFILE_KINDS = 48 };

typedef struct mx_op_profile {
    const char *name[MX_OP_PROFILE_KINDS]; /* op names (string literals), in order of first call */
    double sec[MX_OP_PROFILE_KINDS];       /* wall seconds, device synced at both ends */
    long calls[MX_OP_PROFILE_KINDS];
    int n;
    int steps; /* steps counted (the caller's: mx_op_profile_step) */
} mx_op_profile;

struct mx_tmodel;

/* Returns the start time of an op (0 with no profile): the device is synced first. */
double mx_op_begin(const struct mx_tmodel *m);
/* Adds the time since t0 to op `name` (a string literal), after syncing the device. */
void mx_op_end(const struct mx_tmodel *m, const char *name, double t0);
/* Counts one step; clears the totals instead when `warmup` (the first step allocates and tunes). */
void mx_op_profile_step(mx_op_profile *p, int warmup);
/* Prints the table: op, calls per step, ms per step, share of the profiled time. */
void mx_op_profile_print(const mx_op_profile *p, FILE *f);

/* m->ops->op(m->be, ...) timed under m's profile (a void op) */
#define MX_OP(m, op, ...)                                                                                    \
    do {                                                                                                     \
        double t0_ = mx_op_begin(m);                                                                         \
        (m)->ops->op((m)->be, __VA_ARGS__);                                                                  \
        mx_op_end((m), #op, t0_);                                                                            \
    } while (0)

#endif
