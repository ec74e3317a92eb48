/* attention.c: the attention block of a layer by its plan's kind (see attention.h). */
#include "attention.h"

#include "../model/session_state.h"

void mx_attention(mx_session *s, int l, int T) {
    switch (s->m->cfg.plan[l].kind) {
    case MX_ATTN_MHA:
        mx_attention_mha(s, l, T);
        break;
    case MX_ATTN_MLA:
        mx_attention_mla(s, l, T);
        break;
    case MX_ATTN_MKA:
    case MX_ATTN_FASTMKA:
        mx_attention_mka(s, l, T);
        break;
    }
}
