/* config_check.c: range checks of a loaded model's hyper-parameters (config_check.h). */
#include "config_check.h"

static int bad(mx_err *err, const char *path, const char *what, int v, const char *range) {
    return mx_err_set(err, MX_ERR_FORMAT, "%s: %s = %d, must be %s", path, what, v, range);
}

static int check_experts(const mx_config *c, const char *path, mx_err *err) {
    if (c->n_expert < 0 || c->n_expert > MX_MAX_EXPERTS)
        return bad(err, path, "the expert count", c->n_expert, "in 0..65536");
    if (c->n_expert == 0) return MX_OK;
    if (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: %d experts used per token (top-k), must be in 1..%d (the expert count)", path,
                          c->n_expert_used, c->n_expert);
    if (c->n_dense_lead < 0 || c->n_dense_lead > c->n_layer)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %d leading dense layers of %d layers", path,
                          c->n_dense_lead, c->n_layer);
    if (c->n_shared_expert < 0 || c->n_shared_expert > MX_MAX_EXPERTS)
        return bad(err, path, "the shared expert count", c->n_shared_expert, "in 0..65536");
    return MX_OK;
}

static int check_mla(const mx_config *c, const char *path, mx_err *err) {
    if (c->mla_kv_rank < 1) return bad(err, path, "the MLA kv_lora_rank", c->mla_kv_rank, "at least 1");
    if (c->mla_q_rank < 0) return bad(err, path, "the MLA q_lora_rank", c->mla_q_rank, "0 or more");
    if (c->mla_v_dim < 1) return bad(err, path, "the MLA v_head_dim", c->mla_v_dim, "at least 1");
    if (c->mla_nope_dim < 0 || c->mla_rope_dim < 0 || c->mla_nope_dim + c->mla_rope_dim != c->head_dim)
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: MLA query/key dims: nope %d + rope %d must be the head dim %d (both >= 0)",
                          path, c->mla_nope_dim, c->mla_rope_dim, c->head_dim);
    return MX_OK;
}

int mx_config_check(const mx_config *c, const char *path, mx_err *err) {
    if (c->n_layer < 1 || c->n_head < 1 || c->d_model < 1 || c->n_kv_head < 1 || c->n_head % c->n_kv_head)
        return mx_err_set(err, MX_ERR_FORMAT, "%s: %d layers, width %d, %d heads, %d KV heads: not a model",
                          path, c->n_layer, c->d_model, c->n_head, c->n_kv_head);
    if (c->head_dim < 1) return bad(err, path, "the head dim", c->head_dim, "at least 1");
    if (c->max_ctx < 1) return bad(err, path, "the context length", c->max_ctx, "at least 1");
    if (c->d_ff < 0) return bad(err, path, "the MLP width", c->d_ff, "0 or more");
    if (c->window < 0) return bad(err, path, "the sliding window", c->window, "0 (none) or more");
    if (c->use_rope && (c->rope_dim < 0 || c->rope_dim > c->head_dim || c->rope_dim > MX_MAX_ROPE_DIM))
        return mx_err_set(err, MX_ERR_FORMAT,
                          "%s: %d rotary dims per head, must be at most the head dim (%d) and %d", path,
                          c->rope_dim, c->head_dim, MX_MAX_ROPE_DIM);
    if (c->arch == MX_ARCH_DEEPSEEK2 && check_mla(c, path, err)) return err->code;
    return check_experts(c, path, err);
}
