/* agree.c: "all ranks agree or exit" on top of the communicator's agree (agree.h). */
#include "agree.h"

#include <stdio.h>

int mx_dist_agree(mx_comm *comm, int rc, mx_err *err) {
    mx_err local = {0};
    if (rc) {
        local = *err;
        if (!local.code) local.code = rc > 0 && rc <= MX_ERR_MISSING ? (mx_code)rc : MX_ERR_ARG;
        if (!local.msg[0]) snprintf(local.msg, sizeof local.msg, "failed (%s)", mx_code_name(local.code));
    }
    if (!comm) return rc ? (*err = local, local.code) : 0;
    mx_err out = {0};
    int code = comm->agree(comm, rc == 0, &local, &out);
    if (code) *err = out;
    return code;
}

int mx_dist_is_root(const mx_comm *comm) {
    return !comm || comm->rank == 0;
}

void mx_dist_report(const mx_comm *comm, const char *who, const mx_err *err) {
    if (!mx_dist_is_root(comm)) return;
    fprintf(stderr, "%s: %s\n", who, err->msg);
    fflush(stderr);
}
