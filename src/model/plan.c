/* plan.c: attention plans (see plan.h): presets, the plan string, validation. */
#include "plan.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const MX_PLAN_PRESETS[] = {
    "standard", "ma", "ma-endslide", "ma-offset", "ma-pairs", "ma-offset-slideshare", NULL};

void mx_plan_uniform(mx_layer_plan *plan, int n_layer, mx_attn_kind kind, int window) {
    for (int l = 0; l < n_layer; l++) plan[l] = (mx_layer_plan){.kind = kind, .window = window, .kv_from = l};
}

const char *mx_attn_kind_name(mx_attn_kind k) {
    static const char *names[] = {"mha", "mla", "mka", "fastmka"};
    return k <= MX_ATTN_FASTMKA ? names[k] : "?";
}

int mx_attn_kind_parse(const char *s) {
    for (int k = MX_ATTN_MHA; k <= MX_ATTN_FASTMKA; k++)
        if (!strcmp(s, mx_attn_kind_name((mx_attn_kind)k))) return k;
    return -1;
}

/* Window layers in [from, to] share caches in alternating groups of 2 and 3 (or one group when one_group); a
 * group cut short by the end of the run keeps what is left, and a single leftover layer joins the group
 * before it (the paper's 24 layers: L2-3 + L4-6, and L20-21 + L22-23 for a run of four). */
static void group_windows(mx_layer_plan *p, int from, int to, int window, bool one_group) {
    int l = from, size = 2;
    while (l <= to) {
        int end = one_group ? to : l + size - 1;
        if (end > to) end = to;
        if (!one_group && to - end == 1) end = to;
        for (int i = l; i <= end; i++)
            p[i] = (mx_layer_plan){.kind = p[i].kind, .window = window, .kv_from = l};
        l = end + 1;
        size = size == 2 ? 3 : 2;
    }
}

/* Quarter q's first layer of n (0-based), the paper's L1, L7, L13, L19 for n = 24. */
static int quarter_start(int q, int n) {
    return (int)((long)q * n / 4);
}

static int preset(const char *name, int n, int window, mx_layer_plan *p, mx_err *err) {
    bool ma = !strcmp(name, "ma"), endslide = !strcmp(name, "ma-endslide"),
         offset = !strcmp(name, "ma-offset"), pairs = !strcmp(name, "ma-pairs"),
         slideshare = !strcmp(name, "ma-offset-slideshare");
    if (!strcmp(name, "standard")) return MX_OK;
    if (!(ma || endslide || offset || pairs || slideshare)) return MX_ERR_MISSING;
    if (n < 8)
        return mx_err_set(err, MX_ERR_ARG, "plan preset '%s' needs at least 8 layers (the model has %d)",
                          name, n);
    bool full[4096] = {false};
    if (n > 4096) return mx_err_set(err, MX_ERR_ARG, "too many layers (%d) for a preset", n);
    int first_full = -1;
    for (int q = 0; q < 4; q++) {
        int l = offset || slideshare ? quarter_start(q + 1, n) - 1 : quarter_start(q, n);
        full[l] = true;
    }
    if (ma) full[n - 1] = true;
    for (int l = 0; l < n; l++) {
        if (!full[l]) continue;
        if (first_full < 0) first_full = l;
        int src = first_full;
        if (pairs) src = l < quarter_start(2, n) ? quarter_start(0, n) : quarter_start(2, n);
        p[l] = (mx_layer_plan){.kind = p[l].kind, .window = 0, .kv_from = src};
    }
    for (int l = 0; l < n;) { /* runs of window layers between full ones */
        if (full[l]) {
            l++;
            continue;
        }
        int end = l;
        while (end + 1 < n && !full[end + 1]) end++;
        group_windows(p, l, end, window, slideshare);
        l = end + 1;
    }
    return MX_OK;
}

/* A decimal number at *s (advanced past it) into [lo, hi]; false when there are no digits or it is outside. The
 * digits read are kept in txt for the message. */
static bool parse_num(const char **s, long lo, long hi, long *out, char *txt, size_t txt_size) {
    const char *p = *s;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    snprintf(txt, txt_size, "%.*s", (int)(end - p), p);
    *s = end;
    return end != p && errno != ERANGE && v >= lo && v <= hi && (*out = v, true);
}

