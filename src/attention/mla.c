/* mla.c: Multi-head Latent Attention (DeepSeek-V2/V3). Not implemented yet: models that need it are refused
 * at load (see model.c) until this lands. */
#include <stdio.h>
#include <stdlib.h>

#include "../model/session.h"

void mx_attention_mla(mx_session *s, int l, int T) {
    fprintf(stderr, "mixatt: MLA attention is not implemented yet (layer %d)\n", l);
    abort();
}
