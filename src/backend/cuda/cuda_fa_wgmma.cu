/* cuda_fa_wgmma.cu: the Hopper prefill attention kernel k_fa_wgmma (cuda_fa_wgmma.cuh) in the tile
 * configuration chosen by bench/cuda/fa_variants.cu: for D 128 two consumer warpgroups (128 query rows per
 * block), key tiles of 128, 2 stages; for D 64 three consumer warpgroups (192 rows), 3 stages. */
#include "cuda_fa_wgmma.cuh"

bool mx_cuda_attention_wgmma(mx_cuda_ctx *c, const mx_attn_spec *sp, const float *q, const void *k,
                             const void *v, float *out, float *lse, const int *dyn) {
    if (!faw_accepts(c, sp, q, k, v, out)) return false;
    const FawP p = faw_params(sp);
    if (sp->head_dim == 128) return faw_launch<128, 2, 128, 2, false>(c, sp, p, q, k, v, out, lse, dyn);
    return faw_launch<64, 3, 128, 3, false>(c, sp, p, q, k, v, out, lse, dyn);
}