static int parse_token(const char *tok, int l, int n, int window, mx_layer_plan *out, mx_err *err) {
    const char *s = tok;
    char type = *s++;
    if (type != 'G' && type != 'S')
        return mx_err_set(err, MX_ERR_ARG,
                          "plan: layer %d: '%s' is not G, S, G@N or S@N (nor a preset: standard, "
                          "ma, ma-endslide, ma-offset, ma-pairs, ma-offset-slideshare)",
                          l, tok);
    int w = type == 'G' ? 0 : window, src = l;
    long v = 0;
    char num[32];
    if (type == 'S' && isdigit((unsigned char)*s)) {
        if (!parse_num(&s, 1, INT_MAX, &v, num, sizeof num))
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d: window %s in '%s' is out of range (1..%d)", l,
                              num, tok, INT_MAX);
        w = (int)v;
    }
    if (*s == '@') {
        s++;
        const char *at = s;
        bool ok = parse_num(&s, 0, n - 1, &v, num, sizeof num);
        if (s == at)
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d: '%s' needs a layer number after @", l, tok);
        if (!ok)
            return mx_err_set(err, MX_ERR_ARG,
                              "plan: layer %d reads layer %s's cache, which does not exist (%d layers)", l,
                              num, n);
        if (v > l)
            return mx_err_set(err, MX_ERR_ARG,
                              "plan: layer %d reads layer %s's cache, which is written later", l, num);
        src = (int)v;
    }
    if (*s) return mx_err_set(err, MX_ERR_ARG, "plan: layer %d: unexpected '%s' in '%s'", l, s, tok);
    if (type == 'S' && w <= 0)
        return mx_err_set(err, MX_ERR_ARG, "plan: layer %d: window must be positive", l);
    out->window = w;
    out->kv_from = src;
    return MX_OK;
}

int mx_plan_parse(const char *s, int n, int window, mx_attn_kind kind, mx_layer_plan *p, mx_err *err) {
    mx_plan_uniform(p, n, kind, 0);
    int rc = preset(s, n, window, p, err);
    if (rc != MX_ERR_MISSING) return rc;
    if (!strchr(s, ',') && !strchr(s, '*') && strlen(s) > 3 && islower((unsigned char)s[0]))
        return mx_err_set(err, MX_ERR_ARG,
                          "plan: unknown preset '%s' (presets: standard, ma, ma-endslide, ma-offset, "
                          "ma-pairs, ma-offset-slideshare)",
                          s);
    char *copy = strdup(s), *save = NULL;
    if (!copy) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    int l = 0;
    rc = MX_OK;
    for (char *tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok)) tok++;
        int reps = 1;
        char *star = strchr(tok, '*');
        if (star) {
            *star = 0;
            const char *r = star + 1;
            long v = 0;
            char num[32];
            if (!parse_num(&r, 1, n, &v, num, sizeof num) || *r)
                rc = mx_err_set(err, MX_ERR_ARG, "plan: bad repeat count in '%s*%s' (1..%d layers)", tok,
                                star + 1, n);
            reps = (int)v;
        }
        for (int r = 0; r < reps && !rc; r++, l++) {
            if (l >= n) {
                rc = mx_err_set(err, MX_ERR_ARG, "plan: names more than the model's %d layers", n);
                break;
            }
            rc = parse_token(tok, l, n, window, &p[l], err);
        }
    }
    free(copy);
    if (!rc && l != n) rc = mx_err_set(err, MX_ERR_ARG, "plan: names %d layers, the model has %d", l, n);
    return rc;
}

int mx_plan_validate(const mx_layer_plan *plan, int n_layer, int max_ctx, mx_err *err) {
    for (int l = 0; l < n_layer; l++) {
        int src = plan[l].kv_from;
        if (src < 0 || src >= n_layer)
            return mx_err_set(err, MX_ERR_ARG,
                              "plan: layer %d reads layer %d's cache, which does not exist (%d layers)", l,
                              src, n_layer);
        if (src > l)
            return mx_err_set(err, MX_ERR_ARG,
                              "plan: layer %d reads layer %d's cache, which is written later", l, src);
        if (plan[src].kv_from != src)
            return mx_err_set(
                err, MX_ERR_ARG,
                "plan: layer %d reads layer %d's cache, but layer %d writes none (it reads layer %d's)", l,
                src, src, plan[src].kv_from);
        if (plan[l].window < 0 || plan[l].window > max_ctx)
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d has window %d, larger than the context (%d)",
                              l, plan[l].window, max_ctx);
        if (plan[src].window > 0 && (plan[l].window == 0 || plan[l].window > plan[src].window))
            return mx_err_set(
                err, MX_ERR_ARG,
                "plan: layer %d (window %d) cannot read layer %d's cache, which keeps only the last %d "
                "keys",
                l, plan[l].window, src, plan[src].window);
        if (plan[src].kind != plan[l].kind)
            return mx_err_set(err, MX_ERR_ARG, "plan: layer %d (%s) cannot read layer %d's %s cache", l,
                              mx_attn_kind_name(plan[l].kind), src, mx_attn_kind_name(plan[src].kind));
    }
    return MX_OK;
}

void mx_plan_to_string(const mx_layer_plan *plan, int n_layer, char *buf, size_t size) {
    size_t off = 0;
    if (size) buf[0] = 0;
    for (int l = 0; l < n_layer && off < size; l++) {
        char tok[32];
        int k = plan[l].window > 0 ? snprintf(tok, sizeof tok, "S%d", plan[l].window)
                                   : snprintf(tok, sizeof tok, "G");
        if (plan[l].kv_from != l) snprintf(tok + k, sizeof tok - (size_t)k, "@%d", plan[l].kv_from);
        off += (size_t)snprintf(buf + off, size - off, "%s%s", l ? "," : "", tok);
    }
}
