/* plan.c: attention plans (see plan.h): the standard plan, validation and the plan string. */
#include "plan.h"

#include <stdio.h>

void mx_plan_standard(mx_layer_plan *plan, int n_layer) {
    for (int l = 0; l < n_layer; l++) plan[l] = (mx_layer_plan){.kind = MX_ATTN_MHA, .window = 0, .kv_from = l};
}

int mx_plan_validate(const mx_layer_plan *plan, int n_layer, int max_ctx, mx_err *err) {
    for (int l = 0; l < n_layer; l++) {
        int src = plan[l].kv_from;
        if (src < 0 || src >= n_layer)
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d reads layer %d's cache, which does not exist (%d layers)",
                              l, src, n_layer);
        if (src > l)
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d reads layer %d's cache, which is written later", l,
                              src);
        if (plan[src].kv_from != src)
            return mx_err_set(err, MX_ERR_ARG,
                              "plan: layer %d reads layer %d's cache, but layer %d writes none (it reads layer %d's)",
                              l, src, src, plan[src].kv_from);
        if (plan[l].window < 0 || plan[l].window > max_ctx)
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d has window %d, outside 0..%d (the context)", l,
                              plan[l].window, max_ctx);
    }
    return MX_OK;
}

void mx_plan_to_string(const mx_layer_plan *plan, int n_layer, char *buf, size_t size) {
    size_t off = 0;
    if (size) buf[0] = 0;
    for (int l = 0; l < n_layer && off < size; l++) {
        const char *kind = plan[l].window > 0 ? "S" : "G";
        if (plan[l].kv_from == l)
            off += snprintf(buf + off, size - off, "%s%s", l ? "," : "", kind);
        else
            off += snprintf(buf + off, size - off, "%s%s@%d", l ? "," : "", kind, plan[l].kv_from);
    }
}
