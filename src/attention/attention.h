/* attention.h: the attention blocks that model/forward.c calls, one per kind of the plan, and what they share.
 * A block attends layer l for T new tokens at the session's position: it reads s->h (the normed layer input,
 * (T, C)), writes the layer's keys and values into its KV store when the layer writes one (kvcache.h), and
 * leaves the block output in s->h (T, C). The session itself is model/session_state.h. */
#ifndef MX_ATTENTION_H
#define MX_ATTENTION_H

#include "../backend/backend.h"

typedef struct mx_session mx_session;

/* Layer l's block by its plan's kind: one of the three below (attention.c). */
void mx_attention(mx_session *s, int l, int T);
/* MHA, GQA and MQA, with the plan's window and shared caches (mha.c). */
void mx_attention_mha(mx_session *s, int l, int T);
/* Multi-head Latent Attention, explicit or absorbed form (mla.c). */
void mx_attention_mla(mx_session *s, int l, int T);
/* MKA and FastMKA (mka.c). */
void mx_attention_mka(mx_session *s, int l, int T);
/* Star Attention's phase-2 attention of layer l for q (T, H*D) into att (T, H*D) (star_attend.c); mha.c calls
 * it instead of the dense attention when the session carries s->star. */
void mx_attention_star(mx_session *s, int l, int T, const float *q, float *att);

/* The attention spec for T queries at the session's position against layer l's store: causal, the plan's
 * window, the positions the store holds (kv_lo..kv_hi), scale 1/sqrt(head_dim) (mha.c). */
mx_attn_spec mx_attn_spec_for(const mx_session *s, int l, int T, int head_dim, int v_dim, int n_kv_head);

#endif
